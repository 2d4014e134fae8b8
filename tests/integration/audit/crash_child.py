"""A broker process that kills itself (SIGKILL) at one exact point of the audit path, for the crash tests.

    python -m tests.integration.audit.crash_child '<json: data, hsm config, point>'

It creates a key and encrypts a few times (all acknowledged: printed), then arms the crash and asks for one more
CreateKey. Points:
  unmirrored     the intent's batch is durable in the file, the store's mirror never copies it
  torn-append    half of the intent's line is in the file
  after-effect   the key row is committed, the outcome record never written
  after-append   a batch is in the file, the chain head (.lock) never saved
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from broker.audit import sinks
from broker.auth import Principal
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.store import Store
from providers.pkcs11 import Pkcs11Provider
from tests.integration.audit.conftest import make_audit


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, svc: KeyService) -> None:
    if point == "unmirrored":
        real_sync = sinks.FileSink.sync

        def sync_then_die(self, fds):
            real_sync(self, fds)
            die()
        svc.audit.mirror.catch_up = lambda: []  # type: ignore[union-attr]
        sinks.FileSink.sync = sync_then_die  # type: ignore[method-assign]
    elif point == "torn-append":
        def torn(self, records, lines):
            with open(self.path, "ab") as f:
                data = b"".join(lines)
                f.write(data[: len(data) // 2])
            die()
        sinks.FileSink.write = torn  # type: ignore[method-assign]
    elif point == "after-effect":
        real = svc.store.add_key

        def add_then_die(*args, **kwargs):
            real(*args, **kwargs)
            die()
        svc.store.add_key = add_then_die  # type: ignore[method-assign]
    elif point == "after-append":
        real_write = sinks.FileSink.write

        def write_then_die(self, records, lines):
            real_write(self, records, lines)
            die()
        sinks.FileSink.write = write_then_die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {point}")


def main() -> None:
    args = json.loads(sys.argv[1])
    data = Path(args["data"])
    provider = Pkcs11Provider.from_config("hsm", args["hsm"])
    store = Store(f"sqlite:///{data / 'broker.db'}")
    audit = make_audit(data, provider, store)
    svc = KeyService(store, {"hsm": provider}, "hsm", PolicyEngine(), audit)
    ctx = RequestContext(Principal("root", "token", ("root",)), front_door="test")
    key = svc.create_key(ctx)["KeyId"]
    print(json.dumps({"acknowledged": key}), flush=True)
    for _ in range(3):
        svc.encrypt(ctx, key, b"x")
    arm(args["point"], svc)
    svc.create_key(ctx)
    print(json.dumps({"survived": True}), flush=True)


if __name__ == "__main__":
    main()
