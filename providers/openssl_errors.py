"""Leave no OpenSSL errors behind a PKCS#11 call, for the TLS connections of this thread.

A PKCS#11 library that is built on OpenSSL shares its error queue with Python's `ssl` module when both use the
system's libcrypto (SoftHSM 2 does: its C_Initialize leaves "could not load the shared library" / "no such engine"
from its ENGINE probe; a failed GCM tag check leaves an EVP error). The queue is per thread and OpenSSL only
clears it when a handshake starts. So a kept-alive TLS connection (a cloud SDK's pooled HTTPS connection) read or
written later in the same thread takes any wait for the socket (SSL_ERROR_WANT_READ) for a failure named by the
stale entry, and the call fails ("[ENGINE: NO_SUCH_ENGINE] no such engine"). Clearing the queue after each call
into the library keeps the two apart. Without a shared libcrypto this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _find_clear() -> Callable[[], None]:
    name = ctypes.util.find_library("crypto")
    if not name:
        return lambda: None
    try:
        # PyDLL: the call keeps the interpreter lock. ERR_clear_error only empties a per-thread list and never
        # blocks; giving the lock away for it (CDLL does) let another thread in on every HSM call.
        clear = ctypes.PyDLL(name).ERR_clear_error  # the library already loaded, if it is: dlopen shares it
    except (OSError, AttributeError):
        return lambda: None
    clear.argtypes, clear.restype = [], None
    return clear


clear_openssl_errors: Callable[[], None] = _find_clear()


@contextmanager
def openssl_errors_cleared() -> Iterator[None]:
    """Run a block of PKCS#11 calls; the thread's OpenSSL error queue is empty after it, whatever happened."""
    try:
        yield
    finally:
        clear_openssl_errors()
