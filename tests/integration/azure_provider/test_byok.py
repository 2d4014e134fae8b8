"""byok_import: material wrapped outside (here: in software, as the HSM would) lands in the vault intact."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from broker.model import KeySpec, KeyUsage, SigningAlgorithm
from providers.azure import AzureProvider
from providers.base import ProviderInvalidInput, ProviderUnsupported


def software_wrap(material: bytes):
    """The WrapForImport contract: OAEP-SHA-1(ephemeral AES-256) ‖ RFC 5649(ephemeral, material)."""
    seen: list[str] = []

    def wrap(public_der: bytes, algorithm: str) -> bytes:
        seen.append(algorithm)
        public = serialization.load_der_public_key(public_der)
        ephemeral = os.urandom(32)
        oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
        return public.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)

    wrap.seen = seen  # type: ignore[attr-defined]
    return wrap


def _pkcs8(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_byok_rsa_signing_key(vault: AzureProvider) -> None:
    target = rsa.generate_private_key(65537, 3072)
    wrap = software_wrap(_pkcs8(target))
    ref = vault.byok_import(KeySpec.RSA_3072, KeyUsage.SIGN_VERIFY, wrap, label="byok-rsa")
    assert wrap.seen == ["RSA_AES_KEY_WRAP_SHA_1"]
    assert ref.extra["kty"] == "RSA-HSM"
    digest = hashlib.sha256(b"m").digest()
    sig = vault.sign(ref, digest, SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256)
    target.public_key().verify(sig, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    assert not any("-kek-" in i.key_id for i in vault.inventory()), "the KEK must be removed"


def test_byok_ec_key_and_reimport_as_new_version(vault: AzureProvider) -> None:
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    v1 = vault.byok_import(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, software_wrap(_pkcs8(first)), label="byok-ec")
    v2 = vault.byok_import(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, software_wrap(_pkcs8(second)),
                           label="byok-ec", ref=v1)
    assert v2.key_id == v1.key_id and v2.version != v1.version
    for ref, key in ((v1, first), (v2, second)):
        digest = hashlib.sha256(b"x").digest()
        key.public_key().verify(vault.sign(ref, digest, SigningAlgorithm.ECDSA_SHA_256), digest,
                                ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_byok_aes_on_managed_hsm(hsm: AzureProvider, vault: AzureProvider) -> None:
    aes = os.urandom(32)
    ref = hsm.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, software_wrap(aes), label="byok-aes")
    blob = hsm.encrypt(ref, b"imported aes", b"ctx")
    assert AESGCM(aes).decrypt(blob[:12], blob[12:], b"ctx") == b"imported aes"
    with pytest.raises(ProviderUnsupported):
        vault.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, software_wrap(aes), label="no")


def test_byok_bad_material_is_invalid_input(vault: AzureProvider) -> None:
    with pytest.raises(ProviderInvalidInput):
        vault.byok_import(KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, software_wrap(b"not a pkcs8 key" * 4), label="bad")
