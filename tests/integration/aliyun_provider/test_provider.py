"""The aliyun provider over the official SDK against the emulator: crypto, rotation, lifecycle, import, errors."""

from __future__ import annotations

import hashlib
import os

import pytest
from alibabacloud_kms20160120 import models as km
from alibabacloud_tea_util.models import RuntimeOptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from broker.model import EncryptionAlgorithm, KeySpec, KeyUsage, SigningAlgorithm
from providers.aliyun import AccessKey, AliyunProvider
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
from providers.registry import build_provider
from tests.support.procs import free_port

RUNTIME = RuntimeOptions(autoretry=False)


def _meta(aliyun, key_id: str) -> dict:
    return aliyun.sdk().describe_key_with_options(km.DescribeKeyRequest(key_id=key_id), RUNTIME).body.to_map()["KeyMetadata"]


def _oaep_sha1(public_der: bytes, material: bytes) -> bytes:
    public = serialization.load_der_public_key(public_der)
    return public.encrypt(material, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))


def test_capabilities(provider):
    caps = provider.capabilities
    assert caps.key_specs == {KeySpec.SYMMETRIC_DEFAULT, KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.ECC_NIST_P256}
    assert caps.native_symmetric and caps.wrap_data_key and caps.sign and caps.asymmetric_decrypt and caps.byok_import
    assert not caps.mac and not caps.random
    assert caps.missing_for(KeySpec.RSA_4096) == "key spec RSA_4096"


def test_registry_builds_it(aliyun):
    p = build_provider("ali", aliyun.config())
    assert isinstance(p, AliyunProvider) and p.protocol == "http" and p.endpoint == aliyun.endpoint
    p.check_health()
    bare = build_provider("ali-bare", {**aliyun.config(), "endpoint": aliyun.endpoint})  # as the stack prints it
    assert bare.protocol == "http"
    bare.check_health()


def test_symmetric_round_trip_binds_aad(provider):
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-1")
    data = os.urandom(300)
    ct = provider.encrypt(ref, data, b"header|context")
    assert provider.decrypt(ref, ct, b"header|context") == data
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, ct, b"header|other")
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, ct, b"")
    tampered = bytearray(ct)
    tampered[-1] ^= 1
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, bytes(tampered), b"header|context")
    with pytest.raises(ProviderInvalidInput):  # Aliyun has no empty Plaintext (MissingPlaintext)
        provider.encrypt(ref, b"", b"")


def test_long_aad_is_bound_through_its_digest(provider):
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="long-aad")
    aad = os.urandom(5000)
    ct = provider.encrypt(ref, b"p", aad)
    assert provider.decrypt(ref, ct, aad) == b"p"
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(ref, ct, aad[:-1] + bytes([aad[-1] ^ 1]))


def test_decrypt_with_another_keys_ref_fails(provider):
    a = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-a")
    b = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-b")
    with pytest.raises(ProviderInvalidCiphertext):
        provider.decrypt(b, provider.encrypt(a, b"x", b"aad"), b"aad")


def test_wrap_unwrap_data_key(provider):
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="wrap")
    dk = os.urandom(32)
    wrapped = provider.wrap_data_key(ref, dk)
    assert dk not in wrapped and provider.unwrap_data_key(ref, wrapped) == dk


def test_stored_ref_round_trips(provider):
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="stored")
    ct = provider.encrypt(ref, b"x", b"a")
    assert provider.decrypt(ProviderKeyRef.from_dict(ref.to_dict()), ct, b"a") == b"x"


def test_symmetric_rotation_is_an_aliyun_key_version(provider, aliyun):
    v1 = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-rot")
    old = provider.encrypt(v1, b"old", b"a")
    v2 = provider.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-rot")
    assert v2.key_id == v1.key_id and v2.version not in (None, v1.version)
    assert _meta(aliyun, v1.key_id)["PrimaryKeyVersion"] == v2.version
    assert provider.decrypt(v1, old, b"a") == b"old"
    assert provider.decrypt(v2, provider.encrypt(v2, b"new", b"a"), b"a") == b"new"


def _verify(public_der: bytes, algorithm: SigningAlgorithm, digest: bytes, signature: bytes) -> None:
    public = serialization.load_der_public_key(public_der)
    pre = utils.Prehashed(hashes.SHA256())
    if algorithm.is_ecdsa:
        public.verify(signature, digest, ec.ECDSA(pre))
    elif algorithm.is_pss:
        public.verify(signature, digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), pre)
    else:
        public.verify(signature, digest, padding.PKCS1v15(), pre)


@pytest.mark.parametrize(("spec", "algorithm"), [
    (KeySpec.RSA_2048, SigningAlgorithm.RSASSA_PSS_SHA_256), (KeySpec.RSA_3072, SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256),
    (KeySpec.ECC_NIST_P256, SigningAlgorithm.ECDSA_SHA_256)])
