"""Command line: generate TLS material, build the vault, serve HTTPS with keep-alive, print one READY line.

The server is gunicorn (one gthread worker: the vault is one in-memory state), not werkzeug's development server:
werkzeug answers every request with `Connection: close`, so each SDK call paid a new TCP connection and TLS
handshake on both sides (a new SSLContext and CA load in urllib3, an ECDHE key exchange, and werkzeug's accept loop
doing every handshake on one thread), which held a raw create_key at ~50/s on an EMPTY vault. With keep-alive
the SDK's pooled connections are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from . import tls
from .models import Vault
from .responses import create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m azure_keyvault_emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--data-dir", required=True, type=Path, help="where ca.pem and the server cert are written")
    p.add_argument("--token", default=None, help="accept only this bearer token (default: any)")
    p.add_argument("--state-file", default=None, help="persist keys to this JSON file (private keys in clear!)")
    p.add_argument("--key-ops-on-get", action="store_true",
                   help="return key_ops on GET like Azure (lets the SDK do public-key crypto locally)")
    p.add_argument("--threads", type=int, default=16, help="requests served at once (one worker process)")
    return p.parse_args(argv)


def _tls_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    ctx = default_factory()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _Server(BaseApplication):
    """gunicorn run from here: the vault is built in the worker (its writer thread must live there), and the worker
    saves pending changes when it exits."""

    def __init__(self, build: Callable[[], Any], options: dict[str, Any], ready: dict[str, Any]) -> None:
        self._build = build
        self._options = options
        self._ready = ready
        self.vault: Vault | None = None
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)
        self.cfg.set("post_worker_init", lambda worker: print("READY " + json.dumps(self._ready), flush=True))
        self.cfg.set("worker_exit", lambda server, worker: self.vault.flush() if self.vault else None)

    def load(self) -> Any:
        return self._build(self)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    cert, key, ca = tls.generate(args.data_dir, args.host)
    vault_url = f"https://{args.host}:{args.port}"

    def build(server: _Server) -> Any:
        server.vault = Vault(vault_url, args.state_file)
        return create_app(server.vault, token=args.token, key_ops_on_get=args.key_ops_on_get)

    options = {"bind": f"{args.host}:{args.port}", "workers": 1, "worker_class": "gthread",
               "threads": args.threads, "keepalive": 30, "timeout": 0, "graceful_timeout": 5,
               "certfile": str(cert), "keyfile": str(key), "ssl_context": _tls_context,
               "accesslog": None, "errorlog": "-", "loglevel": "warning"}
    ready = {"vault_url": vault_url, "ca_bundle": str(ca), "token": args.token}
    _Server(build, options, ready).run()
    return 0
