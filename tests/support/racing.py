"""Threads that switch as often as the interpreter allows: what a lock-free shortcut would lose."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def race(work: Callable[[], None], threads: int = 8) -> None:
    """Run `work` in `threads` threads at once with a 1 µs switch interval (a switch between almost any two
    bytecodes), and wait for all of them; the interval is restored whatever happens."""
    started = [threading.Thread(target=work) for _ in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in started:
            t.start()
        for t in started:
            t.join()
    finally:
        sys.setswitchinterval(interval)
