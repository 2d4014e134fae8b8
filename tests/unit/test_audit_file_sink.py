"""The audit writer's file sink and chain head (broker/audit/sinks.py FileSink, broker/audit/log.py `_locked`): the
audit file stays open across batches but follows its path (replaced, deleted), a forked child uses its own fd, an
fsync outside the lock never meets a closed fd, and the head is stored padded with spaces (no ftruncate per batch)
yet garbage in the lock file is still refused and recovered from the log."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.audit import AuditLog, sinks, verify_lines
from broker.audit import log as audit_log


def body(n: int | str, **extra) -> dict:
    return {"time": "2024-01-01T00:00:00+00:00", "request_id": str(n), "principal": "p", "action": "kms:Encrypt",
            "outcome": "allowed", **extra}


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.jsonl", lambda b: hmac.new(b"k", b, hashlib.sha256).digest(), fsync=True)
    yield log
    log.close()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def chain_ok(path: Path) -> None:
    report = verify_lines(path.read_bytes())
    assert report.ok, report.problem


@pytest.fixture
def recoveries(audit: AuditLog, monkeypatch) -> list[int]:
    """How many times the writer rebuilt the head from the log."""
    calls: list[int] = []
    real = audit._recover

    def counting():
        calls.append(1)
        return real()
    monkeypatch.setattr(audit, "_recover", counting)
    return calls


def test_the_file_is_opened_once_across_batches(audit: AuditLog, monkeypatch):
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", counting_open)
    for n in range(20):
        audit.write(body(n))
    assert opened.count(str(audit.path)) == 1
    assert audit.counters["fsyncs"] == 20
    chain_ok(audit.path)


def test_a_replaced_file_gets_the_next_batch_and_the_chain_recovers(audit: AuditLog, recoveries: list[int]):
    for n in range(3):
        audit.write(body(n))
    recoveries.clear()  # the first batch found no head yet
    moved = audit.path.with_name("moved.jsonl")
    copy = audit.path.with_name("copy.jsonl")
    copy.write_bytes(audit.path.read_bytes())  # same bytes, another inode: the head still matches its size
    os.rename(audit.path, moved)
    os.rename(copy, audit.path)
    audit.write(body("after-copy"))
    assert [r["request_id"] for r in lines(audit.path)] == ["0", "1", "2", "after-copy"]
    assert len(lines(moved)) == 3  # nothing went to the file the kept fd was open on
    assert recoveries == []
    chain_ok(audit.path)

    kept = audit.path.read_bytes().splitlines(keepends=True)[:2]
    audit.path.write_bytes(b"".join(kept))  # cut in place (the same inode): the head no longer matches its size
    audit.write(body("after-cut"))
    assert recoveries == [1]
    assert [r["request_id"] for r in lines(audit.path)] == ["0", "1", "after-cut"]
    chain_ok(audit.path)

    audit.path.unlink()
    audit.write(body("after-delete"))
    assert [r["request_id"] for r in lines(audit.path)] == ["after-delete"]
    assert lines(audit.path)[0]["seq"] == 1


def test_a_forked_child_appends_through_its_own_fd(audit: AuditLog):
    audit.write(body("parent-1"))
    parent_fd = audit.file._handle.fd  # type: ignore[union-attr]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the fd it wrote through, never return into pytest
        status = 1
        try:
            audit.write(body("child"))
            handle = audit.file._handle  # type: ignore[union-attr]
            os.write(write, json.dumps([handle.fd, handle.refs]).encode())
            audit.close()
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_fd, child_refs = json.loads(pipe.read() or b"null")
    assert os.waitpid(pid, 0)[1] == 0
    assert child_fd != parent_fd and child_refs == 1  # opened in the child; nothing of the parent's counted there
    audit.write(body("parent-2"))  # the parent's fd is still its own and open
    assert audit.file._handle.fd == parent_fd  # type: ignore[union-attr]
    assert [r["request_id"] for r in lines(audit.path)] == ["parent-1", "child", "parent-2"]
    chain_ok(audit.path)


def test_the_fsync_outside_the_lock_keeps_its_fd_while_another_batch_reopens(audit: AuditLog, monkeypatch):
    """Batch A's fsync waits (outside the lock) while the file is replaced and batch B reopens it: A's fd must still
    be open and the same file when A fsyncs; it is closed after."""
    audit.write(body(0))
    first = audit.file._handle  # type: ignore[union-attr]
    entered, go = threading.Event(), threading.Event()
    synced: list[tuple[int, int, int]] = []
    real_sync = sinks.FileSink.sync

    def slow_sync(self, handles):
        if threading.current_thread().name == "A":
            entered.set()
            go.wait(10)
            st = os.fstat(handles[-1].fd)  # raises EBADF if it was closed meanwhile
            synced.append((handles[-1].fd, st.st_ino, handles[-1].ino))
        real_sync(self, handles)
    monkeypatch.setattr(sinks.FileSink, "sync", slow_sync)
    a = threading.Thread(target=audit._commit, args=([body("A")],), name="A")
    a.start()
    assert entered.wait(10)
    copy = audit.path.with_name("copy.jsonl")
    copy.write_bytes(audit.path.read_bytes())
    os.replace(copy, audit.path)
    audit._commit([body("B")])  # another inode: B opens a new fd while A still holds the old one
    assert audit.file._handle is not first  # type: ignore[union-attr]
    go.set()
    a.join(10)
    assert synced and synced[0][1] == synced[0][2] == first.ino
    assert first.refs == 0  # and its fd closed: the number is free, or names some other file now
    try:
        target = os.readlink(f"/proc/self/fd/{first.fd}")
    except FileNotFoundError:
        target = ""
    assert not target.endswith("(deleted)")


def test_the_head_is_padded_not_truncated_and_still_loads(audit: AuditLog, recoveries: list[int], monkeypatch):
    truncates: list[int] = []
    real_ftruncate = os.ftruncate
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: (truncates.append(n), real_ftruncate(fd, n))[1])
    lock = audit.path.with_name("audit.jsonl.lock")
    intent = audit.write(body("op", phase="intent"))  # an open intent makes the head longer
    recoveries.clear()  # the first batch found no head yet
    longest = len(lock.read_bytes())
    audit.write(body("op", intent_seq=intent["seq"]))  # ... and its outcome shorter again
    stored = lock.read_bytes()
    assert len(stored) == longest and stored.endswith(b" ") and json.loads(stored)["open"] == {}
    for n in range(5):
        audit.write(body(n))
    assert truncates == [] and recoveries == []  # every padded head was read back as the chain head
    chain_ok(audit.path)


@pytest.mark.parametrize("garbage", [b"   ", b'{"seq": 1} x', b"[1, 2]", b"\x00" * 40, b'{"seq": 1, "bogus": 2}'])
def test_garbage_in_the_lock_file_is_refused_and_recovered_from_the_log(audit: AuditLog, recoveries: list[int],
                                                                      garbage: bytes):
    for n in range(3):
        audit.write(body(n))
    recoveries.clear()  # the first batch found no head yet
    lock = audit.path.with_name("audit.jsonl.lock")
    lock.write_bytes(garbage + b" " * 300)
    audit.write(body("after"))
    assert recoveries == [1]
    assert [r["seq"] for r in lines(audit.path)] == [1, 2, 3, 4]
    chain_ok(audit.path)
    assert json.loads(lock.read_bytes())["seq"] == 4


def test_a_head_longer_than_one_read(audit: AuditLog, recoveries: list[int], monkeypatch):
    monkeypatch.setattr(audit_log, "HEAD_READ", 64)  # the head (~200 bytes) takes several reads
    for n in range(3):
        audit.write(body(n))
    assert recoveries == [1]  # the first batch only: no head yet
    chain_ok(audit.path)
