"""encrypt/decrypt, wrap/unwrap, sign/verify and rng — every operation must reach the emulator."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyType
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from .emulator import Emulator
from .helpers import expect_error

OAEP = {
    EncryptionAlgorithm.rsa_oaep: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
    EncryptionAlgorithm.rsa_oaep_256: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
    EncryptionAlgorithm.rsa1_5: padding.PKCS1v15(),
}


def _b(i: int) -> bytes:
    return i.to_bytes((i.bit_length() + 7) // 8, "big")


@pytest.fixture(scope="module")
def rsa_pair(client: KeyClient) -> tuple[rsa.RSAPrivateKey, str]:
    """A known RSA key imported into the vault, so results can be checked with `cryptography` locally."""
    priv = rsa.generate_private_key(65537, 2048)
    n = priv.private_numbers()
    jwk = JsonWebKey(kty=KeyType.rsa, n=_b(n.public_numbers.n), e=_b(n.public_numbers.e), d=_b(n.d), p=_b(n.p),
                     q=_b(n.q), dp=_b(n.dmp1), dq=_b(n.dmq1), qi=_b(n.iqmp))
    return priv, client.import_key("crypto-rsa-known", jwk).id


@pytest.mark.parametrize("alg", list(OAEP))
def test_rsa_encrypt_decrypt(emulator: Emulator, rsa_pair, alg: EncryptionAlgorithm) -> None:
    priv, kid = rsa_pair
    cc = emulator.crypto_client(kid)
    result = cc.encrypt(alg, b"secret message")
    assert result.key_id == kid
    assert priv.decrypt(result.ciphertext, OAEP[alg]) == b"secret message"
    local = priv.public_key().encrypt(b"from outside", OAEP[alg])
    assert cc.decrypt(alg, local).plaintext == b"from outside"


@pytest.mark.parametrize("alg", [KeyWrapAlgorithm.rsa_oaep, KeyWrapAlgorithm.rsa_oaep_256, KeyWrapAlgorithm.rsa1_5])
def test_rsa_wrap_unwrap(emulator: Emulator, rsa_pair, alg: KeyWrapAlgorithm) -> None:
    priv, kid = rsa_pair
    cc = emulator.crypto_client(kid)
    wrapped = cc.wrap_key(alg, b"K" * 32).encrypted_key
    assert priv.decrypt(wrapped, OAEP[EncryptionAlgorithm(alg.value)]) == b"K" * 32
    assert cc.unwrap_key(alg, wrapped).key == b"K" * 32


def test_rsa_decrypt_garbage_is_bad_parameter(emulator: Emulator, rsa_pair) -> None:
    cc = emulator.crypto_client(rsa_pair[1])
    expect_error(400, "BadParameter", cc.decrypt, EncryptionAlgorithm.rsa_oaep_256, b"\x00" * 256)


@pytest.mark.parametrize("alg,hash_cls,pad", [
    (SignatureAlgorithm.rs256, hashes.SHA256, "pkcs1"), (SignatureAlgorithm.rs384, hashes.SHA384, "pkcs1"),
    (SignatureAlgorithm.rs512, hashes.SHA512, "pkcs1"), (SignatureAlgorithm.ps256, hashes.SHA256, "pss"),
    (SignatureAlgorithm.ps384, hashes.SHA384, "pss"), (SignatureAlgorithm.ps512, hashes.SHA512, "pss"),
])
def test_rsa_sign_verify(emulator: Emulator, rsa_pair, alg, hash_cls, pad) -> None:
    priv, kid = rsa_pair
    cc = emulator.crypto_client(kid)
    h = hash_cls()
    digest = hashlib.new(h.name, b"document").digest()
    sig = cc.sign(alg, digest).signature
    scheme = padding.PKCS1v15() if pad == "pkcs1" else padding.PSS(padding.MGF1(h), padding.PSS.AUTO)
    priv.public_key().verify(sig, digest, scheme, utils.Prehashed(h))  # raises if wrong
    assert cc.verify(alg, digest, sig).is_valid is True
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    assert cc.verify(alg, digest, tampered).is_valid is False


@pytest.mark.parametrize("curve,alg,hash_name,size", [
    ("P-256", SignatureAlgorithm.es256, "sha256", 32), ("P-384", SignatureAlgorithm.es384, "sha384", 48),
    ("P-521", SignatureAlgorithm.es512, "sha512", 66),
])
def test_ec_sign_verify(emulator: Emulator, client: KeyClient, name: str, curve, alg, hash_name, size) -> None:
    key = client.create_ec_key(name, curve=curve)
    cc = emulator.crypto_client(key.id)
    digest = hashlib.new(hash_name, b"payload").digest()
    sig = cc.sign(alg, digest).signature
    assert len(sig) == 2 * size, "JWS form r||s"
    curve_cls = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}[curve]
    pub = ec.EllipticCurvePublicNumbers(int.from_bytes(key.key.x, "big"), int.from_bytes(key.key.y, "big"),
                                        curve_cls()).public_key()
    der = utils.encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
    pub.verify(der, digest, ec.ECDSA(utils.Prehashed(getattr(hashes, hash_name.upper())())))
    assert cc.verify(alg, digest, sig).is_valid is True
    assert cc.verify(alg, hashlib.new(hash_name, b"other").digest(), sig).is_valid is False


def test_sign_errors(emulator: Emulator, client: KeyClient, name: str) -> None:
    cc = emulator.crypto_client(client.create_ec_key(name, curve="P-256").id)
    expect_error(400, "BadParameter", cc.sign, SignatureAlgorithm.es256, b"\x00" * 20)  # wrong digest length
    expect_error(400, "BadParameter", cc.sign, SignatureAlgorithm.es384, b"\x00" * 48)  # curve mismatch
    expect_error(400, "BadParameter", cc.sign, SignatureAlgorithm.rs256, b"\x00" * 32)  # wrong key type
    expect_error(403, "Forbidden", cc.encrypt, EncryptionAlgorithm.rsa_oaep, b"x")  # EC keys have no encrypt op


@pytest.mark.parametrize("size,alg", [(128, EncryptionAlgorithm.a128_gcm), (192, EncryptionAlgorithm.a192_gcm),
                                      (256, EncryptionAlgorithm.a256_gcm)])
def test_oct_hsm_gcm(emulator: Emulator, client: KeyClient, name: str, size: int, alg) -> None:
    raw = bytes(range(size // 8))
    kid = client.import_key(name, JsonWebKey(kty=KeyType.oct_hsm, k=raw)).id
    cc = emulator.crypto_client(kid)
    res = cc.encrypt(alg, b"attack at dawn", additional_authenticated_data=b"ctx")
    assert len(res.iv) == 12 and len(res.tag) == 16
    assert AESGCM(raw).decrypt(res.iv, res.ciphertext + res.tag, b"ctx") == b"attack at dawn"
    plain = cc.decrypt(alg, res.ciphertext, iv=res.iv, authentication_tag=res.tag,
                       additional_authenticated_data=b"ctx").plaintext
    assert plain == b"attack at dawn"
    expect_error(400, "BadParameter", cc.decrypt, alg, res.ciphertext, iv=res.iv, authentication_tag=res.tag,
                 additional_authenticated_data=b"other")
    other = EncryptionAlgorithm.a256_gcm if size != 256 else EncryptionAlgorithm.a128_gcm
    expect_error(400, "BadParameter", cc.encrypt, other, b"x")


def test_oct_gcm_crypto_survives_a_fresh_client(emulator: Emulator, client: KeyClient, name: str) -> None:
    """The SDK's local fallback would use a random key for oct-HSM; a second client proves it went remote."""
    kid = client.create_oct_key(name, size=256, hardware_protected=True).id
    res = emulator.crypto_client(kid).encrypt(EncryptionAlgorithm.a256_gcm, b"data")
    out = emulator.crypto_client(kid).decrypt(EncryptionAlgorithm.a256_gcm, res.ciphertext, iv=res.iv,
                                               authentication_tag=res.tag)
    assert out.plaintext == b"data"
    wrapped = emulator.crypto_client(kid).wrap_key(KeyWrapAlgorithm.aes_256, b"w" * 32).encrypted_key
    assert emulator.crypto_client(kid).unwrap_key(KeyWrapAlgorithm.aes_256, wrapped).key == b"w" * 32


