"""The store's copy of the audit chain follows the file off the request path (broker/audit/mirror.py).

What must hold: the copy is exactly the file's records, in order, once each, whichever process copies and whatever
it lost (its hint, a crash between the copy and the hint); it only ever extends the store's chain, so an edited
line in the file or rows deleted from the store are left for `audit verify` to report, never papered over."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sqlalchemy import text

from broker.audit.mirror import StoreMirror
from broker.audit.verify import compare_with_store, verify_lines
from broker.service import KeyService, RequestContext
from tests.integration.audit.conftest import make_audit


def stored(svc: KeyService) -> list[tuple[int, str]]:
    with svc.store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("select seq, hash from audit_events order by seq"))]


def in_file(svc: KeyService) -> list[tuple[int, str]]:
    return [(r["seq"], r["hash"]) for r in map(json.loads, svc.audit.path.read_text().splitlines())]


def compare(svc: KeyService):
    report = verify_lines(svc.audit.path.read_bytes())
    return compare_with_store(report, in_file(svc), stored(svc))


def test_requests_are_answered_before_the_copy_and_the_copy_follows(audited: KeyService, root_ctx: RequestContext):
    audited.audit._mirror_seconds = 3600.0  # only explicit catch-ups here
    key = audited.create_key(root_ctx)["KeyId"]
    audited.audit.catch_up()
    before = len(stored(audited))
    for _ in range(4):
        audited.encrypt(root_ctx, key, b"x")
    assert len(stored(audited)) == before  # answered from the file alone
    report = compare(audited)
    assert report.ok and any("not yet in the store" in c for c in report.crash)
    audited.audit.catch_up()
    assert stored(audited) == in_file(audited)
    assert not compare(audited).crash


def test_the_mirror_thread_copies_without_being_asked(audited: KeyService, root_ctx: RequestContext):
    audited.audit._mirror_seconds = 0.05
    audited.create_key(root_ctx)
    audited.audit._mirror_wake.set()
    for _ in range(100):
        if stored(audited) == in_file(audited):
            break
        threading.Event().wait(0.05)
    assert stored(audited) == in_file(audited)


def test_an_audit_query_sees_every_record_already_written(audited: KeyService, root_ctx: RequestContext):
    from broker.audit.query import AuditFilter

    audited.audit._mirror_seconds = 3600.0
    key = audited.create_key(root_ctx)["KeyId"]
    audited.encrypt(root_ctx, key, b"x")
    page = audited.audit.query(AuditFilter(include_checkpoints=True), limit=1000)
    assert [e["seq"] for e in page["Events"]] == [seq for seq, _ in in_file(audited)]


def test_two_writers_copying_at_once_copy_each_record_once(audited: KeyService, root_ctx: RequestContext,
                                                          hsm_provider):
    """A second AuditLog on the same file (what another worker process is) races the first one's mirror."""
    audited.audit._mirror_seconds = 3600.0
    other = make_audit(audited.audit.path.parent.parent, hsm_provider, audited.store, mirror_seconds=3600.0)
    try:
        key = audited.create_key(root_ctx)["KeyId"]
        errors: list[BaseException] = []

        def copy(log) -> None:
            try:
                for _ in range(20):
                    log.catch_up()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        for _ in range(5):
            audited.encrypt(root_ctx, key, b"x")
            threads = [threading.Thread(target=copy, args=(log,)) for log in (audited.audit, other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors
        assert stored(audited) == in_file(audited)
    finally:
        other.close()


def test_a_lost_hint_and_a_crash_between_copy_and_hint_do_not_copy_twice(audited: KeyService,
                                                                         root_ctx: RequestContext):
    audited.audit._mirror_seconds = 3600.0
    key = audited.create_key(root_ctx)["KeyId"]
    audited.audit.catch_up()
    hint = audited.audit.path.with_name("audit.jsonl.mirror")
    saved = hint.read_bytes()
    audited.encrypt(root_ctx, key, b"x")
    audited.audit.catch_up()
    hint.write_bytes(saved)  # as if the process died after the store took the copy, before the hint moved
    audited.encrypt(root_ctx, key, b"y")
    audited.audit.catch_up()
    assert stored(audited) == in_file(audited)
    hint.unlink()  # lost altogether: found again from the store's head
    audited.encrypt(root_ctx, key, b"z")
    audited.audit.catch_up()
    assert stored(audited) == in_file(audited)


def test_a_hostile_context_value_cannot_pose_as_the_stores_head(audited: KeyService, root_ctx: RequestContext):
    """The hint is found again by the head's hash; a context value spelling out `"hash":"<that hash>"` is escaped
    in the file and cannot move where the copy resumes."""
    audited.audit._mirror_seconds = 3600.0
    key = audited.create_key(root_ctx)["KeyId"]
    audited.audit.catch_up()
    head_hash = stored(audited)[-1][1]
    audited.encrypt(root_ctx, key, b"x", context={"v": f'"hash":"{head_hash}"\n'})
    audited.audit.path.with_name("audit.jsonl.mirror").unlink()
    audited.encrypt(root_ctx, key, b"y")
    audited.audit.catch_up()
    assert stored(audited) == in_file(audited)


def test_an_edited_line_is_not_copied(audited: KeyService, root_ctx: RequestContext):
    audited.audit._mirror_seconds = 3600.0
    key = audited.create_key(root_ctx)["KeyId"]
    audited.audit.catch_up()
    copied = stored(audited)
    audited.encrypt(root_ctx, key, b"x")
    path: Path = audited.audit.path
    lines = path.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[len(copied)])
    edited["principal"] = "someone-else"
    lines[len(copied)] = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines[: len(copied)]) + lines[len(copied)] + b"".join(lines[len(copied) + 1:]))
    StoreMirror(path, audited.audit.store).catch_up()
    assert stored(audited) == copied  # nothing after the edit reaches the store
    assert not verify_lines(path.read_bytes()).ok


