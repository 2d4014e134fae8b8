"""Key metadata cache (`key_cache_seconds`, default 1 s): only operations that change nothing use it; a change made by
any process of this host is seen at once (the host's key-write counter, broker/store/generation.py), one made on
another host sharing the database within the bound."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from broker import errors
from broker.audit import AuditLog
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.settings import Settings
from broker.store import Store
from broker.store.generation import HostGeneration
from tests.support.broker import start_broker

Make = Callable[..., KeyService]


@pytest.fixture
def processes(tmp_path: Path, hsm_provider) -> Iterator[Make]:
    """KeyServices over one SQLite store, each with its own Store (as separate processes or hosts have)."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    Store(url).migrate()
    made: list[KeyService] = []

    def make(key_cache_seconds: float = 0.0) -> KeyService:
        audit = AuditLog(tmp_path / f"audit-{len(made)}.jsonl", hsm_provider.root_of_trust().audit_hmac)
        svc = KeyService(Store(url), {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit,
                         key_cache_seconds=key_cache_seconds)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.audit.close()
        svc.store.dispose()


def test_off_every_call_reads_the_key(processes: Make, root_ctx: RequestContext) -> None:
    here, there = processes(0.0), processes()
    there.store._kept_keys.counter = None  # as on another host: its writes do not move this host's counter
    key = here.create_key(root_ctx)["KeyId"]
    here.encrypt(root_ctx, key, b"x")
    there.disable_key(root_ctx, key)
    with pytest.raises(errors.Disabled):
        here.encrypt(root_ctx, key, b"x")


def test_the_default_keeps_key_metadata_one_second() -> None:
    assert Settings.model_fields["key_cache_seconds"].default == 1.0


def test_another_process_of_this_host_is_seen_at_once(processes: Make, root_ctx: RequestContext) -> None:
    here, there = processes(key_cache_seconds=60.0), processes()
    key = here.create_key(root_ctx)["KeyId"]
    blob = here.encrypt(root_ctx, key, b"x")["CiphertextBlob"]  # Enabled is kept here
    there.disable_key(root_ctx, key)
    with pytest.raises(errors.Disabled):
        here.encrypt(root_ctx, key, b"x")
    with pytest.raises(errors.Disabled):
        here.decrypt(root_ctx, blob)
    there.enable_key(root_ctx, key)
    assert here.decrypt(root_ctx, blob)["Plaintext"] == b"x"


def test_another_host_change_arrives_within_the_bound(processes: Make, root_ctx: RequestContext) -> None:
    here, there = processes(key_cache_seconds=1.0), processes()
    there.store._kept_keys.counter = None  # as on another host: its writes do not move this host's counter
    key = here.create_key(root_ctx)["KeyId"]
    blob = here.encrypt(root_ctx, key, b"x")["CiphertextBlob"]
    there.disable_key(root_ctx, key)
    here.encrypt(root_ctx, key, b"x")  # the kept copy: still Enabled here, for at most key_cache_seconds
    assert here.decrypt(root_ctx, blob)["Plaintext"] == b"x"
    time.sleep(1.1)
    with pytest.raises(errors.Disabled):
        here.encrypt(root_ctx, key, b"x")
    with pytest.raises(errors.Disabled):
        here.decrypt(root_ctx, blob)


def test_without_a_host_counter_nothing_is_kept(tmp_path: Path, hsm_provider, root_ctx: RequestContext) -> None:
    """A store with no place for the host counter (here: the counter could not be opened) keeps no key metadata:
    a change of another process could not be seen at once."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    Store(url).migrate()
    audit = AuditLog(tmp_path / "audit.jsonl", hsm_provider.root_of_trust().audit_hmac)
    here = KeyService(Store(url), {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit, key_cache_seconds=60.0)
    here.store._kept_keys.counter = None
    there = Store(url)
    there._kept_keys.counter = None
    try:
        key = here.create_key(root_ctx)["KeyId"]
        here.encrypt(root_ctx, key, b"x")
        from broker.model import KeyState

        there.update_key(key, state=KeyState.DISABLED)
        with pytest.raises(errors.Disabled):
            here.encrypt(root_ctx, key, b"x")
    finally:
        audit.close()
        here.store.dispose()
        there.dispose()


def _bump_in_child(path: str) -> None:
    HostGeneration(Path(path)).bump()


def test_the_host_counter_is_shared_by_processes(tmp_path: Path) -> None:
    counter = HostGeneration(tmp_path / "key-writes.generation")
    assert counter.current() == 0
    child = multiprocessing.get_context("spawn").Process(target=_bump_in_child, args=(str(counter.path),))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert counter.current() == 1  # a bump of another process, seen through the shared mapping
    counter.bump()
    assert HostGeneration(counter.path).current() == 2
    assert (counter.path.stat().st_mode & 0o777) == 0o600
    counter.close()


def test_a_disable_through_one_worker_refuses_at_once_in_every_worker(tmp_path: Path) -> None:
    """The served broker (2 gunicorn workers, default settings: key cache on): after warming both workers' caches,
    a DisableKey answered by one worker is seen by the next Encrypt whichever worker answers it."""
    broker = start_broker(tmp_path / "data", tmp_path / "logs", workers=2, name="key-cache-broker")
    try:
        api = broker.session()
        key = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        body = {"Plaintext": "eA=="}
        root = {"X-KMSB-Token": broker.root_token}
        for _ in range(40):  # a new connection each: both workers answer some of these and keep Enabled
            assert requests.post(broker.url(f"/keys/{key}/encrypt"), json=body, headers=root).status_code == 200
        assert api.post(broker.url(f"/keys/{key}/disable")).status_code == 200
        refused = [requests.post(broker.url(f"/keys/{key}/encrypt"), json=body, headers=root) for _ in range(40)]
        assert {r.status_code for r in refused} == {409}, {r.status_code for r in refused}
        assert {r.json()["error"]["code"] for r in refused} == {"DisabledException"}
    finally:
        broker.server.stop()


def test_this_process_sees_its_own_change_at_once(processes: Make, root_ctx: RequestContext) -> None:
    here = processes(key_cache_seconds=60.0)
    key = here.create_key(root_ctx)["KeyId"]
    here.encrypt(root_ctx, key, b"x")
    here.disable_key(root_ctx, key)
    with pytest.raises(errors.Disabled):
        here.encrypt(root_ctx, key, b"x")
    here.enable_key(root_ctx, key)
    here.encrypt(root_ctx, key, b"x")


def test_operations_that_change_state_read_it_fresh(processes: Make, root_ctx: RequestContext) -> None:
    """A lifecycle change is decided on the key's current state: a kept Enabled must not let EnableKey silently undo
    a deletion another process scheduled (nor a destruction follow a cancelled one)."""
    here, there = processes(key_cache_seconds=60.0), processes()
    key = here.create_key(root_ctx)["KeyId"]
    here.encrypt(root_ctx, key, b"x")  # Enabled is kept here
    there.schedule_key_deletion(root_ctx, key, 7)
    with pytest.raises(errors.InvalidState):
        here.enable_key(root_ctx, key)
    here.cancel_key_deletion(root_ctx, key)  # allowed: it is pending deletion, read fresh
    assert there.store.get_key(key).state.value == "Disabled"
    with pytest.raises(errors.Disabled):  # this process's own change: seen at once
        here.encrypt(root_ctx, key, b"x")


def test_a_read_that_raced_a_write_is_not_kept(tmp_path: Path) -> None:
    from broker.model import Key, KeySpec, KeyState, KeyUsage, Origin

    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    store.migrate()
    store.add_key(Key("k1", "hsm", KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, KeyState.ENABLED,
                      Origin.BROKER, "", created_at=__import__("datetime").datetime.now()), None)
    real = store._reader.first

    def read_then_write(statement, params):
        row = real(statement, params)  # the old row ...
        store.update_key("k1", state=KeyState.DISABLED)  # ... and a write of this Store commits meanwhile
        return row

    store._reader.first = read_then_write  # type: ignore[method-assign]
    assert store.get_key("k1", details=False, max_age=60).state is KeyState.ENABLED  # what was read
    store._reader.first = real  # type: ignore[method-assign]
    assert store.get_key("k1", details=False, max_age=60).state is KeyState.DISABLED  # not the raced copy
    assert store.get_key("k1", details=True).state is KeyState.DISABLED
    store.dispose()
