"""BYOK import: key_hsm transfer blobs wrapped with RSA-AES key wrap for an import-only KEK."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyType
from azure.keyvault.keys.crypto import EncryptionAlgorithm, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from .emulator import Emulator
from .helpers import expect_error


def _b64(b: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _transfer_blob(kek_id: str, kek_n: bytes, kek_e: bytes, target: bytes, scheme: str = "CKM_RSA_AES_KEY_WRAP",
                   h: type = hashes.SHA1) -> bytes:
    public = rsa.RSAPublicNumbers(int.from_bytes(kek_e, "big"), int.from_bytes(kek_n, "big")).public_key()
    ephemeral = os.urandom(32)
    ciphertext = (public.encrypt(ephemeral, padding.OAEP(padding.MGF1(h()), h(), None))
                  + aes_key_wrap_with_padding(ephemeral, target))
    doc = {"schema_version": "1.0.0", "header": {"kid": kek_id, "alg": "dir", "enc": scheme},
           "ciphertext": _b64(ciphertext), "generator": "kms-broker tests"}
    return json.dumps(doc).encode()


@pytest.fixture
def kek(client: KeyClient, name: str):
    return client.create_rsa_key(name + "-kek", size=3072, hardware_protected=True, key_operations=["import"])


@pytest.mark.parametrize("scheme,h", [("CKM_RSA_AES_KEY_WRAP", hashes.SHA1), ("RSA_AES_KEY_WRAP_256", hashes.SHA256)])
def test_byok_rsa(emulator: Emulator, client: KeyClient, name: str, kek, scheme: str, h: type) -> None:
    target = rsa.generate_private_key(65537, 2048)
    pkcs8 = target.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    blob = _transfer_blob(kek.id, kek.key.n, kek.key.e, pkcs8, scheme, h)
    key = client.import_key(name, JsonWebKey(kty=KeyType.rsa_hsm, key_ops=["sign", "verify"], t=blob))
    assert key.key_type == KeyType.rsa_hsm
    assert int.from_bytes(key.key.n, "big") == target.public_key().public_numbers().n
    digest = hashlib.sha256(b"byok").digest()
    sig = emulator.crypto_client(key.id).sign(SignatureAlgorithm.rs256, digest).signature
    target.public_key().verify(sig, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_byok_oct_hsm(emulator: Emulator, client: KeyClient, name: str, kek) -> None:
    aes = os.urandom(32)
    key = client.import_key(name, JsonWebKey(kty=KeyType.oct_hsm, t=_transfer_blob(kek.id, kek.key.n, kek.key.e, aes)))
    res = emulator.crypto_client(key.id).encrypt(EncryptionAlgorithm.a256_gcm, b"imported", additional_authenticated_data=b"a")
    assert AESGCM(aes).decrypt(res.iv, res.ciphertext + res.tag, b"a") == b"imported"


def test_byok_errors(client: KeyClient, name: str, kek) -> None:
    not_kek = client.create_rsa_key(name + "-plain")
    blob = _transfer_blob(not_kek.id, not_kek.key.n, not_kek.key.e, os.urandom(32))
    expect_error(400, "BadParameter", client.import_key, name, JsonWebKey(kty=KeyType.oct_hsm, t=blob))
    other = rsa.generate_private_key(65537, 3072).public_key().public_numbers()
    wrong = _transfer_blob(kek.id, other.n.to_bytes(384, "big"), other.e.to_bytes(3, "big"), os.urandom(32))
    expect_error(400, "BadParameter", client.import_key, name, JsonWebKey(kty=KeyType.oct_hsm, t=wrong))
    expect_error(400, "BadParameter", client.import_key, name, JsonWebKey(kty=KeyType.oct_hsm, t=b"{not json"))
    assert_missing_kek = _transfer_blob(kek.id.replace(kek.name, name + "-nokek"), kek.key.n, kek.key.e, os.urandom(32))
    expect_error(404, "KeyNotFound", client.import_key, name, JsonWebKey(kty=KeyType.oct_hsm, t=assert_missing_kek))
