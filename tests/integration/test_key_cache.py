"""Key metadata cache (`key_cache_seconds`): off by default; when on, only operations that change nothing use it, a
change made by this process is seen at once and one made elsewhere within the bound."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import errors
from broker.audit import AuditLog
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.store import Store

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


def test_by_default_every_call_reads_the_key(processes: Make, root_ctx: RequestContext) -> None:
    here, there = processes(), processes()
    key = here.create_key(root_ctx)["KeyId"]
    here.encrypt(root_ctx, key, b"x")
    there.disable_key(root_ctx, key)
    with pytest.raises(errors.Disabled):
        here.encrypt(root_ctx, key, b"x")


def test_another_process_change_arrives_within_the_bound(processes: Make, root_ctx: RequestContext) -> None:
    here, there = processes(key_cache_seconds=1.0), processes()
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
