"""Command line: generate TLS material, build the vault, serve HTTPS, print one READY line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import ssl
import sys
from pathlib import Path

from werkzeug.serving import make_server

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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    cert, key, ca = tls.generate(args.data_dir, args.host)
    vault_url = f"https://{args.host}:{args.port}"
    vault = Vault(vault_url, args.state_file)
    app = create_app(vault, token=args.token, key_ops_on_get=args.key_ops_on_get)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    server = make_server(args.host, args.port, app, threaded=True, ssl_context=ctx)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ready = {"vault_url": vault_url, "ca_bundle": str(ca), "token": args.token}
    print("READY " + json.dumps(ready), flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        vault.flush()
    return 0
