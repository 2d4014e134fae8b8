"""GcpProvider over gRPC and REST: keys, rotation, states, crypto, import and error mapping."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from google.cloud import kms_v1

from broker.model import EncryptionAlgorithm, KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm
from providers.base import (
    ProviderAccessDenied,
    ProviderInvalidCiphertext,
    ProviderInvalidInput,
    ProviderInvalidState,
    ProviderKeyRef,
    ProviderNotFound,
    ProviderUnavailable,
    ProviderUnsupported,
)
from providers.gcp import GcpProvider
from tests.integration.gcp_emulator.conftest import launch
from tests.support.procs import free_port

from .conftest import TOKEN, config

State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState


def _state(kms: kms_v1.KeyManagementServiceClient, ref: ProviderKeyRef) -> State:
    return kms.get_crypto_key_version(name=f"{ref.key_id}/cryptoKeyVersions/{ref.version}").state


def software_wrap(material: bytes) -> Callable[[bytes, str], bytes]:
    """Stands in for the broker's HSM: RSA-OAEP-SHA-1 of an ephemeral AES key ‖ RFC 5649 wrap of the material."""
    def wrap(public_der: bytes, algorithm: str) -> bytes:
        assert algorithm == "RSA_AES_KEY_WRAP_SHA_1"
        pub = serialization.load_der_public_key(public_der)
        assert isinstance(pub, rsa.RSAPublicKey)
        ephemeral = os.urandom(32)
        oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
        return pub.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)
    return wrap


def test_capabilities_and_health(provider: GcpProvider) -> None:
    caps = provider.capabilities
    assert caps.native_symmetric and caps.sign and caps.mac and caps.byok_import and caps.asymmetric_decrypt
    # Cloud KMS has no P-521 key and secp256k1 only at HSM protection: those two are refused with the reason.
    missing = {spec for spec in KeySpec if caps.missing_for(spec) is not None}
    assert missing == {KeySpec.ECC_NIST_P521, KeySpec.ECC_SECG_P256K1}
    provider.check_health()  # creates the key ring on first use


def test_symmetric_encrypt_decrypt_with_aad(provider: GcpProvider) -> None:
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym/1")
    assert ref.version == "1" and ref.key_id.startswith(provider.key_ring_name + "/cryptoKeys/kmsb-sym-1-")
    ct = provider.encrypt(ref, b"hello", b"context")
    assert provider.decrypt(ref, ct, b"context") == b"hello"
    assert provider.encrypt(ref, b"", b"") and provider.decrypt(ref, provider.encrypt(ref, b"", b""), b"") == b""
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, ct, b"other")
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, ct[:-1] + bytes([ct[-1] ^ 1]), b"context")
    other = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-2")
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(other, ct, b"context")


def test_rotation_new_version_becomes_primary(provider: GcpProvider, kms: kms_v1.KeyManagementServiceClient) -> None:
    v1 = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="rot")
    old = provider.encrypt(v1, b"old", b"")
    v2 = provider.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="rot")
    assert (v2.key_id, v2.version) == (v1.key_id, "2")
    assert kms.get_crypto_key(name=v1.key_id).primary.name == f"{v1.key_id}/cryptoKeyVersions/2"
    new = provider.encrypt(v2, b"new", b"")
    assert provider.decrypt(v2, old, b"") == b"old" and provider.decrypt(v1, new, b"") == b"new"


def test_disable_enable_maps_to_version_state(provider: GcpProvider, kms: kms_v1.KeyManagementServiceClient) -> None:
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="toggle")
    ct = provider.encrypt(ref, b"x", b"")
    provider.set_enabled(ref, False)
    assert _state(kms, ref) == State.DISABLED
    with pytest.raises(ProviderInvalidState):
        provider.encrypt(ref, b"x", b"")
    with pytest.raises(ProviderInvalidState):
        provider.decrypt(ref, ct, b"")
    provider.set_enabled(ref, False)  # idempotent
    provider.set_enabled(ref, True)
    assert _state(kms, ref) == State.ENABLED and provider.decrypt(ref, ct, b"") == b"x"


def test_destruction_schedule_cancel_and_destroy(provider: GcpProvider, kms: kms_v1.KeyManagementServiceClient) -> None:
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="del")
    provider.schedule_destruction(ref, 7)  # the key's 30-day period covers the broker's window
    version = kms.get_crypto_key_version(name=f"{ref.key_id}/cryptoKeyVersions/1")
    assert version.state == State.DESTROY_SCHEDULED
    provider.cancel_destruction(ref)
    assert _state(kms, ref) == State.DISABLED
    provider.schedule_destruction(ref, 30)
    provider.destroy(ref)
    provider.destroy(ref)  # idempotent
    assert _state(kms, ref) == State.DESTROY_SCHEDULED
    with pytest.raises(ProviderInvalidState):
        provider.set_enabled(ref, True)


