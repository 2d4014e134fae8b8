"""Wire the backend, the verifier and optional state-file persistence into a threaded WSGI server."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server

from .models import KmsBackend
from .responses import KmsApp
from .signing import Verifier


def _saver(path: Path):  # noqa: ANN202 - callback for KmsBackend.on_change
    """Atomic rewrite of the state file after every change (the file holds key material: mode 0600)."""

    def save(backend: KmsBackend) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kms-state-")
        with os.fdopen(fd, "w") as fh:
            json.dump(backend.to_dict(), fh)
        os.replace(tmp, path)

    return save


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
        backend.on_change = _saver(state_file)
    return make_server(host, port, KmsApp(backend, Verifier(access_keys)), threaded=True)
