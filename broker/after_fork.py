"""State a forked child must not take over from its parent, reset by one `os.register_at_fork` hook.

A child made by `fork` (gunicorn's workers, multiprocessing's default on Linux) starts with a copy of every object
and every lock as the parent held it at that instant. Some copies must not be used as they are: random bytes the
parent has not handed out yet (both processes would hand them out), a data key whose use the parent counts (the
two would together use it past its limits), a lock a thread of the parent held (no thread in the child will ever
release it). Such objects register here and are reset in the child before it runs anything else.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ResetAfterFork(Protocol):
    def reset_after_fork(self) -> None:
        """In a forked child: drop what is the parent's, make new locks."""


_OBJECTS: weakref.WeakSet[ResetAfterFork] = weakref.WeakSet()


def reset_in_forked_child(obj: ResetAfterFork) -> None:
    """Call `obj.reset_after_fork()` in every child forked from now on, for as long as `obj` lives."""
    _OBJECTS.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_OBJECTS):
        obj.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
