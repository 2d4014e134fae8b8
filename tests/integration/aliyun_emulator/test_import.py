"""BYOK: GetParametersForImport / ImportKeyMaterial / DeleteKeyMaterial, token and material expiry."""

from __future__ import annotations

import base64
import calendar
import os
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from .conftest import launch, make_client
from .helpers import aliyun_error, b64, call, new_key

HASHES = {"RSAES_OAEP_SHA_1": hashes.SHA1(), "RSAES_OAEP_SHA_256": hashes.SHA256()}


def _params(client, key_id: str, algorithm: str = "RSAES_OAEP_SHA_256") -> dict:
    return call(client, "get_parameters_for_import", key_id=key_id, wrapping_algorithm=algorithm,
                wrapping_key_spec="RSA_2048")


def _wrap(params: dict, material: bytes, algorithm: str = "RSAES_OAEP_SHA_256") -> str:
    public = serialization.load_der_public_key(base64.b64decode(params["PublicKey"]))
    digest = HASHES[algorithm]
    return b64(public.encrypt(material, padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)))


def _import(client, key_id: str, material: bytes, algorithm: str = "RSAES_OAEP_SHA_256", expire: int = 0) -> None:
    params = _params(client, key_id, algorithm)
    call(client, "import_key_material", key_id=key_id, encrypted_key_material=_wrap(params, material, algorithm),
         import_token=params["ImportToken"], key_material_expire_unix=expire)


@pytest.mark.parametrize(("spec", "size", "algorithm"), [("Aliyun_AES_256", 32, "RSAES_OAEP_SHA_256"),
                                                         ("Aliyun_AES_256", 32, "RSAES_OAEP_SHA_1"),
                                                         ("Aliyun_SM4", 16, "RSAES_OAEP_SHA_256")])
def test_import_makes_an_external_key_usable(kms, spec, size, algorithm):
    meta = new_key(kms, key_spec=spec, origin="EXTERNAL")
    assert (meta["Origin"], meta["KeyState"]) == ("EXTERNAL", "PendingImport")
    with aliyun_error("Rejected.UnexpectedState", 400):
        call(kms, "encrypt", key_id=meta["KeyId"], plaintext="too early")
    params = _params(kms, meta["KeyId"], algorithm)
    expires = calendar.timegm(time.strptime(params["TokenExpireTime"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - (time.time() + 86400)) < 120 and params["KeyId"] == meta["KeyId"]
    call(kms, "import_key_material", key_id=meta["KeyId"], import_token=params["ImportToken"],
         encrypted_key_material=_wrap(params, os.urandom(size), algorithm), key_material_expire_unix=0)
    assert call(kms, "describe_key", key_id=meta["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    blob = call(kms, "encrypt", key_id=meta["KeyId"], plaintext="byok")["CiphertextBlob"]
    assert call(kms, "decrypt", ciphertext_blob=blob)["Plaintext"] == "byok"


def test_deleted_material_can_only_be_replaced_by_the_same_material(kms):
    key_id = new_key(kms, origin="EXTERNAL")["KeyId"]
    material = os.urandom(32)
    _import(kms, key_id, material)
    blob = call(kms, "encrypt", key_id=key_id, plaintext="kept")["CiphertextBlob"]
    call(kms, "delete_key_material", key_id=key_id)
    assert call(kms, "describe_key", key_id=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    with aliyun_error("Rejected.UnexpectedState", 400):
        call(kms, "decrypt", ciphertext_blob=blob)
    with aliyun_error("InvalidParameter", 400):
        _import(kms, key_id, os.urandom(32))
    _import(kms, key_id, material)
    assert call(kms, "decrypt", ciphertext_blob=blob)["Plaintext"] == "kept"


def test_import_rejects_bad_material_and_foreign_tokens(kms):
    k1, k2 = new_key(kms, origin="EXTERNAL")["KeyId"], new_key(kms, origin="EXTERNAL")["KeyId"]
    with aliyun_error("InvalidParameter", 400):
        _import(kms, k1, os.urandom(16))  # AES-256 needs 256 bits
    params = _params(kms, k2)
    with aliyun_error("InvalidParameter", 400):
        call(kms, "import_key_material", key_id=k1, import_token=params["ImportToken"],
             encrypted_key_material=_wrap(params, os.urandom(32)))
    params = _params(kms, k1)
    with aliyun_error("InvalidParameter", 400):
        call(kms, "import_key_material", key_id=k1, import_token=params["ImportToken"],
             encrypted_key_material=b64(os.urandom(256)))


def test_import_parameters_need_an_external_key(kms):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("UnsupportedOperation", 400):
        _params(kms, key_id)
    with aliyun_error("UnsupportedOperation", 400):
        call(kms, "delete_key_material", key_id=key_id)
    ext = new_key(kms, origin="EXTERNAL")["KeyId"]
    with aliyun_error("InvalidParameter", 400):
        call(kms, "get_parameters_for_import", key_id=ext, wrapping_algorithm="RSAES_OAEP_SHA_256",
             wrapping_key_spec="RSA_4096")


def test_expired_key_material_rejects_use(kms):
    key_id = new_key(kms, origin="EXTERNAL")["KeyId"]
    expire = int(time.time()) + 2
    _import(kms, key_id, os.urandom(32), expire=expire)
    meta = call(kms, "describe_key", key_id=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled" and meta["MaterialExpireTime"]
    assert call(kms, "encrypt", key_id=key_id, plaintext="x")["KeyId"] == key_id
    time.sleep(max(0.0, expire - time.time()) + 0.5)
    with aliyun_error("Rejected.ResourceExpired", 400):
        call(kms, "encrypt", key_id=key_id, plaintext="x")
    assert call(kms, "describe_key", key_id=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"


def test_import_token_expires(tmp_path):
    server, port = launch(tmp_path, "aliyun-kms-short-token", "--access-key", "AK:short", "--import-token-ttl", "1")
    try:
        client = make_client(f"127.0.0.1:{port}", "AK", "short")
        key_id = new_key(client, origin="EXTERNAL")["KeyId"]
        params = _params(client, key_id)
        time.sleep(1.5)
        with aliyun_error("Rejected.ResourceExpired", 400):
            call(client, "import_key_material", key_id=key_id, import_token=params["ImportToken"],
                 encrypted_key_material=_wrap(params, os.urandom(32)))
    finally:
        server.stop()
