"""Optional --state-file: the whole backend as one JSON document, rewritten atomically on each change."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from google.cloud import kms_v1 as k

from .models import KmsBackend

_KINDS = {"key_rings": k.KeyRing, "crypto_keys": k.CryptoKey, "versions": k.CryptoKeyVersion,
          "import_jobs": k.ImportJob}


def dump(backend: KmsBackend) -> dict:
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


def save_file(backend: KmsBackend, path: Path) -> None:
    """Write to a sibling temp file and rename, so a crash never leaves a half-written state file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds key material
    with os.fdopen(fd, "w") as fh:
        json.dump(dump(backend), fh)
    os.replace(tmp, path)


def load_file(backend: KmsBackend, path: Path) -> None:
    if path.exists():
        load(backend, json.loads(path.read_text()))
