"""Wire the backend, the verifier and optional state-file persistence into a threaded WSGI server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from emulator_state.snapshot import JsonDocument
from emulator_state.writebehind import WriteBehind
from werkzeug.serving import BaseWSGIServer, make_server

from .models import KmsBackend
from .responses import KmsApp
from .signing import Verifier


def _writer(path: Path, backend: KmsBackend) -> WriteBehind:
    """Atomic rewrite of the state file soon after changes (the file holds key material: mode 0600). Only the
    keys and aliases changed since the last save are rendered, under the lock; the file is written outside it."""
    doc = JsonDocument(path, {"keys": "list", "aliases": "map"})
    with backend.lock:
        doc.mark_all("keys", backend.keys)
        doc.mark_all("aliases", backend.aliases)
        backend.mark = doc.mark
    return WriteBehind(lambda: doc.save(backend.lock, backend.render))


def offset_clock(path: Path) -> Callable[[], float]:
    """Wall time plus the seconds written in `path` (missing or empty: 0). A test hook that moves the key
    lifecycle (deletion windows, rotation, material expiry) forward; request signatures keep real time."""

    def clock() -> float:
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        return time.time() + (float(text) if text else 0.0)

    return clock


def build_server(host: str, port: int, access_keys: dict[str, str], region: str = "cn-hangzhou",
                 state_file: Path | None = None, import_token_ttl: float = 86400.0,
                 clock_offset_file: Path | None = None) -> BaseWSGIServer:
    clock = offset_clock(clock_offset_file) if clock_offset_file else time.time
    backend = KmsBackend(region=region, import_token_ttl=import_token_ttl, clock=clock)
    if state_file is not None:
        if state_file.exists():
            backend.load_dict(json.loads(state_file.read_text()))
        writer = _writer(state_file, backend)
        backend.on_change = lambda _backend: writer.changed()
    server = make_server(host, port, KmsApp(backend, Verifier(access_keys)), threaded=True)
    server.flush_state = writer.flush if state_file is not None else (lambda: None)  # type: ignore[attr-defined]
    return server
