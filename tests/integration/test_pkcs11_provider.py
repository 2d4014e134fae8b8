"""The pkcs11 provider against a real SoftHSM2 token: every key spec, import, the root of trust, failure modes,
and the "no key material in clear at rest" proof."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding, aes_key_wrap_with_padding
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from broker.model import (
    EncryptionAlgorithm,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
    signing_algorithms_for,
)
from broker.service import KeyService, RequestContext
from providers.base import (
    ProviderInvalidCiphertext,
    ProviderInvalidInput,
    ProviderKeyRef,
    ProviderUnavailable,
    ProviderUnsupported,
)
from providers.pkcs11 import Pkcs11Provider
from tests.support.hsm import TestToken

REPO = Path(__file__).resolve().parents[2]
ASYMMETRIC = [s for s in KeySpec if s.is_asymmetric]
HMACS = [s for s in KeySpec if s.is_hmac]
_HASH = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def _usage(spec: KeySpec) -> KeyUsage:
    if spec.is_hmac:
        return KeyUsage.GENERATE_VERIFY_MAC
    return KeyUsage.SIGN_VERIFY if spec.is_asymmetric else KeyUsage.ENCRYPT_DECRYPT


@pytest.fixture(scope="module")
def refs(hsm_provider: Pkcs11Provider) -> dict[KeySpec, ProviderKeyRef]:
    """One key of every spec for the module (RSA-4096 generation in SoftHSM takes seconds)."""
    return {spec: hsm_provider.create_key(spec, _usage(spec), label=f"test-{spec.value}") for spec in KeySpec}


def _stored(ref: ProviderKeyRef) -> ProviderKeyRef:
    """What the store gives back: the ref through its JSON form."""
    return ProviderKeyRef.from_dict(json.loads(json.dumps(ref.to_dict())))


# ------------------------------------------------------------------------------------------------ key creation


def test_capabilities_cover_every_spec(hsm_provider: Pkcs11Provider) -> None:
    caps = hsm_provider.capabilities
    assert caps.key_specs == frozenset(KeySpec)
    assert all(caps.missing_for(spec) is None for spec in KeySpec)
    assert caps.native_symmetric and caps.sign and caps.mac and caps.import_material and caps.asymmetric_decrypt


@pytest.mark.parametrize("spec", list(KeySpec), ids=str)
def test_create_key_gives_wrapped_material_only(refs, spec: KeySpec) -> None:
    ref = refs[spec]
    assert ref.material and ref.key_id == f"test-{spec.value}"
    assert "material" not in repr(ref) and ref.material.hex() not in repr(ref)
    as_dict = ref.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert _stored(ref) == ref
    if spec.is_asymmetric:
        public = serialization.load_der_public_key(bytes.fromhex(ref.extra["public_key"]))
        if spec.is_rsa:
            assert isinstance(public, rsa.RSAPublicKey) and public.key_size == spec.rsa_bits
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert public.curve.name == {"ECC_NIST_P256": "secp256r1", "ECC_NIST_P384": "secp384r1",
                                         "ECC_NIST_P521": "secp521r1", "ECC_SECG_P256K1": "secp256k1"}[spec.value]
    else:
        assert "public_key" not in ref.extra


@pytest.mark.parametrize("spec", [s for s in KeySpec if not s.is_asymmetric], ids=str)
def test_symmetric_keys_have_no_public_key(hsm_provider: Pkcs11Provider, refs, spec: KeySpec) -> None:
    with pytest.raises(ProviderUnsupported):
        hsm_provider.get_public_key(refs[spec])


def test_two_keys_of_a_spec_differ(hsm_provider: Pkcs11Provider, refs) -> None:
    other = hsm_provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="other")
    assert other.material != refs[KeySpec.SYMMETRIC_DEFAULT].material
    blob = hsm_provider.encrypt(other, b"secret", b"aad")
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.decrypt(refs[KeySpec.SYMMETRIC_DEFAULT], blob, b"aad")


# ------------------------------------------------------------------------------------------------ symmetric


@pytest.mark.parametrize("size", [0, 1, 31, 4096])
def test_gcm_round_trip_with_aad(hsm_provider: Pkcs11Provider, refs, size: int) -> None:
    ref = refs[KeySpec.SYMMETRIC_DEFAULT]
    plaintext, aad = os.urandom(size), b"header||{\"tenant\":\"a\"}"
    blob = hsm_provider.encrypt(ref, plaintext, aad)
    assert len(blob) == 12 + size + 16
    assert size < 16 or plaintext not in blob  # a short random plaintext may occur in random bytes by chance
    assert hsm_provider.decrypt(ref, blob, aad) == plaintext
    assert hsm_provider.encrypt(ref, plaintext, aad) != blob  # fresh IV each time


def test_gcm_rejects_wrong_aad_and_tampering(hsm_provider: Pkcs11Provider, refs) -> None:
    ref = refs[KeySpec.SYMMETRIC_DEFAULT]
    blob = hsm_provider.encrypt(ref, b"attack at dawn", b"aad-1")
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.decrypt(ref, blob, b"aad-2")
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.decrypt(ref, blob, b"")
    for pos in (0, 11, 12, len(blob) - 1):  # IV, ciphertext, tag
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        with pytest.raises(ProviderInvalidCiphertext):
            hsm_provider.decrypt(ref, bytes(tampered), b"aad-1")
    for cut in (0, 12, 27, len(blob) - 1):
        with pytest.raises(ProviderInvalidCiphertext):
            hsm_provider.decrypt(ref, blob[:cut], b"aad-1")
    # the session is still usable after the failures
    assert hsm_provider.decrypt(ref, blob, b"aad-1") == b"attack at dawn"


def test_create_version_gives_new_material_and_old_keeps_decrypting(hsm_provider: Pkcs11Provider, refs) -> None:
    v1 = refs[KeySpec.SYMMETRIC_DEFAULT]
    old_blob = hsm_provider.encrypt(v1, b"v1 data", b"a")
    v2 = hsm_provider.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=v1.key_id)
    assert v2.material != v1.material
    new_blob = hsm_provider.encrypt(v2, b"v2 data", b"a")
    assert hsm_provider.decrypt(v2, new_blob, b"a") == b"v2 data"
    assert hsm_provider.decrypt(v1, old_blob, b"a") == b"v1 data"
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.decrypt(v1, new_blob, b"a")
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.decrypt(v2, old_blob, b"a")


def test_state_is_in_the_ref_not_the_process(hsm_token: TestToken, hsm_provider: Pkcs11Provider, refs) -> None:
    """A second provider instance (fresh cache) and the first with its cache cleared both use the stored ref."""
    refs_in = {s: _stored(refs[s]) for s in (KeySpec.SYMMETRIC_DEFAULT, KeySpec.HMAC_256, KeySpec.ECC_NIST_P256,
                                             KeySpec.RSA_2048, KeySpec.ECC_NIST_P384)}
    blob = hsm_provider.encrypt(refs[KeySpec.SYMMETRIC_DEFAULT], b"portable", b"ctx")
    mac = hsm_provider.generate_mac(refs[KeySpec.HMAC_256], b"msg", MacAlgorithm.HMAC_SHA_256)
    second = hsm_token.provider("hsm-2")
    try:
        assert not second._cache
        assert second.decrypt(refs_in[KeySpec.SYMMETRIC_DEFAULT], blob, b"ctx") == b"portable"
        assert second.generate_mac(refs_in[KeySpec.HMAC_256], b"msg", MacAlgorithm.HMAC_SHA_256) == mac
        digest = hashlib.sha256(b"m").digest()
        sig = second.sign(refs_in[KeySpec.ECC_NIST_P256], digest, SigningAlgorithm.ECDSA_SHA_256)
        public = serialization.load_der_public_key(hsm_provider.get_public_key(refs[KeySpec.ECC_NIST_P256]))
        public.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        sig = second.sign(refs_in[KeySpec.RSA_2048], digest, SigningAlgorithm.RSASSA_PSS_SHA_256)
        public = serialization.load_der_public_key(hsm_provider.get_public_key(refs[KeySpec.RSA_2048]))
        public.verify(sig, digest, padding.PSS(padding.MGF1(hashes.SHA256()), 32), Prehashed(hashes.SHA256()))
        digest = hashlib.sha384(b"m").digest()
        sig = second.sign(refs_in[KeySpec.ECC_NIST_P384], digest, SigningAlgorithm.ECDSA_SHA_384)
        public = serialization.load_der_public_key(hsm_provider.get_public_key(refs[KeySpec.ECC_NIST_P384]))
        public.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA384())))
    finally:
        second.close()
    with hsm_provider._session.lock:
        hsm_provider._cache.clear()
    assert hsm_provider.decrypt(refs_in[KeySpec.SYMMETRIC_DEFAULT], blob, b"ctx") == b"portable"


def test_material_that_is_not_a_wrapped_key_is_refused(hsm_provider: Pkcs11Provider) -> None:
    with pytest.raises(ProviderInvalidInput):
        hsm_provider.encrypt(ProviderKeyRef(key_id="x"), b"p", b"")
    with pytest.raises(ProviderInvalidInput):
        hsm_provider.encrypt(ProviderKeyRef(key_id="x", material=os.urandom(40), extra={"kind": "bogus"}), b"p", b"")


# ------------------------------------------------------------------------------------------------ asymmetric


@pytest.mark.parametrize(("spec", "algorithm"), [(s, a) for s in ASYMMETRIC for a in signing_algorithms_for(s)],
                         ids=lambda v: str(v))
def test_sign_verifies_with_cryptography(hsm_provider: Pkcs11Provider, refs, spec: KeySpec,
                                         algorithm: SigningAlgorithm) -> None:
    ref = refs[spec]
    public = serialization.load_der_public_key(hsm_provider.get_public_key(ref))
    h = _HASH[algorithm.hash_name]()
    message = f"message for {spec.value} {algorithm.value}".encode()
    digest = hashlib.new(algorithm.hash_name, message).digest()
    signature = hsm_provider.sign(ref, digest, algorithm)

    def verify(sig: bytes, dig: bytes) -> None:
        if algorithm.is_ecdsa:
            public.verify(sig, dig, ec.ECDSA(Prehashed(h)))
        elif algorithm.is_pss:
            public.verify(sig, dig, padding.PSS(padding.MGF1(h), h.digest_size), Prehashed(h))
        else:
            public.verify(sig, dig, padding.PKCS1v15(), Prehashed(h))

    verify(signature, digest)
    if algorithm.is_pss or algorithm.is_ecdsa:
        assert hsm_provider.sign(ref, digest, algorithm) != signature  # randomised schemes
    else:
        assert hsm_provider.sign(ref, digest, algorithm) == signature  # PKCS#1 v1.5 is deterministic
    wrong = hashlib.new(algorithm.hash_name, message + b"!").digest()
    with pytest.raises(InvalidSignature):
        verify(signature, wrong)


@pytest.mark.parametrize("spec", [s for s in KeySpec if s.is_rsa], ids=str)
def test_rsa_oaep_decrypt_in_the_hsm(hsm_provider: Pkcs11Provider, refs, spec: KeySpec) -> None:
    """SoftHSM offers OAEP with SHA-1 only; the capability says exactly that, and SHA-256 is refused, not faked."""
    algorithm = EncryptionAlgorithm.RSAES_OAEP_SHA_1
    assert hsm_provider.capabilities.encryption_algorithms == frozenset({algorithm})
    ref = refs[spec]
    public = serialization.load_der_public_key(hsm_provider.get_public_key(ref))
    h = hashes.SHA1()
    oaep = padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)
    longest = os.urandom(spec.rsa_bits // 8 - 2 * h.digest_size - 2)
    for plaintext in (b"", b"asymmetric secret", longest):
        blob = public.encrypt(plaintext, oaep)
        assert hsm_provider.asymmetric_decrypt(ref, blob, algorithm) == plaintext
    with pytest.raises(ProviderUnsupported):
        hsm_provider.asymmetric_decrypt(ref, blob, EncryptionAlgorithm.RSAES_OAEP_SHA_256)
    for bad in (blob[:-1] + bytes([blob[-1] ^ 1]), blob[:-1], b"\x00" * len(blob), b"\xff" * len(blob)):
        with pytest.raises(ProviderInvalidCiphertext):
            hsm_provider.asymmetric_decrypt(ref, bad, algorithm)
    with pytest.raises(ProviderUnsupported):
        hsm_provider.asymmetric_decrypt(ref, blob, EncryptionAlgorithm.SYMMETRIC_DEFAULT)


# ------------------------------------------------------------------------------------------------ HMAC


@pytest.mark.parametrize("spec", HMACS, ids=str)
def test_hmac_is_consistent_and_keyed(hsm_provider: Pkcs11Provider, refs, spec: KeySpec) -> None:
    algorithm = MacAlgorithm(f"HMAC_SHA_{spec.hmac_bits}")
    ref = refs[spec]
    mac = hsm_provider.generate_mac(ref, b"message", algorithm)
    assert len(mac) == spec.hmac_bits // 8
    assert hsm_provider.generate_mac(ref, b"message", algorithm) == mac
    assert hsm_provider.generate_mac(ref, b"message!", algorithm) != mac
    other = hsm_provider.create_key(spec, KeyUsage.GENERATE_VERIFY_MAC, label="other-hmac")
    assert hsm_provider.generate_mac(other, b"message", algorithm) != mac


# ------------------------------------------------------------------------------------------------ import


def _wrap(public_der: bytes, material: bytes, algorithm: str) -> bytes:
    public = serialization.load_der_public_key(public_der)
    if algorithm == "RSAES_OAEP_SHA_1":
        return public.encrypt(material, OAEP_SHA1)
    ephemeral = os.urandom(32)
    return public.encrypt(ephemeral, OAEP_SHA1) + aes_key_wrap_with_padding(ephemeral, material)


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"])
def test_import_symmetric_matches_software_aes_gcm(hsm_provider: Pkcs11Provider, algorithm: str) -> None:
    known = os.urandom(32)
    params = hsm_provider.begin_import(KeySpec.SYMMETRIC_DEFAULT)
    assert set(params.wrapping_algorithms) == {"RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"}
    assert serialization.load_der_public_key(params.public_key_der).key_size == 2048
    ref = hsm_provider.finish_import(params.handle, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                     _wrap(params.public_key_der, known, algorithm), algorithm, label="imported")
    assert known not in ref.material
    hsm_blob = hsm_provider.encrypt(ref, b"imported plaintext", b"aad")
    assert AESGCM(known).decrypt(hsm_blob[:12], hsm_blob[12:], b"aad") == b"imported plaintext"
    nonce = os.urandom(12)
    soft_blob = nonce + AESGCM(known).encrypt(nonce, b"from software", b"aad2")
    assert hsm_provider.decrypt(_stored(ref), soft_blob, b"aad2") == b"from software"
    hsm_provider.discard_import(params.handle)


@pytest.mark.parametrize("spec", HMACS, ids=str)
def test_import_hmac_matches_python_hmac(hsm_provider: Pkcs11Provider, spec: KeySpec) -> None:
    known = os.urandom(spec.hmac_bits // 8)
    algorithm = MacAlgorithm(f"HMAC_SHA_{spec.hmac_bits}")
    params = hsm_provider.begin_import(spec)
    ref = hsm_provider.finish_import(params.handle, spec, KeyUsage.GENERATE_VERIFY_MAC,
                                     _wrap(params.public_key_der, known, "RSA_AES_KEY_WRAP_SHA_1"),
                                     "RSA_AES_KEY_WRAP_SHA_1", label="imported-hmac")
    expected = hmac.new(known, b"the message", algorithm.hash_name).digest()
    assert hsm_provider.generate_mac(ref, b"the message", algorithm) == expected


@pytest.mark.parametrize(("spec", "length"), [
    (KeySpec.SYMMETRIC_DEFAULT, 16), (KeySpec.SYMMETRIC_DEFAULT, 24), (KeySpec.SYMMETRIC_DEFAULT, 31),
    (KeySpec.SYMMETRIC_DEFAULT, 25), (KeySpec.SYMMETRIC_DEFAULT, 33), (KeySpec.HMAC_256, 48),
    (KeySpec.HMAC_256, 28), (KeySpec.HMAC_384, 47), (KeySpec.HMAC_512, 32), (KeySpec.HMAC_512, 63),
], ids=str)
@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"])
def test_import_wrong_length_material_is_rejected(hsm_provider: Pkcs11Provider, spec: KeySpec, length: int,
                                                  algorithm: str) -> None:
    params = hsm_provider.begin_import(spec)
    with pytest.raises(ProviderInvalidInput, match="bytes"):
        hsm_provider.finish_import(params.handle, spec, _usage(spec),
                                   _wrap(params.public_key_der, os.urandom(length), algorithm), algorithm, label="x")


def test_import_refuses_garbage_and_foreign_wrapping(hsm_provider: Pkcs11Provider) -> None:
    params = hsm_provider.begin_import(KeySpec.SYMMETRIC_DEFAULT)
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.finish_import(params.handle, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                   os.urandom(256), "RSAES_OAEP_SHA_1", label="x")
    other = hsm_provider.begin_import(KeySpec.SYMMETRIC_DEFAULT)  # material wrapped for another import
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.finish_import(params.handle, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                   _wrap(other.public_key_der, os.urandom(32), "RSAES_OAEP_SHA_1"),
                                   "RSAES_OAEP_SHA_1", label="x")
    with pytest.raises(ProviderInvalidInput):
        hsm_provider.finish_import(params.handle, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                   _wrap(params.public_key_der, os.urandom(32), "RSAES_OAEP_SHA_1"),
                                   "RSAES_OAEP_SHA_256", label="x")
    with pytest.raises(ProviderUnsupported):
        hsm_provider.begin_import(KeySpec.RSA_2048)


def _import_into(provider: Pkcs11Provider, spec: KeySpec, material: bytes, ref=None):
    params = provider.begin_import(spec, ref=ref)
    try:
        return provider.finish_import(params.handle, spec, _usage(spec),
                                      _wrap(params.public_key_der, material, "RSA_AES_KEY_WRAP_SHA_1"),
                                      "RSA_AES_KEY_WRAP_SHA_1", label="reimported", ref=ref)
    finally:
        provider.discard_import(params.handle)


@pytest.mark.parametrize("spec", [KeySpec.SYMMETRIC_DEFAULT, KeySpec.HMAC_256], ids=str)
def test_reimport_takes_only_the_same_material_even_after_it_was_deleted(hsm_provider: Pkcs11Provider,
                                                                         spec: KeySpec) -> None:
    known = os.urandom(32)
    first = _import_into(hsm_provider, spec, known)
    assert first.extra["check"] and known.hex() not in json.dumps(first.to_dict())
    kept = hsm_provider.delete_imported_material(first)
    assert kept.material is None and kept.extra["check"] == first.extra["check"]
    with pytest.raises(ProviderInvalidInput, match="different key material"):
        _import_into(hsm_provider, spec, os.urandom(32), ref=_stored(kept))
    again = _import_into(hsm_provider, spec, known, ref=_stored(kept))
    assert again.material == first.material and again.extra["check"] == first.extra["check"]
    with pytest.raises(ProviderInvalidInput):  # while it holds material, too
        _import_into(hsm_provider, spec, os.urandom(32), ref=_stored(again))


def test_reimport_into_a_key_imported_before_check_values(hsm_provider: Pkcs11Provider) -> None:
    """Refs made before check values existed: compared by their wrapped material while they hold it."""
    known = os.urandom(32)
    first = _import_into(hsm_provider, KeySpec.SYMMETRIC_DEFAULT, known)
    legacy = ProviderKeyRef(first.key_id, material=first.material, extra={"kind": "aes"})
    assert _import_into(hsm_provider, KeySpec.SYMMETRIC_DEFAULT, known, ref=legacy).material == first.material
    with pytest.raises(ProviderInvalidInput):
        _import_into(hsm_provider, KeySpec.SYMMETRIC_DEFAULT, os.urandom(32), ref=legacy)


def test_wrap_specs_are_the_specs_the_hsm_wraps_exactly(hsm_provider: Pkcs11Provider, refs) -> None:
    """Measured, not assumed: each EC key wrapped for import (RSA_AES_KEY_WRAP_SHA_1 for a software recipient)
    unwraps to a PKCS#8 that parses exactly when its spec is among `wrap_specs`. SoftHSM 2.6.1: P-384 and secp256k1
    are exact; P-256 and P-521 come out zero-padded; RSA is never promised."""
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

    exact = hsm_provider.capabilities.wrap_specs
    assert {s for s in KeySpec if not s.is_asymmetric} <= exact and not any(s.is_rsa for s in exact)
    recipient = rsa.generate_private_key(65537, 2048)
    recipient_der = recipient.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    for spec in (s for s in KeySpec if s.is_ecc):
        wrapped = hsm_provider.root_of_trust().wrap_for_import(refs[spec], recipient_der, "RSA_AES_KEY_WRAP_SHA_1")
        ephemeral = recipient.decrypt(wrapped[:256], OAEP_SHA1)
        pkcs8 = aes_key_unwrap_with_padding(ephemeral, wrapped[256:])
        if spec in exact:
            private = serialization.load_der_private_key(pkcs8, None)
            assert private.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo) \
                == hsm_provider.get_public_key(refs[spec])
        else:
            with pytest.raises(ValueError):
                serialization.load_der_private_key(pkcs8, None)
            assert pkcs8.endswith(b"\x00")
    assert exact >= {KeySpec.ECC_NIST_P384, KeySpec.ECC_SECG_P256K1}


def test_oaep_sha256_is_offered_exactly_when_the_token_decrypts_it(hsm_provider: Pkcs11Provider, refs) -> None:
    """The capability is probed in the token (a throwaway key pair), not assumed. SoftHSM 2.6.1 has OAEP with
    SHA-1 only: this test fails the day the module decrypts OAEP-SHA-256 (then the broker offers it)."""
    from pkcs11.exceptions import ArgumentsBad

    ref = refs[KeySpec.RSA_2048]
    public = serialization.load_der_public_key(hsm_provider.get_public_key(ref))
    oaep256 = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    blob = public.encrypt(b"probe", oaep256)
    offered = hsm_provider.capabilities.encryption_algorithms
    assert EncryptionAlgorithm.RSAES_OAEP_SHA_1 in offered
    assert (EncryptionAlgorithm.RSAES_OAEP_SHA_256 in offered) is hsm_provider._offers_oaep_sha256()
    if EncryptionAlgorithm.RSAES_OAEP_SHA_256 in offered:
        assert hsm_provider.asymmetric_decrypt(ref, blob, EncryptionAlgorithm.RSAES_OAEP_SHA_256) == b"probe"
    else:
        with pytest.raises(ProviderUnsupported):
            hsm_provider.asymmetric_decrypt(ref, blob, EncryptionAlgorithm.RSAES_OAEP_SHA_256)
        with pytest.raises(ArgumentsBad):  # the module itself refuses the mechanism parameters
            hsm_provider._call(lambda s: hsm_provider._object(s, ref).decrypt(
                blob, mechanism=pkcs11.Mechanism.RSA_PKCS_OAEP,
                mechanism_param=(pkcs11.Mechanism.SHA256, pkcs11.MGF.SHA256, None)))


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"])
def test_wrap_for_import_moves_material_between_hsm_keys(hsm_provider: Pkcs11Provider, refs, algorithm: str) -> None:
    """HSM material exported for an import API (here: our own) is the same key on the other side."""
    source = refs[KeySpec.SYMMETRIC_DEFAULT]
    blob = hsm_provider.encrypt(source, b"moved", b"a")
    params = hsm_provider.begin_import(KeySpec.SYMMETRIC_DEFAULT)
    wrapped = hsm_provider.root_of_trust().wrap_for_import(source, params.public_key_der, algorithm)
    copy = hsm_provider.finish_import(params.handle, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                      wrapped, algorithm, label="copy")
    assert hsm_provider.decrypt(copy, blob, b"a") == b"moved"


# ------------------------------------------------------------------------------------------------ root of trust


def test_seal_unseal(hsm_provider: Pkcs11Provider) -> None:
    sealed = hsm_provider.root_of_trust().seal(b"broker secret", b"purpose")
    assert b"broker secret" not in sealed and len(sealed) == 12 + 13 + 16
    assert hsm_provider.root_of_trust().unseal(sealed, b"purpose") == b"broker secret"
    assert hsm_provider.root_of_trust().seal(b"broker secret", b"purpose") != sealed
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.root_of_trust().unseal(sealed, b"other purpose")
    tampered = bytearray(sealed)
    tampered[20] ^= 0x80
    with pytest.raises(ProviderInvalidCiphertext):
        hsm_provider.root_of_trust().unseal(bytes(tampered), b"purpose")


def test_audit_hmac_is_deterministic_and_keyed_in_the_hsm(hsm_token: TestToken, hsm_provider: Pkcs11Provider) -> None:
    a = hsm_provider.root_of_trust().audit_hmac(b"value")
    assert len(a) == 32 and hsm_provider.root_of_trust().audit_hmac(b"value") == a
    assert hsm_provider.root_of_trust().audit_hmac(b"value2") != a
    assert a != hmac.new(b"", b"value", "sha256").digest() and a != hashlib.sha256(b"value").digest()
    second = hsm_token.provider("hsm-audit")
    try:
        assert second.root_of_trust().audit_hmac(b"value") == a
    finally:
        second.close()


def test_root_kek_leaves_only_under_a_trusted_key(hsm_provider: Pkcs11Provider) -> None:
    """Never readable; wrappable only under a key the security officer marked trusted (node transfer, backup)."""
    with hsm_provider._session.lock:
        session = hsm_provider._session.get()
        root = hsm_provider._root(session)
        assert root[Attribute.SENSITIVE] is True and root[Attribute.WRAP_WITH_TRUSTED] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            _ = root[Attribute.VALUE]
        mine = session.generate_key(KeyType.AES, 256, template={Attribute.TOKEN: False, Attribute.SENSITIVE: False,
                                                                  Attribute.EXTRACTABLE: True, Attribute.WRAP: True})
        try:
            with pytest.raises(pkcs11.exceptions.KeyNotWrappable):
                mine.wrap_key(root, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        finally:
            mine.destroy()


def test_random(hsm_provider: Pkcs11Provider) -> None:
    a, b = hsm_provider.random(32), hsm_provider.random(32)
    assert len(a) == 32 and a != b
    assert len(hsm_provider.random(1024)) == 1024


# ------------------------------------------------------------------------------------------------ HSM unavailable


def test_missing_token_label_is_unavailable(hsm_token: TestToken) -> None:
    provider = hsm_token.provider("missing", token_label="no-such-token")
    with pytest.raises(ProviderUnavailable):
        provider.check_health()
    with pytest.raises(ProviderUnavailable):
        provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="x")


def test_missing_pin_is_unavailable(hsm_token: TestToken, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KMSB_HSM_PIN", raising=False)
    provider = hsm_token.provider("nopin", pin_file=str(tmp_path / "absent.pin"))
    with pytest.raises(ProviderUnavailable, match="PIN"):
        provider.check_health()


_PROBE = """
import json, sys
from broker.model import KeySpec, KeyUsage
from providers.base import ProviderUnavailable
from providers.pkcs11 import Pkcs11Provider
provider = Pkcs11Provider.from_config("probe", json.loads(sys.argv[1]))
out = {}
for name, call in [("health", provider.check_health),
                   ("create", lambda: provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="x"))]:
    try:
        call()
        out[name] = "ok"
    except ProviderUnavailable as exc:
        out[name] = "unavailable: " + str(exc)
