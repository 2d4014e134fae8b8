"""AuditLog: the writer every declared operation goes through.

* One chain per audit file, shared by every process on the host: a writer holds an exclusive flock on
  `<file>.lock`, which also keeps the chain head (seq, hash, last checkpoint, open intents) so a writer never re-reads
  the log. If the head does not match the file (a crash mid-write, or someone cut the file), it is recovered by a scan.
  Few syscalls under the flock (each gives the GIL away, and other processes wait on the lock until it is back): the
  head is read with one bounded pread and written back padded with spaces (no fstat, no ftruncate), and the file sink
  keeps its fd open across batches (see FileSink).
* Group commit, led by a caller: `write()` queues the record; the first caller that finds nobody committing
  becomes the *leader* and commits, in its own thread, everything queued (after `batch_ms`, 0 by default, when
  the last batch held several records) as one batch: one append + one fsync for the file (or, with the store as the only
  durable sink, one transaction).
  Callers that arrive meanwhile wait; when the batch is durable the leader releases them and hands the lead to
  the first record still queued, whose caller commits the next batch. A lone request therefore pays no thread
  hand-off (on a loaded host each wake-up of another thread is a trip through the run queue), and a busy one
  shares its fsync with everything that queued behind it. The chain lock is held for the append only; the fsync
  runs after it is released, so another process appends its batch meanwhile (one fsync
  covers every append before it). Callers are released only after their fsync. An fsync that fails (EIO) refuses
  its callers, but the records stay in the file: they describe operations that did happen. A housekeeping thread
  does what an idle writer owes (below) whenever nobody leads.
* Fail closed: a batch lands in all durable sinks or in none (earlier sinks are undone), and its callers get
  NotReady (503). `precheck()` lets the choke point refuse *before* any key operation when a sink is already failing.
* The store copy: with a file sink, the file is what makes a record durable, and the store's copy (queries, other
  hosts, `audit verify`'s comparison) is brought up to it off the request path by a mirror thread in each process
  (mirror.py), every MIRROR_SECONDS or MIRROR_RECORDS, at every audit query and at a clean close. Without a file
  sink the store is the durable sink, written in the batch.
* Intents: an operation that changes state is announced by an *intent* record (durable before the change) and closed
  by its outcome record (`intent_seq`). Intents carry the id of their writer's lease (lease.py); an intent whose
  writer died without an outcome is closed by any other writer with an `interrupted` outcome naming it.
* Crash recovery (`reconcile()` at start, and whenever a writer finds the head stale): the file is the durable copy.
  A torn last write is cut (it was never acknowledged), and a `broker:ReconcileAudit` record says so; the records
  the store copy lacks are copied by the mirror.
* Checkpoints: with a signer (the HSM's audit signing key), a signed checkpoint record (see chain.py) closes the
  run of events since the last one before an event that would make the run longer than `checkpoint_records` events
  or `checkpoint_seconds` wide (by the records' own times). An idle writer also covers a run older than that time, and
  `close(checkpoint=True)` covers the tail at a clean shutdown. Checkpoints go before events, never after them.
  Once a signed checkpoint is durable, the HSM's high-water mark (mark.py) moves to it.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from broker import metrics
from broker.audit.chain import (
    GENESIS,
    PUBLIC_KEY_NAME,
    checkpoint_message,
    key_fingerprint,
    public_key_pem,
    seal_line,
)
from broker.audit.lease import WriterLease, alive, sweep
from broker.audit.mark import Mark, MarkStore
from broker.audit.mirror import StoreMirror
from broker.audit.sinks import FileSink, Sink, StdoutSink, StoreSink, SyslogSink, chain_id, encode
from broker.errors import NotReady, Unsupported

log = logging.getLogger("kms_broker.audit")
_WAIT_SECONDS = 60.0
MAX_BATCH = 1000
# The store copy (with a file sink) is brought up to the file this often, or sooner once this many records wait.
MIRROR_SECONDS = 0.25
MIRROR_RECORDS = 1000
# Encryption-context values repeat (an app, a tenant, a table name): their HMACs are kept, so a request does not pay
# an HSM round trip per value. Bounded in entries and in the length of a value kept.
CONTEXT_HMAC_ENTRIES = 4096
CONTEXT_HMAC_MAX_CHARS = 256
_REAP_SECONDS = 2.0
# The chain head in the lock file is read this many bytes at a time, and kept padded with spaces to its longest
# length unless that wastes more than HEAD_SLACK bytes.
HEAD_READ = 16 * 1024
HEAD_SLACK = 4096
RECONCILE_ACTION = "broker:ReconcileAudit"
_CHECKPOINTS = ("checkpoint", "checkpoint-deferred")
_OPEN_LOGS: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return time.time()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _read_head(fd: int) -> bytes:
    """The chain head as stored in the lock file: reads of HEAD_READ bytes until one comes back short (no fstat for
    the size: one syscall fewer under the lock; a head is a few hundred bytes unless many intents are open)."""
    raw = os.pread(fd, HEAD_READ, 0)
    while len(raw) % HEAD_READ == 0 and raw:
        more = os.pread(fd, HEAD_READ, len(raw))
        if not more:
            break
        raw += more
    return raw


def _write_head(fd: int, data: bytes, stored: int) -> None:
    """Store the head over the `stored` bytes the lock file held: padded with spaces to that length (JSON allows
    trailing whitespace), so no ftruncate is needed unless the head shrank by more than HEAD_SLACK bytes."""
    if len(data) < stored <= len(data) + HEAD_SLACK:
        data = data.ljust(stored)
    os.pwrite(fd, data, 0)
    if len(data) < stored:
        os.ftruncate(fd, len(data))


@dataclass
class _Head:
    seq: int = 0
    hash: str = GENESIS
    cp_seq: int = 0                       # seq of the last checkpoint (0: none yet)
    uncovered_since: float | None = None  # time of the first event after it
    size: int = -1                        # file size after the last batch (-1: no file sink / unknown)
    open: dict[str, str] = field(default_factory=dict)  # intent seq -> writer id, for intents without an outcome

    def dump(self) -> bytes:
        """The lock file's copy of the head: an internal format, so orjson's bytes need not be json's (only
        loadable: every field is an int, a str, a finite float or None, which orjson writes back exactly)."""
        return orjson.dumps(self.__dict__)

    @classmethod
    def load(cls, raw: bytes) -> _Head | None:
        """Read a head dumped by either writer (json.dumps wrote it before orjson did); None if unreadable."""
        try:
            return cls(**orjson.loads(raw)) if raw else None
        except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
            return None

    def track(self, record: dict) -> None:
        """Keep the set of open intents in step with a record appended to (or read from) the chain."""
        if record.get("phase") == "intent":
            self.open[str(record.get("seq"))] = str(record.get("writer", ""))
        elif record.get("intent_seq") is not None:
            self.open.pop(str(record["intent_seq"]), None)


class _Pending:
    """One record waiting to be durable. Its caller blocks on `_gate`, a lock held from the start, until a leader
    calls `wake()`: once when the record is done (`record` or `error` filled) or when its caller is handed the lead
    (`leader`). A bare lock, not an Event: an Event is a Condition over a lock, whose every wait allocates, queues and
    re-takes locks; one acquire and one release do the same hand-off."""

    __slots__ = ("body", "_gate", "record", "error", "leader", "done")

    def __init__(self, body: dict | None) -> None:
        self.body = body
        self._gate = threading.Lock()
        self._gate.acquire()
        self.record: dict | None = None
        self.error: BaseException | None = None
        self.leader = False
        self.done = False

    def wait(self, timeout: float) -> bool:
        """Block until woken (True) or `timeout` seconds pass (False)."""
        return self._gate.acquire(timeout=timeout)

    def wake(self) -> None:
        """Let the caller go on; a second wake before it woke (a leader's release racing a timeout) is harmless."""
        try:
            self._gate.release()
        except RuntimeError:  # already released: the caller has not taken it back yet
            pass


class AuditLog:
    def __init__(self, path: Path, hmac: Callable[[bytes], bytes], fsync: bool = False, *,
                 sinks: Sequence[str] = ("file",), engine=None, signer: Callable[[bytes], bytes] | None = None,
                 public_key: bytes | None = None, checkpoint_records: int = 1000,
                 checkpoint_seconds: float = 60.0, batch_ms: float = 0.0, marks: MarkStore | None = None,
                 mirror_seconds: float = MIRROR_SECONDS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.chain = chain_id(self.path)
        self._hmac = hmac
        self._context_hmacs = functools.lru_cache(maxsize=CONTEXT_HMAC_ENTRIES)(self.hmac_value)
        self.counters = {"records": 0, "batches": 0, "fsyncs": 0, "checkpoints": 0, "failures": 0,
                         "interrupted": 0, "marks": 0, "mark_failures": 0, "mirror_failures": 0}
        self.file: FileSink | None = None
        self.store: StoreSink | None = None
        self._durable: list[Sink] = []
        self._copies: list[Sink] = []
        for name in sinks:
            if name == "file":
                self.file = FileSink(self.path, fsync, self.counters)
                self._durable.append(self.file)
            elif name == "store":
                if engine is None:
                    raise ValueError("the store audit sink needs the store's engine")
                self.store = StoreSink(engine, self.chain)
                self._durable.append(self.store)
            elif name == "stdout":
                self._copies.append(StdoutSink())
            elif name == "syslog":
                self._copies.append(SyslogSink())
            else:
                raise ValueError(f"unknown audit sink {name!r}")
        if not self._durable:
            raise ValueError("at least one durable audit sink (file or store) is required")
        self.mirror: StoreMirror | None = None
        if self.file is not None and self.store is not None:  # the file makes records durable; the store mirrors it
            self._durable.remove(self.store)
            self.mirror = StoreMirror(self.path, self.store)
        self._mirror_seconds = mirror_seconds
        self._mirror_wake = threading.Event()
        self._mirror_thread: threading.Thread | None = None
        self._unmirrored = 0
        self._mirror_error: str | None = None
        self._signer = signer
        self._key_id = key_fingerprint(public_key) if public_key else None
        if signer is not None and public_key is None:
            raise ValueError("a checkpoint signer needs its public key")
        self._marks = marks if signer is not None else None
        self._last_mark: tuple[int, str] | None = None  # the mark this process wrote or found its chain holds
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        self._batch_window = batch_ms / 1000.0
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self.leases = self.path.with_name(self.path.name + ".writers")
        self._lease: WriterLease | None = None
        self._lock_fd = -1
        self._lock_pid = 0
        self._thread_lock = threading.Lock()
        # the lines of the records sealed in the batch under way (id -> record, line): made with the hash, kept to
        # be written (a record is not changed after it is sealed); emptied when the batch lets go of the lock
        self._sealed: dict[int, tuple[dict, bytes]] = {}
        self._mutex = threading.Lock()       # guards _queue and _leading
        self._queue: list[_Pending] = []     # records waiting for a leader, in arrival order
        self._leading = False                # a thread of this process is committing (or housekeeping)
        self._last_size = 1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = 0
        self._start_lock = threading.Lock()
        self._failing_since: float | None = None
        self._findings: dict[str, Any] | None = None
        self._next_reap = 0.0
        self._closed = False
        if public_key is not None:
            self._publish_public_key(public_key)
        _OPEN_LOGS.add(self)

    # ------------------------------------------------------------------------------------------ public

    def hmac_value(self, value: str | bytes) -> str:
        data = value.encode() if isinstance(value, str) else value
        return "hmac-sha256:" + self._hmac(data).hex()

    def hmac_context_value(self, value: str) -> str:
        """`hmac_value` of an encryption-context value, from a bounded per-process LRU for short values (the HMAC
        key lives in the HSM and never changes under a running process). Only context values are kept: secrets
        (tokens, ...) are HMAC'd by `hmac_value` each time and never held beyond their request."""
        if len(value) > CONTEXT_HMAC_MAX_CHARS:
            return self.hmac_value(value)
        return self._context_hmacs(value)

    @property
    def public_key_path(self) -> Path:
        return self.path.parent / PUBLIC_KEY_NAME

    def precheck(self) -> None:
        """Raise NotReady if a durable sink cannot take a record now (called before any key operation)."""
        if self._closed:
            raise NotReady("audit log is closed; request refused")
        try:
            for sink in self._durable:
                sink.check()
            if self._failing_since is not None:  # the last batch failed: probe before letting work start
                if self.store is not None and self.mirror is None:
                    self.store.probe()
                self._failing_since = None
        except Exception:  # noqa: BLE001 - any failure of a sink means: refuse
            raise NotReady("audit log cannot be written; request refused") from None

    def health(self) -> str:
        """For readiness probes: "ok", or why a record could not be made durable now. Never raises, writes no
        record (each durable sink's `ready()`: the file sink writes a probe beside the log)."""
        if self._closed:
            return "closed"
        for sink in self._durable + ([self.store] if self.mirror is not None else []):
            try:
                sink.ready()
            except OSError as exc:
                return f"{sink.name} sink unavailable: {exc.strerror or type(exc).__name__}"
            except Exception as exc:  # noqa: BLE001 - any failure of a durable sink: not ready
                return f"{sink.name} sink unavailable: {type(exc).__name__}"
        return "ok"

    def write(self, body: dict) -> dict:
        """Append one record and return it (with seq and hashes) once it is durable; NotReady (503) if it is not."""
        if self._closed:
            raise NotReady("audit log is closed; request refused")
        self._ensure_writer()
        pending = _Pending(body)
        with self._mutex:
            self._queue.append(pending)
            if not self._leading:
                self._leading = pending.leader = True
        deadline = time.monotonic() + _WAIT_SECONDS
        while not pending.done:
            if pending.leader:
                self._lead()
                continue
            if not pending.wait(max(0.0, deadline - time.monotonic())) and self._withdraw(pending):
                raise NotReady("audit log did not persist the record in time; request refused")
        if pending.error is not None:
            raise NotReady("audit log cannot be written; request refused") from None
        return pending.record  # type: ignore[return-value]

    def query(self, flt, *, limit: int = 100, after: int = 0, descending: bool = False) -> dict:
        """A page of the store copy (broker.audit.query); the caller has authorized broker:ReadAudit."""
        from broker.audit.query import query_events

        if self.store is None:
            raise Unsupported("audit queries need the store audit sink (audit_sinks = [..., \"store\"])")
        self.catch_up()  # what this host has written is in the answer, whichever process wrote it
        return query_events(self.store.engine, flt, limit=limit, after=after, descending=descending)

    def reconcile(self) -> dict[str, Any]:
        """At start: recover the head, close the intents of writers that are
        gone with `interrupted` outcomes, drop their leases; and say (in the log) if the chain lacks the checkpoint
        the HSM pinned; then bring the store copy up to the file. Returns what was done."""
        with self._locked() as head:
            findings = dict(self._findings or {})
            records = self._housekeeping(head, force=True)
            unsynced = self._store_batch(head, records) if records else []
            sweep(self.leases)
            mark_problem = self._mark_problem(head)
        self._sync(unsynced)
        self.mirror_now()
        if mark_problem:
            log.error("%s", mark_problem)
        findings["interrupted"] = [r["intent_seq"] for r in records if r.get("outcome") == "interrupted"]
        if mark_problem:
            findings["mark"] = mark_problem
        return findings

    def checkpoint_now(self) -> dict | None:
        """Cover the chain head with a signed checkpoint now (e.g. at shutdown); None if it is covered already."""
        if self._signer is None:
            return None
        with self._locked() as head:
            records = self._housekeeping(head)
            checkpoint = None
            if head.seq != head.cp_seq:
                checkpoint = self._checkpoint(head)
                records.append(checkpoint)
            unsynced = self._store_batch(head, records) if records else []
        self._sync(unsynced)
        return checkpoint

    def catch_up(self) -> int:
        """Bring the store copy up to the file now (nothing to do without a file sink); raises if the store
        cannot take it. Returns how many records this call copied."""
        if self.mirror is None:
            return 0
        self._unmirrored = 0
        span = self.mirror.catch_up()
        self._mirror_error = None
        copied = span[1] - span[0] + 1 if span else 0
        if copied:
            metrics.observe_audit_mirror(copied, True)
        return copied

    def close(self, *, checkpoint: bool = False) -> None:
        """Stop this process's writer. With `checkpoint` (a clean shutdown) the tail is covered by a signed
        checkpoint first, so nothing written before the shutdown is in the uncovered window; the store copy is
        brought up to the file last."""
        if self._pid == os.getpid():
            self._stop.set()
            self._mirror_wake.set()
            for thread in (self._thread, self._mirror_thread):
                if thread is not None and thread.is_alive():
                    thread.join(10)
        if checkpoint and not self._closed:
            try:
                self.checkpoint_now()
            except Exception as exc:  # noqa: BLE001 - a shutdown must finish; the next start reconciles
                log.error("audit checkpoint at shutdown failed: %s", type(exc).__name__)
        if not self._closed:
            self.mirror_now()
        self._closed = True
        for sink in self._durable + self._copies:
            sink.close()
        if self._lock_fd >= 0 and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = -1
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        _OPEN_LOGS.discard(self)

    # ------------------------------------------------------------------------------------------ group commit

    def _ensure_writer(self) -> None:
        """The housekeeping thread of this process (started on the first write, again in a forked child)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            if self._pid != os.getpid():  # after a fork: nothing of the parent's writer is ours
                self._mutex = threading.Lock()
                self._queue = []
                self._leading = False
                self._thread_lock = threading.Lock()
                self._sealed = {}
                self._stop = threading.Event()
                self._mirror_wake = threading.Event()
                if self.mirror is not None:
                    self.mirror = StoreMirror(self.path, self.mirror.store)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="kmsb-audit-housekeeper", daemon=True)
            self._thread.start()
            if self.mirror is not None:
                self._mirror_thread = threading.Thread(target=self._mirror_loop, name="kmsb-audit-mirror",
                                                       daemon=True)
                self._mirror_thread.start()

    def _lead(self) -> None:
        """Commit one batch (the leader's own record is its first: a leader is the head of the queue), release its
        callers, then hand the lead to the next record queued (or give it up when none is)."""
        try:
            if self._batch_window and self._last_size > 1:
                time.sleep(self._batch_window)  # callers arriving together share the fsync
            with self._mutex:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._last_size = len(batch)
            started = time.perf_counter()
            try:
                records = self._commit([p.body for p in batch])
                metrics.observe_audit_batch(len(batch), time.perf_counter() - started, True)
            except BaseException as exc:  # noqa: BLE001 - every caller must be released, with the failure
                metrics.observe_audit_batch(len(batch), 0.0, False)
                self.counters["failures"] += 1
                self._failing_since = time.monotonic()
                log.error("audit batch of %d record(s) not persisted: %s", len(batch), type(exc).__name__)
                for p in batch:
                    p.error, p.done = exc, True
                    p.wake()
                if not isinstance(exc, Exception):
                    raise
                return
            for p, record in zip(batch, records, strict=True):
                p.record, p.done = record, True
                p.wake()
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        with self._mutex:
            if self._queue:
                head = self._queue[0]
                head.leader = True
                head.wake()
            else:
                self._leading = False

    def _withdraw(self, pending: _Pending) -> bool:
        """A caller gives up waiting (refused, 503): its record leaves the queue if no leader took it yet (one that
        did may still make it durable: a refused request with a record is the safe side). False if the caller was
        handed the lead meanwhile and must commit instead."""
        with self._mutex:
            if pending.leader:
                return False  # handed the lead just now: it commits its own record
            if pending in self._queue:
                self._queue.remove(pending)
            return True

    def _run(self) -> None:
        """Housekeeping when nobody leads: an idle writer still closes dead writers' intents and covers a run older
        than `checkpoint_seconds` with a checkpoint."""
        idle = min(max(self.checkpoint_seconds / 2, 0.2), 5.0)
        while not self._stop.wait(idle):
            with self._mutex:
                if self._leading or self._queue:
                    continue
                self._leading = True
            try:
                self._idle()
            finally:
                self._hand_on()

    def _mirror_loop(self) -> None:
        """Brings the store copy up to the file every `mirror_seconds`, or sooner when a leader finds
        MIRROR_RECORDS waiting; a failing store is retried at the same pace (requests go on: the file is durable)."""
        while not self._stop.is_set():
            self._mirror_wake.wait(self._mirror_seconds)
            self._mirror_wake.clear()
            if self._stop.is_set() or self._closed:
                return
            self.mirror_now()

    def mirror_now(self) -> None:
        """`catch_up()`, a failure logged (once until it works again) and counted instead of raised."""
        try:
            self.catch_up()
        except Exception as exc:  # noqa: BLE001 - the store copy lags; the file holds every record
            metrics.observe_audit_mirror(0, False)
            self.counters["mirror_failures"] += 1
            if self._mirror_error is None:
                log.error("audit store copy cannot be brought up to the file (%s); retried every %.2f s",
                          type(exc).__name__, self._mirror_seconds)
            self._mirror_error = type(exc).__name__

    def _idle(self) -> None:
        """Between batches: close the intents of dead writers, and cover a run older than `checkpoint_seconds`."""
        if self._closed:
            return
        try:
            with self._locked() as head:
                records = self._housekeeping(head)
                if self._signer is not None and head.uncovered_since is not None \
                        and time.time() - head.uncovered_since >= self.checkpoint_seconds:
                    records.append(self._checkpoint(head))
                unsynced = self._store_batch(head, records) if records else []
            self._sync(unsynced)
        except Exception as exc:  # noqa: BLE001 - the next batch will fail and refuse if the sinks are broken
            log.warning("idle audit housekeeping failed: %s", type(exc).__name__)

    # ------------------------------------------------------------------------------------------ chain

    def _commit(self, bodies: list[dict]) -> list[dict]:
        """Chain, checkpoint and persist one batch under the cross-process lock; returns the event records."""
        events: list[dict] = []
        with self._locked() as head:
            records = self._housekeeping(head)
            for body in bodies:
                events.append(self._append(head, records, body))
            unsynced = self._store_batch(head, records)
        self._sync(unsynced)  # outside the lock: the next batch (of any process) appends meanwhile
        self.counters["records"] += len(events)
        self.counters["batches"] += 1
        if self.mirror is not None:
            self._unmirrored += len(events)
            if self._unmirrored >= MIRROR_RECORDS:
                self._mirror_wake.set()
        return events

    def _append(self, head: _Head, records: list[dict], body: dict) -> dict:
        """Seal one event onto the chain (after the checkpoint that is due before it, if one is)."""
        at = _epoch(body.get("time", ""))
        if self._signer is not None and self._checkpoint_due(head, at):
            records.append(self._checkpoint(head, defer=True))  # BEFORE the event: a request's record stays last
        if body.get("phase") == "intent":
            body = {**body, "writer": self._writer_id()}
        record = {**body, "type": "event", "seq": head.seq + 1}
        self._sealed[id(record)] = (record, seal_line(record, head.hash))
        head.seq, head.hash = record["seq"], record["hash"]
        head.track(record)
        records.append(record)
        if head.uncovered_since is None:
            head.uncovered_since = at
        return record

    def _store_batch(self, head: _Head, records: list[dict]) -> list[int]:
        """Persist sealed records; a signed checkpoint among them is made durable and then becomes the HSM's mark
        (inside the lock, so marks move in chain order). Returns the file descriptors still to fsync."""
        self._persist(head, records)
        unsynced = self.file.take_unsynced() if self.file is not None else []
        signed = [r for r in records if r.get("type") == "checkpoint"]
        if signed and self._marks is not None:
            self._sync(unsynced)
            unsynced = []
            self._advance_mark(signed[-1])
        return unsynced

    def _sync(self, unsynced: list[int]) -> None:
        if unsynced:
            self.file.sync(unsynced)  # type: ignore[union-attr]

    def _checkpoint_due(self, head: _Head, at: float) -> bool:
        """Before appending an event at time `at`: does the run since the last checkpoint need closing first?

        The rule the verifier re-checks: a run never holds more than `checkpoint_records` events, and no event in it
        is `checkpoint_seconds` or more younger than its first (times as recorded, so both sides compute the same).
        """
        if head.seq == head.cp_seq:
            return False
        if head.seq - head.cp_seq >= self.checkpoint_records:
            return True
        return head.uncovered_since is not None and at - head.uncovered_since >= self.checkpoint_seconds

    def _checkpoint(self, head: _Head, *, defer: bool = False) -> dict:
        """A signed checkpoint of the head. With `defer`, a signer failure (HSM down) yields a `checkpoint-deferred`
        record instead: it closes the run unsigned, so the events of this batch are still written (an HSM outage
        must not turn requests served from caches into 503s); the next run is signed again when the HSM is back."""
        assert self._signer is not None
        checkpoint = {
            "type": "checkpoint", "seq": head.seq + 1, "count": head.seq, "head_hash": head.hash,
            "time": _now_iso(), "every_records": self.checkpoint_records,
            "every_seconds": self.checkpoint_seconds, "key_id": self._key_id,
        }
        try:
            checkpoint["signature"] = base64.b64encode(self._signer(checkpoint_message(checkpoint))).decode()
        except Exception as exc:
            if not defer:
                raise
            log.error("audit checkpoint not signed (%s): writing a deferred checkpoint", type(exc).__name__)
            checkpoint["type"], checkpoint["reason"] = "checkpoint-deferred", f"signer unavailable: {type(exc).__name__}"
            self.counters["deferred"] = self.counters.get("deferred", 0) + 1
        self._sealed[id(checkpoint)] = (checkpoint, seal_line(checkpoint, head.hash))
        head.seq, head.hash, head.cp_seq, head.uncovered_since = checkpoint["seq"], checkpoint["hash"], checkpoint["seq"], None
        self.counters["checkpoints"] += 1
        return checkpoint

    def _line(self, record: dict) -> bytes:
        """A record's line: the one made when it was sealed (its bytes were hashed then), else encoded now."""
        sealed = self._sealed.pop(id(record), None)
        return sealed[1] if sealed is not None and sealed[0] is record else encode(record)

    def _persist(self, head: _Head, records: list[dict]) -> None:
        lines = [self._line(r) for r in records]
        undos: list[Callable[[], None]] = []
        try:
            for sink in self._durable:
                undos.append(sink.write(records, lines))
        except BaseException:
            if self.file is not None:
                self.file.discard()
            for undo in reversed(undos):
                try:
                    undo()
                except Exception as exc:  # noqa: BLE001 - the head check will notice and recover
                    log.error("undoing a partial audit batch failed: %s", type(exc).__name__)
            raise
        if self.file is not None:
            head.size = self.file.end
        for sink in self._copies:
            try:
                sink.write(records, lines)
            except Exception as exc:  # noqa: BLE001 - copies are best effort
                log.warning("audit copy to %s failed: %s", sink.name, type(exc).__name__)

    def _lock_file(self) -> int:
        """The lock file's fd, opened on first use and again in a forked child (an flock is shared by every fd of
        one open, so a child must not lock its parent's); a child also lets go of the audit fd its parent kept.
        Called holding `_thread_lock`, so no thread of this process is inside a batch meanwhile."""
        if self._lock_fd < 0 or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
            if self.file is not None:
                self.file.forget()
        return self._lock_fd

    @contextmanager
    def _locked(self) -> Iterator[_Head]:
        """Exclusive across processes: yields the chain head, saves it if the block succeeds. The head is saved only
        after both sinks took a batch, so a process that died inside this block leaves a head that does not match
        the file: the next writer recovers it from the log."""
        self._thread_lock.acquire()  # flock serialises processes only: threads of this one (writer, checkpoint_now)
        try:
            fd = self._lock_file()
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        try:
            self._findings = None
            raw = _read_head(fd)
            head = _Head.load(raw)
            if head is None or (self.file is not None and head.size != self.file.locate()):
                head = self._recover()
                if self.file is not None:
                    self.file.locate()  # after the recovery, which may have cut a torn write off
            yield head
            _write_head(fd, head.dump(), len(raw))
        finally:
            self._sealed.clear()
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._thread_lock.release()

    # ------------------------------------------------------------------------------------------ recovery

    def _recover(self) -> _Head:
        """Rebuild the head from the log itself (the file if there is one, else the store), cutting a torn last
        write. What was done goes to `_findings`."""
        head = _Head()
        findings: dict[str, Any] = {}
        if self.file is None:
            assert self.store is not None
            from sqlalchemy import select

            table = self.store.table
            with self.store.engine.connect() as conn:
                for row in conn.execute(select(table.c.record).where(table.c.chain == self.store.chain)
                                        .order_by(table.c.seq)):
                    self._advance(head, json.loads(row.record), head.seq + 1)
            return head
        if not self.path.exists():
            head.size = 0
            return head
        with open(self.path, "r+b") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):  # a torn, never acknowledged last write
                cut = data.rfind(b"\n") + 1
                log.error("audit file ends in a partial record; cutting it at byte %d", cut)
                findings["torn_bytes"] = len(data) - cut
                f.truncate(cut)
                data = data[:cut]
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            try:
                record = json.loads(line)
            except ValueError:
                log.error("audit file line %d is not a record; `kms-broker audit verify` reports it", number)
                continue
            self._advance(head, record, number)
        head.size = len(data)
        if findings:
            self._findings = findings
        return head

    @staticmethod
    def _advance(head: _Head, record: dict, number: int) -> None:
        head.seq, head.hash = record.get("seq", number), record["hash"]
        if record.get("type") in _CHECKPOINTS:
            head.cp_seq, head.uncovered_since = head.seq, None
        elif head.uncovered_since is None:
            head.uncovered_since = _epoch(record.get("time", ""))
        head.track(record)

    def _housekeeping(self, head: _Head, *, force: bool = False) -> list[dict]:
        """Records owed before the next batch: what a recovery did, and `interrupted` outcomes for the intents of
        writers that are gone (checked every few seconds, or now with `force`)."""
        records: list[dict] = []
        if self._findings:
            self._append(head, records, self._system_body(RECONCILE_ACTION, self._findings))
            self._findings = None
        if head.open and (force or time.monotonic() >= self._next_reap):
            self._next_reap = time.monotonic() + _REAP_SECONDS
            for seq, writer in sorted(head.open.items(), key=lambda item: int(item[0])):
                if not alive(self.leases, writer):
                    self._append(head, records, self._interrupted(int(seq), writer))
                    self.counters["interrupted"] += 1
        return records

    def _interrupted(self, seq: int, writer: str) -> dict:
        """The outcome of an intent whose writer died first: who and what from the intent, the effect unknown."""
        intent = self._record_at(seq) or {}
        copied = {k: v for k, v in intent.items() if k not in (
            "type", "seq", "prev_hash", "hash", "phase", "outcome", "error_code", "time", "latency_ms", "writer")}
        return {**copied, "time": _now_iso(), "outcome": "interrupted", "error_code": None, "latency_ms": None,
                "intent_seq": seq, "interrupted_writer": writer,
                "reason": "the process that wrote the intent ended before its outcome; the effect may or may not "
                          "have happened"}

    @staticmethod
    def _system_body(action: str, details: dict[str, Any]) -> dict:
        return {**details, "time": _now_iso(), "request_id": str(uuid.uuid4()), "principal": "broker",
                "auth_method": "internal", "source_ip": "", "front_door": "audit", "action": action,
                "key_id": None, "key_version": None, "provider": None, "encryption_context": {},
                "outcome": "allowed", "error_code": None, "latency_ms": None}

    def _record_at(self, seq: int) -> dict | None:
        record = self.store.record_at(seq) if self.store is not None else None
        if record is None and self.file is not None:
            record = self.file.record_at(seq)
        return record

    def _writer_id(self) -> str:
        """This process's lease on the chain (taken on its first intent; a forked child takes its own)."""
        if self._lease is None or self._lease.pid != os.getpid():
            self._lease = WriterLease(self.leases)
        return self._lease.writer_id

    # ------------------------------------------------------------------------------------------ high-water mark

    def _advance_mark(self, checkpoint: dict) -> None:
        """Move the HSM's mark to a durable signed checkpoint, only forward and only from a chain that still holds
        the current mark (so a cut under it stays visible). A failure is logged: the mark lags, nothing is lost."""
        assert self._marks is not None
        try:
            current = self._marks.read(self.chain)
            if current is not None:
                if current.seq >= checkpoint["seq"]:
                    return
                if (current.seq, current.hash) != self._last_mark and not self._holds(current):
                    self.counters["mark_failures"] += 1
                    log.error("the audit chain does not hold the checkpoint the HSM pinned (seq %d): it was cut or "
                              "replaced; the mark stays there", current.seq)
                    return
            self._marks.write(self.chain, Mark(checkpoint["seq"], checkpoint["hash"], checkpoint.get("key_id"),
                                               checkpoint.get("time")))
            self._last_mark = (checkpoint["seq"], checkpoint["hash"])
            self.counters["marks"] += 1
        except Exception as exc:  # noqa: BLE001 - the HSM may be down: the mark lags behind, verify still holds
            self.counters["mark_failures"] += 1
            log.error("audit high-water mark not moved: %s", type(exc).__name__)

    def _holds(self, mark: Mark) -> bool:
        record = self._record_at(mark.seq)
        if record is not None and record.get("hash") == mark.hash:
            self._last_mark = (mark.seq, mark.hash)
            return True
        return False

    def _mark_problem(self, head: _Head) -> str | None:
        """Why the chain does not hold the HSM's mark, or None (also None when the HSM cannot be asked)."""
        if self._marks is None:
            return None
        try:
            mark = self._marks.read(self.chain)
        except Exception:  # noqa: BLE001 - an HSM outage is reported by the checkpoints, not here
            return None
        if mark is None or self._holds(mark):
            return None
        return (f"the audit chain ends at seq {head.seq} and does not hold the checkpoint the HSM pinned (seq "
                f"{mark.seq}): it was cut or replaced; `kms-broker audit verify` reports it")

    def _publish_public_key(self, spki_der: bytes) -> None:
        """Write the checkpoint verification key beside the log (once; an existing different key is reported)."""
        pem = public_key_pem(spki_der)
        path = self.public_key_path
        if path.exists():
            if path.read_bytes() != pem:
                log.error("%s does not match the HSM's audit signing key; not overwritten", path)
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(pem)
        os.replace(tmp, path)


def close_all() -> None:
    """A clean end of this process: cover every open chain's tail with a checkpoint and stop its writer."""
    for audit in list(_OPEN_LOGS):
        try:
            audit.close(checkpoint=True)
        except Exception as exc:  # noqa: BLE001 - one failing log must not keep the others open
            log.error("closing the audit log %s failed: %s", audit.path, type(exc).__name__)