@pytest.mark.parametrize("size,alg", [(128, KeyWrapAlgorithm.aes_128), (192, KeyWrapAlgorithm.aes_192),
                                      (256, KeyWrapAlgorithm.aes_256)])
def test_oct_hsm_key_wrap(emulator: Emulator, client: KeyClient, name: str, size: int, alg) -> None:
    raw = bytes(reversed(range(size // 8)))
    kid = client.import_key(name, JsonWebKey(kty=KeyType.oct_hsm, k=raw)).id
    cc = emulator.crypto_client(kid)
    wrapped = cc.wrap_key(alg, b"D" * 32).encrypted_key
    assert wrapped == aes_key_wrap(raw, b"D" * 32)  # RFC 3394 is deterministic
    assert cc.unwrap_key(alg, wrapped).key == b"D" * 32
    expect_error(400, "BadParameter", cc.unwrap_key, alg, b"\x00" * 40)


def test_disabled_key_refuses_operations(emulator: Emulator, client: KeyClient, name: str) -> None:
    key = client.create_rsa_key(name)
    cc = emulator.crypto_client(key.id)
    wrapped = cc.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"x" * 32).encrypted_key
    client.update_key_properties(name, enabled=False)
    err = expect_error(403, "Forbidden", cc.wrap_key, KeyWrapAlgorithm.rsa_oaep_256, b"x" * 32)
    assert "disabled" in err.message
    expect_error(403, "Forbidden", cc.unwrap_key, KeyWrapAlgorithm.rsa_oaep_256, wrapped)
    expect_error(403, "Forbidden", cc.verify, SignatureAlgorithm.rs256, b"\x00" * 32, b"\x00" * 256)
    client.update_key_properties(name, enabled=True)
    assert cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == b"x" * 32


def test_expired_and_not_yet_valid_keys_refuse(emulator: Emulator, client: KeyClient, name: str) -> None:
    key = client.create_oct_key(name, hardware_protected=True)
    cc = emulator.crypto_client(key.id)
    now = int(time.time())
    client.update_key_properties(name, expires_on=dt.datetime.fromtimestamp(now - 10, dt.UTC))
    assert "expired" in expect_error(403, "Forbidden", cc.encrypt, EncryptionAlgorithm.a256_gcm, b"x").message
    client.update_key_properties(name, not_before=dt.datetime.fromtimestamp(now + 3600, dt.UTC),
                                 expires_on=dt.datetime.fromtimestamp(now + 7200, dt.UTC))
    assert "not yet valid" in expect_error(403, "Forbidden", cc.wrap_key, KeyWrapAlgorithm.aes_256,
                                           b"x" * 32).message


def test_key_ops_are_enforced(emulator: Emulator, client: KeyClient, name: str) -> None:
    key = client.create_rsa_key(name, key_operations=["sign", "verify"])
    cc = emulator.crypto_client(key.id)
    expect_error(403, "Forbidden", cc.encrypt, EncryptionAlgorithm.rsa_oaep_256, b"x")
    digest = hashlib.sha256(b"m").digest()
    assert cc.verify(SignatureAlgorithm.rs256, digest, cc.sign(SignatureAlgorithm.rs256, digest).signature).is_valid
    client.update_key_properties(name, key_operations=["encrypt"])
    assert cc.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"x").ciphertext
    expect_error(403, "Forbidden", cc.sign, SignatureAlgorithm.rs256, digest)


def test_crypto_on_missing_key(emulator: Emulator, name: str) -> None:
    cc = emulator.crypto_client(f"{emulator.vault_url}/keys/{name}/{'0' * 32}")
    expect_error(404, "KeyNotFound", cc.wrap_key, KeyWrapAlgorithm.rsa_oaep, b"x" * 32)


def test_random_bytes(client: KeyClient) -> None:
    a, b = client.get_random_bytes(32), client.get_random_bytes(32)
    assert len(a) == 32 and a != b
    expect_error(400, "BadParameter", client.get_random_bytes, 129)
