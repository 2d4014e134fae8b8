"""AWS KMS behaviours as AWS documents them, through boto3 against a real broker: the two remaining curves, which
operations take an alias, reserved aliases, RotationType, and AWS's validation message shape."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from tests.integration.aws_front_door.conftest import REGION
from tests.integration.aws_front_door.test_errors import error, signed_post

CURVES = [("ECC_NIST_P521", "ECDSA_SHA_512", "secp521r1", hashes.SHA512),
          ("ECC_SECG_P256K1", "ECDSA_SHA_256", "secp256k1", hashes.SHA256)]


def refused(call, code: str, status: int = 400) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] == code, caught.value.response
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    return caught.value.response["Error"]["Message"]


# ------------------------------------------------------------------------------------------------ curves


@pytest.mark.parametrize(("spec", "algorithm", "curve", "digest"), CURVES)
def test_p521_and_secp256k1_keys_sign_in_the_hsm(kms, spec, algorithm, curve, digest):
    meta = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY", CustomKeyStoreId="hsm")["KeyMetadata"]
    assert (meta["KeySpec"], meta["SigningAlgorithms"]) == (spec, [algorithm])
    public = kms.get_public_key(KeyId=meta["KeyId"])
    key = serialization.load_der_public_key(public["PublicKey"])
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve
    message = f"signed on {spec}".encode()
    signature = kms.sign(KeyId=meta["KeyId"], Message=message, SigningAlgorithm=algorithm)["Signature"]
    key.verify(signature, hashlib.new(digest.name, message).digest(), ec.ECDSA(Prehashed(digest())))
    assert kms.verify(KeyId=meta["KeyId"], Message=message, Signature=signature,
                      SigningAlgorithm=algorithm)["SignatureValid"] is True
    assert refused(lambda: kms.verify(KeyId=meta["KeyId"], Message=message + b"!", Signature=signature,
                                      SigningAlgorithm=algorithm), "KMSInvalidSignatureException")
    other = "ECDSA_SHA_384"
    refused(lambda: kms.sign(KeyId=meta["KeyId"], Message=message, SigningAlgorithm=other),
            "InvalidKeyUsageException")


@pytest.mark.parametrize(("spec", "algorithm", "curve", "digest"), CURVES)
def test_a_store_without_the_curve_says_so(kms, spec, algorithm, curve, digest):
    message = refused(lambda: kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY", CustomKeyStoreId="aliyun"),
                      "UnsupportedOperationException")
    assert spec in message


# ------------------------------------------------------------------------------------------------ aliases


@pytest.fixture
def aliased(kms):
    key_id = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    name = f"alias/behave-{os.urandom(4).hex()}"
    kms.create_alias(AliasName=name, TargetKeyId=key_id)
    return key_id, name


def test_key_id_only_operations_refuse_an_alias(kms, aliased):
    """EnableKeyRotation (and every operation whose KeyId AWS documents as key id or key ARN) answers
    NotFoundException for an alias name or alias ARN, and changes nothing."""
    key_id, name = aliased
    alias_arn = f"arn:aws:kms:{REGION}:111122223333:{name}"
    for ref in (name, alias_arn):
        assert "Invalid keyId" in refused(lambda r=ref: kms.enable_key_rotation(KeyId=r), "NotFoundException")
        refused(lambda r=ref: kms.tag_resource(KeyId=r, Tags=[{"TagKey": "t", "TagValue": "v"}]),
                "NotFoundException")
        refused(lambda r=ref: kms.put_key_policy(KeyId=r, PolicyName="default", Policy="{}"), "NotFoundException")
        refused(lambda r=ref: kms.schedule_key_deletion(KeyId=r, PendingWindowInDays=7), "NotFoundException")
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    assert kms.list_resource_tags(KeyId=key_id)["Tags"] == []
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    # operations AWS documents with aliases keep taking them
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == key_id
    blob = kms.encrypt(KeyId=alias_arn, Plaintext=b"x")["CiphertextBlob"]
    assert kms.decrypt(KeyId=name, CiphertextBlob=blob)["Plaintext"] == b"x"
    kms.enable_key_rotation(KeyId=key_id)  # the key id itself works


def test_an_alias_cannot_target_an_alias(kms, aliased):
    key_id, name = aliased
    other = f"alias/behave-{os.urandom(4).hex()}"
    message = refused(lambda: kms.create_alias(AliasName=other, TargetKeyId=name), "ValidationException")
    assert "Aliases must refer to keys" in message
    refused(lambda: kms.update_alias(AliasName=name, TargetKeyId=name), "ValidationException")
    names = [a["AliasName"] for a in kms.list_aliases(KeyId=key_id)["Aliases"]]
    assert names == [name]


@pytest.mark.parametrize("reserved", ["alias/aws/ebs", "alias/aws/anything"])
def test_reserved_aliases_are_not_authorized(kms, aliased, reserved):
    key_id, _ = aliased
    for call in (lambda: kms.create_alias(AliasName=reserved, TargetKeyId=key_id),
                 lambda: kms.update_alias(AliasName=reserved, TargetKeyId=key_id),
                 lambda: kms.delete_alias(AliasName=reserved)):
        refused(call, "NotAuthorizedException")
    assert all(a["AliasName"] != reserved for a in kms.list_aliases()["Aliases"])


# ------------------------------------------------------------------------------------------------ rotation


def test_list_key_rotations_names_the_rotation_type(kms):
    key_id = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    assert kms.list_key_rotations(KeyId=key_id)["Rotations"] == []
    kms.rotate_key_on_demand(KeyId=key_id)
    rotations = kms.list_key_rotations(KeyId=key_id)["Rotations"]
    assert [(r["KeyId"], r["RotationType"]) for r in rotations] == [(key_id, "ON_DEMAND")]
    assert rotations[0]["RotationDate"].year >= 2025  # botocore parsed an epoch date


# ------------------------------------------------------------------------------------------------ validation


def test_validation_messages_have_aws_shape(aws_broker, root_creds, kms):
    key_id = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    message = refused(lambda: kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=3), "ValidationException")
    assert message == ("1 validation error detected: Value '3' at 'pendingWindowInDays' failed to satisfy constraint: "
                       "Member must have value greater than or equal to 7")
    message = refused(lambda: kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=9999), "ValidationException")
    assert message == ("1 validation error detected: Value '9999' at 'rotationPeriodInDays' failed to satisfy "
                       "constraint: Member must have value less than or equal to 2560")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False

    r = signed_post(aws_broker, root_creds, "CreateKey", {"KeySpec": "AES_999", "Description": "d" * 8193})
    status, code, message = error(r)
    assert (status, code) == (400, "ValidationException")
    assert message.startswith("2 validation errors detected: ")
    assert "Value 'AES_999' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [" in message
    assert "at 'description' failed to satisfy constraint: Member must have length less than or equal to 8192" \
        in message

    secret = os.urandom(4097)
    r = signed_post(aws_broker, root_creds, "Encrypt", {"KeyId": key_id,
                                                        "Plaintext": base64.b64encode(secret).decode()})
    status, code, message = error(r)
    assert (status, code) == (400, "ValidationException")
    assert message == ("1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
                       "Member must have length less than or equal to 4096")

    r = signed_post(aws_broker, root_creds, "CreateAlias", {"AliasName": "alias/sp ace", "TargetKeyId": key_id})
    status, code, message = error(r)
    assert (status, code) == (400, "ValidationException")
    assert message == ("1 validation error detected: Value 'alias/sp ace' at 'aliasName' failed to satisfy "
                       "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$")
    r = signed_post(aws_broker, root_creds, "Encrypt", {"Plaintext": "eA=="})
    assert error(r)[2] == ("1 validation error detected: Value null at 'keyId' failed to satisfy constraint: "
                           "Member must not be null")


# ------------------------------------------------------------------------------------------------ grant principals


def test_a_grantee_user_arn_names_that_principal(aws_broker, issue, kms):
    """AWS clients name grantees by ARN: a user ARN of the account is that broker principal (as in key policies);
    an ARN that cannot be one grantee (a role: many principals; another account; a service; a session) is refused
    rather than stored as a name that matches nobody."""
    from tests.integration.aws_front_door.conftest import ACCOUNT, kms_client
    name = f"grantee-arn-{os.urandom(3).hex()}"
    key = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    arn = f"arn:aws:iam::{ACCOUNT}:user/{name}"
    grant = kms.create_grant(KeyId=key, GranteePrincipal=arn, Operations=["Decrypt"], RetiringPrincipal=arn)
    listed = kms.list_grants(KeyId=key, GranteePrincipal=arn)["Grants"]
    assert [(g["GrantId"], g["GranteePrincipal"]) for g in listed] == [(grant["GrantId"], name)]
    holder = kms_client(aws_broker, issue(name=name))
    deadline = time.monotonic() + 5  # a new grant reaches every broker process within auth_cache_seconds
    while True:
        try:
            assert holder.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
            break
        except ClientError:
            assert time.monotonic() < deadline
            time.sleep(0.3)
    assert [g["GrantId"] for g in kms.list_retirable_grants(RetiringPrincipal=arn)["Grants"]] == [grant["GrantId"]]
    for other in (f"arn:aws:iam::{ACCOUNT}:role/app", f"arn:aws:iam::444455556666:user/{name}",
                  f"arn:aws:sts::{ACCOUNT}:assumed-role/app/session", "arn:aws:iam::111122223333:root"):
        message = refused(lambda o=other: kms.create_grant(KeyId=key, GranteePrincipal=o, Operations=["Decrypt"]),
                          "ValidationException")
        assert "GranteePrincipal" in message
    assert [g["GrantId"] for g in kms.list_grants(KeyId=key)["Grants"]] == [grant["GrantId"]]
