"""No escalation through grants, key policies, tags and aliases, through the two HTTP front doors of a real broker
(gunicorn, SoftHSM, SQLite): the native REST API with broker tokens and the AWS door with boto3 and SigV4
credentials. Every refusal is a 4xx with a stable code and leaves the store as it was.

The same rules, with every variant, are tested in process in tests/security/test_policy_attacks.py.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from broker.auth import TokenAuth
from broker.store import Store
from tests.support.broker import RunningBroker, start_broker

REGION = "eu-central-1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("no-escalation")
    # cache off: a grant or policy change shows in the very next request, whichever worker serves it
    running = start_broker(base / "data", base / "logs", env={"KMSB_AUTH_CACHE_SECONDS": "0"},
                           name="no-escalation-broker")
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def tokens(broker: RunningBroker) -> Iterator[TokenAuth]:
    store = Store(f"sqlite:///{broker.data_dir / 'broker.db'}")
    yield TokenAuth(store)
    store.dispose()


@pytest.fixture(scope="module")
def root(broker: RunningBroker) -> requests.Session:
    return broker.session()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def native(broker: RunningBroker, tokens: TokenAuth, name: str, *policies: str) -> requests.Session:
    token, _ = tokens.create(name, list(policies))
    return broker.session(token)


def aws(broker: RunningBroker, root: requests.Session, name: str, *policies: str, **config):
    r = root.post(broker.url("/aws-credentials"), json={"Policies": list(policies), "Name": name})
    assert r.status_code == 201, r.text
    return boto3.client("kms", endpoint_url=broker.addr, region_name=REGION,
                        aws_access_key_id=r.json()["access_key_id"],
                        aws_secret_access_key=r.json()["secret_access_key"],
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config))


def new_key(broker: RunningBroker, root: requests.Session, **body) -> str:
    r = root.post(broker.url("/keys"), json=body)
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


def put_policy(broker: RunningBroker, root: requests.Session, name: str, *statements: dict) -> None:
    r = root.put(broker.url(f"/policies/{name}"), json={"Document": {"Version": "2012-10-17",
                                                                     "Statement": list(statements)}})
    assert r.status_code == 200, r.text


def refused(broker: RunningBroker, response: requests.Response, status: int, code: str, before: dict) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert broker.snapshot() == before, "a refused request changed the store"


def aws_refused(broker: RunningBroker, code: str, call, **kwargs) -> str:
    before = broker.snapshot()
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    assert caught.value.response["Error"]["Code"] == code, caught.value.response
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert broker.snapshot() == before, "a refused request changed the store"
    return caught.value.response["Error"]["Message"]


# ============================================================================================ native REST


def test_native_a_grantee_cannot_widen_its_grant(broker, root, tokens):
    key = new_key(broker, root)
    who = unique("mallory")
    r = root.post(broker.url(f"/keys/{key}/grants"), json={"GranteePrincipal": who,
                                                           "Operations": ["Encrypt", "CreateGrant"]})
    assert r.status_code == 201, r.text
    mallory = native(broker, tokens, who)
    before = broker.snapshot()
    r = mallory.post(broker.url(f"/keys/{key}/grants"), json={"GranteePrincipal": who, "Operations": ["Decrypt"]})
    refused(broker, r, 403, "AccessDeniedException", before)
    r = mallory.post(broker.url(f"/keys/{key}/grants"), json={"GranteePrincipal": "*", "Operations": ["Encrypt"]})
    refused(broker, r, 400, "ValidationException", before)
    blob = root.post(broker.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"s")}).json()["CiphertextBlob"]
    assert mallory.post(broker.url("/decrypt"), json={"CiphertextBlob": blob}).status_code == 403
    record = json.loads((broker.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert (record["action"], record["outcome"], record["principal"]) == ("kms:Decrypt", "denied", who)


@pytest.mark.parametrize("body", [
    {"GranteePrincipal": "*", "Operations": ["Encrypt"]},
    {"GranteePrincipal": "app-?", "Operations": ["Encrypt"]},
    {"GranteePrincipal": "", "Operations": ["Encrypt"]},
    {"GranteePrincipal": "\ud800", "Operations": ["Encrypt"]},
    {"GranteePrincipal": "bob", "Operations": [["Decrypt"]]},
    {"GranteePrincipal": "bob", "Operations": ["Decrypt"], "RetiringPrincipal": "[a-z]*"},
    {"GranteePrincipal": "bob", "Operations": ["Decrypt"], "Constraints": {"EncryptionContextSubset": {"a": "\ud800"}}},
    {"GranteePrincipal": "bob", "Operations": ["Decrypt"], "Name": "x" * 300},
])
def test_native_bad_grants_are_a_400(broker, root, body):
    key = new_key(broker, root)
    before = broker.snapshot()
    r = root.post(broker.url(f"/keys/{key}/grants"), data=json.dumps(body), headers={"Content-Type":
                                                                                      "application/json"})
    refused(broker, r, 400, "ValidationException", before)


def test_native_key_admin_reaches_no_crypto(broker, root, tokens):
    key = new_key(broker, root, Tags={"team": "prod"})
    name = unique("admin")
    put_policy(broker, root, "abac-sandbox", {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"],
                                              "Resource": "*", "Condition": {"StringEquals": {
                                                  "kms:ResourceTag/team": "sandbox"}}})
    admin = native(broker, tokens, name, "key-admin")
    abac_admin = native(broker, tokens, unique("abac-admin"), "key-admin", "abac-sandbox")
    before = broker.snapshot()
    attempts = [
        admin.post(broker.url(f"/keys/{key}/grants"), json={"GranteePrincipal": name, "Operations": ["Decrypt"]}),
        admin.post(broker.url(f"/keys/{key}/grants"), json={"GranteePrincipal": "friend", "Operations": ["Encrypt"]}),
        admin.put(broker.url(f"/keys/{key}/policy"), json={"Policy": {"Statement": [{
            "Effect": "Allow", "Principal": {"Broker": name}, "Action": "kms:*", "Resource": "*"}]}}),
        admin.put(broker.url(f"/keys/{key}/policy"), json={"Policy": {"Statement": [{
            "Effect": "Allow", "Principal": {"Account": "self"}, "Action": "kms:ReEncrypt", "Resource": "*"}]}}),
        abac_admin.post(broker.url(f"/keys/{key}/tags"), json={"Tags": {"team": "sandbox"}}),
        admin.post(broker.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")}),
    ]
    for r in attempts:
        refused(broker, r, 403, "AccessDeniedException", before)
    # lifecycle still works, and reaches nothing more
    assert admin.post(broker.url(f"/keys/{key}/tags"), json={"Tags": {"team": "sandbox"}}).status_code == 200
    assert admin.post(broker.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")}).status_code == 403


def test_native_retire_and_reencrypt_rules(broker, root, tokens):
    source, destination = new_key(broker, root), new_key(broker, root)
    bob = unique("bob")
    g = root.post(broker.url(f"/keys/{source}/grants"), json={"GranteePrincipal": bob, "Operations": ["Encrypt"]})
    bob_session = native(broker, tokens, bob)
    before = broker.snapshot()
    r = bob_session.post(broker.url("/grants/retire"), json={"GrantToken": g.json()["GrantToken"]})
    refused(broker, r, 403, "AccessDeniedException", before)
    put_policy(broker, root, "no-reencrypt", {"Effect": "Deny", "Action": "kms:ReEncrypt", "Resource": "*"})
    user = native(broker, tokens, unique("user"), "key-user", "no-reencrypt")
    blob = user.post(broker.url(f"/keys/{source}/encrypt"), json={"Plaintext": b64(b"x")}).json()["CiphertextBlob"]
    before = broker.snapshot()
    r = user.post(broker.url("/re-encrypt"), json={"CiphertextBlob": blob, "DestinationKeyId": destination})
    refused(broker, r, 403, "AccessDeniedException", before)
    assert user.post(broker.url("/decrypt"), json={"CiphertextBlob": blob}).status_code == 200


# ============================================================================================ AWS door (boto3)


def test_aws_create_grant_with_nested_operations_is_a_400_not_a_500(broker, root):
    """A mistyped member is refused by the door's typed reading of the request (SerializationException, as AWS answers
    a JSON type mismatch); a well-typed but unknown operation by PolicyAdmin (ValidationException)."""
    kms = aws(broker, root, unique("aws-root"), "root", parameter_validation=False)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    message = aws_refused(broker, "SerializationException", kms.create_grant, KeyId=key, GranteePrincipal="bob",
                          Operations=[["Decrypt"]])
    assert "Operations" in message
    message = aws_refused(broker, "ValidationException", kms.create_grant, KeyId=key, GranteePrincipal="bob",
                          Operations=["Decrypt", "Frobnicate"])
    assert "'operations.2.member'" in message  # AWS's validation message names the member
    aws_refused(broker, "ValidationException", kms.create_grant, KeyId=key, GranteePrincipal="*",
                Operations=["Decrypt"])
    aws_refused(broker, "ValidationException", kms.put_key_policy, KeyId=key, PolicyName="default",
                Policy="[" * 100_000)
    aws_refused(broker, "MalformedPolicyDocumentException", kms.put_key_policy, KeyId=key, PolicyName="default",
                Policy=json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt",
                                                  "Resource": "key*"}]}))


def test_aws_a_grantee_cannot_grant_itself_more(broker, root):
    kms = aws(broker, root, unique("aws-root"), "root")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    name = unique("grantee")
    grantee = aws(broker, root, name)
    kms.create_grant(KeyId=key, GranteePrincipal=name, Operations=["Encrypt", "CreateGrant"])
    message = aws_refused(broker, "AccessDeniedException", grantee.create_grant, KeyId=key, GranteePrincipal=name,
                          Operations=["Decrypt"])
    assert "Decrypt" in message
    grantee.create_grant(KeyId=key, GranteePrincipal=unique("friend"), Operations=["Encrypt"])
    blob = kms.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
    aws_refused(broker, "AccessDeniedException", grantee.decrypt, CiphertextBlob=blob)


def test_aws_key_admin_reaches_no_crypto(broker, root):
    kms = aws(broker, root, unique("aws-root"), "root")
    key = kms.create_key(Tags=[{"TagKey": "team", "TagValue": "prod"}])["KeyMetadata"]["KeyId"]
    sandbox = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=f"alias/sandbox-{key[:8]}", TargetKeyId=sandbox)
    put_policy(broker, root, "alias-sandbox", {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"],
                                               "Resource": "alias/sandbox-*"})
    name = unique("aws-admin")
    admin = aws(broker, root, name, "key-admin")
    aliased_admin = aws(broker, root, unique("aws-alias-admin"), "key-admin", "alias-sandbox")
    aws_refused(broker, "AccessDeniedException", admin.create_grant, KeyId=key, GranteePrincipal=name,
                Operations=["Decrypt"])
    aws_refused(broker, "AccessDeniedException", admin.put_key_policy, KeyId=key, PolicyName="default",
                Policy=json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"Broker": name},
                                                  "Action": "kms:Decrypt", "Resource": "*"}]}))
    aws_refused(broker, "AccessDeniedException", admin.encrypt, KeyId=key, Plaintext=b"x")
    aws_refused(broker, "AccessDeniedException", admin.get_parameters_for_import, KeyId=key,
                WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    aws_refused(broker, "AccessDeniedException", aliased_admin.create_alias, AliasName=f"alias/sandbox-x{key[:8]}",
                TargetKeyId=key)
    aws_refused(broker, "AccessDeniedException", aliased_admin.update_alias, AliasName=f"alias/sandbox-{key[:8]}",
                TargetKeyId=key)
    # lifecycle works
    admin.disable_key(KeyId=key)
    admin.enable_key(KeyId=key)
    admin.tag_resource(KeyId=key, Tags=[{"TagKey": "owner", "TagValue": "ops"}])
    assert admin.list_grants(KeyId=key)["Grants"] == []
