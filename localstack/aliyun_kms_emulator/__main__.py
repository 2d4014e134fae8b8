"""python -m aliyun_kms_emulator --host 127.0.0.1 --port P [--access-key ID:SECRET]... [--state-file F]"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
from pathlib import Path

from .server import build_server


def _access_key(value: str) -> tuple[str, str]:
    key_id, sep, secret = value.partition(":")
    if not sep or not key_id or not secret:
        raise argparse.ArgumentTypeError("expected ID:SECRET")
    return key_id, secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aliyun_kms_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--region", default="cn-hangzhou")
    parser.add_argument("--access-key", type=_access_key, action="append", default=[],
                        help="ID:SECRET accepted for signatures (repeatable); default: one random pair")
    parser.add_argument("--state-file", type=Path, help="JSON file keeping keys across restarts")
    parser.add_argument("--import-token-ttl", type=float, default=86400.0,
                        help="seconds an ImportToken stays valid (Aliyun: 24 h)")
    parser.add_argument("--clock-offset-file", type=Path,
                        help="test hook: seconds in this file are added to the key lifecycle clock")
    args = parser.parse_args(argv)
    pairs = args.access_key or [(f"LTAI{secrets.token_hex(8)}", secrets.token_urlsafe(24))]
    server = build_server(args.host, args.port, dict(pairs), args.region, args.state_file, args.import_token_ttl,
                          args.clock_offset_file)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    key_id, secret = pairs[0]
    ready = {"endpoint": f"{args.host}:{args.port}", "region": args.region,
             "access_key_id": key_id, "access_key_secret": secret}
    print("READY " + json.dumps(ready), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop like Ctrl-C: the state file gets the last changes
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        server.flush_state()
    return 0


if __name__ == "__main__":
    sys.exit(main())
