"""The HSM and a cloud SDK's kept-alive HTTPS connections in one thread, as in a broker worker or a sync lane.

SoftHSM shares the system's libcrypto with Python's `ssl`, and its C_Initialize leaves errors in the thread's OpenSSL
error queue (its ENGINE probe). OpenSSL clears that queue only when a handshake starts, so a pooled connection read
later in the same thread took a wait for the socket for a failure ("[ENGINE: NO_SUCH_ENGINE] no such engine") and
the call failed (providers/openssl_errors.py)."""

from __future__ import annotations

import ctypes
import ctypes.util

from broker.model import KeySpec, KeyUsage
from providers.azure import AzureProvider
from providers.pkcs11 import Pkcs11Provider


def _queued_openssl_error() -> int:
    lib = ctypes.CDLL(ctypes.util.find_library("crypto"))
    lib.ERR_peek_error.restype = ctypes.c_ulong
    return lib.ERR_peek_error()


def test_the_hsm_reinitialising_leaves_no_openssl_error_for_this_threads_tls(hsm_provider: Pkcs11Provider,
                                                                            hsm: AzureProvider) -> None:
    hsm.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="beside-hsm-first")  # a pooled connection
    # what the provider does after an HSM outage: C_Finalize + C_Initialize, in this thread
    assert hsm_provider._call(lambda _session: hsm_provider._session._reinitialize())
    assert _queued_openssl_error() == 0
    for i in range(10):  # the pooled connection again, in the same thread
        hsm.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=f"beside-hsm-{i}")
    hsm_provider.check_health()  # and the HSM re-opened its session after the re-initialisation
