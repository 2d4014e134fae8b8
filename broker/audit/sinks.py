"""Where audit records go. Durable sinks (file, store) must all persist a batch or the batch fails (fail closed);
best-effort sinks (stdout, syslog) are copies for log shippers and never block or refuse a request.

A durable sink's write is two-phase so a batch lands in all of them or in none: `begin(records)` does the work
and returns an undo, then `commit()`; if a later sink fails, earlier ones are undone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from broker.audit.chain import canonical

log = logging.getLogger("kms_broker.audit")
READY_PROBE_BYTES = 64 * 1024  # about one batch of records: less free space than this is a full disk


class Sink:
    name = "sink"
    durable = True

    def check(self) -> None:
        """Cheap test that the sink can take a record now; raises OSError (or any error) if not."""

    def ready(self) -> None:
        """A real test for readiness probes (may do I/O, writes no record); raises if the sink cannot persist."""
        self.check()

    def write(self, records: list[dict], lines: list[bytes]) -> Callable[[], None]:
        """Persist the batch; return an undo that removes it again (used when a later durable sink fails)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Handle:
    """The audit file's fd, kept open across batches and counted: the sink holds one reference while the fd is its
    current one, and each batch waiting for its fsync holds another. The fd is closed when the last is released, so
    an fsync outside the writer's lock never meets a closed fd, or an fd number another open has reused."""

    __slots__ = ("fd", "dev", "ino", "refs")

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd, self.dev, self.ino, self.refs = fd, st.st_dev, st.st_ino, 1

    def names(self, st: os.stat_result | None) -> bool:
        """Is `st` (the path's stat) this fd's file? No after the file was replaced, renamed away or deleted."""
        return st is not None and st.st_ino == self.ino and st.st_dev == self.dev


