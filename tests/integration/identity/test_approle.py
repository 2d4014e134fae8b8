"""AppRole over the real broker: role_id + secret_id login (Vault's response shape), use counts, TTLs, CIDRs."""

from __future__ import annotations

import concurrent.futures
import time

from tests.integration.identity.conftest import anon, audit_records, audit_text


def make_role(ib, name: str, **cfg) -> str:
    r = ib.session().post(ib.url(f"/auth/approle/role/{name}"), json={"policies": ["key-user"], **cfg})
    assert r.status_code == 204, r.text
    r = ib.session().get(ib.url(f"/auth/approle/role/{name}/role-id"))
    assert r.status_code == 200
    return r.json()["data"]["role_id"]


def secret(ib, name: str, **body) -> dict:
    r = ib.session().post(ib.url(f"/auth/approle/role/{name}/secret-id"), json=body)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def login(role_id: str, secret_id: str, ib):
    return anon().post(ib.url("/auth/approle/login"), json={"role_id": role_id, "secret_id": secret_id})


def test_login_has_vaults_response_shape(ib):
    role_id = make_role(ib, "app1", token_ttl="20m")
    sec = secret(ib, "app1", metadata={"host": "db-1"})
    r = login(role_id, sec["secret_id"], ib)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info", "auth"}
    auth = body["auth"]
    assert auth["client_token"].startswith("kmsb.") and auth["policies"] == ["key-user"]
    assert auth["metadata"] == {"role": "app1", "host": "db-1"} and 1190 <= auth["lease_duration"] <= 1200
    me = ib.session(auth["client_token"]).get(ib.url("/auth/token/lookup-self")).json()["data"]
    assert me["auth_method"] == "approle"
    text = audit_text(ib)
    assert sec["secret_id"] not in text and auth["client_token"] not in text
    assert sec["secret_id"] not in repr(ib.snapshot())


def test_use_count_is_enforced_even_under_concurrency(ib):
    role_id = make_role(ib, "app2")
    sec = secret(ib, "app2", num_uses=3)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: login(role_id, sec["secret_id"], ib).status_code, range(8)))
    assert sorted(codes) == [200, 200, 200, 401, 401, 401, 401, 401]


def test_secret_id_ttl(ib):
    role_id = make_role(ib, "app3", secret_id_ttl=2)
    sec = secret(ib, "app3")
    assert sec["secret_id_ttl"] == 2
    assert login(role_id, sec["secret_id"], ib).status_code == 200
    time.sleep(2.2)
    assert login(role_id, sec["secret_id"], ib).status_code == 401


def test_cidr_binding(ib):
    role_id = make_role(ib, "app4")
    far = secret(ib, "app4", cidr_list=["10.0.0.0/8"])
    near = secret(ib, "app4", cidr_list=["127.0.0.0/8"])
    r = login(role_id, far["secret_id"], ib)
    assert r.status_code == 401 and "source address" in r.json()["error"]["message"]
    assert login(role_id, near["secret_id"], ib).status_code == 200
    role_id5 = make_role(ib, "app5", secret_id_bound_cidrs=["192.168.0.0/16"])
    assert login(role_id5, secret(ib, "app5")["secret_id"], ib).status_code == 401


def test_wrong_secret_or_role_is_refused_and_audited(ib):
    role_id = make_role(ib, "app6")
    other_role = make_role(ib, "app7")
    sec = secret(ib, "app6")
    for rid, sid in ((role_id, "00000000-0000-4000-8000-000000000000"), ("nope", sec["secret_id"]),
                     (other_role, sec["secret_id"]), (role_id, "")):
        r = login(rid, sid, ib)
        assert r.status_code == 401, (rid, r.text)
        req = r.json()["error"]["request_id"]
        recs = [x for x in audit_records(ib) if x["request_id"] == req]
        assert len(recs) == 1 and recs[0]["action"] == "broker:Login" and recs[0]["login_method"] == "approle"
    assert sec["secret_id"] not in audit_text(ib)


def test_role_admin_needs_manage_auth_and_valid_input(ib):
    t = ib.session().post(ib.url("/auth/token/create"), json={"policies": ["key-user"]}).json()["auth"]
    r = ib.session(t["client_token"]).post(ib.url("/auth/approle/role/x"), json={"policies": ["root"]})
    assert r.status_code == 403
    assert ib.session().post(ib.url("/auth/approle/role/x"), json={"secret_id_bound_cidrs": ["nope"]}).status_code == 400
    assert ib.session().post(ib.url("/auth/approle/role/missing/secret-id"), json={}).status_code == 404
