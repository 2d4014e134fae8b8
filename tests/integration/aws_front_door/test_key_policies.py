"""AWS's documented example key policies, loaded into a real broker through the AWS front door with boto3, and the
decisions they imply — made by real SigV4 principals, each an IAM user ARN of the broker's account
(`arn:aws:iam::111122223333:user/<principal name>`, docs/aws-compat.md). Also: CreateKey with a Policy,
byte-for-byte round trips, MalformedPolicyDocumentException, the lock-out safety check and its bypass, and the
attacks (a wider policy than its writer holds, a key-admin writing itself crypto at CreateKey, globbed principal
ARNs, hostile documents)."""

from __future__ import annotations

import json
import os

import pytest
from botocore.exceptions import ClientError

from tests.integration.aws_front_door.conftest import ACCOUNT, kms_client
from tests.integration.aws_front_door.test_errors import error, signed_post

ROOT = f"arn:aws:iam::{ACCOUNT}:root"
DEFAULT_TEXT = """{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::111122223333:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}"""


def user(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def code_of(call) -> str | None:
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return None


def allowed(call) -> bool:
    outcome = code_of(call)
    assert outcome in (None, "AccessDeniedException"), outcome
    return outcome is None


@pytest.fixture(scope="module")
def people(aws_broker, issue):
    """SigV4 principals with no identity policy of their own (names unique per run), and one with key-user."""
    tag = os.urandom(3).hex()
    names = {role: f"{role}-{tag}" for role in ("admin", "app", "ctx", "via", "stranger", "writer")}
    clients = {role: kms_client(aws_broker, issue(name=name)) for role, name in names.items()}
    clients["iam-user"] = kms_client(aws_broker, issue("key-user", name=f"iam-user-{tag}"))
    names["iam-user"] = f"iam-user-{tag}"
    return names, clients


def console_default_policy(admin: str, app: str) -> dict:
    """AWS's console default key policy: the account, key administrators, key users, persistent resources."""
    return {"Version": "2012-10-17", "Id": "key-consolepolicy-3", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "Allow access for Key Administrators", "Effect": "Allow", "Principal": {"AWS": user(admin)},
         "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource",
                    "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand"],
         "Resource": "*"},
        {"Sid": "Allow use of the key", "Effect": "Allow", "Principal": {"AWS": [user(app)]},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
        {"Sid": "Allow attachment of persistent resources", "Effect": "Allow", "Principal": {"AWS": [user(app)]},
         "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"], "Resource": "*",
         "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}}]}


def test_a_new_key_has_aws_s_default_key_policy(kms, people):
    names, c = people
    key = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    out = kms.get_key_policy(KeyId=key, PolicyName="default")
    assert out["Policy"] == DEFAULT_TEXT and out["PolicyName"] == "default"
    # it hands the key to identity policies: key-user's reaches it, a principal without one gets nothing
    blob = c["iam-user"].encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    assert c["iam-user"].decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    assert not allowed(lambda: c["stranger"].encrypt(KeyId=key, Plaintext=b"x"))


def test_the_console_default_policy_separates_administrators_from_users(kms, people):
    names, c = people
    key = kms.create_key(CustomKeyStoreId="hsm", Policy=json.dumps(console_default_policy(names["admin"],
                                                                                        names["app"])))
    key_id = key["KeyMetadata"]["KeyId"]
    admin, app = c["admin"], c["app"]
    # key administrators: lifecycle, no crypto
    assert allowed(lambda: admin.describe_key(KeyId=key_id))
    assert allowed(lambda: admin.enable_key_rotation(KeyId=key_id))
    assert allowed(lambda: admin.tag_resource(KeyId=key_id, Tags=[{"TagKey": "owner", "TagValue": "ops"}]))
    assert allowed(lambda: admin.get_key_policy(KeyId=key_id, PolicyName="default"))
    for crypto in (lambda: admin.encrypt(KeyId=key_id, Plaintext=b"x"),
                   lambda: admin.generate_data_key(KeyId=key_id, KeySpec="AES_256")):
        assert not allowed(crypto)
    # key users: crypto and DescribeKey, no lifecycle
    blob = app.encrypt(KeyId=key_id, Plaintext=b"payload", EncryptionContext={"a": "b"})["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"payload"
    assert allowed(lambda: app.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"a": "b"},
                                          DestinationKeyId=key_id))
    assert allowed(lambda: app.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_256"))
    assert allowed(lambda: app.describe_key(KeyId=key_id))
    for lifecycle in (lambda: app.disable_key(KeyId=key_id), lambda: app.schedule_key_deletion(KeyId=key_id),
                      lambda: app.put_key_policy(KeyId=key_id, PolicyName="default", Policy=DEFAULT_TEXT)):
        assert not allowed(lifecycle)
    # persistent resources: only an AWS service creating a grant for the user may; a direct call never is one
    assert not allowed(lambda: app.create_grant(KeyId=key_id, GranteePrincipal=names["app"],
                                                Operations=["Decrypt"]))
    assert not allowed(lambda: app.list_grants(KeyId=key_id))
    # the account statement still hands the key to identity policies
    assert allowed(lambda: c["iam-user"].encrypt(KeyId=key_id, Plaintext=b"x"))
    assert not allowed(lambda: c["stranger"].describe_key(KeyId=key_id))


def test_encryption_context_conditions(kms, people):
    names, c = people
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "AppNameOnly", "Effect": "Allow", "Principal": {"AWS": user(names["ctx"])},
         "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
         "Condition": {"StringEquals": {"kms:EncryptionContext:AppName": "ExampleApp"},
                       "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["AppName", "FilePath"]}}}]}
    key_id = kms.create_key(CustomKeyStoreId="hsm", Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    app = c["ctx"]
    good = {"AppName": "ExampleApp", "FilePath": "/var/x"}
    blob = app.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext=good)["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=blob, EncryptionContext=good)["Plaintext"] == b"x"
    for context in ({}, {"AppName": "Other"}, {"AppName": "ExampleApp", "Extra": "y"}):
        assert not allowed(lambda ctx=context: app.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext=ctx))
    assert not allowed(lambda: app.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext={"AppName": "exampleapp"}))


def test_via_service_conditions_never_hold_for_direct_calls(kms, people):
    names, c = people
    services = ["ec2.eu-central-1.amazonaws.com", "rds.eu-central-1.amazonaws.com"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "Allow use through EC2 and RDS only", "Effect": "Allow", "Principal": {"AWS": user(names["via"])},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant",
                    "kms:ListGrants", "kms:DescribeKey"], "Resource": "*",
         "Condition": {"StringEquals": {"kms:ViaService": services, "kms:CallerAccount": ACCOUNT}}},
        {"Sid": "Deny use outside EC2", "Effect": "Deny", "Principal": {"AWS": user(names["iam-user"])},
         "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:ViaService": services[0]}}}]}
    key_id = kms.create_key(CustomKeyStoreId="hsm", Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    assert not allowed(lambda: c["via"].encrypt(KeyId=key_id, Plaintext=b"x"))
    assert not allowed(lambda: c["via"].describe_key(KeyId=key_id))
    assert not allowed(lambda: c["iam-user"].encrypt(KeyId=key_id, Plaintext=b"x"))  # the Deny wins
    assert allowed(lambda: c["iam-user"].describe_key(KeyId=key_id))  # identity policy, not denied


def test_put_key_policy_round_trips_byte_for_byte_with_aws_principals_and_unknown_actions(kms, people):
    names, c = people
    key_id = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    text = ('{"Version":"2012-10-17",\n\t"Statement" : [\n  {"Sid":"caf\\u00e9 \u00e9", "Effect":"Allow",'
            f'"Principal":{{"AWS":["{ROOT}", "{user(names["app"])}", "arn:aws:iam::444455556666:root"]}},'
            '"Action":["kms:*", "kms:SomeFutureAction"],"Resource":"*"}]   }')
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=text)
    assert kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"] == text
    assert allowed(lambda: c["app"].encrypt(KeyId=key_id, Plaintext=b"x"))
    created = kms.create_key(CustomKeyStoreId="hsm", Policy=text)["KeyMetadata"]["KeyId"]
    assert kms.get_key_policy(KeyId=created)["Policy"] == text


