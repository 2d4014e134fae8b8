"""Token method over a real 2-worker broker: create, lookup, renew (bounded), revoke (recursive), subset rule."""

from __future__ import annotations

import time

import pytest

from tests.integration.identity.conftest import anon, audit_records, audit_text

TOKEN_MAKER = {"Version": "2012-10-17", "Statement": [
    {"Sid": "MakeTokens", "Effect": "Allow", "Action": ["broker:CreateToken"], "Resource": "*"}]}


def create(ib, token=None, **body):
    r = ib.session(token).post(ib.url("/auth/token/create"), json=body)
    return r


def ok_create(ib, token=None, **body) -> dict:
    r = create(ib, token, **body)
    assert r.status_code == 200, r.text
    return r.json()["auth"]


def lookup_self(ib, token):
    return ib.session(token).get(ib.url("/auth/token/lookup-self"))


@pytest.fixture(scope="module", autouse=True)
def token_maker_policy(ib):
    r = ib.session().put(ib.url("/policies/token-maker"), json={"Document": TOKEN_MAKER})
    assert r.status_code in (200, 201, 204), r.text


def test_create_and_lookup_self_shows_policies_meta_and_ttl(ib):
    auth = ok_create(ib, policies=["key-user"], ttl="30m", display_name="app-1", meta={"team": "payments"})
    assert auth["client_token"].startswith("kmsb.") and auth["accessor"]
    assert auth["policies"] == ["key-user"]
    assert 1790 <= auth["lease_duration"] <= 1800
    r = lookup_self(ib, auth["client_token"])
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["display_name"] == "app-1" and data["policies"] == ["key-user"]
    assert data["meta"] == {"team": "payments"} and data["accessor"] == auth["accessor"]
    assert data["renewable"] is True and 1790 <= data["ttl"] <= 1800
    assert "client_token" not in data and auth["client_token"] not in r.text


def test_only_hashes_are_stored_and_tokens_never_reach_the_audit_log(ib):
    auth = ok_create(ib, policies=["key-user"], ttl="5m")
    assert lookup_self(ib, auth["client_token"]).status_code == 200
    snapshot = repr(ib.snapshot())
    assert auth["client_token"] not in snapshot
    assert auth["client_token"][len("kmsb."):] not in snapshot
    assert auth["client_token"] not in audit_text(ib)
    created = [r for r in audit_records(ib) if r["action"] == "broker:CreateToken" and r["outcome"] == "allowed"]
    assert created and all(auth["accessor"] not in str(r) for r in created)


def test_token_ttl_and_max_ttl_are_capped_by_settings(ib):
    auth = ok_create(ib, policies=["x"], ttl="100d")
    assert auth["lease_duration"] <= 24 * 3600  # [auth.token] max_ttl = 24h


