"""The baseline of the HTTP benchmarks: a bare Flask JSON no-op on the broker's own server stack.

    python bench/noop_server.py --bind 127.0.0.1:PORT [--workers 2] [--threads 8] [--listener api|keyring]

Every path answers `{"ok": true}` after parsing the JSON body it was sent (if any), so it costs what any Flask JSON
endpoint costs: gunicorn's HTTP parsing, Flask's request/response cycle, `json` both ways. It runs under the same
`GunicornApp` with the same options as the listener it stands beside (`broker.wsgi.api_options` for the API,
`keyring_bridge.server.bridge_options` for the keyring bridge), so a row divided by it is "the broker's cost over
the bare HTTP stack" and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flask import Flask, request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def create_noop_app() -> Flask:
    app = Flask("kmsb_bench_noop")

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def noop(path: str):
        if request.content_length:
            request.get_json(force=True)
        return {"ok": True}

    return app


def main() -> None:
    from broker.wsgi import GunicornApp, api_options
    from keyring_bridge.server import bridge_options

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--listener", choices=["api", "keyring"], default="api")
    args = parser.parse_args()
    make = api_options if args.listener == "api" else bridge_options
    options = make(bind=args.bind, workers=args.workers, threads=args.threads) if args.listener == "api" else \
        make(args.bind, workers=args.workers, threads=args.threads)
    options.update(proc_name="kmsb-bench-noop", control_socket_disable=True)
    GunicornApp(create_noop_app, options).run()


if __name__ == "__main__":
    main()
