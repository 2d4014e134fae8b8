"""providers/openssl_errors.py: the thread's OpenSSL error queue is emptied, without giving the interpreter lock away.

Every HSM call ends with the clear (SoftHSM shares libcrypto with Python's `ssl`), so a clear that releases the lock
lets another of the worker's threads in on every request."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import pytest

from providers.openssl_errors import clear_openssl_errors, openssl_errors_cleared

_NAME = ctypes.util.find_library("crypto")
pytestmark = pytest.mark.skipif(not _NAME, reason="no shared libcrypto: the clear is a no-op by design")


def _crypto() -> ctypes.CDLL:
    lib = ctypes.CDLL(_NAME)
    lib.ERR_peek_error.restype = ctypes.c_ulong
    lib.ERR_new.restype = None
    lib.ERR_set_error.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    lib.ERR_set_error.restype = None
    return lib


def _queue_an_error(lib: ctypes.CDLL) -> None:
    """What SoftHSM's ENGINE probe leaves behind: an entry in this thread's error queue."""
    lib.ERR_new()
    lib.ERR_set_error(6, 65, None)  # ERR_LIB_EVP, EVP_R_... : any library/reason pair makes an entry
    assert lib.ERR_peek_error() != 0


def test_clear_empties_this_threads_queue() -> None:
    lib = _crypto()
    _queue_an_error(lib)
    clear_openssl_errors()
    assert lib.ERR_peek_error() == 0


def test_the_context_manager_clears_even_when_the_block_raises() -> None:
    lib = _crypto()
    with pytest.raises(RuntimeError), openssl_errors_cleared():
        _queue_an_error(lib)
        raise RuntimeError("the HSM call failed")
    assert lib.ERR_peek_error() == 0


def test_clear_keeps_the_interpreter_lock() -> None:
    """A PyDLL function (FUNCFLAG_PYTHONAPI) is called with the lock held; a CDLL one releases it."""
    assert clear_openssl_errors._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]


def test_clear_is_per_thread() -> None:
    """The queue is per thread: clearing here leaves another thread's entries alone (and needs no lock)."""
    lib = _crypto()
    queued, cleared, left = threading.Event(), threading.Event(), []

    def other() -> None:
        _queue_an_error(lib)
        queued.set()
        cleared.wait(5)
        left.append(lib.ERR_peek_error())
        clear_openssl_errors()

    thread = threading.Thread(target=other)
    thread.start()
    queued.wait(5)
    clear_openssl_errors()
    cleared.set()
    thread.join(5)
    assert left and left[0] != 0