def test_expired_token_is_refused(ib):
    auth = ok_create(ib, policies=["x"], ttl=2)
    assert lookup_self(ib, auth["client_token"]).status_code == 200
    time.sleep(2.3)
    r = lookup_self(ib, auth["client_token"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "UnrecognizedClientException"


def test_renew_extends_but_never_past_max_ttl(ib):
    auth = ok_create(ib, policies=["x"], ttl=3, explicit_max_ttl=6)
    tok = auth["client_token"]
    time.sleep(2)
    r = ib.session(tok).post(ib.url("/auth/token/renew-self"), json={"increment": 3})
    assert r.status_code == 200, r.text
    assert 2 <= r.json()["auth"]["lease_duration"] <= 3
    time.sleep(2)  # 4s after creation: without the renewal it would be dead
    assert lookup_self(ib, tok).status_code == 200
    r = ib.session(tok).post(ib.url("/auth/token/renew-self"), json={"increment": 60})
    assert r.status_code == 200
    assert r.json()["auth"]["lease_duration"] <= 2  # capped at created + 6s
    time.sleep(2.5)
    assert lookup_self(ib, tok).status_code == 401


def test_non_renewable_token_cannot_renew(ib):
    auth = ok_create(ib, policies=["x"], ttl="10m", renewable=False)
    r = ib.session(auth["client_token"]).post(ib.url("/auth/token/renew-self"), json={})
    assert r.status_code == 400 and "not renewable" in r.json()["error"]["message"]


def test_revoke_by_accessor_revokes_children_recursively(ib):
    parent = ok_create(ib, policies=["token-maker", "key-user"], ttl="10m")
    child = ok_create(ib, parent["client_token"], policies=["token-maker"], ttl="10m")
    grandchild = ok_create(ib, child["client_token"], policies=["token-maker"], ttl="10m")
    sibling = ok_create(ib, policies=["key-user"], ttl="10m")
    for t in (parent, child, grandchild, sibling):
        assert lookup_self(ib, t["client_token"]).status_code == 200
    assert ib.session(child["client_token"]).get(ib.url("/auth/token/lookup-self")).json()["data"][
        "parent_accessor"] == parent["accessor"]
    r = ib.session().post(ib.url("/auth/token/revoke"), json={"accessor": parent["accessor"]})
    assert r.status_code == 200 and r.json()["revoked"] == 3
    time.sleep(1.2)  # auth_cache_seconds = 1: every worker must have dropped its cached principal
    for t in (parent, child, grandchild):
        for _ in range(4):
            assert lookup_self(ib, t["client_token"]).status_code == 401
    assert lookup_self(ib, sibling["client_token"]).status_code == 200


def test_revoke_by_token_and_revoke_self(ib):
    a = ok_create(ib, policies=["x"], ttl="10m")
    r = ib.session().post(ib.url("/auth/token/revoke"), json={"token": a["client_token"]})
    assert r.status_code == 200 and r.json()["revoked"] == 1
    assert a["client_token"] not in audit_text(ib)
    b = ok_create(ib, policies=["x"], ttl="10m")
    r = ib.session(b["client_token"]).post(ib.url("/auth/token/revoke-self"))
    assert r.status_code == 200 and r.json()["revoked"] == 1
    time.sleep(1.2)
    for t in (a, b):
        assert lookup_self(ib, t["client_token"]).status_code == 401


def test_revocation_reaches_every_worker_within_auth_cache_seconds(ib):
    t = ok_create(ib, policies=["x"], ttl="10m")["client_token"]
    s = ib.session(t)
    for _ in range(20):  # warm the cache of both workers
        assert s.get(ib.url("/auth/token/lookup-self")).status_code == 200
    other = ib.session(t)
    assert other.post(ib.url("/auth/token/revoke-self")).status_code == 200
    time.sleep(1.1)
    fresh = [ib.session(t).get(ib.url("/auth/token/lookup-self")).status_code for _ in range(20)]
    assert set(fresh) == {401}


def test_revoke_needs_exactly_one_of_token_or_accessor(ib):
    assert ib.session().post(ib.url("/auth/token/revoke"), json={}).status_code == 400
    assert ib.session().post(ib.url("/auth/token/revoke"), json={"token": "a", "accessor": "b"}).status_code == 400
    assert ib.session().post(ib.url("/auth/token/revoke"), json={"accessor": "nope"}).status_code == 404


def test_lookup_by_accessor(ib):
    a = ok_create(ib, policies=["key-user"], ttl="10m", display_name="looked-up")
    r = ib.session().post(ib.url("/auth/token/lookup-accessor"), json={"accessor": a["accessor"]})
    assert r.status_code == 200 and r.json()["data"]["display_name"] == "looked-up"
    r = ib.session(a["client_token"]).post(ib.url("/auth/token/lookup-accessor"), json={"accessor": a["accessor"]})
    assert r.status_code == 403  # key-user may not look tokens up


def test_child_policies_must_be_a_subset_of_the_parents(ib):
    parent = ok_create(ib, policies=["token-maker", "key-user"], ttl="10m")["client_token"]
    ok = ok_create(ib, parent, policies=["key-user"])
    assert ok["policies"] == ["key-user"]
    default = ok_create(ib, parent)
    assert sorted(default["policies"]) == ["key-user", "token-maker"]
    for wanted in (["root"], ["key-admin"], ["key-user", "auditor"]):
        r = create(ib, parent, policies=wanted)
        assert r.status_code == 403, (wanted, r.text)
        assert r.json()["error"]["code"] == "AccessDeniedException"
    r = create(ib, parent, policies=["key-user"], no_parent=True)
    assert r.status_code == 403


def test_child_never_outlives_its_parent(ib):
    parent = ok_create(ib, policies=["token-maker"], ttl=3)
    child = ok_create(ib, parent["client_token"], ttl="1h")
    assert child["lease_duration"] <= 3
    time.sleep(3.3)
    assert lookup_self(ib, child["client_token"]).status_code == 401


def test_token_without_create_permission_is_denied_and_audited(ib):
    t = ok_create(ib, policies=["key-user"], ttl="10m")["client_token"]
    r = create(ib, t, policies=["key-user"])
    assert r.status_code == 403
    rid = r.json()["error"]["request_id"]
    rec = [x for x in audit_records(ib) if x["request_id"] == rid]
    assert len(rec) == 1 and rec[0]["action"] == "broker:CreateToken" and rec[0]["outcome"] == "denied"


def test_bad_and_missing_tokens_are_401_and_audited(ib):
    r = anon().post(ib.url("/auth/token/create"), json={}, headers={"X-KMSB-Token": "kmsb.forged-token-value"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "UnrecognizedClientException"
    rid = r.json()["error"]["request_id"]
    assert [x for x in audit_records(ib) if x["request_id"] == rid]
    assert "forged-token-value" not in audit_text(ib)
    assert anon().get(ib.url("/auth/token/lookup-self")).status_code == 401


def test_bad_bodies_are_validation_errors(ib):
    assert create(ib, ttl="forever").status_code == 400
    assert create(ib, meta={"k": 1}).status_code == 400
    assert create(ib, unknown=1).status_code == 400
    assert create(ib, policies=[""]).status_code == 400


def test_openapi_lists_the_auth_routes(ib):
    doc = anon().get(ib.url("/openapi.json")).json()
    paths = doc["paths"]
    for p in ("/v1/auth/token/create", "/v1/auth/token/renew-self", "/v1/auth/token/revoke",
              "/v1/auth/token/revoke-self", "/v1/auth/token/lookup-self", "/v1/auth/jwt/login",
              "/v1/auth/ldap/login", "/v1/auth/approle/login"):
        assert any(k.rstrip("/") == p for k in paths), p


def test_openapi_documents_login_bodies(ib):
    doc = anon().get(ib.url("/openapi.json")).json()
    for path, model in (("/v1/auth/jwt/login", "JwtLogin"), ("/v1/auth/ldap/login", "LdapLogin"),
                        ("/v1/auth/approle/login", "AppRoleLogin")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(model)
        assert doc["components"]["schemas"][model]["required"]


def test_a_child_cannot_choose_its_name_or_attributes(ib):
    """Key policies and grants match principal names, conditions read principal tags: a child inherits both."""
    parent = ok_create(ib, policies=["token-maker"], display_name="svc-a", meta={"repo": "org/a"})
    tok = parent["client_token"]
    for body in ({"display_name": "ldap/alice"}, {"display_name": "root"}, {"meta": {"repo": "org/b"}},
                 {"meta": {"team": "blue"}}):
        r = create(ib, tok, **body)
        assert r.status_code == 403, (body, r.text)
    child = ok_create(ib, tok, display_name="svc-a", meta={"repo": "org/a"})
    assert child["metadata"] == {"repo": "org/a"}
    me = lookup_self(ib, ok_create(ib, tok)["client_token"]).json()["data"]
    assert me["display_name"] == "svc-a" and me["meta"] == {"repo": "org/a"}
    assert me["parent_accessor"] == parent["accessor"]