print(json.dumps(out))
"""


def _probe(config: dict) -> dict:
    """A fresh process (PKCS#11 login is per process) that reports what the provider raised; it must not crash."""
    env = {k: v for k, v in os.environ.items() if k != "KMSB_HSM_PIN"}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_wrong_pin_is_unavailable_not_a_crash(hsm_token: TestToken, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin")
    out = _probe(hsm_token.config(pin_file=str(wrong)))
    assert out["health"].startswith("unavailable") and "PinIncorrect" in out["health"]
    assert out["create"].startswith("unavailable")
    assert "not-the-pin" not in json.dumps(out)
    # the right PIN in the same kind of fresh process works (the probe itself is sound)
    assert _probe(hsm_token.config()) == {"health": "ok", "create": "ok"}


def test_missing_token_in_fresh_process(hsm_token: TestToken) -> None:
    out = _probe(hsm_token.config(token_label="absent"))
    assert out["health"].startswith("unavailable") and out["create"].startswith("unavailable")


# ------------------------------------------------------------------------------------------------ nothing in clear at rest


def _export(provider: Pkcs11Provider, ref: ProviderKeyRef) -> bytes:
    """TEST-ONLY: the clear bytes of a key object (raw secret, or PKCS#8 DER), via a known session wrapping key."""
    known = os.urandom(32)
    with provider._session.lock:
        session = provider._session.get()
        wrapper = session.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.VALUE: known,
            Attribute.TOKEN: False, Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.EXTRACTABLE: True,
        })
        try:
            wrapped = wrapper.wrap_key(provider._object(session, ref), mechanism=Mechanism.AES_KEY_WRAP_PAD)
        finally:
            wrapper.destroy()
    return aes_key_unwrap_with_padding(known, wrapped)


