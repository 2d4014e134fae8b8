"""StoreMirror: the store's copy of an audit chain, brought up to the file off the request path.

With both durable sinks, the file is what makes a record durable before its request is answered (fsync'd by the
group commit); the store copy is for queries, for other hosts and for `audit verify` to compare with. Inserting
each batch into the store inside the chain lock cost a transaction per batch that every process of the host
waited on; the mirror instead copies whatever the file holds past the store's head, a few times a second, in a few
large transactions.

* Any process of the host may run it; runs are serialised by an flock on `<file>.mirror`, which also keeps a hint
  of where the store's head ends in the file (seq, hash, byte offset) so a run reads only the new tail.
* Only whole batches are copied: up to the size the chain head (`<file>.lock`, read under a shared lock) says the
  last successful batch ended at, so a batch that is being written or undone is never seen half.
* A copy must extend the store's chain (its first record follows the store's head, seq and hash); anything else
  is left alone and logged, for `kms-broker audit verify` to report. The mirror never deletes or rewrites a row.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from broker.audit.chain import GENESIS
from broker.audit.sinks import StoreSink

log = logging.getLogger("kms_broker.audit")
CHUNK = 2000  # rows per store transaction


@dataclass(frozen=True)
class MirrorMark:
    """Where the store's copy ends: the seq and hash of its last record, and the file offset just after it."""

    seq: int
    hash: str
    offset: int

    def dump(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def load(cls, raw: bytes) -> MirrorMark | None:
        try:
            data = json.loads(raw)
            return cls(int(data["seq"]), str(data["hash"]), int(data["offset"]))
        except (ValueError, TypeError, KeyError):
            return None


def _parsed(line: bytes) -> Any:
    """A line of the file as JSON: by orjson (a quarter of `json`'s CPU, and the mirror parses every record), by
    `json` for what orjson refuses and json reads (lone surrogates, NaN, 1e400 in a hostile value). Only the chain
    fields and the indexed columns are taken from the result; the store keeps the line itself."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


class StoreMirror:
    def __init__(self, path: Path, store: StoreSink) -> None:
        self.path = Path(path)
        self.store = store
        self._chain_lock = self.path.with_name(self.path.name + ".lock")
        self._mirror_lock = self.path.with_name(self.path.name + ".mirror")
        self._thread_lock = threading.Lock()
        self._refused: tuple[object, int] | None = None  # (store head, file end) a run found not linking

    def catch_up(self) -> list[int]:
        """Copy every whole batch the file holds past the store's head; returns [first, last] seq copied, or []."""
        with self._thread_lock:
            fd = os.open(self._mirror_lock, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return self._run(fd)
            finally:
                os.close(fd)  # also releases the flock

    def _run(self, fd: int) -> list[int]:
        end = self._complete_size()
        if end is None:
            return []
        hint = MirrorMark.load(os.pread(fd, 4096, 0))
        if hint is not None and hint.offset == end:
            return []  # nothing new since the last run (the usual case: no store query)
        stored = self.store.head()
        if self._refused == (stored, end):
            return []  # found not linking before, and nothing changed since: logged once
        if stored is None:
            offset, seq, digest = 0, 0, GENESIS
        elif hint is not None and (hint.seq, hint.hash) == stored and hint.offset <= end:
            offset, (seq, digest) = hint.offset, stored
        else:
            found = self._offset_after(stored, end)
            if found is None:
                self._refuse(stored, end, f"the file does not hold the store's head (seq {stored[0]})")
                return []
            offset, (seq, digest) = found, stored
        if offset >= end:
            return []
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(end - offset)
        first = seq + 1
        batch: list[tuple[dict, bytes]] = []
        for line in data.splitlines(keepends=True):
            try:
                record = _parsed(line)
                linked = record.get("seq") == seq + 1 and record.get("prev_hash") == digest
            except (ValueError, AttributeError):
                linked = False
            if not linked:  # an edited or foreign line: copy up to it, leave the rest for `audit verify`
                if batch:
                    self._copy(fd, batch, MirrorMark(seq, digest, offset))
                self._refuse(self.store.head(), end, f"the file's record after seq {seq} does not link to it")
                return [first, seq] if seq >= first else []
            batch.append((record, line))
            seq, digest, offset = record["seq"], record["hash"], offset + len(line)
            if len(batch) >= CHUNK:
                self._copy(fd, batch, MirrorMark(seq, digest, offset))
                batch = []
        if batch:
            self._copy(fd, batch, MirrorMark(seq, digest, offset))
        return [first, seq] if seq >= first else []

    def _copy(self, fd: int, batch: list[tuple[dict, bytes]], mark: MirrorMark) -> None:
        self.store.copy_in(batch)
        data = mark.dump()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def _refuse(self, stored: object, end: int, why: str) -> None:
        self._refused = (stored, end)
        log.error("audit store copy not brought up to the file: %s; left for `kms-broker audit verify`", why)

    def _complete_size(self) -> int | None:
        """The file size after the last successful batch, from the chain head (None: no head yet, or it is being
        recovered: the next run copies)."""
        try:
            fd = os.open(self._chain_lock, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        try:
            size = int(json.loads(raw)["size"])
        except (ValueError, TypeError, KeyError):
            return None
        try:
            return size if 0 <= size <= os.stat(self.path).st_size else None
        except FileNotFoundError:
            return None

    def _offset_after(self, stored: tuple[int, str], end: int) -> int | None:
        """The file offset just after the record the store's head names, or None if the file does not hold it.
        Found by its hash (records are written with sorted keys and no spaces, and a `prev_hash` field never
        matches `"hash":"...`), from the end: the store's head is usually near it."""
        seq, digest = stored
        needle = b'"hash":"' + digest.encode() + b'"'
        if end == 0:
            return None
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), end, access=mmap.ACCESS_READ) as view:
            at = view.rfind(needle)
            if at < 0:
                return None
            start = view.rfind(b"\n", 0, at) + 1
            stop = view.find(b"\n", at)
            if stop < 0:
                return None
            try:
                record = json.loads(view[start:stop])
            except ValueError:
                return None
        return stop + 1 if record.get("seq") == seq and record.get("hash") == digest else None
