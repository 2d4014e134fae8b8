"""Optional --state-file: the whole backend as one JSON document, rewritten atomically soon after changes.

The document is assembled from per-object JSON texts that are re-rendered only for the objects the backend marks
as changed (emulator_state/snapshot.py), and it is written with the backend's lock released: a save costs the
requests in flight the changed objects only, not the whole store.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from emulator_state.snapshot import JsonDocument, Shape
from google.cloud import kms_v1 as k

from .models import KmsBackend

_KINDS = {"key_rings": k.KeyRing, "crypto_keys": k.CryptoKey, "versions": k.CryptoKeyVersion,
          "import_jobs": k.ImportJob}
_TABLES: dict[str, Shape] = {**{kind: "list" for kind in _KINDS}, "material": "map"}


def dump(backend: KmsBackend) -> dict:
    """The whole state as one document (the shape the state file has)."""
    doc: dict = {kind: [json.loads(cls.to_json(m)) for m in getattr(backend, kind).values()]
                 for kind, cls in _KINDS.items()}
    doc["material"] = {n: base64.b64encode(b).decode() for n, b in backend.material.items()}
    return doc


def load(backend: KmsBackend, doc: dict) -> None:
    with backend.lock:
        for kind, cls in _KINDS.items():
            table = getattr(backend, kind)
            table.clear()
            for item in doc.get(kind, []):
                msg = cls.from_json(json.dumps(item))
                table[msg.name] = msg
        backend.material = {n: base64.b64decode(b) for n, b in doc.get("material", {}).items()}
        backend.reindex()


def load_file(backend: KmsBackend, path: Path) -> None:
    if path.exists():
        load(backend, json.loads(path.read_text()))


def _render(backend: KmsBackend, table: str, name: str) -> str | None:
    if table == "material":
        raw = backend.material.get(name)
        return None if raw is None else json.dumps(base64.b64encode(raw).decode())
    msg = getattr(backend, table).get(name)
    return None if msg is None else _KINDS[table].to_json(msg, indent=None)


class StateFile:
    """The backend's state file, kept in step with the changes the backend marks from now on."""

    def __init__(self, backend: KmsBackend, path: Path) -> None:
        self.backend = backend
        self.doc = JsonDocument(path, _TABLES)
        with backend.lock:
            for kind in _KINDS:
                self.doc.mark_all(kind, getattr(backend, kind))
            self.doc.mark_all("material", backend.material)
            backend.mark = self.doc.mark

    def save(self) -> None:
        """Write a temp file and rename it, so a crash never leaves a half-written state file (mode 0600: it
        holds key material)."""
        self.doc.save(self.backend.lock, lambda table, name: _render(self.backend, table, name))


def save_file(backend: KmsBackend, path: Path) -> None:
    """One full save (no change tracking afterwards)."""
    state = StateFile(backend, path)
    state.save()
    backend.mark = None
