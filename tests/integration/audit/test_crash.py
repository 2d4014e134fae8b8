"""A crash at each exact point of the audit path (a child process SIGKILLs itself there), then a restart: verify
explains what the crash left (not tampering) before the restart, the restart reconciles it, verify passes after, and
every effect in the store has a record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from broker import errors
from broker.audit.chain import load_public_key, public_key_pem
from broker.audit.mark import RootMarks
from broker.audit.verify import Report, verify_sources
from broker.policy import PolicyEngine
from broker.service import KeyService
from broker.store import Store
from tests.integration.audit.conftest import CHECKPOINT_EVERY, make_audit


def file_records(data: Path) -> list[dict]:
    path = data / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def store_rows(store: Store) -> list[tuple[int, str, str]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("select seq, hash, record from audit_events order by seq"))]


def check(data: Path, store: Store, provider) -> Report:
    """What `kms-broker audit verify --data-dir` does, with the session's HSM as the authority."""
    path = data / "audit" / "audit.jsonl"
    key = load_public_key(public_key_pem(provider.root_of_trust().audit_public_key()))
    from broker.audit.sinks import chain_id

    mark = RootMarks(provider.root_of_trust()).read(chain_id(path))
    return verify_sources(path.read_bytes(), store_rows(store), key, mark, every_records=CHECKPOINT_EVERY,
                          every_seconds=3600.0)


def crash(data: Path, hsm_token, point: str) -> list[dict]:
    """Run the child until it kills itself at `point`; returns what it printed (what it had acknowledged)."""
    args = json.dumps({"data": str(data), "hsm": hsm_token.config(), "point": point})
    done = subprocess.run([sys.executable, "-m", "tests.integration.audit.crash_child", args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def world(tmp_path: Path, hsm_provider):
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    yield data, store
    store.dispose()


def every_key_has_a_record(store: Store, records: list[dict]) -> None:
    named = {r.get("key_id") for r in records}
    with store.engine.connect() as conn:
        keys = [r[0] for r in conn.execute(text("select key_id from keys"))]
    assert keys and set(keys) <= named, f"keys with no audit record: {set(keys) - named}"


@pytest.mark.parametrize("point", ["unmirrored", "torn-append", "after-effect", "after-append"])
def test_a_crash_is_explained_then_reconciled(world, hsm_token, hsm_provider, root_ctx, point: str) -> None:
    data, store = world
    printed = crash(data, hsm_token, point)
    acknowledged = printed[0]["acknowledged"]
    assert printed == [{"acknowledged": acknowledged}]

    before = check(data, store, hsm_provider)
    assert before.ok, [p.message for p in before.problems]  # a crash is not tampering
    if point == "unmirrored":
        assert any("not yet in the store" in c for c in before.crash), before.crash
    if point == "torn-append":
        assert any("torn last write" in c for c in before.crash), before.crash
    if point in ("after-effect", "after-append"):
        assert before.open_intents and any("without an outcome" in c for c in before.crash), before.crash

    audit = make_audit(data, hsm_provider, store)  # the restart
    try:
        done = audit.reconcile()
        records = file_records(data)
        assert [r["seq"] for r in records] == [r[0] for r in store_rows(store)]  # the store copy caught up
        intents = {r["seq"]: r for r in records if r.get("phase") == "intent"}
        closed = {r["intent_seq"]: r for r in records if "intent_seq" in r}
        assert set(intents) == set(closed), "every intent has its outcome"
        if point == "torn-append":  # the torn intent was never acknowledged and is gone: nothing happened
            assert done.get("torn_bytes") and not done["interrupted"]
        else:
            (seq,) = done["interrupted"]
            interrupted = closed[seq]
            assert interrupted["outcome"] == "interrupted" and interrupted["action"] == "kms:CreateKey"
            assert interrupted["key_id"] == intents[seq]["key_id"] and interrupted["request_id"] == \
                intents[seq]["request_id"]
        reconciled = [r for r in records if r.get("action") == "broker:ReconcileAudit"]
        assert bool(reconciled) == (point == "torn-append")
        every_key_has_a_record(store, records)
        with store.engine.connect() as conn:
            keys = {r[0] for r in conn.execute(text("select key_id from keys"))}
        assert acknowledged in keys
        assert (len(keys) == 2) == (point == "after-effect")  # the effect of the interrupted CreateKey is kept

        after = check(data, store, hsm_provider)
        assert after.ok and not after.crash and not after.open_intents, (after.problems, after.crash)
        svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
        svc.encrypt(root_ctx, acknowledged, b"after the restart")  # and the chain goes on
        assert audit.reconcile() == {"interrupted": []}  # a second start finds nothing to do
        assert check(data, store, hsm_provider).ok
    finally:
        audit.close()


def test_a_live_writers_intents_are_not_closed(world, hsm_provider, root_ctx) -> None:
    """Another process starting (reconcile) must not close the intents of a writer that is still running."""
    data, store = world
    first = make_audit(data, hsm_provider, store)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), first)
    key = svc.create_key(root_ctx)["KeyId"]
    started, release = __import__("threading").Event(), __import__("threading").Event()
    real = svc.store.add_version

    def slow_add(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    svc.store.add_version = slow_add  # a rotation in flight: intent written, effect not yet
    import threading

    worker = threading.Thread(target=lambda: svc.rotate_key_on_demand(root_ctx, key))
    worker.start()
    second = make_audit(data, hsm_provider, store)
    try:
        assert started.wait(30)
        assert second.reconcile()["interrupted"] == []  # the first writer is alive: its intent stays open
        release.set()
        worker.join(30)
        records = file_records(data)
        assert [r["outcome"] for r in records if r["action"] == "kms:RotateKeyOnDemand"] == ["pending", "allowed"]
    finally:
        release.set()
        second.close()
        first.close()


def test_a_closed_writers_intents_are_interrupted(world, hsm_provider, root_ctx) -> None:
    """A writer that ended (here: closed while its operation hangs) no longer holds its lease: the next writer's
    housekeeping closes the intent, naming it."""
    import threading

    data, store = world
    first = make_audit(data, hsm_provider, store)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), first)
    key = svc.create_key(root_ctx)["KeyId"]
    started, release = threading.Event(), threading.Event()
    real = svc.store.update_key

    def hang(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    svc.store.update_key = hang
    outcome: list[type] = []

    def disable() -> None:
        try:
            svc.disable_key(root_ctx, key)
        except errors.NotReady as exc:  # its writer is closed: no outcome can be written, so no answer either
            outcome.append(type(exc))

    worker = threading.Thread(target=disable)
    worker.start()
    assert started.wait(30)
    first.close()  # the writer ends; its operation cannot write an outcome any more
    second = make_audit(data, hsm_provider, store)
    try:
        assert len(second.reconcile()["interrupted"]) == 1
        release.set()
        worker.join(30)
        assert outcome == [errors.NotReady]
        (closing,) = [r for r in file_records(data) if r.get("outcome") == "interrupted"]
        assert closing["action"] == "kms:DisableKey" and closing["key_id"] == key
        assert check(data, store, hsm_provider).ok
    finally:
        release.set()
        second.close()