def test_sign_verifies_with_the_public_key(provider, spec, algorithm):
    ref = provider.create_key(spec, KeyUsage.SIGN_VERIFY, label="signer")
    digest = hashlib.sha256(b"message").digest()
    _verify(provider.get_public_key(ref), algorithm, digest, provider.sign(ref, digest, algorithm))


def test_sign_with_sha384_is_unsupported(provider):
    ref = provider.create_key(KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, label="signer-384")
    with pytest.raises(ProviderUnsupported):
        provider.sign(ref, hashlib.sha384(b"m").digest(), SigningAlgorithm.RSASSA_PSS_SHA_384)


@pytest.mark.parametrize(("algorithm", "digest"), [(EncryptionAlgorithm.RSAES_OAEP_SHA_1, hashes.SHA1()),
                                                   (EncryptionAlgorithm.RSAES_OAEP_SHA_256, hashes.SHA256())])
def test_asymmetric_decrypt(provider, algorithm, digest):
    ref = provider.create_key(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, label="rsa-enc")
    public = serialization.load_der_public_key(provider.get_public_key(ref))
    ct = public.encrypt(b"secret", padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None))
    assert provider.asymmetric_decrypt(ref, ct, algorithm) == b"secret"
    with pytest.raises(ProviderInvalidCiphertext):
        provider.asymmetric_decrypt(ref, os.urandom(256), algorithm)


def test_asymmetric_rotation_is_a_new_aliyun_key(provider):
    v1 = provider.create_key(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, label="ec-rot")
    v2 = provider.create_version(v1, KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, label="ec-rot")
    assert v2.key_id != v1.key_id
    digest = hashlib.sha256(b"m").digest()
    for ref in (v1, v2):
        _verify(provider.get_public_key(ref), SigningAlgorithm.ECDSA_SHA_256, digest,
                provider.sign(ref, digest, SigningAlgorithm.ECDSA_SHA_256))


def test_disable_and_enable_reach_aliyun(provider, aliyun):
    ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="toggle")
    provider.set_enabled(ref, False)
    assert _meta(aliyun, ref.key_id)["KeyState"] == "Disabled"
    with pytest.raises(ProviderInvalidState):
        provider.encrypt(ref, b"x", b"")
    provider.set_enabled(ref, True)
    assert provider.decrypt(ref, provider.encrypt(ref, b"x", b""), b"") == b"x"


def test_schedule_and_cancel_are_idempotent_across_versions(provider, aliyun):
    v1 = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="del")
    v2 = provider.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="del")
    for ref in (v1, v2):
        provider.schedule_destruction(ref, 7)
    assert _meta(aliyun, v1.key_id)["KeyState"] == "PendingDeletion"
    with pytest.raises(ProviderInvalidState):
        provider.encrypt(v2, b"x", b"")
    for ref in (v1, v2):
        provider.cancel_destruction(ref)
    assert _meta(aliyun, v1.key_id)["KeyState"] == "Disabled"  # as the broker's cancelled key is
    provider.set_enabled(v2, True)
    assert provider.decrypt(v1, provider.encrypt(v2, b"back", b""), b"") == b"back"


def test_destroy_after_the_window_and_of_a_losing_asymmetric_version(provider, aliyun):
    sym = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="gone")
    provider.schedule_destruction(sym, 10)
    provider.destroy(sym)
    assert _meta(aliyun, sym.key_id)["KeyState"] == "PendingDeletion"
    v1 = provider.create_key(KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, label="race")
    loser = provider.create_version(v1, KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, label="race")
    provider.destroy(loser)
    assert _meta(aliyun, loser.key_id)["KeyState"] == "PendingDeletion"
    assert _meta(aliyun, v1.key_id)["KeyState"] == "Enabled"


def test_losing_symmetric_rotation_leaves_the_key_usable(provider, aliyun):
    v1 = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-race")
    old = provider.encrypt(v1, b"kept", b"")
    loser = provider.create_version(v1, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="sym-race")
    provider.destroy(loser)
    assert _meta(aliyun, v1.key_id)["KeyState"] == "Enabled"
    assert provider.decrypt(v1, old, b"") == b"kept"


def test_import_material_through_begin_and_finish(provider, aliyun):
    params = provider.begin_import(KeySpec.SYMMETRIC_DEFAULT)
    assert params.wrapping_algorithms == ("RSAES_OAEP_SHA_1",)
    wrapped = _oaep_sha1(params.public_key_der, os.urandom(32))
    ref = provider.finish_import(params.handle, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, wrapped,
                                 "RSAES_OAEP_SHA_1", label="imported")
    assert _meta(aliyun, ref.key_id)["Origin"] == "EXTERNAL"
    assert provider.decrypt(ref, provider.encrypt(ref, b"byok", b"a"), b"a") == b"byok"
    provider.discard_import(params.handle)  # finished imports are left alone
    assert _meta(aliyun, ref.key_id)["KeyState"] == "Enabled"
    unused = provider.begin_import(KeySpec.SYMMETRIC_DEFAULT)
    provider.discard_import(unused.handle)
    assert _meta(aliyun, unused.handle["key_id"])["KeyState"] == "PendingDeletion"


