"""JWT/OIDC login with real RSA and EC keys: the happy paths and every way a token must be refused."""

from __future__ import annotations

import http.server
import json
import threading
import time

import jwt
import pytest

from tests.integration.identity.conftest import AUDIENCE, ISSUER, anon, audit_records, audit_text
from tests.support.procs import free_port


def login(ib, role: str, token: str):
    return anon().post(ib.url("/auth/jwt/login"), json={"role": role, "jwt": token})


def refused(ib, role: str, token: str, reason: str) -> None:
    r = login(ib, role, token)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == "UnrecognizedClientException"
    assert reason in err["message"], err["message"]
    assert token not in r.text
    recs = [x for x in audit_records(ib) if x["request_id"] == err["request_id"]]
    assert len(recs) == 1, "a refused login must leave exactly one audit record"
    assert recs[0]["action"] == "broker:Login" and recs[0]["error_code"] == "UnrecognizedClientException"
    assert recs[0]["login_method"] == "jwt"
    assert token not in audit_text(ib)


def test_rsa_token_via_jwks_file_maps_claims_to_policies_and_attributes(ib, keys):
    token = keys.sign_rsa()
    r = login(ib, "ci", token)
    assert r.status_code == 200, r.text
    auth = r.json()["auth"]
    assert sorted(auth["policies"]) == ["default", "key-admin", "key-user"]
    assert auth["metadata"] == {"role": "ci", "repo": "org/app"}
    assert 590 <= auth["lease_duration"] <= 600
    me = ib.session(auth["client_token"]).get(ib.url("/auth/token/lookup-self")).json()["data"]
    assert me["auth_method"] == "jwt" and me["display_name"] == "jwt/ci/ci-runner-7"
    assert me["meta"]["repo"] == "org/app"
    rec = [x for x in audit_records(ib) if x["action"] == "broker:Login" and x["outcome"] == "allowed"][-1]
    assert rec["principal"] == "jwt/ci/ci-runner-7" and rec["auth_method"] == "jwt"
    assert token not in audit_text(ib) and auth["client_token"] not in audit_text(ib)


def test_ec_token_via_jwks_file_and_via_pem_role(ib, keys):
    assert login(ib, "ci", keys.sign_ec()).status_code == 200
    r = login(ib, "pem", keys.sign_ec(kid="whatever"))
    assert r.status_code == 200, r.text
    assert r.json()["auth"]["policies"] == ["key-user"]


def test_claims_mapping_only_grants_what_matches(ib, keys):
    r = login(ib, "ci", keys.sign_rsa(keys.claims(groups=["readers"])))
    assert r.status_code == 200 and r.json()["auth"]["policies"] == ["default"]


def test_expired_token(ib, keys):
    now = int(time.time())
    refused(ib, "ci", keys.sign_rsa(keys.claims(exp=now - 10, iat=now - 100, nbf=now - 100)), "expired")


def test_not_yet_valid_token(ib, keys):
    now = int(time.time())
    refused(ib, "ci", keys.sign_rsa(keys.claims(nbf=now + 120)), "not yet valid")


def test_token_without_exp_is_refused(ib, keys):
    refused(ib, "ci", keys.sign_rsa(keys.claims(exp=None)), "'exp'")


def test_wrong_audience(ib, keys):
    refused(ib, "ci", keys.sign_rsa(keys.claims(aud="someone-else")), "audience")


def test_wrong_issuer(ib, keys):
    refused(ib, "ci", keys.sign_rsa(keys.claims(iss="https://evil.test")), "issuer")


def test_bad_signature_from_another_key_with_the_same_kid(ib, keys):
    refused(ib, "ci", keys.sign_rsa(key=keys.attacker), "signature")


def test_tampered_payload(ib, keys):
    good = keys.sign_rsa()
    header, _, sig = good.split(".")
    forged_claims = keys.claims(groups=["admins"], sub="root")
    import base64
    body = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    refused(ib, "ci", f"{header}.{body}.{sig}", "signature")


def test_alg_none(ib, keys):
    refused(ib, "ci", keys.raw({"alg": "none", "typ": "JWT"}, keys.claims(), b""), "algorithm not allowed")
    refused(ib, "ci", keys.raw({"alg": "None", "typ": "JWT"}, keys.claims(), b""), "algorithm not allowed")


def test_hs256_signed_with_the_public_key_is_refused(ib, keys):
    refused(ib, "ci", keys.hs256_with_public_key(keys.claims()), "algorithm not allowed")


def test_algorithm_not_allowed_for_the_role(ib, keys):
    refused(ib, "pem", keys.sign_rsa(), "algorithm not allowed")  # pem role: ES256 only
    refused(ib, "ci", keys.sign_rsa(alg="PS256"), "algorithm not allowed")


def test_unbound_claim(ib, keys):
    refused(ib, "ci", keys.sign_rsa(keys.claims(repository="other-org/app")), "bound claim 'repository'")
    refused(ib, "ci", keys.sign_rsa(keys.claims(repository=None)), "bound claim 'repository'")
    refused(ib, "pem", keys.sign_ec(keys.claims(repository="org/app2")), "bound claim 'repository'")


