"""The hand-off between an audit batch's leader and the callers waiting for their records (broker.audit.log)."""

from __future__ import annotations

import threading
import time

from broker.audit.log import _Pending


def test_a_waiter_blocks_until_woken_then_goes_on():
    pending = _Pending({"action": "kms:Encrypt"})
    assert pending.wait(0.05) is False  # nobody woke it: the wait times out
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(pending.wait(5.0)))
    waiter.start()
    time.sleep(0.05)
    assert woke == []  # still waiting
    pending.wake()
    waiter.join(5.0)
    assert woke == [True]


def test_a_wake_before_the_wait_is_not_lost():
    pending = _Pending(None)
    pending.wake()
    assert pending.wait(0.0) is True


def test_a_second_wake_is_harmless_and_does_not_wake_a_later_wait():
    pending = _Pending(None)
    pending.wake()
    pending.wake()  # a leader's release racing the caller's timeout: no error
    assert pending.wait(0.0) is True
    assert pending.wait(0.05) is False  # one wake, one pass
