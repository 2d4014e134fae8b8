"""Key versions and rotation: new versions become primary, old ciphertexts keep decrypting."""

from __future__ import annotations

import pytest

from .helpers import aliyun_error, call, new_key


def test_create_key_version_rotates_the_primary(kms):
    meta = new_key(kms)
    key_id, v1 = meta["KeyId"], meta["PrimaryKeyVersion"]
    old = call(kms, "encrypt", key_id=key_id, plaintext="before")
    v2 = call(kms, "create_key_version", key_id=key_id)["KeyVersion"]
    assert v2["KeyId"] == key_id and v2["KeyVersionId"] != v1 and v2["CreationDate"]
    described = call(kms, "describe_key", key_id=key_id)["KeyMetadata"]
    assert described["PrimaryKeyVersion"] == v2["KeyVersionId"] and described["LastRotationDate"]
    new = call(kms, "encrypt", key_id=key_id, plaintext="after")
    assert (old["KeyVersionId"], new["KeyVersionId"]) == (v1, v2["KeyVersionId"])
    dec = call(kms, "decrypt", ciphertext_blob=old["CiphertextBlob"])
    assert (dec["Plaintext"], dec["KeyVersionId"]) == ("before", v1)


def test_list_and_describe_key_versions(kms):
    key_id = new_key(kms)["KeyId"]
    added = [call(kms, "create_key_version", key_id=key_id)["KeyVersion"]["KeyVersionId"] for _ in range(2)]
    listed = call(kms, "list_key_versions", key_id=key_id, page_size=10)
    ids = [v["KeyVersionId"] for v in listed["KeyVersions"]["KeyVersion"]]
    assert listed["TotalCount"] == 3 and ids[1:] == added
    page2 = call(kms, "list_key_versions", key_id=key_id, page_number=2, page_size=2)
    assert [v["KeyVersionId"] for v in page2["KeyVersions"]["KeyVersion"]] == [added[1]]
    one = call(kms, "describe_key_version", key_id=key_id, key_version_id=added[0])["KeyVersion"]
    assert one == {"KeyId": key_id, "KeyVersionId": added[0], "CreationDate": one["CreationDate"]}
    with aliyun_error("Forbidden.ResourceNotFound", 404):
        call(kms, "describe_key_version", key_id=key_id, key_version_id="missing")


def test_asymmetric_keys_cannot_get_new_versions(kms):
    key_id = new_key(kms, key_spec="EC_P256", key_usage="SIGN/VERIFY")["KeyId"]
    with aliyun_error("UnsupportedOperation", 400):
        call(kms, "create_key_version", key_id=key_id)


def test_disabled_key_cannot_rotate(kms):
    key_id = new_key(kms)["KeyId"]
    call(kms, "disable_key", key_id=key_id)
    with aliyun_error("Rejected.Disabled", 400):
        call(kms, "create_key_version", key_id=key_id)


@pytest.mark.parametrize(("interval", "seconds"), [("7d", 604800), ("864000s", 864000), ("730d", 63072000)])
def test_update_rotation_policy(kms, interval, seconds):
    key_id = new_key(kms)["KeyId"]
    call(kms, "update_rotation_policy", key_id=key_id, enable_automatic_rotation=True, rotation_interval=interval)
    meta = call(kms, "describe_key", key_id=key_id)["KeyMetadata"]
    assert (meta["AutomaticRotation"], meta["RotationInterval"]) == ("Enabled", f"{seconds}s")
    assert meta["NextRotationDate"]
    call(kms, "update_rotation_policy", key_id=key_id, enable_automatic_rotation=False)
    meta = call(kms, "describe_key", key_id=key_id)["KeyMetadata"]
    assert meta["AutomaticRotation"] == "Disabled" and "NextRotationDate" not in meta


@pytest.mark.parametrize("interval", ["6d", "731d", "7 days"])
def test_rotation_interval_out_of_range(kms, interval):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("InvalidParameter", 400):
        call(kms, "update_rotation_policy", key_id=key_id, enable_automatic_rotation=True, rotation_interval=interval)


def test_create_key_with_automatic_rotation(kms):
    meta = new_key(kms, enable_automatic_rotation=True, rotation_interval="30d")
    assert (meta["AutomaticRotation"], meta["RotationInterval"]) == ("Enabled", "2592000s")
