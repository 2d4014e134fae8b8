"""The AWS provider over the wire against LocalStack and moto_server (each test runs on both).

Behaviours moto_server does not emulate are strict xfails on moto (see conftest.moto_gap), never skips.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from broker.model import (
    ALLOWED_USAGES,
    EncryptionAlgorithm,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
    signing_algorithms_for,
)
from providers.aws import KeyDisabled
from providers.base import (
    ProviderInvalidCiphertext,
    ProviderInvalidState,
    ProviderKeyRef,
    ProviderNotFound,
)

from .conftest import emulator_gap, moto_gap

pytestmark = pytest.mark.integration

AAD = b'{"tenant":"t1"}|kmsb-header-v1'


def test_capabilities_declare_every_spec(provider) -> None:
    caps = provider.capabilities
    assert caps.key_specs == frozenset(KeySpec)
    assert caps.native_symmetric and caps.sign and caps.mac and caps.byok_import and caps.inventory
    assert all(caps.missing_for(spec) is None for spec in KeySpec)


def test_health(provider) -> None:
    provider.check_health()


def test_encrypt_decrypt_binds_aad(provider) -> None:
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-sym")
    blob = provider.encrypt(ref, b"attack at dawn", AAD)
    assert b"attack at dawn" not in blob
    assert provider.decrypt(ref, blob, AAD) == b"attack at dawn"
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, blob, AAD + b"x")
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, blob, b"")


def test_long_aad_is_bound_through_its_digest(provider) -> None:
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-long-aad")
    aad = os.urandom(5000)
    blob = provider.encrypt(ref, b"p", aad)
    assert provider.decrypt(ref, blob, aad) == b"p"
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, blob, aad[:-1] + bytes([aad[-1] ^ 1]))


def test_wrap_unwrap_data_key(provider) -> None:
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-wrap")
    dk = os.urandom(32)
    assert provider.unwrap_data_key(ref, provider.wrap_data_key(ref, dk)) == dk


def test_decrypt_with_another_keys_ref_fails(provider, backend, request) -> None:
    moto_gap(request, backend, "IncorrectKeyException (it answers AccessDeniedException)")
    a = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-a")
    b = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-b")
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(b, provider.encrypt(a, b"x", AAD), AAD)


def test_rotation_keeps_old_versions_decrypting(provider, raw_kms) -> None:
    v1 = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-rot")
    old = provider.encrypt(v1, b"old", AAD)
    v2 = provider.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-rot")
    assert v2.key_id != v1.key_id
    new = provider.encrypt(v2, b"new", AAD)
    assert provider.decrypt(v1, old, AAD) == b"old"
    assert provider.decrypt(v2, new, AAD) == b"new"
    # the stored ref survives a round trip through the broker's store format
    assert provider.decrypt(ProviderKeyRef.from_dict(v1.to_dict()), old, AAD) == b"old"
    tags = {t["TagKey"]: t["TagValue"] for t in raw_kms.list_resource_tags(KeyId=v2.key_id)["Tags"]}
    assert tags["kmsb:key-id"] == "k-rot" and tags["kmsb:previous-version"] == v1.key_id


@pytest.mark.parametrize("spec,usage", [(s, u) for s in KeySpec for u in sorted(ALLOWED_USAGES[s])])
def test_create_key_for_every_spec_and_usage(provider, raw_kms, spec: KeySpec, usage: KeyUsage) -> None:
    ref = provider.create_key(spec, usage, label=f"k-{spec.value}")
    meta = raw_kms.describe_key(KeyId=ref.key_id)["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"], meta["KeyState"]) == (spec.value, usage.value, "Enabled")
    if spec.is_asymmetric:
        pub = serialization.load_der_public_key(provider.get_public_key(ref))
        assert isinstance(pub, rsa.RSAPublicKey if spec.is_rsa else ec.EllipticCurvePublicKey)
        assert pub.key_size == (spec.rsa_bits if spec.is_rsa else {"ECC_NIST_P256": 256, "ECC_NIST_P384": 384, "ECC_NIST_P521": 521, "ECC_SECG_P256K1": 256}[spec])


SIGN_CASES = [(spec, alg) for spec in (KeySpec.RSA_2048, KeySpec.ECC_NIST_P256, KeySpec.ECC_NIST_P384)
              for alg in signing_algorithms_for(spec)]


@pytest.mark.parametrize("spec,alg", SIGN_CASES, ids=[f"{s.value}-{a.value}" for s, a in SIGN_CASES])
def test_sign_digest_verifies_with_the_public_key(provider, backend, request, spec, alg: SigningAlgorithm) -> None:
    moto_gap(request, backend, "MessageType=DIGEST (it hashes the digest again)")
    ref = provider.create_key(spec, KeyUsage.SIGN_VERIFY, label="k-sign")
    h = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[alg.hash_name]
    digest = hashlib.new(alg.hash_name, b"message to sign").digest()
    sig = provider.sign(ref, digest, alg)
    pub = serialization.load_der_public_key(provider.get_public_key(ref))
    if alg.is_ecdsa:
        pub.verify(sig, digest, ec.ECDSA(utils.Prehashed(h)))  # DER-encoded, as the protocol requires
    elif alg.is_pss:
        pub.verify(sig, digest, padding.PSS(padding.MGF1(h), padding.PSS.DIGEST_LENGTH), utils.Prehashed(h))
    else:
        pub.verify(sig, digest, padding.PKCS1v15(), utils.Prehashed(h))


@pytest.mark.parametrize("alg", [EncryptionAlgorithm.RSAES_OAEP_SHA_1, EncryptionAlgorithm.RSAES_OAEP_SHA_256])
def test_asymmetric_decrypt(provider, backend, request, alg: EncryptionAlgorithm) -> None:
    gaps = {"moto": "RSA OAEP decryption of ciphertext made with the real public key"}
    if alg is EncryptionAlgorithm.RSAES_OAEP_SHA_1:
        gaps["localstack"] = "RSAES_OAEP_SHA_1 decryption (it always decrypts with OAEP-SHA-256: 500 InternalError)"
    emulator_gap(request, backend, **gaps)
    ref = provider.create_key(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, label="k-rsa-enc")
    pub = serialization.load_der_public_key(provider.get_public_key(ref))
    h = hashes.SHA1() if alg is EncryptionAlgorithm.RSAES_OAEP_SHA_1 else hashes.SHA256()
    ct = pub.encrypt(b"rsa secret", padding.OAEP(padding.MGF1(h), h, None))
    assert provider.asymmetric_decrypt(ref, ct, alg) == b"rsa secret"


@pytest.mark.parametrize("spec", [KeySpec.HMAC_256, KeySpec.HMAC_384, KeySpec.HMAC_512])
def test_generate_mac_verifies_on_aws(provider, raw_kms, spec: KeySpec) -> None:
    ref = provider.create_key(spec, KeyUsage.GENERATE_VERIFY_MAC, label="k-mac")
    alg = MacAlgorithm(f"HMAC_SHA_{spec.hmac_bits}")
    mac = provider.generate_mac(ref, b"msg", alg)
    assert len(mac) == spec.hmac_bits // 8
    assert provider.generate_mac(ref, b"msg", alg) == mac
    assert provider.generate_mac(ref, b"msg2", alg) != mac
    assert raw_kms.verify_mac(KeyId=ref.key_id, Message=b"msg", MacAlgorithm=alg.value, Mac=mac)["MacValid"]


def test_disable_and_enable(provider, backend, request) -> None:
    moto_gap(request, backend, "DisabledException on Encrypt for a disabled key")
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-dis")
    provider.set_enabled(ref, False)
    with pytest.raises(KeyDisabled) as err:
        provider.encrypt(ref, b"x", AAD)
    assert isinstance(err.value, ProviderInvalidState)
    provider.set_enabled(ref, True)
    assert provider.decrypt(ref, provider.encrypt(ref, b"x", AAD), AAD) == b"x"


def test_schedule_and_cancel_destruction(provider, raw_kms, backend, request) -> None:
    moto_gap(request, backend, "KMSInvalidStateException on Encrypt for a key pending deletion")
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-del")
    provider.schedule_destruction(ref, 1)  # clamped to AWS's 7-day minimum
    meta = raw_kms.describe_key(KeyId=ref.key_id)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    with pytest.raises(ProviderInvalidState):
        provider.encrypt(ref, b"x", AAD)
    provider.cancel_destruction(ref)
    assert raw_kms.describe_key(KeyId=ref.key_id)["KeyMetadata"]["KeyState"] == "Disabled"  # as on AWS
    provider.set_enabled(ref, True)
    assert provider.decrypt(ref, provider.encrypt(ref, b"x", AAD), AAD) == b"x"


def test_destroy_schedules_the_aws_key_and_is_idempotent(provider, raw_kms) -> None:
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-destroy")
    provider.destroy(ref)
    assert raw_kms.describe_key(KeyId=ref.key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    provider.destroy(ref)
    provider.destroy(ProviderKeyRef(key_id="11111111-2222-3333-4444-555555555555"))


def test_unknown_key_is_not_found(provider) -> None:
    with pytest.raises(ProviderNotFound):
        provider.encrypt(ProviderKeyRef(key_id="11111111-2222-3333-4444-555555555555"), b"x", b"")


def test_random(provider) -> None:
    a, b = provider.random(32), provider.random(32)
    assert len(a) == 32 and a != b


def test_inventory_lists_existing_keys_for_adoption(provider, raw_kms) -> None:
    outside = raw_kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY", Description="made outside",
                                 Tags=[{"TagKey": "team", "TagValue": "ops"}])["KeyMetadata"]["KeyId"]
    raw_kms.disable_key(KeyId=outside)
    ours = provider.create_key(KeySpec.HMAC_384, KeyUsage.GENERATE_VERIFY_MAC, label="k-inv")
    items = {item.key_id: item for item in provider.inventory()}
    assert items[outside].spec is KeySpec.ECC_NIST_P384 and items[outside].usage is KeyUsage.SIGN_VERIFY
    assert not items[outside].enabled and items[outside].description == "made outside"
    assert items[outside].tags == {"team": "ops"}
    assert items[ours.key_id].enabled and items[ours.key_id].tags["kmsb:key-id"] == "k-inv"
