"""providers.azure through the real emulator: every call must reach it and map its errors."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from broker.model import EncryptionAlgorithm, KeySpec, KeyUsage, SigningAlgorithm
from providers.azure import AzureProvider
from providers.base import (
    ProviderAccessDenied,
    ProviderInvalidCiphertext,
    ProviderInvalidState,
    ProviderKeyRef,
    ProviderNotFound,
    ProviderUnavailable,
    ProviderUnsupported,
)
from providers.registry import build_provider
from tests.integration.azure_emulator.emulator import Emulator
from tests.support.procs import free_port


def test_capabilities_declare_composition(vault: AzureProvider, hsm: AzureProvider) -> None:
    assert vault.capabilities.wrap_data_key and not vault.capabilities.native_symmetric
    assert hsm.capabilities.native_symmetric
    assert vault.capabilities.missing_for(KeySpec.SYMMETRIC_DEFAULT) is None
    assert vault.capabilities.missing_for(KeySpec.HMAC_256) is not None
    with pytest.raises(ProviderUnsupported):
        vault.create_key(KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, label="h")


def test_registry_builds_it(emulator: Emulator) -> None:
    p = build_provider("x", {"kind": "azure", "vault_url": emulator.vault_url, "token": "provider-test-token",
                             "ca_bundle": emulator.ca_bundle})
    assert isinstance(p, AzureProvider)
    p.check_health()
    with pytest.raises(ValueError):
        AzureProvider.from_config("y", {"kind": "azure"})


def test_standard_vault_symmetric_is_wrap_only(vault: AzureProvider) -> None:
    ref = vault.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym/1")
    assert ref.extra["kty"] == "RSA" and ref.version
    dk = os.urandom(32)
    wrapped = vault.wrap_data_key(ref, dk)
    assert len(wrapped) == 384  # RSA-3072 OAEP
    assert vault.unwrap_data_key(ref, wrapped) == dk
    with pytest.raises(ProviderInvalidCiphertext):
        vault.unwrap_data_key(ref, bytes([wrapped[0] ^ 1]) + wrapped[1:])
    with pytest.raises(ProviderUnsupported):
        vault.encrypt(ref, b"x", b"")


def test_managed_hsm_native_gcm(hsm: AzureProvider) -> None:
    ref = hsm.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-hsm")
    assert ref.extra["kty"] == "oct-HSM"
    blob = hsm.encrypt(ref, b"hello", b"context")
    assert len(blob) == 12 + 5 + 16
    assert hsm.decrypt(ref, blob, b"context") == b"hello"
    assert hsm.decrypt(ref, hsm.encrypt(ref, b"no aad", b""), b"") == b"no aad"
    with pytest.raises(ProviderInvalidCiphertext):
        hsm.decrypt(ref, blob, b"other context")
    dk = os.urandom(32)
    assert hsm.unwrap_data_key(ref, hsm.wrap_data_key(ref, dk)) == dk
    with pytest.raises(ProviderInvalidCiphertext):
        hsm.unwrap_data_key(ref, os.urandom(40))


def test_managed_hsm_ciphertext_survives_a_new_provider(emulator: Emulator, hsm: AzureProvider) -> None:
    ref = hsm.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-hsm-2")
    blob = hsm.encrypt(ref, b"durable", b"")
    other = AzureProvider.from_config("again", {"vault_url": emulator.vault_url, "token": "provider-test-token",
                                                "ca_bundle": emulator.ca_bundle, "managed_hsm": True})
    assert other.decrypt(ProviderKeyRef.from_dict(ref.to_dict()), blob, b"") == b"durable"


@pytest.mark.parametrize("spec", [KeySpec.RSA_2048, KeySpec.RSA_3072])
@pytest.mark.parametrize("alg", [a for a in SigningAlgorithm if not a.is_ecdsa])
def test_rsa_sign_verifies_with_public_key(vault: AzureProvider, spec: KeySpec, alg: SigningAlgorithm) -> None:
    ref = vault.create_key(spec, KeyUsage.SIGN_VERIFY, label="rsa-sign")
    public = serialization.load_der_public_key(vault.get_public_key(ref))
    assert public.key_size == spec.rsa_bits
    h = getattr(hashes, alg.hash_name.upper())()
    digest = hashlib.new(alg.hash_name, b"message").digest()
    sig = vault.sign(ref, digest, alg)
    pad = padding.PSS(padding.MGF1(h), padding.PSS.AUTO) if alg.is_pss else padding.PKCS1v15()
    public.verify(sig, digest, pad, utils.Prehashed(h))


@pytest.mark.parametrize("spec,alg", [(KeySpec.ECC_NIST_P256, SigningAlgorithm.ECDSA_SHA_256),
                                      (KeySpec.ECC_NIST_P384, SigningAlgorithm.ECDSA_SHA_384)])
def test_ecdsa_sign_returns_der(vault: AzureProvider, spec: KeySpec, alg: SigningAlgorithm) -> None:
    ref = vault.create_key(spec, KeyUsage.SIGN_VERIFY, label="ec-sign")
    public = serialization.load_der_public_key(vault.get_public_key(ref))
    digest = hashlib.new(alg.hash_name, b"m").digest()
    sig = vault.sign(ref, digest, alg)
    utils.decode_dss_signature(sig)  # DER, not r||s
    public.verify(sig, digest, ec.ECDSA(utils.Prehashed(getattr(hashes, alg.hash_name.upper())())))


@pytest.mark.parametrize("alg,h", [(EncryptionAlgorithm.RSAES_OAEP_SHA_1, hashes.SHA1),
                                   (EncryptionAlgorithm.RSAES_OAEP_SHA_256, hashes.SHA256)])
def test_asymmetric_decrypt(vault: AzureProvider, alg: EncryptionAlgorithm, h: type) -> None:
    ref = vault.create_key(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, label="rsa-enc")
    public = serialization.load_der_public_key(vault.get_public_key(ref))
    ct = public.encrypt(b"for the vault", padding.OAEP(padding.MGF1(h()), h(), None))
    assert vault.asymmetric_decrypt(ref, ct, alg) == b"for the vault"
    with pytest.raises(ProviderInvalidCiphertext):
        vault.asymmetric_decrypt(ref, os.urandom(256), alg)
    with pytest.raises(ProviderAccessDenied):  # key_ops: an ENCRYPT_DECRYPT key may not sign
        vault.sign(ref, hashlib.sha256(b"x").digest(), SigningAlgorithm.RSASSA_PSS_SHA_256)


def test_rotation_makes_a_version_and_old_ones_work(vault: AzureProvider) -> None:
    v1 = vault.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="rot")
    w1 = vault.wrap_data_key(v1, b"a" * 32)
    v2 = vault.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="rot")
    assert v2.key_id == v1.key_id and v2.version != v1.version
    w2 = vault.wrap_data_key(v2, b"b" * 32)
    assert vault.unwrap_data_key(v1, w1) == b"a" * 32
    assert vault.unwrap_data_key(v2, w2) == b"b" * 32
    with pytest.raises(ProviderInvalidCiphertext):
        vault.unwrap_data_key(v2, w1)


def test_enable_disable_reaches_the_vault(vault: AzureProvider) -> None:
    ref = vault.create_key(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, label="toggle")
    digest = hashlib.sha256(b"d").digest()
    vault.set_enabled(ref, False)
    with pytest.raises(ProviderInvalidState):
        vault.sign(ref, digest, SigningAlgorithm.ECDSA_SHA_256)
    vault.set_enabled(ref, True)
    assert vault.sign(ref, digest, SigningAlgorithm.ECDSA_SHA_256)


def test_schedule_cancel_destroy(vault: AzureProvider) -> None:
    v1 = vault.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="del")
    wrapped = vault.wrap_data_key(v1, b"k" * 32)
    v2 = vault.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="del")
    for ref in (v1, v2):
        vault.schedule_destruction(ref, 7)  # per version, idempotent on the one Key Vault key
    with pytest.raises(ProviderNotFound):
        vault.unwrap_data_key(v1, wrapped)
    for ref in (v1, v2):
        vault.cancel_destruction(ref)
    assert vault.unwrap_data_key(v1, wrapped) == b"k" * 32
    for ref in (v1, v2):
        vault.schedule_destruction(ref, 7)
    for ref in (v1, v2):
        vault.destroy(ref)
    assert v1.key_id not in {i.key_id for i in vault.inventory()}
    with pytest.raises(ProviderNotFound):
        vault.cancel_destruction(v1)


def test_destroy_one_version_of_a_live_key(vault: AzureProvider) -> None:
    v1 = vault.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="partial")
    v2 = vault.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="partial")
    vault.destroy(v2)
    with pytest.raises(ProviderInvalidState):
        vault.wrap_data_key(v2, b"x" * 32)
    assert vault.unwrap_data_key(v1, vault.wrap_data_key(v1, b"y" * 32)) == b"y" * 32


def test_random_and_inventory(vault: AzureProvider) -> None:
    data = vault.random(300)
    assert len(data) == 300 and data != vault.random(300)
    ref = vault.create_key(KeySpec.RSA_4096, KeyUsage.SIGN_VERIFY, label="inv")
    item = next(i for i in vault.inventory() if i.key_id == ref.key_id)
    assert item.spec is KeySpec.RSA_4096 and item.usage is KeyUsage.SIGN_VERIFY and item.enabled
    assert item.tags["kms-broker-label"] == "inv"


def test_unknown_key_is_not_found(vault: AzureProvider) -> None:
    ghost = ProviderKeyRef(key_id="kmsb-ghost-00000000", version="0" * 32, extra={"kty": "RSA"})
    with pytest.raises(ProviderNotFound):
        vault.get_public_key(ghost)
    with pytest.raises(ProviderNotFound):
        vault.wrap_data_key(ghost, b"x" * 32)


def test_wrong_token_is_access_denied(emulator: Emulator) -> None:
    p = AzureProvider.from_config("bad", {"vault_url": emulator.vault_url, "token": "wrong",
                                          "ca_bundle": emulator.ca_bundle, "retries": 0})
    with pytest.raises(ProviderAccessDenied):
        p.check_health()
    with pytest.raises(ProviderAccessDenied):
        p.create_key(KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, label="nope")


def test_vault_down_is_unavailable(emulator: Emulator) -> None:
    p = AzureProvider.from_config("down", {"vault_url": f"https://127.0.0.1:{free_port()}", "token": "t",
                                           "ca_bundle": emulator.ca_bundle, "retries": 0, "timeout": 2})
    with pytest.raises(ProviderUnavailable):
        p.check_health()
    with pytest.raises(ProviderUnavailable):
        p.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="down")


def test_provider_goes_remote_even_when_get_returns_key_ops(tmp_path) -> None:
    """Against an Azure-faithful GET (key_ops present) the SDK would wrap locally; the provider must not."""
    from tests.integration.azure_emulator.emulator import start_emulator

    emu = start_emulator(tmp_path, name="kv-faithful-provider", extra_args=("--key-ops-on-get",))
    try:
        p = AzureProvider.from_config("faithful", {"vault_url": emu.vault_url, "token": "t",
                                                   "ca_bundle": emu.ca_bundle, "managed_hsm": True, "retries": 0})
        rsa_ref = p.create_key(KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, label="f")
        sym_vault = AzureProvider.from_config("faithful-std", {"vault_url": emu.vault_url, "token": "t",
                                                               "ca_bundle": emu.ca_bundle, "retries": 0})
        wrap_ref = sym_vault.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="f")
        sym_vault.set_enabled(wrap_ref, False)
        with pytest.raises(ProviderInvalidState):
            sym_vault.wrap_data_key(wrap_ref, b"x" * 32)
        hsm_ref = p.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="f")
        blob = p.encrypt(hsm_ref, b"remote", b"")
        fresh = AzureProvider.from_config("fresh", {"vault_url": emu.vault_url, "token": "t",
                                                    "ca_bundle": emu.ca_bundle, "managed_hsm": True})
        assert fresh.decrypt(hsm_ref, blob, b"") == b"remote"
        assert p.get_public_key(rsa_ref)
    finally:
        emu.server.stop()
