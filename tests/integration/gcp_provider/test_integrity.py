"""CRC32C on every call: responses whose checksums, flags or names do not match are refused.

The emulator answers correctly, so corruption is injected between it and the provider by a proxy around the
official client (what a flaky network or middlebox would do); requests corrupted after their CRC32C was computed
are rejected by the emulator itself.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from google.cloud import kms_v1

from broker.model import KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm
from providers.base import ProviderIntegrityError
from providers.gcp import GcpProvider, build_client

from .conftest import TOKEN


class Tamper:
    """Forwards to the real client; `method` gets its response (or request) altered by `edit`."""

    def __init__(self, client: kms_v1.KeyManagementServiceClient) -> None:
        self._client = client
        self.rules: dict[str, tuple[str, Callable[[Any], Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name not in self.rules:
            return real
        where, edit = self.rules[name]

        def call(*, request: dict, **kw: Any) -> Any:
            if where == "request":
                return real(request=edit(dict(request)), **kw)
            return edit(real(request=request, **kw))
        return call


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:] if data else b"\x01"


def _set(field: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def edit(resp: Any) -> Any:
        setattr(resp, field, fn(getattr(resp, field)))
        return resp
    return edit


@pytest.fixture
def tampered(gcp_emulator: dict, transport: str) -> tuple[GcpProvider, Tamper]:
    proxy = Tamper(build_client(transport, grpc_target=gcp_emulator["grpc_target"],
                                rest_endpoint=gcp_emulator["rest_endpoint"], token=TOKEN))
    provider = GcpProvider(f"gcp-tamper-{transport}", client=proxy,  # type: ignore[arg-type]
                           project=gcp_emulator["project"], location=gcp_emulator["location"],
                           key_ring=f"tamper-{uuid.uuid4().hex[:8]}", retries=0)
    return provider, proxy


CASES = {
    "ciphertext": ("encrypt", "response", _set("ciphertext", _flip)),
    "verified_plaintext": ("encrypt", "response", _set("verified_plaintext_crc32c", lambda _: False)),
    "verified_aad": ("encrypt", "response", _set("verified_additional_authenticated_data_crc32c", lambda _: False)),
    "encrypt_name": ("encrypt", "response", _set("name", lambda n: n[:-1] + "9")),
    "encrypt_request": ("encrypt", "request", lambda r: {**r, "plaintext": _flip(r["plaintext"])}),
    "plaintext": ("decrypt", "response", _set("plaintext", _flip)),
    "decrypt_request": ("decrypt", "request", lambda r: {**r, "ciphertext": _flip(r["ciphertext"])}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_symmetric_integrity(tampered: tuple[GcpProvider, Tamper], case: str) -> None:
    provider, proxy = tampered
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="crc")
    ct = provider.encrypt(ref, b"plaintext", b"aad")
    method, where, edit = CASES[case]
    proxy.rules[method] = (where, edit)
    with pytest.raises(ProviderIntegrityError):
        if method == "encrypt":
            provider.encrypt(ref, b"plaintext", b"aad")
        else:
            provider.decrypt(ref, ct, b"aad")


def test_sign_mac_public_key_and_random_integrity(tampered: tuple[GcpProvider, Tamper]) -> None:
    provider, proxy = tampered
    signer = provider.create_key(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, label="crc-sign")
    mac = provider.create_key(KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, label="crc-mac")
    digest = hashlib.sha256(b"d").digest()
    checks: list[tuple[str, str, Callable[[Any], Any], Callable[[], Any]]] = [
        ("asymmetric_sign", "response", _set("signature", _flip),
         lambda: provider.sign(signer, digest, SigningAlgorithm.ECDSA_SHA_256)),
        ("asymmetric_sign", "response", _set("verified_digest_crc32c", lambda _: False),
         lambda: provider.sign(signer, digest, SigningAlgorithm.ECDSA_SHA_256)),
        ("asymmetric_sign", "request", lambda r: {**r, "digest": {"sha256": _flip(digest)}},
         lambda: provider.sign(signer, digest, SigningAlgorithm.ECDSA_SHA_256)),
        ("get_public_key", "response", _set("pem", lambda p: p.replace("A", "B", 1)),
         lambda: provider.get_public_key(signer)),
        ("mac_sign", "response", _set("mac", _flip), lambda: provider.generate_mac(mac, b"m", MacAlgorithm.HMAC_SHA_256)),
        ("mac_sign", "request", lambda r: {**r, "data": b"M"},
         lambda: provider.generate_mac(mac, b"m", MacAlgorithm.HMAC_SHA_256)),
        ("generate_random_bytes", "response", _set("data", _flip), lambda: provider.random(16)),
    ]
    for method, where, edit, call in checks:
        call()  # untampered: fine
        proxy.rules = {method: (where, edit)}
        with pytest.raises(ProviderIntegrityError):
            call()
        proxy.rules = {}