def test_short_gcp_period_only_disables_until_destroy(make_provider: Callable[..., GcpProvider],
                                                      kms: kms_v1.KeyManagementServiceClient) -> None:
    provider = make_provider(destroy_scheduled_days=1)
    ref = provider.create_key(KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, label="short")
    provider.schedule_destruction(ref, 7)
    assert _state(kms, ref) == State.DISABLED  # Cloud KMS would destroy before the broker's window ends
    provider.cancel_destruction(ref)
    assert _state(kms, ref) == State.DISABLED
    provider.destroy(ref)
    assert _state(kms, ref) == State.DESTROY_SCHEDULED


SIGNERS = [
    (KeySpec.ECC_NIST_P256, SigningAlgorithm.ECDSA_SHA_256, {}),
    (KeySpec.ECC_NIST_P384, SigningAlgorithm.ECDSA_SHA_384, {}),
    (KeySpec.RSA_2048, SigningAlgorithm.RSASSA_PSS_SHA_256, {}),
    (KeySpec.RSA_3072, SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256, {"rsa_sign_padding": "PKCS1"}),
    (KeySpec.RSA_4096, SigningAlgorithm.RSASSA_PSS_SHA_512, {"rsa_sign_hash": "SHA512"}),
]


@pytest.mark.parametrize("spec,algorithm,extra", SIGNERS, ids=[a.value for _, a, _ in SIGNERS])
def test_sign_verifies_with_public_key(make_provider: Callable[..., GcpProvider], spec: KeySpec,
                                       algorithm: SigningAlgorithm, extra: dict) -> None:
    provider = make_provider(**extra)
    ref = provider.create_key(spec, KeyUsage.SIGN_VERIFY, label="signer")
    h = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[algorithm.hash_name]
    digest = hashlib.new(algorithm.hash_name, b"document").digest()
    signature = provider.sign(ref, digest, algorithm)
    public = serialization.load_der_public_key(provider.get_public_key(ref))
    if algorithm.is_ecdsa:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, b"document", ec.ECDSA(h))  # DER-encoded, as the broker wants
    else:
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == spec.rsa_bits
        pad = padding.PSS(padding.MGF1(h), h.digest_size) if algorithm.is_pss else padding.PKCS1v15()
        public.verify(signature, b"document", pad, h)
        with pytest.raises(InvalidSignature):
            public.verify(signature, b"tampered", pad, h)
    wrong = next(a for a in SigningAlgorithm if a is not algorithm)
    with pytest.raises(ProviderUnsupported):
        provider.sign(ref, digest, wrong)


def test_asymmetric_decrypt(provider: GcpProvider) -> None:
    ref = provider.create_key(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, label="rsa-dec")
    public = serialization.load_der_public_key(provider.get_public_key(ref))
    assert isinstance(public, rsa.RSAPublicKey)
    ct = public.encrypt(b"secret", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    assert provider.asymmetric_decrypt(ref, ct, EncryptionAlgorithm.RSAES_OAEP_SHA_256) == b"secret"
    with pytest.raises(ProviderInvalidCiphertext):
        provider.asymmetric_decrypt(ref, os.urandom(256), EncryptionAlgorithm.RSAES_OAEP_SHA_256)
    with pytest.raises(ProviderUnsupported):
        provider.asymmetric_decrypt(ref, ct, EncryptionAlgorithm.RSAES_OAEP_SHA_1)


@pytest.mark.parametrize("spec,algorithm", [(KeySpec.HMAC_256, MacAlgorithm.HMAC_SHA_256),
                                            (KeySpec.HMAC_384, MacAlgorithm.HMAC_SHA_384),
                                            (KeySpec.HMAC_512, MacAlgorithm.HMAC_SHA_512)])
def test_mac(provider: GcpProvider, spec: KeySpec, algorithm: MacAlgorithm) -> None:
    ref = provider.create_key(spec, KeyUsage.GENERATE_VERIFY_MAC, label="mac")
    tag = provider.generate_mac(ref, b"message", algorithm)
    assert len(tag) == spec.hmac_bits // 8
    assert provider.generate_mac(ref, b"message", algorithm) == tag != provider.generate_mac(ref, b"other", algorithm)
    with pytest.raises(ProviderUnsupported):
        provider.generate_mac(ref, b"message", next(a for a in MacAlgorithm if a is not algorithm))


def test_byok_import_of_hsm_born_material(provider: GcpProvider, kms: kms_v1.KeyManagementServiceClient) -> None:
    secret = os.urandom(32)
    ref = provider.byok_import(KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, software_wrap(secret), label="byok")
    assert provider.generate_mac(ref, b"m", MacAlgorithm.HMAC_SHA_256) == hmac.new(secret, b"m", hashlib.sha256).digest()
    version = kms.get_crypto_key_version(name=f"{ref.key_id}/cryptoKeyVersions/{ref.version}")
    assert version.import_job and kms.get_crypto_key(name=ref.key_id).import_only

    sym = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, software_wrap(os.urandom(32)),
                               label="byok-sym")
    ct = provider.encrypt(sym, b"imported", b"aad")
    again = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, software_wrap(os.urandom(32)),
                                 label="byok-sym", ref=sym)
    assert (again.key_id, again.version) == (sym.key_id, "2")
    assert kms.get_crypto_key(name=sym.key_id).primary.name.endswith("/cryptoKeyVersions/2")
    assert provider.decrypt(again, ct, b"aad") == b"imported"