def test_rows_deleted_from_the_store_are_reported_not_refilled(audited: KeyService, root_ctx: RequestContext):
    audited.audit._mirror_seconds = 3600.0
    key = audited.create_key(root_ctx)["KeyId"]
    for _ in range(3):
        audited.encrypt(root_ctx, key, b"x")
    audited.audit.catch_up()
    with audited.store.engine.begin() as conn:
        conn.execute(text("delete from audit_events where seq in (2, 3)"))
    audited.encrypt(root_ctx, key, b"x")
    audited.audit.catch_up()
    seqs = [seq for seq, _ in stored(audited)]
    assert 2 not in seqs and 3 not in seqs
    report = compare(audited)
    assert not report.ok and any(p.kind == "store-gap" for p in report.problems)


def test_a_record_with_a_lone_surrogate_is_copied_and_does_not_stop_the_copy(audited: KeyService,
                                                                              root_ctx: RequestContext):
    """The mirror parses lines with orjson and falls back to `json` for what orjson refuses and `json` wrote (a lone
    surrogate, escaped by the writer; a non-finite number). Such a value in an indexed column (here the principal)
    is stored escaped there, and so is NUL: a database refuses them, which would stop the copy of every record
    after it."""
    audited.audit._mirror_seconds = 3600.0
    audited.create_key(root_ctx)
    audited.audit.catch_up()
    written = audited.audit.write({"time": "2026-12-03T10:00:00.000000+00:00", "principal": "odd\ud800one\x00",
                                   "action": "kms:Test", "outcome": "allowed",
                                   "details": {"lone": "\udfff", "big": float("inf")}})
    assert b"\\ud800" in audited.audit.path.read_bytes()  # what orjson refuses to read
    audited.audit.catch_up()
    assert stored(audited) == in_file(audited)
    with audited.store.engine.connect() as conn:
        row = conn.execute(text("select principal, action, record from audit_events where seq = :s"),
                           {"s": written["seq"]}).one()
    assert (row.principal, row.action) == ("odd\\ud800one\\x00", "kms:Test")  # escaped in its column
    assert json.loads(row.record)["details"]["lone"] == "\udfff"
    audited.create_key(root_ctx)
    audited.audit.catch_up()
    assert stored(audited) == in_file(audited)  # and the records after it follow
