"""The writer in-process: group commit under concurrency, fail closed with no key operation, no secret in a record."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from broker import errors
from broker.audit import verify_lines
from broker.audit.chain import load_public_key
from broker.service import KeyService, RequestContext
from providers.base import Provider


def records(svc: KeyService) -> list[dict]:
    return [json.loads(line) for line in svc.audit.path.read_text().splitlines()]


def verify(svc: KeyService):
    key = load_public_key(svc.audit.public_key_path.read_bytes())
    report = verify_lines(svc.audit.path.read_bytes(), key)
    assert report.ok, report.problem
    return report


def test_group_commit_under_concurrent_load(audited: KeyService, root_ctx: RequestContext, monkeypatch):
    key = audited.create_key(root_ctx)["KeyId"]
    real_fsync, fsyncs = os.fsync, []

    def counting_fsync(fd):
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    threads, per_thread = 16, 25
    contexts = [[RequestContext(root_ctx.principal, front_door="test") for _ in range(per_thread)]
                for _ in range(threads)]
    failures: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(ctxs):
        start.wait()
        for ctx in ctxs:
            try:
                audited.encrypt(ctx, key, b"payload", context={"tenant": "t"})
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    pool = [threading.Thread(target=worker, args=(c,)) for c in contexts]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not failures
    events = [r for r in records(audited) if r["type"] == "event" and r["action"] == "kms:Encrypt"]
    ids = [r["request_id"] for r in events]
    expected = {c.request_id for cs in contexts for c in cs}
    assert len(ids) == len(expected) == threads * per_thread and set(ids) == expected  # each once
    report = verify(audited)
    written = threads * per_thread + report.checkpoints
    assert len(fsyncs) < written, f"{len(fsyncs)} fsyncs for {written} records: no group commit"
    assert len(fsyncs) <= written // 2
    print(f"\n{written} records, {len(fsyncs)} fsyncs, {audited.audit.counters['batches']} batches")
    audited.audit.catch_up()
    with audited.store.engine.connect() as conn:
        assert conn.execute(text("select count(*) from audit_events")).scalar() == len(records(audited))


class SpyProvider:
    """Wraps the HSM provider and counts every call that reaches it."""

    def __init__(self, inner: Provider) -> None:
        self._inner, self.calls = inner, []

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if callable(value) and not name.startswith("audit_"):
            def spy(*args, **kwargs):
                self.calls.append(name)
                return value(*args, **kwargs)
            return spy
        return value


def snapshot(svc: KeyService) -> dict:
    with svc.store.engine.connect() as conn:
        names = [r[0] for r in conn.execute(text("select name from sqlite_master where type='table'"))]
        return {n: sorted(map(tuple, conn.execute(text(f'select * from "{n}"')).fetchall()), key=repr) for n in names}


def test_unwritable_file_sink_refuses_before_any_key_operation(audited: KeyService, root_ctx: RequestContext):
    key = audited.create_key(root_ctx)["KeyId"]
    spy = SpyProvider(audited.providers["hsm"])
    audited.providers["hsm"] = spy
    path = audited.audit.path
    before_file, before_rows = path.read_bytes(), snapshot(audited)
    path.rename(path.with_name("moved.jsonl"))
    path.mkdir()  # the audit file is now a directory: no sink can append to it
    try:
        for call in (lambda: audited.create_key(root_ctx), lambda: audited.encrypt(root_ctx, key, b"x"),
                     lambda: audited.schedule_key_deletion(root_ctx, key, 7),
                     lambda: audited.generate_data_key(root_ctx, key, key_spec="AES_256")):
            with pytest.raises(errors.NotReady):
                call()
        assert spy.calls == [], f"key operations ran although the audit sink was failing: {spy.calls}"
        assert snapshot(audited) == before_rows  # no key, no state change, no audit row
    finally:
        path.rmdir()
        path.with_name("moved.jsonl").rename(path)
    assert path.read_bytes() == before_file
    audited.encrypt(root_ctx, key, b"x")  # the sink is back: requests go through, the chain continues
    assert spy.calls == ["encrypt"]
    verify(audited)


def test_a_failing_store_copy_does_not_refuse_requests_and_catches_up(audited: KeyService, root_ctx: RequestContext):
    """With a file sink the file makes each record durable; the store's copy follows it. A store that cannot take
    the copy does not turn requests into 503s (the file holds every record), readiness says what is wrong, and the
    copy is complete once the store is back."""
    key = audited.create_key(root_ctx)["KeyId"]
    audited.audit.catch_up()
    with audited.store.engine.begin() as conn:
        conn.execute(text("alter table audit_events rename to audit_events_away"))
    try:
        for _ in range(3):
            audited.encrypt(root_ctx, key, b"x")
        assert audited.audit.health().startswith("store sink unavailable")
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises: the copy is not made
            audited.audit.catch_up()
        audited.audit.mirror_now()
        assert audited.audit.counters["mirror_failures"] >= 1
    finally:
        with audited.store.engine.begin() as conn:
            conn.execute(text("alter table audit_events_away rename to audit_events"))
    audited.audit.catch_up()
    assert audited.audit.health() == "ok"
    with audited.store.engine.connect() as conn:
        stored = [r[0] for r in conn.execute(text("select seq from audit_events order by seq"))]
    assert stored == [r["seq"] for r in records(audited)]
    report = verify(audited)
    assert not report.crash, report.crash


def test_store_only_refuses_when_the_store_fails(tmp_path: Path, hsm_provider, root_ctx: RequestContext):
    """Without a file sink the store is the durable sink: a batch it cannot take is refused, and so is the next
    request (the pre-check probes the store) until it is back."""
    from broker.policy import PolicyEngine
    from broker.store import Store
    from tests.integration.audit.conftest import make_audit

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.migrate()
    audit = make_audit(tmp_path, hsm_provider, store, sinks=("store",))
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    try:
        key = svc.create_key(root_ctx)["KeyId"]
        with store.engine.begin() as conn:
            conn.execute(text("alter table audit_events rename to audit_events_away"))
        try:
            with pytest.raises(errors.NotReady):
                svc.encrypt(root_ctx, key, b"x")
            with pytest.raises(errors.NotReady):  # the pre-check now probes the store and refuses up front
                svc.describe_key(root_ctx, key)
        finally:
            with store.engine.begin() as conn:
                conn.execute(text("alter table audit_events_away rename to audit_events"))
        svc.encrypt(root_ctx, key, b"x")
        assert not (tmp_path / "audit" / "audit.jsonl").exists()
    finally:
        audit.close()
        store.dispose()


def test_torn_last_write_is_cut_on_recovery(audited: KeyService, root_ctx: RequestContext, tmp_path: Path):
    key = audited.create_key(root_ctx)["KeyId"]
    audited.encrypt(root_ctx, key, b"x")
    audited.audit.close()
    with open(audited.audit.path, "ab") as f:
        f.write(b'{"action":"kms:Encr')  # a crash in the middle of an append
    from tests.integration.audit.conftest import make_audit

    audited.audit = make_audit(audited.audit.path.parent.parent, audited.providers["hsm"], audited.store)
    audited.encrypt(root_ctx, key, b"y")
    verify(audited)


def test_time_checkpoint_covers_an_idle_tail(tmp_path: Path, hsm_provider, root_ctx: RequestContext):
    from broker.policy import PolicyEngine
    from broker.store import Store
    from tests.integration.audit.conftest import make_audit

    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    store.migrate()
    audit = make_audit(tmp_path, hsm_provider, store, checkpoint_seconds=0.3)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    try:
        svc.create_key(root_ctx)
        deadline = threading.Event()
        for _ in range(30):
            if records(svc)[-1]["type"] == "checkpoint":
                break
            deadline.wait(0.1)
        assert records(svc)[-1]["type"] == "checkpoint" and records(svc)[-1]["count"] == 2  # intent + outcome
        verify(svc)
    finally:
        audit.close()
        store.dispose()


def test_file_only_and_store_only_configurations(tmp_path: Path, hsm_provider, root_ctx: RequestContext):
    from broker.policy import PolicyEngine
    from broker.store import Store
    from tests.integration.audit.conftest import make_audit

    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    store.migrate()
    for sinks in (("file",), ("store",)):
        folder = tmp_path / sinks[0]
        audit = make_audit(folder, hsm_provider, store, sinks=sinks)
        svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
        svc.create_key(root_ctx)
        svc.list_keys(root_ctx)
        assert audit.path.exists() == (sinks == ("file",))
        audit.close()
    with store.engine.connect() as conn:
        # CreateKey (intent + outcome) and ListKeys, in the store-only chain
        assert [r[0] for r in conn.execute(text("select seq from audit_events order by seq"))] == [1, 2, 3]
    store.dispose()
    shutil.rmtree(tmp_path / "store", ignore_errors=True)


def test_two_hosts_files_are_two_chains_in_one_store(tmp_path: Path, hsm_provider, root_ctx: RequestContext):
    """Brokers on several hosts share one store: each audit file is its own chain there, verified on its own."""
    from broker.audit.verify import compare_with_store
    from broker.policy import PolicyEngine
    from broker.store import Store
    from tests.integration.audit.conftest import make_audit

    store = Store(f"sqlite:///{tmp_path / 'shared.db'}")
    store.migrate()
    logs = [make_audit(tmp_path / host, hsm_provider, store) for host in ("host-a", "host-b")]
    try:
        for audit in logs:
            svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
            for _ in range(7):
                svc.list_keys(root_ctx)
        for audit in logs:
            report = verify(_Svc(audit))
            audit.catch_up()
            with store.engine.connect() as conn:
                rows = [tuple(r) for r in conn.execute(
                    text("select seq, hash from audit_events where chain = :c order by seq"), {"c": audit.store.chain})]
            mine = [(r["seq"], r["hash"]) for r in records(_Svc(audit))]
            assert compare_with_store(report, mine, rows).ok and len(rows) == 8  # 7 events + 1 checkpoint
    finally:
        for audit in logs:
            audit.close()
        store.dispose()


class _Svc:
    """Just enough of a KeyService for records() and verify()."""

    def __init__(self, audit) -> None:
        self.audit = audit


def test_hsm_down_defers_the_checkpoint_instead_of_refusing(tmp_path: Path, hsm_provider, root_ctx: RequestContext):
    """If the signer fails when a checkpoint is due, the events are still written behind an unsigned
    checkpoint-deferred record (requests served without the HSM are not turned into 503s); signing resumes after."""
    from broker.policy import PolicyEngine
    from broker.store import Store
    from tests.integration.audit.conftest import make_audit

    down = threading.Event()

    def signer(data: bytes) -> bytes:
        if down.is_set():
            raise RuntimeError("HSM unavailable")
        return hsm_provider.root_of_trust().audit_sign(data)

    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    store.migrate()
    audit = make_audit(tmp_path, hsm_provider, store, signer=signer, checkpoint_records=3)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    try:
        for _ in range(3):
            svc.list_keys(root_ctx)
        down.set()
        for _ in range(3):
            svc.list_keys(root_ctx)  # the 4th event needs a checkpoint first: deferred, not refused
        down.clear()
        svc.list_keys(root_ctx)
        kinds = [r["type"] for r in records(svc)]
        assert kinds == ["event"] * 3 + ["checkpoint-deferred"] + ["event"] * 3 + ["checkpoint", "event"]
        report = verify(svc)
        assert (report.events, report.checkpoints, report.deferred) == (7, 1, 1)
        assert "deferred" in report.notes[-2]
    finally:
        audit.close()
        store.dispose()


def _fresh_postgresql_store(postgres_url: str):
    """A migrated store on an emptied PostgreSQL database."""
    from sqlalchemy import create_engine

    from broker.store import Store

    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    store = Store(postgres_url)
    store.migrate()
    return store


def test_a_deferred_checkpoint_fits_the_postgresql_store(postgres_url: str, tmp_path: Path, hsm_provider,
                                                         root_ctx: RequestContext):
    """"checkpoint-deferred" is longer than the record_type column was (VARCHAR(16)): on PostgreSQL the batch failed
    and an HSM outage turned into refused requests. Migration 0004_1 widens the column."""
    from broker.policy import PolicyEngine
    from tests.integration.audit.conftest import make_audit

    store = _fresh_postgresql_store(postgres_url)

    def down(data: bytes) -> bytes:
        raise RuntimeError("HSM unavailable")

    audit = make_audit(tmp_path, hsm_provider, store, signer=down, checkpoint_records=2)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    try:
        for _ in range(3):
            svc.list_keys(root_ctx)
        audit.catch_up()
        with store.engine.connect() as conn:
            kinds = [r[0] for r in conn.execute(text("select record_type from audit_events order by seq"))]
        assert kinds == ["event", "event", "checkpoint-deferred", "event"]
    finally:
        audit.close()
        store.dispose()


def test_odd_text_in_a_record_does_not_stop_the_postgresql_copy(postgres_url: str, tmp_path: Path, hsm_provider,
                                                                 root_ctx: RequestContext):
    """PostgreSQL refuses NUL and a lone surrogate in text: a principal holding them is copied escaped into its
    column (the `record` column keeps the line as written), and the records after it are copied too."""
    from broker.policy import PolicyEngine
    from tests.integration.audit.conftest import make_audit

    store = _fresh_postgresql_store(postgres_url)
    audit = make_audit(tmp_path, hsm_provider, store)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    try:
        odd = audit.write({"time": "2026-12-03T10:00:00.000000+00:00", "principal": "odd\x00\ud800",
                           "action": "kms:Test", "outcome": "allowed"})
        svc.list_keys(root_ctx)
        audit.catch_up()
        with store.engine.connect() as conn:
            rows = conn.execute(text("select seq, principal, record from audit_events order by seq")).all()
        assert [r.seq for r in rows] == [r["seq"] for r in map(json.loads, audit.path.read_text().splitlines())]
        row = next(r for r in rows if r.seq == odd["seq"])
        assert row.principal == "odd\\x00\\ud800"
        assert json.loads(row.record)["principal"] == "odd\x00\ud800"
    finally:
        audit.close()
        store.dispose()