def test_import_with_garbage_is_invalid_ciphertext(provider):
    params = provider.begin_import(KeySpec.SYMMETRIC_DEFAULT)
    with pytest.raises(ProviderInvalidCiphertext):
        provider.finish_import(params.handle, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, os.urandom(256),
                               "RSAES_OAEP_SHA_1", label="bad")
    with pytest.raises(ProviderUnsupported):
        provider.begin_import(KeySpec.RSA_2048)


def test_byok_import_and_reimport_of_the_same_material(provider, aliyun):
    material = os.urandom(32)
    seen: list[str] = []

    def wrap(public_der: bytes, algorithm: str) -> bytes:  # stands in for the broker's HSM
        seen.append(algorithm)
        return _oaep_sha1(public_der, material)

    ref = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, wrap, label="hsm-born")
    ct = provider.encrypt(ref, b"durable", b"ctx")
    provider.destroy(ref)  # deletes the imported material
    assert _meta(aliyun, ref.key_id)["KeyState"] == "PendingImport"
    with pytest.raises(ProviderInvalidState):
        provider.decrypt(ref, ct, b"ctx")
    again = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, wrap, label="hsm-born", ref=ref)
    assert again.key_id == ref.key_id and seen == ["RSAES_OAEP_SHA_1"] * 2
    assert provider.decrypt(again, ct, b"ctx") == b"durable"


def test_inventory_lists_keys_with_their_label(provider):
    ref = provider.create_key(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, label="inventoried")
    items = {i.key_id: i for i in provider.inventory()}
    item = items[ref.key_id]
    assert (item.spec, item.usage, item.enabled) == (KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, True)
    assert item.tags["kms-broker-label"] == "inventoried" and item.created_at is not None


def test_unknown_key_is_not_found(provider):
    ref = ProviderKeyRef(key_id="00000000-0000-0000-0000-000000000000", version="v")
    with pytest.raises(ProviderNotFound):
        provider.encrypt(ref, b"x", b"")
    with pytest.raises(ProviderNotFound):
        provider.set_enabled(ref, False)


def test_wrong_secret_is_access_denied_and_never_echoes_data(aliyun):
    p = AliyunProvider.from_config("bad", aliyun.config(access_key_secret="wrong-secret"))
    with pytest.raises(ProviderAccessDenied) as info:
        p.encrypt(ProviderKeyRef(key_id="k"), b"very-secret-plaintext", b"")
    assert "wrong-secret" not in str(info.value) and "very-secret" not in str(info.value)
    assert "dmVyeS1zZWNyZXQ" not in str(info.value)  # nor its base64


def test_unknown_access_key_is_access_denied(aliyun):
    p = AliyunProvider.from_config("bad", aliyun.config(access_key_id="LTAInobody"))
    with pytest.raises(ProviderAccessDenied):
        p.check_health()


def test_emulator_down_is_unavailable(aliyun):
    p = AliyunProvider.from_config("down", aliyun.config(endpoint=f"http://127.0.0.1:{free_port()}", timeout=2))
    with pytest.raises(ProviderUnavailable):
        p.check_health()
    with pytest.raises(ProviderUnavailable):
        p.encrypt(ProviderKeyRef(key_id="k"), b"x", b"")


def test_credentials_from_env_and_file_and_never_in_repr(aliyun, tmp_path, monkeypatch):
    base = {k: v for k, v in aliyun.config().items() if not k.startswith("access_key")}
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", aliyun.key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", aliyun.secret)
    p = AliyunProvider.from_config("env", base)
    p.check_health()
    assert aliyun.secret not in repr(p)
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_ID")
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\ntype = access_key\naccess_key_id = nobody\naccess_key_secret = x\n\n"
                     f"[ci]\ntype = access_key\naccess_key_id = {aliyun.key_id}\naccess_key_secret = {aliyun.secret}\n")
    AliyunProvider.from_config("file", {**base, "credentials_file": str(creds), "profile": "ci"}).check_health()
    with pytest.raises(ProviderAccessDenied):
        AliyunProvider.from_config("file", {**base, "credentials_file": str(creds)}).check_health()
    key = AccessKey.resolve({**base, "credentials_file": str(creds), "profile": "ci"})
    assert aliyun.secret not in repr(key) and aliyun.secret not in str(key)
    with pytest.raises(ValueError):
        AccessKey.resolve({"credentials_file": str(tmp_path / "missing")}, environ={})