@pytest.mark.parametrize("document", [
    "not json", "{", "[]", '{"Statement": []}', '{"Statement": [{"Effect": "Allow", "Principal": "*"}]}',
    json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/*"},
                               "Action": "kms:*", "Resource": "*"}]}),
    json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "kms:*",
                               "Resource": "*"}]}),
    json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}]}),
    json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
                               "Condition": {"StringEquals": {"kms:NoSuchKey": "x"}}}]}),
    "[" * 20_000 + "]" * 20_000])
def test_malformed_documents_change_nothing(kms, document):
    key_id = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    before = {k["KeyId"] for p in kms.get_paginator("list_keys").paginate() for k in p["Keys"]}
    assert code_of(lambda: kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=document)) in (
        "MalformedPolicyDocumentException", "ValidationException")
    assert kms.get_key_policy(KeyId=key_id)["Policy"] == DEFAULT_TEXT
    assert code_of(lambda: kms.create_key(Policy=document)) in ("MalformedPolicyDocumentException",
                                                                "ValidationException")
    after = {k["KeyId"] for p in kms.get_paginator("list_keys").paginate() for k in p["Keys"]}
    assert after == before  # CreateKey with a refused policy made no key


def test_a_non_json_policy_is_malformed_in_aws_words(kms):
    key_id = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    assert code_of(lambda: kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy="not json")) == \
        "MalformedPolicyDocumentException"


def test_hostile_strings_in_a_policy(aws_broker, root_creds, kms):
    key_id = kms.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    lone = '{"Statement":[{"Sid":"\\ud800","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}'
    r = signed_post(aws_broker, root_creds, "PutKeyPolicy", {"KeyId": key_id, "PolicyName": "default",
                                                              "Policy": lone})
    assert error(r)[:2] in ((400, "MalformedPolicyDocumentException"), (400, "ValidationException"))
    assert kms.get_key_policy(KeyId=key_id)["Policy"] == DEFAULT_TEXT


def test_the_lockout_check_and_its_bypass(aws_broker, kms, issue):
    """A writer whose new policy would not let it call PutKeyPolicy again is refused (AWS's safety check), unless
    it says BypassPolicyLockoutSafetyCheck; either way it passes on only what it holds (no escalation)."""
    root_session = aws_broker.session()
    tag = os.urandom(3).hex()
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [
        "kms:CreateKey", "kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:DescribeKey", "kms:Encrypt"], "Resource": "*"}]}
    assert root_session.put(aws_broker.url(f"/policies/writer-{tag}"), json={"Document": document}).status_code \
        in (200, 201)
    writer_name = f"writer-{tag}"
    writer = kms_client(aws_broker, issue(f"writer-{tag}", name=writer_name))
    key_id = writer.create_key(CustomKeyStoreId="hsm")["KeyMetadata"]["KeyId"]
    locks_out = json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": user(writer_name)}, "Action": "kms:DescribeKey", "Resource": "*"}]})
    assert code_of(lambda: writer.put_key_policy(KeyId=key_id, PolicyName="default", Policy=locks_out)) == \
        "MalformedPolicyDocumentException"
    assert code_of(lambda: writer.create_key(Policy=locks_out)) == "MalformedPolicyDocumentException"
    keeps_control = json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": user(writer_name)}, "Action": ["kms:PutKeyPolicy", "kms:Describe*"],
         "Resource": "*"}]})
    assert code_of(lambda: writer.put_key_policy(KeyId=key_id, PolicyName="default", Policy=keeps_control)) == \
        "AccessDeniedException"  # kms:Describe* names DescribeCustomKeyStores, which the writer does not hold
    keeps_control = keeps_control.replace("kms:Describe*", "kms:DescribeKey")
    writer.put_key_policy(KeyId=key_id, PolicyName="default", Policy=keeps_control)
    writer.put_key_policy(KeyId=key_id, PolicyName="default", Policy=locks_out, BypassPolicyLockoutSafetyCheck=True)
    assert code_of(lambda: writer.put_key_policy(KeyId=key_id, PolicyName="default", Policy=keeps_control)) == \
        "AccessDeniedException"  # locked out, as it asked
    assert kms.get_key_policy(KeyId=key_id)["Policy"] == locks_out
    # bypassing the safety check never bypasses no-escalation
    wider = json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
                                       "Resource": "*"}]})
    assert code_of(lambda: writer.create_key(Policy=wider, BypassPolicyLockoutSafetyCheck=True)) == \
        "AccessDeniedException"


def test_a_key_admin_cannot_give_itself_crypto_at_create_key(aws_broker, kms, issue):
    name = f"kadmin-{os.urandom(3).hex()}"
    admin = kms_client(aws_broker, issue("key-admin", name=name))
    before = {k["KeyId"] for p in kms.get_paginator("list_keys").paginate() for k in p["Keys"]}
    for actions in ("kms:Decrypt", ["kms:PutKeyPolicy", "kms:Encrypt"], "kms:*"):
        policy = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": user(name)}, "Action": actions,
                                            "Resource": "*"}]})
        assert code_of(lambda p=policy: admin.create_key(Policy=p)) == "AccessDeniedException"
    for principal in ("*", {"AWS": ROOT}):
        policy = json.dumps({"Statement": [{"Effect": "Allow", "Principal": principal, "Action": "kms:*",
                                            "Resource": "*"}]})
        assert code_of(lambda p=policy: admin.create_key(Policy=p)) == "AccessDeniedException"
    after = {k["KeyId"] for p in kms.get_paginator("list_keys").paginate() for k in p["Keys"]}
    assert after == before
    # what it holds it may write (and it stays without crypto)
    mine = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": user(name)},
                                      "Action": ["kms:DescribeKey", "kms:PutKeyPolicy"], "Resource": "*"}]})
    key_id = admin.create_key(Policy=mine)["KeyMetadata"]["KeyId"]
    assert not allowed(lambda: admin.encrypt(KeyId=key_id, Plaintext=b"x"))


def test_a_user_arn_is_one_exact_name_never_a_prefix(aws_broker, kms, issue):
    tag = os.urandom(3).hex()
    ali = kms_client(aws_broker, issue(name=f"ali-{tag}"))
    alice = kms_client(aws_broker, issue(name=f"ali-{tag}ce"))
    policy = json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": user(f"ali-{tag}")}, "Action": "kms:Encrypt", "Resource": "*"}]})
    key_id = kms.create_key(Policy=policy)["KeyMetadata"]["KeyId"]
    assert allowed(lambda: ali.encrypt(KeyId=key_id, Plaintext=b"x"))
    assert not allowed(lambda: alice.encrypt(KeyId=key_id, Plaintext=b"x"))
