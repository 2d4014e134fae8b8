"""Write-behind for the state file: a change marks the state dirty, one writer thread saves it soon after.

Saving rewrote the whole state (every key, its material) after *every* change, under the backend's lock: the cost
of a create grew with the number of keys held (at 2,000 keys a create waited ~200 ms on the save), so a large sync
measured the emulator, not the client. Changes that land within `delay` share one save; `flush()` (shutdown)
saves what is pending. A crash (SIGKILL) can lose the last `delay` seconds of changes: the file stays whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class WriteBehind:
    def __init__(self, save: Callable[[], None], delay: float = 0.2) -> None:
        self._save = save
        self._delay = delay
        self._dirty = threading.Event()
        self._lock = threading.Lock()  # one save at a time (the thread's and flush()'s)
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        self._dirty.set()

    def flush(self) -> None:
        """Save now if anything changed since the last save."""
        with self._lock:
            if self._dirty.is_set():
                self._dirty.clear()
                self._save()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            time.sleep(self._delay)  # let the changes arriving meanwhile share this save
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the next change (or the shutdown flush) tries again
                self._dirty.set()
                time.sleep(1.0)