class FileSink(Sink):
    """JSON lines, appended under the writer's lock, fsync'd once per batch when `fsync` is on.

    The file stays open across batches (each open, fstat and close was a syscall under the lock, and every syscall
    there gives the GIL away and waits to get it back while other threads run). `locate()`, the path's stat the
    writer makes anyway to compare the chain head with the file, tells when the path no longer names the open file
    (replaced, moved, deleted): the next append reopens it. A forked child opens its own.
    """

    name = "file"

    def __init__(self, path: Path, fsync: bool, counters: dict[str, int]) -> None:
        self.path = path
        self.fsync = fsync
        self.counters = counters
        self.end = 0  # the file's size: from `locate()`, then after each append (callers hold the writer's lock)
        self._handle: _Handle | None = None
        self._unsynced: list[_Handle] = []
        self._refs = threading.Lock()
        self._pid = os.getpid()

    def check(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not os.access(self.path.parent, os.W_OK | os.X_OK):
                raise PermissionError(f"audit folder {self.path.parent} is not writable") from None
            return
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"audit file {self.path} is not a regular file")
        if not os.access(self.path, os.W_OK):
            raise PermissionError(f"audit file {self.path} is not writable")

    def ready(self) -> None:
        """`check()`, then a batch-sized write beside the log: a full disk (ENOSPC, refused at write time) or a
        read-only remount shows here, where permission bits alone look fine. No fsync: load balancers probe often."""
        self.check()
        probe = self.path.with_name(f".ready-{os.getpid()}-{threading.get_ident()}")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = memoryview(b"\0" * READY_PROBE_BYTES)
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
            os.unlink(probe)

    def forget(self) -> None:
        """In a new process (the writer calls this when it opens its lock file there): the fd and references kept
        are a parent's, not ours to use or close (its lock may even have been held by a thread that is not here)."""
        self._handle, self._unsynced, self._refs, self._pid = None, [], threading.Lock(), os.getpid()

    def locate(self) -> int:
        """Under the writer's lock: the file's size (0 if there is none), which becomes `end`. The kept fd is let
        go if the path no longer names its file."""
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        handle = self._handle  # read once: a close() in another thread may drop it meanwhile
        if handle is not None and not handle.names(st):
            self._retire()
        self.end = st.st_size if st is not None else 0
        return self.end

    def write(self, records: list[dict], lines: list[bytes]) -> Callable[[], None]:
        """Append at `end` (as `locate()` found it) under the writer's lock; with fsync on, the batch keeps its
        reference to the fd for `sync()`, which runs after the lock is released so the next batch (of any
        process) can append while this one is flushed. A failed append is cut off and the fd let go."""
        handle = self._acquire()
        start = self.end
        data = b"".join(lines)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle.fd, view):]
        except OSError:
            try:
                os.ftruncate(handle.fd, start)
            finally:
                self._retire()
                self._release([handle])
            raise
        self.end = start + len(data)
        if self.fsync:
            self._unsynced.append(handle)
        else:
            self._release([handle])

        def undo() -> None:
            self.discard()
            with open(self.path, "r+b") as f:
                f.truncate(start)
            self.end = start
        return undo

    def _acquire(self) -> _Handle:
        """The kept fd with a reference for this batch (opened if there is none): held while it is written, so
        even a `close()` from another thread meanwhile cannot close it under the write."""
        with self._refs:
            handle = self._handle
            if handle is not None:
                handle.refs += 1
                return handle
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            handle = _Handle(fd, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        with self._refs:
            handle.refs += 1  # the sink's reference and this batch's
            self._handle = handle
        return handle

    def _retire(self) -> None:
        """Let go of the current fd (closed once no batch holds it)."""
        with self._refs:
            handle, self._handle = self._handle, None
        if handle is not None:
            self._release([handle])

    def _release(self, handles: list[_Handle]) -> None:
        closing = []
        with self._refs:
            for handle in handles:
                handle.refs -= 1
                if handle.refs == 0:
                    closing.append(handle.fd)
        for fd in closing:
            os.close(fd)

    def take_unsynced(self) -> list[_Handle]:
        handles, self._unsynced = self._unsynced, []
        return handles

    def discard(self) -> None:
        self._release(self.take_unsynced())

    def close(self) -> None:
        """Let go of the kept fd (a batch still waiting for its fsync closes it after the fsync)."""
        if self._pid == os.getpid():
            self._retire()

    def records_after(self, seq: int) -> list[tuple[dict, bytes]]:
        """The complete records with a seq above `seq`, read backwards from the end (the tail only), in file order."""
        found: list[tuple[dict, bytes]] = []
        for record, line in self._backwards():
            if not isinstance(record.get("seq"), int) or record["seq"] <= seq:
                break
            found.append((record, line))
        found.reverse()
        return found

    def record_at(self, seq: int) -> dict | None:
        """The record with this seq, searched backwards from the end (None if the file does not hold it)."""
        for record, _ in self._backwards():
            if record.get("seq") == seq:
                return record
            if isinstance(record.get("seq"), int) and record["seq"] < seq:
                return None
        return None

    def _backwards(self, block: int = 1 << 16) -> Iterator[tuple[dict, bytes]]:
        """Complete JSON lines from the end of the file towards its start (a torn last write is skipped)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            end = f.seek(0, os.SEEK_END)
            while end > 0:  # stop at the last newline: what follows it was never a complete record
                start = max(0, end - block)
                f.seek(start)
                cut = f.read(end - start).rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            leftover = b""
            first = True
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                parts = (f.read(end - start) + leftover).split(b"\n")
                end = start
                if first:
                    parts.pop()  # the empty string after the final newline
                    first = False
                leftover = parts.pop(0) if start > 0 and parts else b""
                for line in reversed(parts):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        yield record, line + b"\n"

    def sync(self, handles: list[_Handle]) -> None:
        """One fsync makes every append before it durable (the file's data, whoever wrote it); then the batch lets
        go of its references."""
        try:
            if handles:
                os.fsync(handles[-1].fd)
                self.counters["fsyncs"] += 1
        finally:
            self._release(handles)


class StoreSink(Sink):
    """Rows of `audit_events` (migration 0004): the queryable copy, and the head `audit verify` compares with."""

    name = "store"

    def __init__(self, engine: Engine, chain: str) -> None:
        from broker.store.tables import AuditEventRow

        self.engine = engine
        self.chain = chain
        self.table = AuditEventRow.__table__
        self._insert = insert(self.table)
        self._conn = None
        self._pid = 0

    def check(self) -> None:
        pass  # a failing store shows on the batch that tries it; the writer then refuses until a probe succeeds

    def ready(self) -> None:
        self.probe()

    def probe(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(self.table.c.seq).limit(1)).first()

    def _connection(self):
        """One connection kept by the writer (callers hold the audit lock): no pool checkout per batch."""
        conn = self._conn
        if conn is None or conn.closed or self._pid != os.getpid():
            conn = self._conn = self.engine.connect()
            self._pid = os.getpid()
        return conn

    def write(self, records: list[dict], lines: list[bytes]) -> Callable[[], None]:
        rows = [row_of(r, line, self.chain) for r, line in zip(records, lines, strict=True)]
        kept = self._conn is not None and not self._conn.closed and self._pid == os.getpid()
        try:
            self._insert_rows(rows)
        except DBAPIError as exc:
            # The kept connection died while idle (the database restarted, an idle timeout): once more on a new
            # connection, so the first batch after an outage is not refused. Had the commit reached the store, the
            # (chain, seq) unique constraint refuses the second copy.
            if not (kept and exc.connection_invalidated):
                raise
            self._insert_rows(rows)
        seqs = [r["seq"] for r in records]

        def undo() -> None:
            with self.engine.begin() as other:
                other.execute(delete(self.table).where(self.table.c.chain == self.chain, self.table.c.seq.in_(seqs)))
        return undo

    def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        conn = self._connection()
        try:
            with conn.begin():
                conn.execute(self._insert, rows)
        except Exception:
            self._drop()
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:  # noqa: BLE001 - a broken connection is dropped either way
                pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()

    def record_at(self, seq: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(self.table.c.record).where(self.table.c.chain == self.chain,
                                                                 self.table.c.seq == seq)).first()
        return json.loads(row.record) if row else None

    def copy_in(self, records: list[tuple[dict, bytes]]) -> None:
        """Insert records the file holds and this copy lacks (the mirror, mirror.py), in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(self._insert, [row_of(r, line, self.chain) for r, line in records])

    def head(self) -> tuple[int, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(self.table.c.seq, self.table.c.hash).where(self.table.c.chain == self.chain)
                               .order_by(self.table.c.seq.desc()).limit(1)).first()
        return (row.seq, row.hash) if row else None


def chain_id(path: Path) -> str:
    """Which chain a store row belongs to: this host's audit file."""
    return f"{socket.gethostname()}:{Path(path).resolve()}"[:255]


def row_of(record: dict, line: bytes, chain: str) -> dict[str, Any]:
    return {
        "chain": chain,
        "seq": record["seq"],
        "time": datetime.fromisoformat(record["time"]),
        "record_type": record.get("type", "event"),
        "request_id": _column(record.get("request_id")),
        "principal": _column(record.get("principal")),
        "auth_method": _column(record.get("auth_method")),
        "source_ip": _column(record.get("source_ip")),
        "action": _column(record.get("action")),
        "key_id": _column(record.get("key_id")),
        "outcome": _column(record.get("outcome")),
        "error_code": _column(record.get("error_code")),
        "prev_hash": record["prev_hash"],
        "hash": record["hash"],
        "record": line.decode().rstrip("\n"),
    }


def _column(value: Any) -> Any:
    """A record's value as an indexed column's: text that every store can hold. A lone surrogate (JSON can carry
    one; the file holds it escaped) and NUL (PostgreSQL refuses it in text) are written escaped, so one odd value
    cannot stop the store copy of every record after it; the `record` column keeps the line exactly as written."""
    if isinstance(value, str) and (not value.isascii() or "\x00" in value):
        return value.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    return value


class StdoutSink(Sink):
    name = "stdout"
    durable = False

    def write(self, records: list[dict], lines: list[bytes]) -> Callable[[], None]:
        out = sys.stdout
        for line in lines:
            out.write(line.decode())
        out.flush()
        return lambda: None


class SyslogSink(Sink):
    name = "syslog"
    durable = False

    def __init__(self) -> None:
        import syslog

        self._syslog = syslog
        syslog.openlog("kms-broker-audit", 0, syslog.LOG_AUTHPRIV)

    def write(self, records: list[dict], lines: list[bytes]) -> Callable[[], None]:
        for line in lines:
            self._syslog.syslog(self._syslog.LOG_INFO, line.decode().rstrip("\n"))
        return lambda: None


def encode(record: dict) -> bytes:
    return canonical(record) + b"\n"
