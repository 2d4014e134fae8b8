"""Writer leases: which process wrote an intent, and whether it is still alive to write its outcome.

Every process that writes to an audit chain holds a POSIX record lock (`lockf`) on a lease file of its own in
`<audit file>.writers/`. The kernel drops the lock when the process dies, however it dies (`kill -9` included), so a
lease that another process can lock belongs to a writer that is gone: its intents without an outcome were interrupted.

POSIX locks (not flock) on purpose: they belong to the process, so a child forked after the lease was taken does not
keep its parent's lease alive. A lease is created under a temporary name, locked, then renamed into place: a lease
file under its final name is locked from its first instant.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import uuid
from pathlib import Path

_LIVE: dict[str, int] = {}   # writer id -> pid, for the leases of this process (its locks never conflict with itself)
_LIVE_LOCK = threading.Lock()


class WriterLease:
    """This process's lease on one chain; `writer_id` is what its intent records carry."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.writer_id = uuid.uuid4().hex
        self.pid = os.getpid()
        self.path = folder / self.writer_id
        tmp = folder / f".{self.writer_id}.new"
        self._fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(self._fd, f"{self.pid}\n".encode())
            os.rename(tmp, self.path)
        except BaseException:
            os.close(self._fd)
            tmp.unlink(missing_ok=True)
            raise
        with _LIVE_LOCK:
            _LIVE[self.writer_id] = self.pid

    def release(self) -> None:
        """A clean end: the lease file goes away, and with it the lock."""
        if self._fd < 0 or self.pid != os.getpid():
            return
        with _LIVE_LOCK:
            _LIVE.pop(self.writer_id, None)
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def alive(folder: Path, writer_id: str) -> bool:
    """Is the writer that holds this lease still running? (A missing lease: it ended, cleanly or not.)"""
    if not writer_id or "/" in writer_id or writer_id.startswith("."):
        return False
    with _LIVE_LOCK:
        if _LIVE.get(writer_id) == os.getpid():
            return True
    try:
        fd = os.open(folder / writer_id, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # also drops the lock this process may just have taken
    return False


def sweep(folder: Path) -> list[str]:
    """Remove the lease files of writers that are gone; returns their ids."""
    gone = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return gone
    for name in names:
        if name.startswith("."):
            continue
        if not alive(folder, name):
            (folder / name).unlink(missing_ok=True)
            gone.append(name)
    return gone