def test_begin_finish_import(provider: GcpProvider) -> None:
    params = provider.begin_import(KeySpec.ECC_NIST_P256)
    assert params.wrapping_algorithms == ("RSA_AES_KEY_WRAP_SHA_1",)
    priv = ec.generate_private_key(ec.SECP256R1())
    der = priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    wrapped = software_wrap(der)(params.public_key_der, "RSA_AES_KEY_WRAP_SHA_1")
    ref = provider.finish_import(params.handle, KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, wrapped,
                                 "RSA_AES_KEY_WRAP_SHA_1", label="imported-ec")
    expected = priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert provider.get_public_key(ref) == expected
    with pytest.raises(ProviderInvalidInput):
        provider.finish_import(params.handle, KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, wrapped,
                               "RSAES_OAEP_SHA_256", label="x")
    with pytest.raises(ProviderInvalidCiphertext):
        provider.finish_import(params.handle, KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, os.urandom(500),
                               "RSA_AES_KEY_WRAP_SHA_1", label="x")


def test_random(provider: GcpProvider) -> None:
    assert len(provider.random(5)) == 5
    assert len(provider.random(2000)) == 2000
    assert provider.random(32) != provider.random(32)


def test_inventory_lists_created_keys(provider: GcpProvider) -> None:
    ref = provider.create_key(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, label="Inventory Key")
    items = {i.key_id: i for i in provider.inventory()}
    assert items[ref.key_id].spec is KeySpec.ECC_NIST_P256 and items[ref.key_id].usage is KeyUsage.SIGN_VERIFY
    assert items[ref.key_id].tags["kms-broker-label"] == "inventory-key"


def test_unknown_key_is_not_found(provider: GcpProvider) -> None:
    ghost = ProviderKeyRef(key_id=f"{provider.key_ring_name}/cryptoKeys/ghost", version="1",
                           extra={"algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION"})
    provider.check_health()
    with pytest.raises(ProviderNotFound):
        provider.encrypt(ghost, b"x", b"")
    provider.destroy(ghost)  # nothing to destroy is fine


def test_wrong_token_is_access_denied(make_provider: Callable[..., GcpProvider]) -> None:
    with pytest.raises(ProviderAccessDenied):
        make_provider(token="not-the-token").check_health()


def test_outage_after_start_is_unavailable(tmp_path: Path, transport: str) -> None:
    server, ready = launch("gcp-kms-outage", tmp_path, "--token", TOKEN)
    provider = GcpProvider.from_config("gcp-outage", config(ready, transport, timeout=3))
    try:
        ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="outage")
        provider.check_health()
        server.stop()
        with pytest.raises(ProviderUnavailable):
            provider.check_health()
        with pytest.raises(ProviderUnavailable):
            provider.encrypt(ref, b"x", b"")
    finally:
        server.stop()
        provider.close()


def test_emulator_down_is_unavailable(make_provider: Callable[..., GcpProvider]) -> None:
    port = free_port()
    provider = make_provider(grpc_target=f"127.0.0.1:{port}", rest_endpoint=f"http://127.0.0.1:{port}", timeout=3)
    with pytest.raises(ProviderUnavailable):
        provider.check_health()
    with pytest.raises(ProviderUnavailable):
        provider.encrypt(ProviderKeyRef(key_id=f"{provider.key_ring_name}/cryptoKeys/k", version="1"), b"x", b"")
