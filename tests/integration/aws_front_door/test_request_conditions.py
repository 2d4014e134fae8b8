"""The condition keys AWS documents for a request's parameters (kms:EncryptionAlgorithm, kms:SigningAlgorithm,
kms:MessageType, kms:MacAlgorithm, kms:DataKeyPairSpec, kms:KeySpec/KeyUsage at CreateKey, kms:GrantConstraintType,
kms:ReEncryptOnSameKey, kms:RotationPeriodInDays, kms:ScheduleKeyDeletionPendingWindowInDays, kms:WrappingAlgorithm,
kms:BypassPolicyLockoutSafetyCheck, aws:RequestTag/*, aws:TagKeys), in policies shaped like AWS's documented
examples, loaded through the AWS front door with boto3 and decided for real SigV4 principals — each refusal an
AccessDeniedException before anything happens, each allowed request carried out."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from botocore.exceptions import ClientError

from tests.integration.aws_front_door.conftest import ACCOUNT, kms_client

ROOT = f"arn:aws:iam::{ACCOUNT}:root"


def user(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def denied(call) -> bool:
    """True for AccessDeniedException, False when the call succeeds; any other answer fails the test."""
    try:
        call()
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDeniedException", exc.response
        return True
    return False


@pytest.fixture(scope="module")
def app(aws_broker, issue):
    """A SigV4 principal with no identity policy: only the key policies below name it."""
    name = f"cond-app-{os.urandom(3).hex()}"
    return name, kms_client(aws_broker, issue(name=name))


def key_for(kms, name: str, statements: list[dict], **create) -> str:
    """A key whose policy is the account statement (AWS's default) plus `statements` for the principal `name`."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*",
         "Resource": "*"},
        *({"Principal": {"AWS": user(name)}, "Resource": "*", **s} for s in statements)]}
    return kms.create_key(Policy=json.dumps(policy), **create)["KeyMetadata"]["KeyId"]