def test_unknown_role_and_garbage(ib, keys):
    refused(ib, "nope", keys.sign_rsa(), "unknown role")
    refused(ib, "ci", "not.a.jwt", "malformed")
    refused(ib, "ci", keys.sign_rsa(kid="unknown-kid"), "no key")


def test_malformed_login_body_is_400_and_audited(ib):
    r = anon().post(ib.url("/auth/jwt/login"), json={"role": "ci"})
    assert r.status_code == 400
    rid = r.json()["error"]["request_id"]
    assert [x for x in audit_records(ib) if x["request_id"] == rid]


def test_jwt_token_can_be_used_and_revoked(ib, keys):
    auth = login(ib, "ci", keys.sign_rsa()).json()["auth"]
    s = ib.session(auth["client_token"])
    assert s.post(ib.url("/auth/token/revoke-self")).status_code == 200
    time.sleep(1.1)
    assert s.get(ib.url("/auth/token/lookup-self")).status_code == 401


# ------------------------------------------------------------------------------------------------- roles via the API


def test_role_via_api_with_pem_key(ib, keys):
    role = {"public_keys": [keys.rsa_public_pem.decode()], "allowed_algorithms": ["RS256"],
            "bound_audiences": [AUDIENCE], "bound_issuer": ISSUER, "policies": ["key-user"],
            "bound_claims": {"sub": "ci-runner-7"}, "token_ttl": 120}
    r = ib.session().post(ib.url("/auth/jwt/role/api-role"), json=role)
    assert r.status_code == 204, r.text
    got = ib.session().get(ib.url("/auth/jwt/role/api-role")).json()["data"]
    assert got["bound_claims"] == {"sub": "ci-runner-7"}
    r = login(ib, "api-role", keys.sign_rsa())
    assert r.status_code == 200 and r.json()["auth"]["lease_duration"] <= 120
    refused(ib, "api-role", keys.sign_rsa(keys.claims(sub="intruder")), "bound claim 'sub'")
    assert ib.session().delete(ib.url("/auth/jwt/role/api-role")).status_code == 204
    refused(ib, "api-role", keys.sign_rsa(), "unknown role")


@pytest.mark.parametrize("algs", [["none"], ["HS256"], [], ["RS256", "HS512"]])
def test_role_refuses_symmetric_and_none_algorithms(ib, keys, algs):
    role = {"public_keys": [keys.rsa_public_pem.decode()], "allowed_algorithms": algs}
    r = ib.session().post(ib.url("/auth/jwt/role/bad"), json=role)
    assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationException"


def test_role_needs_exactly_one_key_source(ib, keys):
    r = ib.session().post(ib.url("/auth/jwt/role/bad"), json={"allowed_algorithms": ["RS256"]})
    assert r.status_code == 400
    r = ib.session().post(ib.url("/auth/jwt/role/bad"), json={"jwks_url": "http://example.com/jwks"})
    assert r.status_code == 400  # plain http only for loopback


def test_writing_roles_needs_manage_auth(ib, keys):
    t = ib.session().post(ib.url("/auth/token/create"), json={"policies": ["key-user"]}).json()["auth"]
    r = ib.session(t["client_token"]).post(ib.url("/auth/jwt/role/x"),
                                           json={"public_keys": [keys.ec_public_pem], "allowed_algorithms": ["ES256"]})
    assert r.status_code == 403


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_role_with_jwks_url(ib, keys):
    _Jwks.body = keys.jwks_file.read_bytes()
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        role = {"jwks_url": f"http://127.0.0.1:{port}/jwks.json", "allowed_algorithms": ["RS256", "ES256"],
                "bound_audiences": [AUDIENCE], "bound_issuer": ISSUER, "policies": ["from-url"]}
        assert ib.session().post(ib.url("/auth/jwt/role/url-role"), json=role).status_code == 204
        r = login(ib, "url-role", keys.sign_ec())
        assert r.status_code == 200, r.text
        assert r.json()["auth"]["policies"] == ["from-url"]
        assert _Jwks.hits >= 1
        refused(ib, "url-role", keys.sign_rsa(key=keys.attacker), "signature")
    finally:
        server.shutdown()
        server.server_close()
    refused(ib, "url-role", keys.sign_rsa(kid="rotated-away"), "JWKS")


def test_pyjwt_itself_refuses_hmac_with_a_pem_key(keys):
    """Second line of defence (the first: roles never allow HMAC algorithms)."""
    token = keys.hs256_with_public_key(keys.claims())
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(token, keys.rsa_public_pem, algorithms=["HS256"], audience=AUDIENCE)


def test_jku_and_jwk_headers_are_never_trusted(ib, keys):
    """A token naming its own key (jku URL or embedded jwk) signed by that key is still checked against the role's."""
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.attacker.public_key()))
    for header in ({"kid": "rsa1", "jku": "http://127.0.0.1:1/evil.json"}, {"kid": "rsa1", "jwk": attacker_jwk}):
        token = jwt.encode(keys.claims(), keys.attacker, algorithm="RS256", headers=header)
        refused(ib, "ci", token, "signature")
