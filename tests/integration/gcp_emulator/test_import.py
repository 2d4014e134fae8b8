"""Import jobs: CKM_RSA_AES_KEY_WRAP (OAEP-wrapped ephemeral AES key ‖ RFC 5649 wrap) and direct RSA-OAEP."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import kms_v1

from .helpers import make_key, status, uid

Job = kms_v1.ImportJob
HASH = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256}


def wrap(job: kms_v1.ImportJob, target: bytes) -> bytes:
    """What `gcloud kms keys versions import` does client-side, per the key-wrapping documentation."""
    method = Job.ImportMethod(job.import_method).name  # e.g. RSA_OAEP_3072_SHA1_AES_256
    h = HASH[method.split("_")[3]]()
    pub = serialization.load_pem_public_key(job.public_key.pem.encode())
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == int(method.split("_")[2])
    oaep = padding.OAEP(padding.MGF1(h), h, None)
    if not method.endswith("_AES_256"):
        return pub.encrypt(target, oaep)
    ephemeral = os.urandom(32)
    return pub.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, target)


def new_job(client: kms_v1.KeyManagementServiceClient, ring: str, method: str, level: str = "SOFTWARE") -> Job:
    return client.create_import_job(request={"parent": ring, "import_job_id": uid("job"), "import_job": {
        "import_method": method, "protection_level": level}})


def import_into(client: kms_v1.KeyManagementServiceClient, key: kms_v1.CryptoKey, job: Job, algorithm: str,
                material: bytes, field: str = "wrapped_key") -> kms_v1.CryptoKeyVersion:
    return client.import_crypto_key_version(request={
        "parent": key.name, "import_job": job.name, "algorithm": algorithm, field: wrap(job, material)})


@pytest.mark.parametrize("method", ["RSA_OAEP_3072_SHA1_AES_256", "RSA_OAEP_4096_SHA1_AES_256",
                                    "RSA_OAEP_3072_SHA256_AES_256", "RSA_OAEP_4096_SHA256_AES_256",
                                    "RSA_OAEP_3072_SHA256"])
def test_import_symmetric_key_and_use_it(client: kms_v1.KeyManagementServiceClient, ring: str, method: str) -> None:
    job = new_job(client, ring, method)
    assert job.state == Job.ImportJobState.ACTIVE
    assert job.public_key.pem.startswith("-----BEGIN PUBLIC KEY-----") and job.expire_time > job.create_time
    assert client.get_import_job(name=job.name).name == job.name

    key = make_key(client, ring, "RAW_ENCRYPT_DECRYPT", "AES_256_GCM", import_only=True,
                   skip_initial_version_creation=True)
    material = os.urandom(32)
    field = "rsa_aes_wrapped_key" if method.endswith("_AES_256") else "wrapped_key"
    ver = import_into(client, key, job, "AES_256_GCM", material, field)
    assert ver.state == kms_v1.CryptoKeyVersion.CryptoKeyVersionState.ENABLED
    assert ver.import_job == job.name and ver.import_time is not None
    iv = os.urandom(12)
    enc = client.raw_encrypt(request={"name": ver.name, "plaintext": b"imported", "initialization_vector": iv,
                                      "additional_authenticated_data": b"aad"})
    # the emulator used exactly the material we wrapped: check with an independent AES-GCM
    assert AESGCM(material).decrypt(iv, enc.ciphertext, b"aad") == b"imported"


def test_import_into_encrypt_decrypt_key_becomes_primary(client: kms_v1.KeyManagementServiceClient,
                                                         ring: str) -> None:
    job = new_job(client, ring, "RSA_OAEP_3072_SHA256_AES_256")
    key = make_key(client, ring, "ENCRYPT_DECRYPT", import_only=True, skip_initial_version_creation=True)
    ver = import_into(client, key, job, "GOOGLE_SYMMETRIC_ENCRYPTION", os.urandom(32))
    assert client.get_crypto_key(name=key.name).primary.name == ver.name
    ct = client.encrypt(name=key.name, plaintext=b"byok").ciphertext
    assert client.decrypt(name=key.name, ciphertext=ct).plaintext == b"byok"
    with pytest.raises(GoogleAPICallError) as exc:
        client.create_crypto_key_version(parent=key.name, crypto_key_version={})
    assert status(exc.value) == "FAILED_PRECONDITION"  # import-only keys cannot generate versions


def test_import_ec_and_hmac_material(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    job = new_job(client, ring, "RSA_OAEP_3072_SHA1_AES_256")
    priv = ec.generate_private_key(ec.SECP256R1())
    der = priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    sign_key = make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256", skip_initial_version_creation=True)
    ver = import_into(client, sign_key, job, "EC_SIGN_P256_SHA256", der)
    pem = client.get_public_key(name=ver.name).pem.encode()
    expected = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pem == expected

    secret = os.urandom(32)
    mac_key = make_key(client, ring, "MAC", "HMAC_SHA256", skip_initial_version_creation=True)
    mver = import_into(client, mac_key, job, "HMAC_SHA256", secret)
    assert client.mac_sign(name=mver.name, data=b"x").mac == hmac.new(secret, b"x", hashlib.sha256).digest()


def test_import_errors(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    job = new_job(client, ring, "RSA_OAEP_3072_SHA1_AES_256")
    with pytest.raises(GoogleAPICallError) as exc:
        client.create_import_job(request={"parent": ring, "import_job_id": job.name.rsplit("/", 1)[1],
                                          "import_job": {"import_method": "RSA_OAEP_3072_SHA1_AES_256",
                                                         "protection_level": "SOFTWARE"}})
    assert status(exc.value) == "ALREADY_EXISTS"
    with pytest.raises(GoogleAPICallError) as exc:
        client.get_import_job(name=f"{ring}/importJobs/{uid('nope')}")
    assert status(exc.value) == "NOT_FOUND"
    assert job.name in [j.name for j in client.list_import_jobs(parent=ring)]

    key = make_key(client, ring, "RAW_ENCRYPT_DECRYPT", "AES_256_GCM", skip_initial_version_creation=True)
    cases = [
        {"algorithm": "AES_256_GCM", "wrapped_key": os.urandom(384 + 40)},  # not wrapped for this job
        {"algorithm": "AES_128_GCM", "wrapped_key": wrap(job, os.urandom(32))},  # wrong size for algorithm
        {"algorithm": "HMAC_SHA256", "wrapped_key": wrap(job, os.urandom(32))},  # algorithm vs purpose
        {"algorithm": "AES_256_GCM"},  # nothing to import
    ]
    for fields in cases:
        with pytest.raises(GoogleAPICallError) as exc:
            client.import_crypto_key_version(request={"parent": key.name, "import_job": job.name, **fields})
        assert status(exc.value) == "INVALID_ARGUMENT", fields
    with pytest.raises(GoogleAPICallError) as exc:
        client.import_crypto_key_version(request={"parent": key.name, "import_job": f"{ring}/importJobs/{uid('x')}",
                                                  "algorithm": "AES_256_GCM", "wrapped_key": b"x"})
    assert status(exc.value) == "NOT_FOUND"
    with pytest.raises(GoogleAPICallError) as exc:
        client.create_import_job(request={"parent": ring, "import_job_id": uid("job"),
                                          "import_job": {"protection_level": "SOFTWARE"}})
    assert status(exc.value) == "INVALID_ARGUMENT"  # import_method is required
    hsm_job = new_job(client, ring, "RSA_OAEP_3072_SHA1_AES_256", "HSM")
    with pytest.raises(GoogleAPICallError) as exc:
        import_into(client, key, hsm_job, "AES_256_GCM", os.urandom(32))
    assert status(exc.value) == "INVALID_ARGUMENT"  # protection levels must match
