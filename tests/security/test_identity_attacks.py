"""Attacks on identity, tried as an attacker would, against a real 2-worker broker (JWT roles, LDAP on a real slapd).

* no escalation: whatever a principal creates for someone else (an AppRole or JWT role, a secret id, a child
  token, SigV4 credentials) carries at most the policies and attributes the creator holds;
* derived credentials die with their parent: SigV4 credentials and child tokens stop working when the token that
  created them is revoked or expires, and their own TTL never reaches past the parent's;
* hostile input on every identity surface (logins included) is a 400 with a stable code, audited, changing nothing;
* the three front doors: native REST, the AWS door (boto3 with credentials a narrow principal created), the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration.identity.conftest import AUDIENCE, ISSUER, auth_toml, keys, slapd  # noqa: F401 - fixtures
from tests.support.broker import RunningBroker, init_data_dir, start_broker

SURROGATE = "\ud800"
CACHE = 1.0  # the broker's auth_cache_seconds (default): how long a revocation may take to reach every process
CLI = [sys.executable, "-m", "broker.cli"]


@pytest.fixture(scope="module")
def ab(tmp_path_factory: pytest.TempPathFactory, keys, slapd) -> Iterator[RunningBroker]:  # noqa: F811
    base = tmp_path_factory.mktemp("identity-attacks")
    data = base / "data"
    root = init_data_dir(data)
    with open(data / "broker.toml", "a") as f:
        f.write(auth_toml(keys, slapd))
    running = start_broker(data, base / "logs", workers=2, name="identity-attacks")
    running.root_token = root
    yield running
    running.server.stop()


# ------------------------------------------------------------------------------------------------- helpers


def allow(*statements: tuple[list[str], str | list[str]]) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": res} for actions, res in statements]}


def put_policy(ab: RunningBroker, name: str, document: dict) -> None:
    r = ab.session().put(ab.url(f"/policies/{name}"), json={"Document": document})
    assert r.status_code in (200, 201, 204), r.text


def token(ab: RunningBroker, policies: list[str], *, by: str | None = None, **body) -> dict:
    r = ab.session(by).post(ab.url("/auth/token/create"), json={"policies": policies, **body})
    assert r.status_code == 200, r.text
    return r.json()["auth"]


def anon() -> requests.Session:
    return requests.Session()


def error_code(r: requests.Response) -> str:
    return r.json()["error"]["code"]


def records(ab: RunningBroker, request_id: str) -> list[dict]:
    path = ab.data_dir / "audit" / "audit.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in lines if r.get("request_id") == request_id and r.get("phase") != "intent"]


def identity_rows(ab: RunningBroker) -> dict[str, list]:
    """Every identity table (roles, secret ids, tokens, credentials): what a refused request must leave alone."""
    snap = ab.snapshot()
    return {t: rows for t, rows in snap.items()
            if t.startswith(("auth_", "identity_", "aws_credentials"))}


def kms(ab: RunningBroker, creds: dict):
    return boto3.client("kms", endpoint_url=ab.addr, region_name="eu-west-1",
                        aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def aws_code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def refused_everywhere(client) -> None:
    """Both gunicorn workers refuse (a few calls reach both)."""
    for _ in range(4):
        with pytest.raises(ClientError) as refused:
            client.list_keys(Limit=1)
        assert aws_code(refused) == "UnrecognizedClientException"


def served_everywhere(client) -> None:
    for _ in range(4):
        assert "Keys" in client.list_keys(Limit=1)


@pytest.fixture(scope="module", autouse=True)
def policies(ab: RunningBroker) -> None:
    put_policy(ab, "manage-app2", allow((["broker:ManageAuth"], "auth/approle/role/app2")))
    put_policy(ab, "manage-ci2", allow((["broker:ManageAuth"], "auth/jwt/role/ci2")))
    put_policy(ab, "manage-meta", allow((["broker:ManageAuth"], "auth/approle/role/meta")))
    put_policy(ab, "aws-maker", allow((["broker:CreateAwsCredentials", "kms:ListKeys"], "*")))
    put_policy(ab, "token-maker", allow((["broker:CreateToken"], "*")))
    assert ab.session().post(ab.url("/auth/approle/role/meta"), json={"policies": []}).status_code == 204


# ================================================================================================= no escalation


def test_an_approle_writer_cannot_hand_on_a_policy_it_does_not_hold(ab):
    narrow = token(ab, ["manage-app2"], display_name="role-writer")["client_token"]
    before = identity_rows(ab)
    for wider in (["root"], ["key-admin"], ["manage-app2", "root"], ["keyring:kv"]):
        r = ab.session(narrow).post(ab.url("/auth/approle/role/app2"), json={"policies": wider})
        assert r.status_code == 403, (wider, r.text)
        assert error_code(r) == "AccessDeniedException"
        (rec,) = records(ab, r.json()["error"]["request_id"])
        assert (rec["action"], rec["outcome"], rec["principal"]) == ("broker:ManageAuth", "denied", "role-writer")
    assert identity_rows(ab) == before  # nothing written
    assert ab.session().get(ab.url("/auth/approle/role/app2/role-id")).status_code == 404
    # within what it holds: allowed, and a login through the role gets exactly that
    r = ab.session(narrow).post(ab.url("/auth/approle/role/app2"), json={"policies": ["manage-app2"]})
    assert r.status_code == 204, r.text
    assert ab.session(narrow).post(ab.url("/auth/approle/role/app3"), json={"policies": []}).status_code == 403
    role_id = ab.session(narrow).get(ab.url("/auth/approle/role/app2/role-id")).json()["data"]["role_id"]
    secret = ab.session(narrow).post(ab.url("/auth/approle/role/app2/secret-id"), json={}).json()["data"]
    login = anon().post(ab.url("/auth/approle/login"), json={"role_id": role_id, "secret_id": secret["secret_id"]})
    assert login.status_code == 200 and login.json()["auth"]["policies"] == ["manage-app2"]
    (rec,) = records(ab, login.headers["X-Request-Id"])  # the login's record names who logged in
    assert (rec["action"], rec["outcome"], rec["principal"], rec["auth_method"]) == (
        "broker:Login", "allowed", "approle/app2", "approle")


def test_a_role_writer_cannot_mint_credentials_for_a_role_wider_than_itself(ab):
    """Root made app2 carry key-admin: the narrow writer may no longer hand out logins to it (secret ids)."""
    narrow = token(ab, ["manage-app2"])["client_token"]
    assert ab.session().post(ab.url("/auth/approle/role/app2"), json={"policies": ["key-admin"]}).status_code == 204
    before = identity_rows(ab)
    r = ab.session(narrow).post(ab.url("/auth/approle/role/app2/secret-id"), json={})
    assert r.status_code == 403 and error_code(r) == "AccessDeniedException"
    assert identity_rows(ab) == before
    # rewriting it down to what the writer holds is fine
    assert ab.session(narrow).post(ab.url("/auth/approle/role/app2"), json={"policies": []}).status_code == 204


def test_a_role_writer_cannot_reach_another_role(ab):
    """ManageAuth on auth/approle/role/app2 names that one role: not app3, not app2x, not a glob."""
    assert ab.session().post(ab.url("/auth/approle/role/app3"), json={"policies": []}).status_code == 204
    narrow = token(ab, ["manage-app2"])["client_token"]
    before = identity_rows(ab)
    for method, path in (("GET", "/auth/approle/role/app3/role-id"), ("POST", "/auth/approle/role/app3/secret-id"),
                         ("POST", "/auth/approle/role/app2x"), ("GET", "/auth/jwt/role/ci")):
        r = ab.session(narrow).request(method, ab.url(path), json={} if method == "POST" else None)
        assert r.status_code == 403, (path, r.text)
    assert identity_rows(ab) == before


def test_credentials_of_another_principal_cannot_be_revoked(ab):
    mine = ab.session().post(ab.url("/aws-credentials"), json={"Policies": []}).json()["access_key_id"]
    theirs = ab.session().post(ab.url("/aws-credentials"), json={"Policies": []}).json()["access_key_id"]
    put_policy(ab, "revoke-mine", allow((["broker:RevokeAwsCredentials"], f"aws-credentials/{mine}")))
    holder = token(ab, ["revoke-mine"])["client_token"]
    r = ab.session(holder).delete(ab.url(f"/aws-credentials/{theirs}"))
    assert r.status_code == 403 and error_code(r) == "AccessDeniedException"
    assert ab.session(holder).delete(ab.url(f"/aws-credentials/{mine}")).status_code == 200
    listed = {c["AccessKeyId"]: c["Status"] for c in ab.session().get(ab.url("/aws-credentials")).json()["Credentials"]}
    assert (listed[mine], listed[theirs]) == ("Inactive", "Active")


def test_a_jwt_role_writer_cannot_hand_on_a_policy_it_does_not_hold(ab, keys):  # noqa: F811
    narrow = token(ab, ["manage-ci2"], display_name="jwt-writer")["client_token"]
    base = {"public_keys": [keys.ec_public_pem], "allowed_algorithms": ["ES256"], "bound_issuer": ISSUER,
            "bound_audiences": [AUDIENCE]}
    before = identity_rows(ab)
    for body in ({"policies": ["root"]}, {"claim_policies": {"groups": {"*": ["root"]}}},
                 {"policies": ["manage-ci2"], "claim_policies": {"groups": {"admins": ["key-admin"]}}},
                 {"claim_attributes": {"sub": "team"}}):  # attributes feed broker:PrincipalTag conditions
        r = ab.session(narrow).post(ab.url("/auth/jwt/role/ci2"), json={**base, **body})
        assert r.status_code == 403, (body, r.text)
        assert error_code(r) == "AccessDeniedException"
    assert identity_rows(ab) == before
    assert ab.session().get(ab.url("/auth/jwt/role/ci2")).status_code == 404
    r = ab.session(narrow).post(ab.url("/auth/jwt/role/ci2"), json={**base, "policies": ["manage-ci2"]})
    assert r.status_code == 204, r.text
    login = anon().post(ab.url("/auth/jwt/login"), json={"role": "ci2", "jwt": keys.sign_ec()})
    assert login.status_code == 200, login.text
    assert login.json()["auth"]["policies"] == ["manage-ci2"]
    assert login.json()["auth"]["metadata"] == {"role": "ci2"}


def test_a_signed_jwt_with_hostile_claims_is_a_4xx_not_a_500(ab, keys):  # noqa: F811
    for claims in (keys.claims(sub=SURROGATE), keys.claims(sub="x" * 5_000),
                   keys.claims(repository="org/" + SURROGATE), keys.claims(sub=["a", "b"]), keys.claims(sub=None)):
        r = anon().post(ab.url("/auth/jwt/login"), json={"role": "ci", "jwt": keys.sign_rsa(claims)})
        assert r.status_code in (400, 401), r.text
        assert SURROGATE not in r.text


def test_ldap_group_mappings_cannot_be_written_through_the_api(ab):
    """LDAP group→policy mappings live in settings only: the API has no route that writes them."""
    paths = [p for p in ab.session().get(ab.url("/openapi.json")).json()["paths"] if "/auth/ldap" in p]
    assert paths == ["/v1/auth/ldap/login"]
    for method, path in (("POST", "/auth/ldap/groups/admins"), ("PUT", "/auth/ldap/config"),
                         ("POST", "/auth/ldap/config"), ("PUT", "/auth/ldap/login")):
        assert ab.session().request(method, ab.url(path), json={"policies": ["root"]}).status_code in (404, 405)


def test_a_child_token_carries_no_more_than_its_parent(ab):
    parent = token(ab, ["token-maker"], display_name="parent", meta={"team": "blue"})["client_token"]
    before = identity_rows(ab)
    for body in ({"policies": ["root"]}, {"policies": ["token-maker", "key-user"]}, {"no_parent": True},
                 {"display_name": "someone-else"}, {"meta": {"team": "red"}}):
        r = ab.session(parent).post(ab.url("/auth/token/create"), json=body)
        assert r.status_code == 403, (body, r.text)
    assert identity_rows(ab) == before
    child = token(ab, [], by=parent)
    me = ab.session(child["client_token"]).get(ab.url("/auth/token/lookup-self")).json()["data"]
    assert (me["display_name"], me["meta"], me["policies"]) == ("parent", {"team": "blue"}, [])


def test_secret_id_metadata_never_poses_as_identity(ab):
    assert ab.session().post(ab.url("/auth/approle/role/meta"), json={"policies": []}).status_code == 204
    role_id = ab.session().get(ab.url("/auth/approle/role/meta/role-id")).json()["data"]["role_id"]
    writer = token(ab, ["manage-meta"], meta={"team": "blue"})["client_token"]
    before = identity_rows(ab)
    r = ab.session().post(ab.url("/auth/approle/role/meta/secret-id"), json={"metadata": {"role": "admin"}})
    assert r.status_code == 400 and error_code(r) == "ValidationException"
    # a non-root creator attaches only attributes it carries itself (attributes feed PrincipalTag conditions)
    r = ab.session(writer).post(ab.url("/auth/approle/role/meta/secret-id"), json={"metadata": {"team": "red"}})
    assert r.status_code == 403, r.text
    assert identity_rows(ab) == before
    r = ab.session(writer).post(ab.url("/auth/approle/role/meta/secret-id"), json={"metadata": {"team": "blue"}})
    assert r.status_code == 200, r.text
    login = anon().post(ab.url("/auth/approle/login"),
                        json={"role_id": role_id, "secret_id": r.json()["data"]["secret_id"]})
    assert login.json()["auth"]["metadata"] == {"team": "blue", "role": "meta"}
    # a secret id stored with a `role` key (an older row, a hand edit): the login still names the real role
    sneaky = str(uuid.uuid4())
    con = sqlite3.connect(ab.data_dir / "broker.db")
    with con:
        con.execute("insert into auth_approle_secret_ids values (?, ?, ?, ?, null, null, '[]', ?)",
                    (hashlib.sha256(sneaky.encode()).hexdigest(), uuid.uuid4().hex[:24], "meta",
                     datetime.now(UTC).isoformat(), json.dumps({"role": "admin"})))
    con.close()
    login = anon().post(ab.url("/auth/approle/login"), json={"role_id": role_id, "secret_id": sneaky})
    assert login.status_code == 200, login.text
    assert login.json()["auth"]["metadata"]["role"] == "meta"
    me = ab.session(login.json()["auth"]["client_token"]).get(ab.url("/auth/token/lookup-self")).json()["data"]
    assert me["display_name"] == "approle/meta" and me["meta"]["role"] == "meta"


def test_an_approle_without_secret_id_needs_a_cidr_binding(ab):
    before = identity_rows(ab)
    r = ab.session().post(ab.url("/auth/approle/role/open"), json={"bind_secret_id": False, "policies": []})
    assert r.status_code == 400 and error_code(r) == "ValidationException"
    assert identity_rows(ab) == before
    r = ab.session().post(ab.url("/auth/approle/role/open"),
                          json={"bind_secret_id": False, "secret_id_bound_cidrs": ["127.0.0.1/32"], "policies": []})
    assert r.status_code == 204, r.text
    role_id = ab.session().get(ab.url("/auth/approle/role/open/role-id")).json()["data"]["role_id"]
    assert anon().post(ab.url("/auth/approle/login"), json={"role_id": role_id}).status_code == 200


def test_sigv4_credentials_carry_no_more_than_their_creator(ab):
    maker = token(ab, ["aws-maker", "key-user"], display_name="maker", meta={"team": "blue"})["client_token"]
    before = identity_rows(ab)
    for body in ({"Policies": ["root"]}, {"Policies": ["key-admin"]}, {"Policies": ["key-user"], "Name": "root"}):
        r = ab.session(maker).post(ab.url("/aws-credentials"), json=body)
        assert r.status_code == 403, (body, r.text)
    assert identity_rows(ab) == before
    r = ab.session(maker).post(ab.url("/aws-credentials"), json={"Policies": ["key-user", "aws-maker"]})
    assert r.status_code == 201, r.text
    client = kms(ab, r.json())
    key = ab.session().post(ab.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=key, Plaintext=b"made by a narrow principal")["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"made by a narrow principal"
    with pytest.raises(ClientError) as denied:
        client.create_key()
    assert aws_code(denied) == "AccessDeniedException"
    listed = ab.session().get(ab.url("/aws-credentials")).json()["Credentials"]
    mine = next(c for c in listed if c["AccessKeyId"] == r.json()["access_key_id"])
    assert (mine["Name"], mine["CreatedBy"], mine["Status"]) == ("maker", "maker", "Active")


# ================================================================================================= parents


def test_sigv4_credentials_die_when_their_creating_token_is_revoked(ab):
    child = token(ab, ["aws-maker"], display_name="short-maker", ttl="1h")
    r = ab.session(child["client_token"]).post(ab.url("/aws-credentials"), json={"Policies": ["aws-maker"]})
    assert r.status_code == 201, r.text
    client = kms(ab, r.json())
    served_everywhere(client)
    assert ab.session().post(ab.url("/auth/token/revoke"), json={"accessor": child["accessor"]}).json() == {
        "revoked": 1}
    time.sleep(CACHE + 0.5)
    refused_everywhere(client)
    listed = ab.session().get(ab.url("/aws-credentials")).json()["Credentials"]
    assert [c["Status"] for c in listed if c["AccessKeyId"] == r.json()["access_key_id"]] == ["Inactive"]


def test_sigv4_credentials_die_when_their_creating_token_expires(ab):
    child = token(ab, ["aws-maker"], ttl="3s")
    made = time.monotonic()
    r = ab.session(child["client_token"]).post(ab.url("/aws-credentials"), json={"Policies": ["aws-maker"]})
    assert r.status_code == 201, r.text
    expires = datetime.fromisoformat(r.json()["expires_at"])
    assert expires <= datetime.now(UTC) + timedelta(seconds=3)
    client = kms(ab, r.json())
    served_everywhere(client)
    time.sleep(max(0.0, 3 - (time.monotonic() - made)) + CACHE + 0.5)
    refused_everywhere(client)


def test_sigv4_credentials_take_their_own_ttl_never_past_the_parent(ab):
    long_lived = token(ab, ["aws-maker"], ttl="1h")
    r = ab.session(long_lived["client_token"]).post(ab.url("/aws-credentials"),
                                                     json={"Policies": ["aws-maker"], "TtlSeconds": 2})
    assert r.status_code == 201, r.text
    client = kms(ab, r.json())
    served_everywhere(client)
    time.sleep(2 + CACHE + 0.5)
    refused_everywhere(client)
    short = token(ab, ["aws-maker"], ttl="5s")
    r = ab.session(short["client_token"]).post(ab.url("/aws-credentials"),
                                                json={"Policies": ["aws-maker"], "TtlSeconds": 3600})
    assert r.status_code == 201, r.text
    assert datetime.fromisoformat(r.json()["expires_at"]) <= datetime.now(UTC) + timedelta(seconds=5)


def test_child_tokens_die_with_their_parent(ab):
    parent = token(ab, ["token-maker"], ttl="1h")
    child = token(ab, ["token-maker"], by=parent["client_token"])
    grandchild = token(ab, [], by=child["client_token"], ttl="10h")
    assert grandchild["lease_duration"] <= 3600  # never past the parent
    assert ab.session().post(ab.url("/auth/token/revoke"), json={"accessor": parent["accessor"]}).json() == {
        "revoked": 3}
    time.sleep(CACHE + 0.5)
    for t in (child, grandchild):
        assert ab.session(t["client_token"]).get(ab.url("/auth/token/lookup-self")).status_code == 401
    short = token(ab, ["token-maker"], ttl="2s")
    its_child = token(ab, [], by=short["client_token"])
    time.sleep(2 + CACHE)
    assert ab.session(its_child["client_token"]).get(ab.url("/auth/token/lookup-self")).status_code == 401


def test_replayed_and_expired_credentials_are_refused(ab):
    assert ab.session().post(ab.url("/auth/approle/role/once"), json={"policies": []}).status_code == 204
    role_id = ab.session().get(ab.url("/auth/approle/role/once/role-id")).json()["data"]["role_id"]
    sid = ab.session().post(ab.url("/auth/approle/role/once/secret-id"), json={"num_uses": 1}).json()["data"]
    body = {"role_id": role_id, "secret_id": sid["secret_id"]}
    assert anon().post(ab.url("/auth/approle/login"), json=body).status_code == 200
    replay = anon().post(ab.url("/auth/approle/login"), json=body)
    assert replay.status_code == 401 and error_code(replay) == "UnrecognizedClientException"
    gone = token(ab, [], ttl="1s")
    time.sleep(1.5)
    r = ab.session(gone["client_token"]).get(ab.url("/auth/token/lookup-self"))
    assert r.status_code == 401 and error_code(r) == "UnrecognizedClientException"


# ================================================================================================= hostile input

LOGINS = [
    ("/auth/approle/login", {"role_id": SURROGATE, "secret_id": "x"}),
    ("/auth/approle/login", {"role_id": "r", "secret_id": SURROGATE}),
    ("/auth/approle/login", {"role_id": "r" * 10_000, "secret_id": "x"}),
    ("/auth/approle/login", {"role_id": "r", "secret_id": "s" * 10_000}),
    ("/auth/approle/login", {"role_id": 7, "secret_id": "x"}),
    ("/auth/approle/login", {"role_id": ["r"], "secret_id": "x"}),
    ("/auth/approle/login", {"role_id": "r", "secret_id": {"$ne": ""}}),
    ("/auth/jwt/login", {"role": SURROGATE, "jwt": "a.b.c"}),
    ("/auth/jwt/login", {"role": "ci", "jwt": SURROGATE}),
    ("/auth/jwt/login", {"role": "r" * 10_000, "jwt": "a.b.c"}),
    ("/auth/jwt/login", {"role": "ci", "jwt": "x" * 100_000}),
    ("/auth/jwt/login", {"role": None, "jwt": "a.b.c"}),
    ("/auth/ldap/login", {"username": SURROGATE, "password": "x"}),
    ("/auth/ldap/login", {"username": "bob", "password": SURROGATE}),
    ("/auth/ldap/login", {"username": "u" * 10_000, "password": "x"}),
    ("/auth/ldap/login", {"username": "bob", "password": "p" * 10_000}),
    ("/auth/ldap/login", {"username": ["bob"], "password": "bob-pw"}),
]


@pytest.mark.parametrize(("path", "body"), LOGINS, ids=[f"{p.split('/')[2]}-{i}" for i, (p, _) in enumerate(LOGINS)])
def test_hostile_login_input_is_a_400_audited_and_changes_nothing(ab, path, body):
    before = identity_rows(ab)
    r = anon().post(ab.url(path), json=body)
    assert r.status_code == 400, r.text
    assert error_code(r) == "ValidationException"
    assert SURROGATE not in r.text and len(r.text) < 2000
    (rec,) = records(ab, r.json()["error"]["request_id"])
    assert rec["action"] == "broker:Login" and rec["outcome"] == "error"
    assert identity_rows(ab) == before


ADMIN = [
    ("/auth/token/create", {"display_name": SURROGATE}),
    ("/auth/token/create", {"meta": {"k": SURROGATE}}),
    ("/auth/token/create", {"meta": {SURROGATE: "v"}}),
    ("/auth/token/create", {"policies": [SURROGATE]}),
    ("/auth/token/create", {"policies": [f"p{i}" for i in range(10_000)]}),
    ("/auth/token/create", {"meta": {f"k{i}": "v" for i in range(1_000)}}),
    ("/auth/token/create", {"ttl": "9" * 30}),
    ("/auth/token/create", {"ttl": "9" * 5_000}),
    ("/auth/token/create", {"ttl": 10**30}),
    ("/auth/token/create", {"explicit_max_ttl": -5}),
    ("/auth/token/renew-self", {"increment": "9" * 30}),
    ("/auth/token/lookup-accessor", {"accessor": SURROGATE}),
    ("/auth/token/revoke", {"accessor": SURROGATE}),
    ("/auth/token/revoke", {"token": SURROGATE}),
    ("/auth/token/revoke", {"token": "t" * 100_000}),
    ("/auth/approle/role/hostile", {"policies": [SURROGATE]}),
    ("/auth/approle/role/hostile", {"token_ttl": "9" * 30}),
    ("/auth/approle/role/hostile", {"secret_id_num_uses": 10**30}),
    ("/auth/approle/role/hostile", {"secret_id_bound_cidrs": [SURROGATE]}),
    ("/auth/approle/role/%ED%A0%80", {"policies": []}),
    ("/auth/approle/role/app*", {"policies": []}),
    ("/auth/approle/role/meta/secret-id", {"metadata": {"k": SURROGATE}}),
    ("/auth/approle/role/meta/secret-id", {"metadata": {f"k{i}": "v" for i in range(1_000)}}),
    ("/auth/approle/role/meta/secret-id", {"cidr_list": [SURROGATE]}),
    ("/auth/approle/role/meta/secret-id", {"ttl": 10**30}),
    ("/auth/approle/role/meta/secret-id", {"num_uses": 10**30}),
    ("/auth/jwt/role/hostile", {"public_keys": ["k"], "policies": [SURROGATE]}),
    ("/auth/jwt/role/hostile", {"public_keys": [SURROGATE]}),
    ("/auth/jwt/role/hostile", {"jwks_url": "https://x/" + SURROGATE}),
    ("/auth/jwt/role/hostile", {"public_keys": ["k"], "bound_claims": {SURROGATE: "x"}}),
    ("/auth/jwt/role/*", {"public_keys": ["k"]}),
    ("/aws-credentials", {"Policies": [SURROGATE]}),
    ("/aws-credentials", {"Name": SURROGATE}),
    ("/aws-credentials", {"Policies": [f"p{i}" for i in range(10_000)]}),
    ("/aws-credentials", {"TtlSeconds": 10**30}),
    ("/aws-credentials", {"TtlSeconds": -1}),
]


@pytest.mark.parametrize(("path", "body"), ADMIN, ids=[f"{p.split('/')[-1][:12]}-{i}" for i, (p, _) in enumerate(ADMIN)])
def test_hostile_admin_input_is_a_400_and_changes_nothing(ab, path, body):
    before = identity_rows(ab)
    r = ab.session().post(ab.url(path), json=body)
    assert r.status_code == 400, r.text
    assert error_code(r) == "ValidationException"
    assert SURROGATE not in r.text and len(r.text) < 2000
    assert records(ab, r.json()["error"]["request_id"])  # audited
    assert identity_rows(ab) == before


def test_hostile_paths_on_credential_routes(ab):
    for path in ("/aws-credentials/%ED%A0%80", "/aws-credentials/*", "/aws-credentials/" + "A" * 1000):
        r = ab.session().delete(ab.url(path))
        assert r.status_code in (400, 404), r.text
        assert error_code(r) in ("ValidationException", "NotFoundException")
    for path in ("/auth/approle/role/%ED%A0%80/role-id", "/auth/jwt/role/%ED%A0%80"):
        r = ab.session().get(ab.url(path))
        assert r.status_code == 400 and error_code(r) == "ValidationException", r.text


@pytest.mark.parametrize("path", ["/auth/approle/login", "/auth/jwt/login", "/auth/ldap/login"])
def test_deeply_nested_json_on_login_routes_is_a_400(ab, path):
    r = anon().post(ab.url(path), data="[" * 100_000 + "]" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert error_code(r) == "ValidationException"


# ================================================================================================= the CLI


def cli(ab: RunningBroker, *args: str, token_value: str | None = None, stdin: str = "",
        env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "KMSB_ADDR": ab.addr, **(env or {})}
    e.pop("KMSB_TOKEN", None)
    if token_value:
        e["KMSB_TOKEN"] = token_value
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, env=e, timeout=60)


def test_the_cli_refuses_escalation_with_one_clear_line(ab):
    narrow = token(ab, ["aws-maker", "token-maker"], display_name="cli-user", ttl="1h")
    for args in (("aws-credentials", "create", "--policy", "root"),
                 ("aws-credentials", "create", "--policy", "aws-maker", "--name", "root"),
                 ("token", "create", "--policy", "root"),
                 ("token", "create", "--orphan")):
        out = cli(ab, *args, token_value=narrow["client_token"])
        assert out.returncode == 1, (args, out.stdout)
        assert "AccessDeniedException" in out.stderr and "Traceback" not in out.stderr
    out = cli(ab, "aws-credentials", "create", "--policy", "aws-maker", "--ttl", "8s", "--output", "json",
              token_value=narrow["client_token"])
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    expires = datetime.fromisoformat(made["expires_at"])
    assert expires <= datetime.now(UTC) + timedelta(seconds=8) and made["secret_access_key"]
    served_everywhere(kms(ab, made))
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + CACHE + 0.5)
    refused_everywhere(kms(ab, made))


def test_the_cli_carries_credentials_that_die_with_the_cli_token(ab):
    child = token(ab, ["aws-maker"], ttl="1h")
    out = cli(ab, "aws-credentials", "create", "--policy", "aws-maker", "--output", "json",
              token_value=child["client_token"])
    assert out.returncode == 0, out.stderr
    client = kms(ab, json.loads(out.stdout))
    served_everywhere(client)
    out = cli(ab, "token", "revoke", "--self", token_value=child["client_token"])
    assert out.returncode == 0, out.stderr
    time.sleep(CACHE + 0.5)
    refused_everywhere(client)


def test_hostile_cli_logins_print_one_clear_line(ab):
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")  # what argv gives for bytes that are not UTF-8
    for args, env in ((("login", "approle", "--role-id", bad), {"KMSB_SECRET_ID": "x"}),
                      (("login", "ldap", "--username", bad), {"KMSB_LDAP_PASSWORD": "x"}),
                      (("login", "jwt", "--role", bad), {})):
        out = subprocess.run([*CLI, *args], input=b"a.b.c", capture_output=True, env={
            **os.environ, "KMSB_ADDR": ab.addr, **env}, timeout=60)
        err = out.stderr.decode(errors="replace")
        assert out.returncode == 1, err
        assert "ValidationException" in err and "Traceback" not in err