def _der_trim(data: bytes) -> bytes:
    """SoftHSM zero-pads a wrapped value to a multiple of 8 bytes: cut a DER SEQUENCE back to its own length."""
    assert data[0] == 0x30
    if data[1] < 0x80:
        return data[:2 + data[1]]
    n = data[1] & 0x7F
    return data[:2 + n + int.from_bytes(data[2:2 + n], "big")]


def _secrets_of(spec: KeySpec, clear: bytes) -> dict[str, bytes]:
    """The byte strings that must never be at rest: the whole export and, for key pairs, the private numbers."""
    if spec.is_asymmetric:
        clear = _der_trim(clear)
    out = {"export": clear}
    if spec.is_asymmetric:
        private = serialization.load_der_private_key(clear, password=None)
        if spec.is_rsa:
            n = private.private_numbers()
            size = (private.key_size + 7) // 8
            for name, value in [("d", n.d), ("p", n.p), ("q", n.q), ("dmp1", n.dmp1), ("dmq1", n.dmq1),
                                ("iqmp", n.iqmp)]:
                out[name] = value.to_bytes((value.bit_length() + 7) // 8, "big")
            assert len(out["d"]) <= size
        else:
            value = private.private_numbers().private_value
            out["private_value"] = value.to_bytes((private.curve.key_size + 7) // 8, "big")
    return out


def _forms(secret: bytes) -> list[bytes]:
    """The encodings a careless writer might use: raw, hex (both cases), base64 (std and url-safe)."""
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.urlsafe_b64encode(secret)]


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def _assert_absent(secrets: dict[str, dict[str, bytes]], roots: list[Path]) -> int:
    files = _files(*roots)
    contents = {p: p.read_bytes() for p in files}
    checked = 0
    for label, parts in secrets.items():
        for part, value in parts.items():
            assert len(value) >= 16, (label, part)
            for form in _forms(value):
                for path, data in contents.items():
                    assert form not in data, f"{label} {part} found in clear in {path}"
                    checked += 1
    return checked


def test_no_key_material_in_clear_at_rest(key_service: KeyService, root_ctx: RequestContext,
                                          hsm_provider: Pkcs11Provider, hsm_token: TestToken) -> None:
    svc = key_service
    data_dir = Path(svc.audit.path).parent
    secrets: dict[str, dict[str, bytes]] = {}
    for spec in KeySpec:
        # RSA-2048 with both usages; the slow big RSA sizes once each (one per usage)
        usages = {KeySpec.RSA_2048: [KeyUsage.ENCRYPT_DECRYPT, KeyUsage.SIGN_VERIFY],
                  KeySpec.RSA_3072: [KeyUsage.ENCRYPT_DECRYPT]}.get(spec, [_usage(spec)])
        for usage in usages:
            meta = svc.create_key(root_ctx, key_spec=spec.value, key_usage=usage.value, description=spec.value)
            key_id = meta["KeyId"]
            if spec is KeySpec.SYMMETRIC_DEFAULT:
                blob = svc.encrypt(root_ctx, key_id, b"hello", context={"a": "b"})["CiphertextBlob"]
                svc.decrypt(root_ctx, blob, context={"a": "b"})
                svc.rotate_key_on_demand(root_ctx, key_id)
            elif spec.is_hmac:
                svc.generate_mac(root_ctx, key_id, b"m", f"HMAC_SHA_{spec.hmac_bits}")
            elif usage is KeyUsage.SIGN_VERIFY:
                svc.sign(root_ctx, key_id, b"m", signing_algorithms_for(spec)[0].value)
            for kv in svc.store.list_versions(key_id):
                ref = ProviderKeyRef.from_dict(kv.provider_ref)
                clear = _export(hsm_provider, ref)
                expected_len = {KeySpec.SYMMETRIC_DEFAULT: 32}.get(spec, spec.hmac_bits // 8 if spec.is_hmac else None)
                if expected_len:
                    assert len(clear) == expected_len
                secrets[f"{spec.value}/{usage.value}/v{kv.version}"] = _secrets_of(spec, clear)
    # known material, imported
    known = os.urandom(32)
    key_id = svc.create_key(root_ctx, key_spec="SYMMETRIC_DEFAULT", origin="EXTERNAL")["KeyId"]
    params = svc.get_parameters_for_import(root_ctx, key_id, "RSA_AES_KEY_WRAP_SHA_1")
    svc.import_key_material(root_ctx, key_id, params["ImportToken"],
                            _wrap(params["PublicKey"], known, "RSA_AES_KEY_WRAP_SHA_1"))
    blob = svc.encrypt(root_ctx, key_id, b"with imported", context={"k": "v"})["CiphertextBlob"]
    assert AESGCM(known).decrypt(blob[-(12 + 13 + 16):][:12], blob[-(13 + 16):],
                                 blob[:-(12 + 13 + 16)] + b'{"k":"v"}') == b"with imported"
    secrets["imported"] = {"known": known}

    assert len(secrets) == 2 + 3 + 4 + 4 + 1  # AES v1+v2, 3 HMAC, 4 RSA, 4 ECC (P-256, P-384, P-521, secp256k1), imported
    roots = [data_dir, hsm_token.directory]
    assert (data_dir / "broker.db-wal").is_file() and (data_dir / "audit.jsonl").is_file()
    assert _assert_absent(secrets, roots) > 0
    # the store does hold the wrapped forms (so the scan looks at the right bytes)
    wrapped_hex = ProviderKeyRef.from_dict(svc.store.list_versions(key_id)[0].provider_ref).material.hex().encode()
    assert any(wrapped_hex in p.read_bytes() for p in _files(data_dir))
    svc.store.dispose()  # checkpoint the WAL into the main file, then look again
    _assert_absent(secrets, roots)


def test_threads_across_provider_instances(hsm_token: TestToken, hsm_provider: Pkcs11Provider, refs) -> None:
    """Several threads on two provider instances of one process (SoftHSM crashes on unserialised sessions)."""
    from concurrent.futures import ThreadPoolExecutor

    second = hsm_token.provider("hsm-threads")
    ref = _stored(refs[KeySpec.SYMMETRIC_DEFAULT])
    mac_ref = refs[KeySpec.HMAC_256]
    expected_mac = hsm_provider.generate_mac(mac_ref, b"t", MacAlgorithm.HMAC_SHA_256)

    def work(i: int) -> int:
        provider = (hsm_provider, second)[i % 2]
        done = 0
        for n in range(150):
            data = f"{i}-{n}".encode()
            assert provider.decrypt(ref, provider.encrypt(ref, data, b"t"), b"t") == data
            assert provider.generate_mac(mac_ref, b"t", MacAlgorithm.HMAC_SHA_256) == expected_mac
            done += 1
        return done

    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(work, range(8))) == 8 * 150
    finally:
        second.close()


def test_capabilities_are_built_once_the_probes_answered(hsm_token) -> None:
    """Asked on every crypto call, so built once; but not before the token answered its probes: an HSM out of reach
    at first gives a conservative answer that is not kept."""
    provider = hsm_token.provider()
    real_call = provider._call

    def unreachable(fn):
        raise ProviderUnavailable("the HSM is out of reach")

    try:
        provider._call = unreachable  # type: ignore[method-assign]
        early = provider.capabilities
        assert EncryptionAlgorithm.RSAES_OAEP_SHA_256 not in early.encryption_algorithms
        assert early.wrap_specs == frozenset(s for s in KeySpec if not s.is_asymmetric)
        assert provider.capabilities is not early  # not kept: rebuilt until the probes answer
        provider._call = real_call  # type: ignore[method-assign]
        answered = provider.capabilities
        assert answered.wrap_specs > early.wrap_specs  # the EC curves SoftHSM wraps exactly, measured now
        assert provider.capabilities is answered  # kept from here on
    finally:
        provider.close()


def test_gcm_ivs_come_from_the_hsm_a_block_at_a_time_and_never_repeat(hsm_provider: Pkcs11Provider, refs) -> None:
    """Each encrypt's IV is 12 bytes of the HSM's generator no other encrypt got; the generator is called once per
    256 IVs (broker.random_pool), not once per encrypt."""
    ref = refs[KeySpec.SYMMETRIC_DEFAULT]
    drawn = []
    real = hsm_provider._ivs.take

    def spy(n, draw):
        return real(n, lambda k: drawn.append(k) or draw(k))
    hsm_provider._ivs.take = spy
    try:
        blobs = [hsm_provider.encrypt(ref, b"same plaintext", b"aad") for _ in range(600)]
    finally:
        del hsm_provider._ivs.take
    ivs = {blob[:12] for blob in blobs}
    assert len(ivs) == 600
    assert drawn and set(drawn) == {12 * 256} and len(drawn) <= 600 // 256 + 1
    assert all(hsm_provider.decrypt(ref, blob, b"aad") == b"same plaintext" for blob in blobs[:5])
