"""CLI: serve gRPC and REST on loopback over one shared state; print one READY line when both listen."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

from emulator_state.writebehind import WriteBehind
from werkzeug.serving import make_server

from . import LOCATION, PROJECT, persistence
from .grpc_service import make_server as make_grpc_server
from .models import KmsBackend
from .rest import create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gcp_kms_emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--rest-port", type=int, required=True)
    p.add_argument("--token", default=None, help="require 'authorization: Bearer TOKEN' on every call")
    p.add_argument("--state-file", type=Path, default=None, help="persist state here (JSON, holds key material)")
    p.add_argument("--min-destroy-seconds", type=float, default=86400.0,
                   help="lowest destroy_scheduled_duration accepted (the real service: 24 h); lower it for tests")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request access log
    backend = KmsBackend(min_destroy_duration=timedelta(seconds=args.min_destroy_seconds))
    writer = None
    if args.state_file:
        persistence.load_file(backend, args.state_file)
        writer = WriteBehind(persistence.StateFile(backend, args.state_file).save)
        backend.on_change = writer.changed

    grpc_server = make_grpc_server(backend, args.host, args.grpc_port, args.token)
    rest_server = make_server(args.host, args.rest_port, create_app(backend, args.token), threaded=True)
    grpc_server.start()
    threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready = {"grpc_target": f"{args.host}:{args.grpc_port}", "rest_endpoint": f"http://{args.host}:{args.rest_port}",
             "project": PROJECT, "location": LOCATION}
    print("READY " + json.dumps(ready), flush=True)
    stop.wait()
    rest_server.shutdown()
    grpc_server.stop(grace=1).wait()
    if writer is not None:
        writer.changed()
        writer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
