"""Key lifecycle: CreateKey specs/usages/origins, DescribeKey, ListKeys paging, enable/disable, deletion window."""

from __future__ import annotations

import calendar
import time

import pytest

from .helpers import aliyun_error, call, new_key

SPECS = [("Aliyun_AES_256", "ENCRYPT/DECRYPT"), ("Aliyun_SM4", "ENCRYPT/DECRYPT"), ("RSA_2048", "ENCRYPT/DECRYPT"),
         ("RSA_2048", "SIGN/VERIFY"), ("RSA_3072", "SIGN/VERIFY"), ("EC_P256", "SIGN/VERIFY")]


@pytest.mark.parametrize(("spec", "usage"), SPECS)
def test_create_and_describe_key(kms, spec, usage):
    meta = new_key(kms, key_spec=spec, key_usage=usage, description=f"{spec} key")
    assert (meta["KeySpec"], meta["KeyUsage"], meta["KeyState"]) == (spec, usage, "Enabled")
    assert meta["Origin"] == "Aliyun_KMS"
    assert meta["Arn"].endswith(f":key/{meta['KeyId']}") and meta["Arn"].startswith("acs:kms:cn-hangzhou:")
    described = call(kms, "describe_key", key_id=meta["KeyId"])["KeyMetadata"]
    assert described["Description"] == f"{spec} key"
    assert described["PrimaryKeyVersion"] == meta["PrimaryKeyVersion"] != ""


def test_default_key_is_aes_256_for_encryption(kms):
    meta = new_key(kms)
    assert (meta["KeySpec"], meta["KeyUsage"], meta["ProtectionLevel"]) == ("Aliyun_AES_256", "ENCRYPT/DECRYPT", "SOFTWARE")


@pytest.mark.parametrize(("fields", "code"), [
    ({"key_spec": "Aliyun_AES_256", "key_usage": "SIGN/VERIFY"}, "InvalidParameter"),
    ({"key_spec": "EC_P256", "key_usage": "ENCRYPT/DECRYPT"}, "InvalidParameter"),
    ({"key_spec": "DES"}, "InvalidParameter"),
    ({"origin": "CLOUD_HSM"}, "InvalidParameter"),
    ({"key_spec": "RSA_2048", "origin": "EXTERNAL"}, "UnsupportedOperation"),
    ({"enable_automatic_rotation": True, "rotation_interval": "2d"}, "InvalidParameter"),
])
def test_create_key_rejects_invalid_combinations(kms, fields, code):
    with aliyun_error(code, 400):
        new_key(kms, **fields)


def test_describe_unknown_key_is_key_not_found(kms):
    with aliyun_error("Forbidden.KeyNotFound", 404):
        call(kms, "describe_key", key_id="00000000-0000-0000-0000-000000000000")


def test_list_keys_pages_through_every_key(kms):
    created = {new_key(kms)["KeyId"] for _ in range(3)}
    first = call(kms, "list_keys", page_number=1, page_size=2)
    total = first["TotalCount"]
    assert total >= 3 and first["PageSize"] == 2 and len(first["Keys"]["Key"]) == 2
    seen = []
    for page in range(1, (total + 1) // 2 + 1):
        body = call(kms, "list_keys", page_number=page, page_size=2)
        seen += [k["KeyId"] for k in body["Keys"]["Key"]]
        assert all(k["KeyArn"].endswith(k["KeyId"]) for k in body["Keys"]["Key"])
    assert len(seen) == total == len(set(seen))
    assert created <= set(seen)


def test_list_keys_rejects_page_size_over_100(kms):
    with aliyun_error("InvalidParameter", 400):
        call(kms, "list_keys", page_size=101)


def test_disable_blocks_use_and_enable_restores_it(kms):
    key_id = new_key(kms)["KeyId"]
    blob = call(kms, "encrypt", key_id=key_id, plaintext="x")["CiphertextBlob"]
    call(kms, "disable_key", key_id=key_id)
    assert call(kms, "describe_key", key_id=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    with aliyun_error("Rejected.Disabled", 400):
        call(kms, "encrypt", key_id=key_id, plaintext="x")
    with aliyun_error("Rejected.Disabled", 400):
        call(kms, "decrypt", ciphertext_blob=blob)
    call(kms, "enable_key", key_id=key_id)
    assert call(kms, "decrypt", ciphertext_blob=blob)["Plaintext"] == "x"


def test_schedule_and_cancel_key_deletion(kms):
    key_id = new_key(kms)["KeyId"]
    call(kms, "disable_key", key_id=key_id)
    before = time.time()
    call(kms, "schedule_key_deletion", key_id=key_id, pending_window_in_days=7)
    meta = call(kms, "describe_key", key_id=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    delete_at = calendar.timegm(time.strptime(meta["DeleteDate"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(delete_at - (before + 7 * 86400)) < 120
    with aliyun_error("Forbidden.KeyPendingDeletion", 403):
        call(kms, "encrypt", key_id=key_id, plaintext="x")
    with aliyun_error("Forbidden.KeyPendingDeletion", 403):
        call(kms, "enable_key", key_id=key_id)
    call(kms, "cancel_key_deletion", key_id=key_id)
    meta = call(kms, "describe_key", key_id=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "Disabled" and "DeleteDate" not in meta


@pytest.mark.parametrize("days", [6, 367])
def test_deletion_window_must_be_7_to_366_days(kms, days):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("InvalidParameter", 400):
        call(kms, "schedule_key_deletion", key_id=key_id, pending_window_in_days=days)
    assert call(kms, "describe_key", key_id=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_cancel_deletion_of_a_live_key_is_rejected(kms):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("Rejected.UnexpectedState", 400):
        call(kms, "cancel_key_deletion", key_id=key_id)


def test_missing_required_parameter(kms):
    with aliyun_error("MissingKeyId", 400):
        call(kms, "describe_key")


def test_missing_deletion_window(kms):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("MissingPendingWindowInDays", 400):
        call(kms, "schedule_key_deletion", key_id=key_id)
