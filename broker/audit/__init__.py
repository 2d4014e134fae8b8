"""Audit: one record per request, hash-chained, written before the response.

Records never carry secrets: values that must be findable (encryption-context values, token accessors) are
HMAC-SHA-256'd with a key held in the HSM. Several processes may append to the same file: an exclusive flock
serialises writers, and each process re-reads the chain tail only when someone else wrote since its last write.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from broker.errors import NotReady

GENESIS = "0" * 64


def record_hash(prev_hash: str, body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path, hmac: Callable[[bytes], bytes], fsync: bool = False) -> None:
        self.path = path
        self._hmac = hmac
        self._fsync = fsync
        self._known_size = -1
        self._last_hash = GENESIS
        path.parent.mkdir(parents=True, exist_ok=True)

    def hmac_value(self, value: str | bytes) -> str:
        data = value.encode() if isinstance(value, str) else value
        return "hmac-sha256:" + self._hmac(data).hex()

    def _tail_hash(self, f) -> str:
        size = os.fstat(f.fileno()).st_size
        if size == self._known_size:
            return self._last_hash
        if size == 0:
            return GENESIS
        f.seek(max(0, size - 65536))
        lines = f.read().splitlines()
        return json.loads(lines[-1])["hash"] if lines else GENESIS

    def write(self, body: dict) -> dict:
        """Append one record; raise NotReady (503) if it cannot be persisted — the caller must then refuse."""
        try:
            with open(self.path, "a+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    prev = self._tail_hash(f)
                    record = {**body, "prev_hash": prev}
                    record["hash"] = record_hash(prev, record)
                    f.write(json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")
                    f.flush()
                    if self._fsync:
                        os.fsync(f.fileno())
                    self._known_size = os.fstat(f.fileno()).st_size
                    self._last_hash = record["hash"]
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        except OSError:
            raise NotReady("audit log cannot be written; request refused") from None
        return record


def verify_file(path: Path) -> tuple[int, str | None]:
    """Check the chain; returns (records checked, first problem or None)."""
    prev = GENESIS
    count = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except ValueError:
                return count, f"record {lineno}: not valid JSON (truncated or edited)"
            stored = record.pop("hash", None)
            if record.get("prev_hash") != prev:
                return count, f"record {lineno}: chain broken (a record before it was deleted, inserted or reordered)"
            if record_hash(prev, record) != stored:
                return count, f"record {lineno}: content does not match its hash (edited)"
            prev = stored
            count += 1
    return count, None
