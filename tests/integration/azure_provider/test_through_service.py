"""The azure provider behind the broker's KeyService: uniform semantics, composition, lifecycle mirroring."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker import errors
from broker.audit import AuditLog
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.store import Store
from providers.azure import AzureProvider
from providers.base import ProviderKeyRef
from providers.pkcs11 import Pkcs11Provider
from tests.integration.azure_emulator.emulator import Emulator
from tests.support.procs import free_port


@pytest.fixture
def service(tmp_path: Path, hsm_provider: Pkcs11Provider, vault: AzureProvider, hsm: AzureProvider,
            emulator: Emulator) -> Iterator[KeyService]:
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    down = AzureProvider.from_config("azure-down", {"vault_url": f"https://127.0.0.1:{free_port()}", "token": "t",
                                                    "ca_bundle": emulator.ca_bundle, "retries": 0, "timeout": 2})
    providers = {"hsm": hsm_provider, "azure": vault, "azure-hsm": hsm, "azure-down": down}
    audit = AuditLog(data / "audit.jsonl", hsm_provider.root_of_trust().audit_hmac)
    yield KeyService(store, providers, "hsm", PolicyEngine(), audit)
    store.dispose()


def _ref(service: KeyService, key_id: str, version: int = 1) -> ProviderKeyRef:
    kv = next(v for v in service.store.list_versions(key_id) if v.version == version)
    return ProviderKeyRef.from_dict(kv.provider_ref)


@pytest.mark.parametrize("provider", ["azure", "azure-hsm"])
def test_symmetric_encrypt_decrypt_with_context(service: KeyService, root_ctx: RequestContext, provider: str) -> None:
    key_id = service.create_key(root_ctx, provider=provider)["KeyId"]
    blob = service.encrypt(root_ctx, key_id, b"payload", context={"app": "x"})["CiphertextBlob"]
    assert service.decrypt(root_ctx, blob, context={"app": "x"})["Plaintext"] == b"payload"
    with pytest.raises(errors.InvalidCiphertext):
        service.decrypt(root_ctx, blob, context={"app": "y"})


def test_rotation_keeps_old_ciphertexts(service: KeyService, root_ctx: RequestContext, vault: AzureProvider) -> None:
    key_id = service.create_key(root_ctx, provider="azure")["KeyId"]
    old = service.encrypt(root_ctx, key_id, b"v1")["CiphertextBlob"]
    service.rotate_key_on_demand(root_ctx, key_id)
    new = service.encrypt(root_ctx, key_id, b"v2")["CiphertextBlob"]
    assert service.decrypt(root_ctx, old)["Plaintext"] == b"v1"
    assert service.decrypt(root_ctx, new)["Plaintext"] == b"v2"
    r1, r2 = _ref(service, key_id, 1), _ref(service, key_id, 2)
    assert r1.key_id == r2.key_id and r1.version != r2.version  # Key Vault versions of one key


@pytest.mark.parametrize("spec,alg", [("RSA_2048", "RSASSA_PSS_SHA_256"), ("ECC_NIST_P256", "ECDSA_SHA_256"),
                                      ("ECC_NIST_P384", "ECDSA_SHA_384")])
def test_sign_verify(service: KeyService, root_ctx: RequestContext, spec: str, alg: str) -> None:
    key_id = service.create_key(root_ctx, provider="azure", key_spec=spec, key_usage="SIGN_VERIFY")["KeyId"]
    sig = service.sign(root_ctx, key_id, b"message", alg)["Signature"]
    assert service.verify(root_ctx, key_id, b"message", sig, alg)["SignatureValid"] is True
    with pytest.raises(errors.InvalidSignature):
        service.verify(root_ctx, key_id, b"other", sig, alg)


def test_rsa_encrypt_decrypt(service: KeyService, root_ctx: RequestContext) -> None:
    key_id = service.create_key(root_ctx, provider="azure", key_spec="RSA_3072",
                                key_usage="ENCRYPT_DECRYPT")["KeyId"]
    blob = service.encrypt(root_ctx, key_id, b"rsa", algorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    assert service.decrypt(root_ctx, blob, key_ref=key_id, algorithm="RSAES_OAEP_SHA_256")["Plaintext"] == b"rsa"


def test_disable_is_mirrored(service: KeyService, root_ctx: RequestContext, vault: AzureProvider) -> None:
    key_id = service.create_key(root_ctx, provider="azure")["KeyId"]
    ref = _ref(service, key_id)
    service.disable_key(root_ctx, key_id)
    assert vault._keys.get_key(ref.key_id, ref.version).properties.enabled is False
    with pytest.raises(errors.Disabled):
        service.encrypt(root_ctx, key_id, b"x")
    service.enable_key(root_ctx, key_id)
    assert vault._keys.get_key(ref.key_id, ref.version).properties.enabled is True


def test_deletion_window_is_soft_delete_then_purge(service: KeyService, root_ctx: RequestContext,
                                                   vault: AzureProvider) -> None:
    key_id = service.create_key(root_ctx, provider="azure")["KeyId"]
    blob = service.encrypt(root_ctx, key_id, b"keep")["CiphertextBlob"]
    name = _ref(service, key_id).key_id
    service.schedule_key_deletion(root_ctx, key_id, 7)
    assert vault._keys.get_deleted_key(name).name == name
    service.cancel_key_deletion(root_ctx, key_id)
    service.enable_key(root_ctx, key_id)
    assert service.decrypt(root_ctx, blob)["Plaintext"] == b"keep"
    service.schedule_key_deletion(root_ctx, key_id, 7)
    done = service.run_due_jobs(root_ctx, now=datetime.now(UTC) + timedelta(days=8))
    assert key_id in done["destroyed"]
    assert name not in {i.key_id for i in vault.inventory()}
    with pytest.raises(Exception) as info:
        vault._keys.get_deleted_key(name)
    assert getattr(info.value, "status_code", None) == 404


def test_hmac_is_refused_naming_the_capability(service: KeyService, root_ctx: RequestContext) -> None:
    with pytest.raises(errors.Unsupported) as info:
        service.create_key(root_ctx, provider="azure", key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC")
    assert "HMAC_256" in str(info.value)


def test_vault_down_is_dependency_timeout(service: KeyService, root_ctx: RequestContext) -> None:
    with pytest.raises(errors.DependencyTimeout):
        service.create_key(root_ctx, provider="azure-down")


def test_byok_of_hsm_born_aes_key(hsm_provider: Pkcs11Provider, hsm: AzureProvider) -> None:
    """AES material born in the broker's HSM, wrapped inside it (OAEP-SHA-1 + AES-KWP) into a Managed HSM key:
    both then hold the same key, so each decrypts what the other encrypts (both use iv ‖ ct ‖ tag)."""
    from broker.model import KeySpec, KeyUsage

    hsm_ref = hsm_provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="byok-src")
    ref = hsm.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                          lambda der, alg: hsm_provider.root_of_trust().wrap_for_import(hsm_ref, der, alg), label="byok-dst")
    assert hsm_provider.decrypt(hsm_ref, hsm.encrypt(ref, b"to hsm", b"aad"), b"aad") == b"to hsm"
    assert hsm.decrypt(ref, hsm_provider.encrypt(hsm_ref, b"to azure", b"aad"), b"aad") == b"to azure"
