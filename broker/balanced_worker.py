"""A gunicorn gthread worker that leaves new connections to a less busy sibling.

Every gthread worker polls the one listening socket and the first one awake accepts. Clients that connect together (a
connection pool warming up, a load balancer, a benchmark) land on whichever worker woke first, and keep-alive keeps
them there: with 16 keep-alive clients on 2 workers, splits of 12/4 and 14/2 were seen. Requests in one worker share
its GIL, so that worker queues while the other's core idles (15-20 % of the machine idle under load, and throughput
varying 2x from one run to the next with the split).

Once a worker holds as many connections as it has threads, it stops accepting for ACCEPT_PAUSE seconds after each
connection it takes, so a sibling with room (which accepts at once) gets the next ones. When every worker is that
busy, new connections are still taken: each worker takes one per pause.
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

ACCEPT_PAUSE = 0.005
WORKER_CLASS = f"{__name__}.BalancedThreadWorker"  # gunicorn's worker_class option, for every listener


class BalancedThreadWorker(ThreadWorker):
    """gthread, with accepting paused while this worker holds a connection per thread (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resume_accept = 0.0  # time.monotonic() before which this worker does not accept

    def accept(self, listener) -> None:
        super().accept(listener)
        if self.cfg.workers > 1 and self.nr_conns >= self.cfg.threads:
            self._resume_accept = time.monotonic() + ACCEPT_PAUSE
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and self.alive and time.monotonic() < self._resume_accept:
            return  # gunicorn's loop asks every turn; the pause holds until its time is up
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """The loop wakes when the pause ends, so accepting resumes on time even with nothing else to do."""
        left = self._resume_accept - time.monotonic()
        if not self._accepting and self.alive and left > 0:  # only a pause still ahead (never a spin at 0)
            timeout = min(timeout, left)
        super().wait_for_and_dispatch_events(timeout)
