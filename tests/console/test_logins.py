"""Console logins over HTTP against the suite's slapd and OIDC issuer: LDAP, AppRole, OIDC (code + PKCE), each
through the identity service's audited login; failures are 401 pages that set no session; logging out revokes the
token a login minted; the OIDC flow refuses a replayed callback, a foreign state and a wrong nonce."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import requests

from tests.console.conftest import Console, api


def _logins(broker, principal: str) -> list[dict]:
    r = api(broker, "GET", "/audit/events", params={"action": "broker:Login", "principal": principal})
    assert r.status_code == 200, r.text
    return r.json()["Events"]


def _form_login(c: Console, method: str, data: dict) -> requests.Response:
    c.get(f"/ui/login?method={method}")
    return c.post(f"/ui/login/{method}", data)


def test_ldap_login_maps_groups_to_policies_and_is_audited(console_broker) -> None:
    c = Console(console_broker, requests.Session())
    r = _form_login(c, "ldap", {"username": "alice", "password": "alice-pw", "next": "/ui/policies"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/policies")
    page = c.get("/ui/keys")
    assert page.status_code == 200 and ">ldap/alice<" in page.text
    assert "alice-pw" not in page.text
    records = [e for e in _logins(console_broker, "ldap/alice") if e["front_door"] == "console"]
    assert records and records[-1]["outcome"] == "allowed"


def test_a_wrong_password_is_a_401_page_with_no_session(console_broker) -> None:
    c = Console(console_broker, requests.Session())
    r = _form_login(c, "ldap", {"username": "bob", "password": "not-bobs"})
    assert r.status_code == 401 and "Login failed" in r.text and 'role="alert"' in r.text
    assert "kmsb_console" not in r.headers.get("Set-Cookie", "")
    assert "not-bobs" not in r.text
    assert c.get("/ui/keys").status_code == 302
    refused = [e for e in api(console_broker, "GET", "/audit/events", params={"action": "broker:Login"}).json()[
        "Events"] if e["front_door"] == "console" and e["error_code"] == "UnrecognizedClientException"]
    assert refused and all(e["outcome"] in ("denied", "error") for e in refused)


def test_logout_revokes_the_token_the_login_minted(console_broker) -> None:
    c = Console(console_broker, requests.Session())
    assert _form_login(c, "ldap", {"username": "alice", "password": "alice-pw"}).status_code == 302
    c.get("/ui/keys")
    cookie = c.http.cookies.get("kmsb_console")
    assert c.post("/ui/logout").status_code == 302
    revoked = api(console_broker, "GET", "/audit/events", params={
        "action": "broker:RevokeSelfToken", "principal": "ldap/alice"}).json()["Events"]
    assert revoked and revoked[-1]["front_door"] == "console" and revoked[-1]["outcome"] == "allowed"
    r = requests.get(c.url("/ui/keys"), cookies={"kmsb_console": cookie}, allow_redirects=False)
    assert r.status_code == 302


def test_approle_login(console_broker) -> None:
    assert api(console_broker, "POST", "/auth/approle/role/console-app",
               json={"policies": ["auditor"]}).status_code == 204
    role_id = api(console_broker, "GET", "/auth/approle/role/console-app/role-id").json()["data"]["role_id"]
    secret_id = api(console_broker, "POST", "/auth/approle/role/console-app/secret-id", json={}).json()["data"][
        "secret_id"]
    c = Console(console_broker, requests.Session())
    r = _form_login(c, "approle", {"role_id": role_id, "secret_id": secret_id})
    assert r.status_code == 302, r.text[-500:]
    page = c.get("/ui/keys")
    assert page.status_code == 200 and ">approle/console-app<" in page.text and secret_id not in page.text
    bad = Console(console_broker, requests.Session())
    assert _form_login(bad, "approle", {"role_id": role_id, "secret_id": "wrong"}).status_code == 401


# ------------------------------------------------------------------------------------------------ OIDC


def _start_oidc(c: Console) -> str:
    """Our /ui/login/oidc → the issuer's authorize URL (checked) → the issuer's redirect back: the callback URL."""
    r = c.http.get(c.url("/ui/login/oidc?next=/ui/simulator"), allow_redirects=False)
    assert r.status_code == 302, r.text[-400:]
    authorize = r.headers["Location"]
    q = parse_qs(urlsplit(authorize).query)
    assert q["response_type"] == ["code"] and q["code_challenge_method"] == ["S256"]
    assert q["client_id"] == ["kms-console"] and len(q["code_challenge"][0]) == 43 and q["state"] and q["nonce"]
    assert "SameSite=Lax" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
    back = requests.get(authorize, allow_redirects=False)
    assert back.status_code == 302
    return back.headers["Location"]


def test_oidc_code_flow_with_pkce_logs_in_through_the_jwt_role(console_broker, issuer) -> None:
    c = Console(console_broker, requests.Session())
    callback = _start_oidc(c)
    r = c.http.get(callback, allow_redirects=False)
    assert r.status_code == 200, r.text[-500:]
    assert 'http-equiv="refresh"' in r.text and "/ui/simulator" in r.text
    assert "kmsb_console=" in r.headers["Set-Cookie"]
    assert issuer.exchanged[-1]["code_verifier"] and "client_secret" not in issuer.exchanged[-1]
    page = c.get("/ui/keys")
    assert page.status_code == 200 and ">jwt/console/oidc-alice<" in page.text
    replay = Console(console_broker, requests.Session()).http.get(callback, allow_redirects=False)
    assert replay.status_code == 401 and "kmsb_console=" not in replay.headers.get("Set-Cookie", "")
    again = c.http.get(callback, allow_redirects=False)   # the flow was used once: a second callback is refused
    assert again.status_code == 401


def test_oidc_refuses_a_foreign_state_and_a_wrong_nonce(console_broker, issuer) -> None:
    c = Console(console_broker, requests.Session())
    callback = _start_oidc(c)
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    r = c.http.get(forged, allow_redirects=False)
    assert r.status_code == 401 and "kmsb_console=" not in r.headers.get("Set-Cookie", "")
    issuer.wrong_nonce = True
    try:
        c2 = Console(console_broker, requests.Session())
        r = c2.http.get(_start_oidc(c2), allow_redirects=False)
        assert r.status_code == 401 and "nonce" in r.text
        assert "kmsb_console=" not in r.headers.get("Set-Cookie", "")
    finally:
        issuer.wrong_nonce = False