def test_encryption_algorithm_limits_an_rsa_key_to_oaep_sha_256(kms, app):
    name, c = app
    key = key_for(kms, name, [{"Sid": "Allow only one encryption algorithm with this asymmetric KMS key",
                               "Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GetPublicKey"],
                               "Condition": {"StringEquals": {"kms:EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}}}],
                  KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT", CustomKeyStoreId="aliyun")
    assert denied(lambda: c.encrypt(KeyId=key, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1"))
    blob = c.encrypt(KeyId=key, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    assert denied(lambda: c.decrypt(KeyId=key, CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_1"))
    assert c.decrypt(KeyId=key, CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == b"x"
    assert denied(lambda: c.get_public_key(KeyId=key))  # no algorithm in that request: the condition cannot hold


def test_symmetric_requests_carry_symmetric_default(kms, app):
    name, c = app
    key = key_for(kms, name, [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*",
                                                             "kms:ReEncrypt*"],
                               "Condition": {"StringEquals": {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}}}],
                  CustomKeyStoreId="hsm")
    blob = c.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]  # the parameter's default counts, as in AWS
    assert c.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    c.generate_data_key(KeyId=key, KeySpec="AES_256")
    c.generate_data_key_pair_without_plaintext(KeyId=key, KeyPairSpec="ECC_NIST_P256")
    c.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key)


def test_signing_algorithm_and_message_type(kms, app):
    name, c = app
    key = key_for(kms, name, [
        {"Effect": "Allow", "Action": ["kms:Sign", "kms:Verify"],
         "Condition": {"StringLike": {"kms:SigningAlgorithm": "RSASSA_PSS_*"}}},
        {"Sid": "Deny signing digests", "Effect": "Deny", "Action": "kms:Sign",
         "Condition": {"StringEquals": {"kms:MessageType": "DIGEST"}}}],
        KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY", CustomKeyStoreId="hsm")
    signature = c.sign(KeyId=key, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    assert c.verify(KeyId=key, Message=b"m", Signature=signature,
                    SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]
    assert denied(lambda: c.sign(KeyId=key, Message=b"m", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256"))
    assert denied(lambda: c.sign(KeyId=key, Message=b"\x00" * 32, MessageType="DIGEST",
                                 SigningAlgorithm="RSASSA_PSS_SHA_256"))
    assert c.verify(KeyId=key, Message=hashlib.sha256(b"m").digest(), MessageType="DIGEST", Signature=signature,
                    SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]  # the Deny names Sign only


def test_mac_algorithm(kms, app):
    name, c = app
    key = key_for(kms, name, [{"Effect": "Allow", "Action": ["kms:GenerateMac", "kms:VerifyMac"],
                               "Condition": {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_512"}}}],
                  KeySpec="HMAC_512", KeyUsage="GENERATE_VERIFY_MAC", CustomKeyStoreId="hsm")
    mac = c.generate_mac(KeyId=key, Message=b"m", MacAlgorithm="HMAC_SHA_512")["Mac"]
    assert c.verify_mac(KeyId=key, Message=b"m", Mac=mac, MacAlgorithm="HMAC_SHA_512")["MacValid"]
    other = key_for(kms, name, [{"Effect": "Allow", "Action": "kms:GenerateMac",
                                 "Condition": {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_512"}}}],
                    KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC", CustomKeyStoreId="hsm")
    assert denied(lambda: c.generate_mac(KeyId=other, Message=b"m", MacAlgorithm="HMAC_SHA_256"))


def test_data_key_pair_spec(kms, app):
    name, c = app
    key = key_for(kms, name, [{"Effect": "Allow", "Action": "kms:GenerateDataKeyPair*",
                               "Condition": {"StringLike": {"kms:DataKeyPairSpec": "RSA*"}}}], CustomKeyStoreId="hsm")
    assert c.generate_data_key_pair(KeyId=key, KeyPairSpec="RSA_2048")["KeyPairSpec"] == "RSA_2048"
    assert denied(lambda: c.generate_data_key_pair(KeyId=key, KeyPairSpec="ECC_NIST_P256"))
    assert denied(lambda: c.generate_data_key_pair_without_plaintext(KeyId=key, KeyPairSpec="ECC_NIST_P384"))


def test_re_encrypt_on_the_same_key(kms, app):
    name, c = app
    statements = [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:ReEncrypt*"]},
                  {"Effect": "Deny", "Action": "kms:ReEncrypt*",
                   "Condition": {"Bool": {"kms:ReEncryptOnSameKey": "true"}}}]
    key, other = key_for(kms, name, statements), key_for(kms, name, statements)
    blob = c.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    assert denied(lambda: c.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key))
    moved = c.re_encrypt(CiphertextBlob=blob, DestinationKeyId=other)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=moved)["Plaintext"] == b"x"


def test_rotation_period_and_deletion_window(kms, app):
    name, c = app
    key = key_for(kms, name, [
        {"Effect": "Allow", "Action": "kms:EnableKeyRotation",
         "Condition": {"NumericLessThanEquals": {"kms:RotationPeriodInDays": "180"}}},
        {"Effect": "Allow", "Action": "kms:ScheduleKeyDeletion",
         "Condition": {"NumericGreaterThanEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": 21}}}])
    assert denied(lambda: c.enable_key_rotation(KeyId=key))  # the default period (365) counts
    assert denied(lambda: c.enable_key_rotation(KeyId=key, RotationPeriodInDays=365))
    c.enable_key_rotation(KeyId=key, RotationPeriodInDays=180)
    assert kms.get_key_rotation_status(KeyId=key)["RotationPeriodInDays"] == 180
    assert denied(lambda: c.schedule_key_deletion(KeyId=key, PendingWindowInDays=7))
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    c.schedule_key_deletion(KeyId=key)  # the default window (30) counts
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"


def test_grant_constraint_type(kms, app, aws_broker, issue):
    name, c = app
    grantee = f"cond-grantee-{os.urandom(3).hex()}"
    key = key_for(kms, name, [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"]},
        {"Effect": "Allow", "Action": "kms:CreateGrant",
         "Condition": {"StringEquals": {"kms:GrantConstraintType": "EncryptionContextEquals"}}}])
    assert denied(lambda: c.create_grant(KeyId=key, GranteePrincipal=grantee, Operations=["Decrypt"]))
    assert denied(lambda: c.create_grant(KeyId=key, GranteePrincipal=grantee, Operations=["Decrypt"],
                                         Constraints={"EncryptionContextSubset": {"app": "billing"}}))
    assert kms.list_grants(KeyId=key)["Grants"] == []
    c.create_grant(KeyId=key, GranteePrincipal=grantee, Operations=["Decrypt"],
                   Constraints={"EncryptionContextEquals": {"app": "billing"}})
    blob = c.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"app": "billing"})["CiphertextBlob"]
    holder = kms_client(aws_broker, issue(name=grantee))
    deadline = time.monotonic() + 5  # a new grant reaches every broker process within auth_cache_seconds
    while denied(lambda: holder.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})):
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_grantee_principal_and_grant_operations(kms, app):
    """AWS's shape: CreateGrant only for one grantee (named by its user ARN) and only for Decrypt/Encrypt."""
    name, c = app
    grantee = f"cond-ops-{os.urandom(3).hex()}"
    key = key_for(kms, name, [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*"]},
        {"Effect": "Allow", "Action": "kms:CreateGrant",
         "Condition": {"StringEquals": {"kms:GranteePrincipal": user(grantee)},
                       "ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt", "Encrypt"]}}}])
    assert denied(lambda: c.create_grant(KeyId=key, GranteePrincipal=user(f"{grantee}-other"), Operations=["Decrypt"]))
    assert denied(lambda: c.create_grant(KeyId=key, GranteePrincipal=user(grantee),
                                         Operations=["Decrypt", "ReEncryptFrom"]))
    c.create_grant(KeyId=key, GranteePrincipal=user(grantee), Operations=["Decrypt", "Encrypt"])
    c.create_grant(KeyId=key, GranteePrincipal=grantee, Operations=["Encrypt"])  # the name is the same principal
    assert sorted(g["GranteePrincipal"] for g in kms.list_grants(KeyId=key)["Grants"]) == [grantee, grantee]


def test_wrapping_algorithm(kms, app):
    name, c = app
    key = key_for(kms, name, [
        {"Effect": "Allow", "Action": "kms:GetParametersForImport",
         "Condition": {"StringEquals": {"kms:WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_1",
                                        "kms:WrappingKeySpec": "RSA_2048"}}}],
        Origin="EXTERNAL", CustomKeyStoreId="hsm")
    assert denied(lambda: c.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_1",
                                                      WrappingKeySpec="RSA_2048"))
    c.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_1", WrappingKeySpec="RSA_2048")


def test_bypass_policy_lockout_safety_check_can_be_denied(kms, app):
    name, c = app
    key = key_for(kms, name, [
        {"Effect": "Allow", "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy"]},
        {"Sid": "Never bypass the safety check", "Effect": "Deny", "Action": "kms:PutKeyPolicy",
         "Condition": {"Bool": {"kms:BypassPolicyLockoutSafetyCheck": True}}}])
    own = json.dumps({"Version": "2012-10-17", "Statement": [  # only what the writer holds (no escalation)
        {"Effect": "Allow", "Principal": {"AWS": user(name)}, "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy"],
         "Resource": "*"}]})
    assert denied(lambda: c.put_key_policy(KeyId=key, PolicyName="default", Policy=own,
                                           BypassPolicyLockoutSafetyCheck=True))
    assert kms.get_key_policy(KeyId=key)["Policy"] != own
    c.put_key_policy(KeyId=key, PolicyName="default", Policy=own)
    assert kms.get_key_policy(KeyId=key)["Policy"] == own


@pytest.fixture(scope="module")
def creator(aws_broker, issue):
    """A principal whose identity policy (AWS's documented CreateKey examples) limits which keys it may create and
    which tags it may set."""
    tag = os.urandom(3).hex()
    document = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Only symmetric encryption keys", "Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*",
         "Condition": {"StringEquals": {"kms:KeySpec": "SYMMETRIC_DEFAULT", "kms:KeyUsage": "ENCRYPT_DECRYPT"},
                       "Bool": {"kms:MultiRegion": "false"}}},
        {"Sid": "Tag keys only with Project and Owner", "Effect": "Allow", "Action": "kms:TagResource",
         "Resource": "*", "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["Project", "Owner"]},
                                        "StringEqualsIfExists": {"aws:RequestTag/Project": ["alpha", "beta"]}}},
        {"Effect": "Allow", "Action": ["kms:DescribeKey", "kms:PutKeyPolicy"], "Resource": "*"},
        {"Sid": "Never untag Project", "Effect": "Deny", "Action": "kms:UntagResource", "Resource": "*",
         "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": "Project"}}},
        {"Effect": "Allow", "Action": "kms:UntagResource", "Resource": "*"}]}
    r = aws_broker.session().put(aws_broker.url(f"/policies/creator-{tag}"), json={"Document": document})
    assert r.status_code in (200, 201), r.text
    return kms_client(aws_broker, issue(f"creator-{tag}", name=f"creator-{tag}"))


