"""A host-wide counter of key writes, so the processes of one host never use key metadata another of them changed.

The key metadata cache (`key_cache_seconds`) keeps a key's state and primary version in each process. Every
process of a host (gunicorn workers, the bridge, the CLI, a sync run) that writes a key bumps this counter after
its write commits; a kept copy is used only while the counter still reads what it read before the copy was made.
So on one host a DisableKey, a scheduled deletion or a rotation is seen by every process at once, and the cache
costs one read of shared memory per call instead of a store round trip. Other hosts (a cluster over one database)
see the change within `key_cache_seconds`, the bound the cache documents.

The counter is 8 bytes in a file mapped shared into every process (0600, beside the SQLite database or in the
data folder). A bump takes an exclusive `flock` (writes are rare); a read takes none (an aligned 8-byte load).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path

_FORMAT = struct.Struct("=Q")


class HostGeneration:
    """The counter at `path` (created if missing). `current()` is cheap; `bump()` moves it by one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _FORMAT.size:
                os.ftruncate(fd, _FORMAT.size)  # new zero bytes; a concurrent creator does the same
            self._map = mmap.mmap(fd, _FORMAT.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def current(self) -> int:
        return _FORMAT.unpack_from(self._map)[0]

    def bump(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _FORMAT.pack_into(self._map, 0, (_FORMAT.unpack_from(self._map)[0] + 1) % (1 << 64))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1


def open_host_generation(path: Path | None) -> HostGeneration | None:
    """The counter at `path`, or None when there is no place for it (an in-memory database, a read-only folder):
    the key cache is then off, since a change of another process could not be seen at once."""
    if path is None:
        return None
    try:
        return HostGeneration(path)
    except OSError:
        return None


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for an in-memory database or another engine)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file::memory:") or parsed.query.get("mode") == "memory":
        return None
    return Path(database.removeprefix("file:"))