def test_create_key_conditions_read_the_request(kms, creator):
    before = {k["KeyId"] for p in kms.get_paginator("list_keys").paginate() for k in p["Keys"]}
    assert denied(lambda: creator.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT"))
    assert denied(lambda: creator.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC"))
    after = {k["KeyId"] for p in kms.get_paginator("list_keys").paginate() for k in p["Keys"]}
    assert after == before
    key = creator.create_key()["KeyMetadata"]  # KeySpec and KeyUsage left to their defaults
    assert (key["KeySpec"], key["KeyUsage"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")


def test_request_tags_and_tag_keys(kms, creator):
    key = creator.create_key()["KeyMetadata"]["KeyId"]
    creator.tag_resource(KeyId=key, Tags=[{"TagKey": "Project", "TagValue": "alpha"},
                                          {"TagKey": "Owner", "TagValue": "ops"}])
    assert denied(lambda: creator.tag_resource(KeyId=key, Tags=[{"TagKey": "Project", "TagValue": "gamma"}]))
    assert denied(lambda: creator.tag_resource(KeyId=key, Tags=[{"TagKey": "CostCenter", "TagValue": "1"}]))
    assert denied(lambda: creator.untag_resource(KeyId=key, TagKeys=["Owner", "Project"]))
    creator.untag_resource(KeyId=key, TagKeys=["Owner"])
    assert kms.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "Project", "TagValue": "alpha"}]
