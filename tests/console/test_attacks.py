"""Attacks on the console over plain HTTP (a real broker): CSRF, stolen or fixed sessions, a non-admin forcing an
action, XSS through every free-text field, bad input. Each refusal must change nothing."""

from __future__ import annotations

import re
import sqlite3

import requests

from tests.console.conftest import Console, api, make_key, make_token


def _state(broker, key_id: str) -> str:
    return api(broker, "GET", f"/keys/{key_id}").json()["KeyMetadata"]["KeyState"]


def _events(broker, key_id: str, outcome: str) -> list[dict]:
    r = api(broker, "GET", "/audit/events", params={"key": key_id, "outcome": outcome})
    assert r.status_code == 200, r.text
    return r.json()["Events"]


# ------------------------------------------------------------------------------------------------ CSRF


def test_a_state_change_without_the_csrf_token_is_refused_and_changes_nothing(admin: Console) -> None:
    key = make_key(admin.broker)
    admin.get(f"/ui/keys/{key}")
    before = admin.broker.snapshot()
    for data, csrf in (({}, False), ({"csrf": "forged"}, True), ({"csrf": ""}, True)):
        r = admin.post(f"/ui/keys/{key}/disable", data, csrf=csrf)
        assert r.status_code == 403
        assert "CSRF" in r.text
    assert _state(admin.broker, key) == "Enabled"
    assert admin.broker.snapshot() == before


def test_the_csrf_token_of_another_session_is_refused(console_broker, admin: Console) -> None:
    other = Console(console_broker, requests.Session())
    other.login(console_broker.root_token)
    key = make_key(console_broker)
    assert other.csrf != admin.csrf
    r = other.post(f"/ui/keys/{key}/disable", {"csrf": admin.csrf})
    assert r.status_code == 403
    assert _state(console_broker, key) == "Enabled"


def test_a_cross_origin_post_is_refused_even_with_the_token(admin: Console) -> None:
    key = make_key(admin.broker)
    admin.get(f"/ui/keys/{key}")
    r = admin.post(f"/ui/keys/{key}/disable", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert _state(admin.broker, key) == "Enabled"


def test_the_login_form_has_its_own_csrf_so_another_site_cannot_log_a_browser_in(console_broker) -> None:
    c = Console(console_broker, requests.Session())
    r = c.post("/ui/login/token", {"token": console_broker.root_token}, csrf=False)
    assert r.status_code == 403
    assert "kmsb_console" not in r.headers.get("Set-Cookie", "")


# ------------------------------------------------------------------------------------------------ sessions


def test_session_fixation_a_cookie_chosen_before_login_never_becomes_logged_in(console_broker) -> None:
    c = Console(console_broker, requests.Session())
    c.http.cookies.set("kmsb_console", "attacker-chosen-value", domain="127.0.0.1", path="/ui")
    c.login(console_broker.root_token)
    assert c.http.cookies.get("kmsb_console") != "attacker-chosen-value"
    fixed = requests.get(c.url("/ui/keys"), cookies={"kmsb_console": "attacker-chosen-value"}, allow_redirects=False)
    assert fixed.status_code == 302 and "/ui/login" in fixed.headers["Location"]


def test_each_login_gets_a_new_session_and_logout_kills_the_old_cookie(console_broker, admin: Console) -> None:
    stolen = admin.http.cookies.get("kmsb_console")
    again = Console(console_broker, requests.Session())
    again.login(console_broker.root_token)
    assert again.http.cookies.get("kmsb_console") != stolen
    assert admin.post("/ui/logout").status_code == 302
    r = requests.get(admin.url("/ui/keys"), cookies={"kmsb_console": stolen}, allow_redirects=False)
    assert r.status_code == 302 and "/ui/login" in r.headers["Location"]
    r = requests.post(admin.url("/ui/logout"), cookies={"kmsb_console": stolen}, data={"csrf": admin.csrf},
                      allow_redirects=False)
    assert r.status_code == 401


def test_login_never_redirects_off_the_console(console_broker) -> None:
    for target in ("https://evil.example/", "//evil.example/ui", "/\\evil.example", "javascript:alert(1)", "/v1/keys"):
        c = Console(console_broker, requests.Session())
        c.get("/ui/login")
        r = c.post("/ui/login/token", {"token": console_broker.root_token, "next": target})
        assert r.status_code == 302 and r.headers["Location"] == "/ui/keys", (target, r.headers["Location"])


def test_a_revoked_token_ends_its_console_session(console_broker) -> None:
    token = make_token(console_broker, ["auditor"])
    c = Console(console_broker, requests.Session())
    c.login(token)
    r = api(console_broker, "POST", "/auth/token/revoke", json={"token": token})
    assert r.status_code == 200, r.text
    r = c.get("/ui/keys")
    assert r.status_code == 302 and "/ui/login" in r.headers["Location"]


def test_an_idle_or_overdue_session_is_refused_and_forgotten(console_broker) -> None:
    """The clocks the server keeps, moved back in the session file (no waiting): idle, then past its maximum."""
    db = console_broker.data_dir / "console" / "sessions.db"
    for column, value in (("seen", "seen - 3600"), ("expires", "created - 1")):
        c = Console(console_broker, requests.Session())
        c.login(console_broker.root_token)
        key = make_key(console_broker)
        c.get(f"/ui/keys/{key}")
        with sqlite3.connect(db) as con:
            before = con.execute("select count(*) from sessions").fetchone()[0]
            con.execute(f"update sessions set {column} = {value}")  # every session: this test's broker only
        r = c.get("/ui/keys")
        assert r.status_code == 302 and "/ui/login" in r.headers["Location"], column
        r = c.post(f"/ui/keys/{key}/disable")
        assert r.status_code == 401 and _state(console_broker, key) == "Enabled"
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from sessions").fetchone()[0] < before


def test_unknown_console_paths_are_html_404s(admin: Console) -> None:
    r = admin.get("/ui/no/such/page")
    assert r.status_code == 404 and 'role="alert"' in r.text and "text/html" in r.headers["Content-Type"]
    assert requests.get(admin.url("/ui/no/such/page"), allow_redirects=False).status_code == 302


def test_cookies_hold_only_an_opaque_session_id_and_the_token_stays_server_side(console_broker) -> None:
    token = make_token(console_broker, ["auditor"])
    c = Console(console_broker, requests.Session())
    login = c.login(token)
    header = login.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/ui" in header
    assert token not in header and token not in c.get("/ui/keys").text
    db = console_broker.data_dir / "console" / "sessions.db"
    rows = sqlite3.connect(db).execute("select * from sessions").fetchall()
    dumped = repr(rows)
    assert token not in dumped and c.http.cookies.get("kmsb_console") not in dumped
    audit = "".join(p.read_text() for p in (console_broker.data_dir / "audit").glob("*.jsonl"))
    assert token not in audit


# ------------------------------------------------------------------------------------------------ authorization


def test_a_non_admin_sees_disabled_buttons_and_the_server_refuses_anyway(admin: Console, auditor: Console) -> None:
    key = make_key(admin.broker)
    page = auditor.get(f"/ui/keys/{key}")
    assert page.status_code == 200
    for button in ("action-disable", "action-rotate", "schedule-deletion"):
        tag = re.search(rf'<button[^>]*id="{button}"[^>]*>', page.text).group(0)
        assert "disabled" in tag, tag
    admin_page = admin.get(f"/ui/keys/{key}")
    assert "disabled" not in re.search(r'<button[^>]*id="action-disable"[^>]*>', admin_page.text).group(0)
    before = admin.broker.snapshot()
    for action, data in (("disable", {}), ("rotate", {}), ("schedule-deletion", {"confirm": key, "days": "7"})):
        r = auditor.post(f"/ui/keys/{key}/{action}", data)
        assert r.status_code == 403, (action, r.status_code)
        assert "not allowed" in r.text
    assert _state(admin.broker, key) == "Enabled"
    assert admin.broker.snapshot() == before
    denied = [e for e in _events(admin.broker, key, "denied") if e["front_door"] == "console"]
    assert {e["action"] for e in denied} >= {"kms:DisableKey", "kms:RotateKeyOnDemand", "kms:ScheduleKeyDeletion"}
    assert all(e["principal"] == "user-auditor" for e in denied)


def test_a_principal_without_rights_on_the_console_gets_403_pages_not_500(console_broker) -> None:
    nobody = Console(console_broker, requests.Session())
    nobody.login(make_token(console_broker, ["keyring:kv"]), check=False)
    for path in ("/ui/keys", "/ui/keys/new", "/ui/policies", "/ui/policies/key-admin"):
        r = nobody.get(path)
        assert r.status_code == 403, (path, r.status_code)
        assert "Traceback" not in r.text


# ------------------------------------------------------------------------------------------------ XSS


XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _no_markup(html: str) -> None:
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html or "&lt;img" in html


def test_description_and_tags_are_rendered_escaped(admin: Console) -> None:
    admin.get("/ui/keys/new")
    r = admin.post("/ui/keys", {"provider": "hsm", "spec": "SYMMETRIC_DEFAULT", "description": XSS,
                                "tags": f"team={XSS.replace(',', ' ')}"})
    assert r.status_code == 302, r.text[-800:]
    key = r.headers["Location"].rsplit("/", 1)[1]
    _no_markup(admin.get(f"/ui/keys/{key}").text)
    _no_markup(admin.get("/ui/keys?text=alert").text)


def test_alias_and_policy_names_with_markup_are_refused_and_echoed_escaped(admin: Console) -> None:
    key = make_key(admin.broker)
    admin.get(f"/ui/keys/{key}")
    r = admin.post(f"/ui/keys/{key}/alias", {"alias": XSS})
    assert r.status_code == 400
    assert "<script>alert" not in r.text
    admin.get("/ui/policies-new")
    r = admin.post("/ui/policies", {"new": "1", "name": XSS, "document": '{"Version": "2012-10-17", "Statement": '
                                    '[{"Effect": "Allow", "Action": "kms:DescribeKey", "Resource": "*"}]}'})
    assert r.status_code == 400
    _no_markup(r.text)
    r = admin.get("/ui/keys?text=" + requests.utils.quote(XSS))
    assert r.status_code == 200
    _no_markup(r.text)


def test_policy_documents_and_statements_render_escaped(admin: Console) -> None:
    admin.get("/ui/policies-new")
    doc = ('{"Version": "2012-10-17", "Statement": [{"Sid": "S1", "Effect": "Allow", "Action": "kms:DescribeKey",'
           ' "Resource": "key/</textarea><script>alert(1)</script>"}]}')
    r = admin.post("/ui/policies", {"new": "1", "name": "xss-doc", "document": doc})
    assert r.status_code == 302, r.text[-600:]
    page = admin.get("/ui/policies/xss-doc").text
    assert "</textarea><script>" not in page and "&lt;/textarea&gt;&lt;script&gt;" in page


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_gives_a_clear_4xx_in_the_page_and_changes_nothing(admin: Console) -> None:
    key = make_key(admin.broker)
    admin.get(f"/ui/keys/{key}")
    before = admin.broker.snapshot()
    cases = [
        ("/ui/keys", {"provider": "hsm", "spec": "NOT_A_SPEC"}, 400, "KeySpec"),
        ("/ui/keys", {"provider": "nowhere", "spec": "SYMMETRIC_DEFAULT"}, 400, "unknown provider"),
        ("/ui/keys", {"provider": "hsm", "spec": "SYMMETRIC_DEFAULT", "tags": "no-equals-sign"}, 400, "name=value"),
        ("/ui/keys", {"provider": "hsm", "spec": "SYMMETRIC_DEFAULT", "description": "x" * 9000}, 400, "Description"),
        (f"/ui/keys/{key}/schedule-deletion", {"confirm": "some-other-key", "days": "7"}, 400, key),
        (f"/ui/keys/{key}/schedule-deletion", {"confirm": key, "days": "seven"}, 400, "whole number"),
        (f"/ui/keys/{key}/schedule-deletion", {"confirm": key, "days": "3"}, 400, "7"),
        (f"/ui/keys/{key}/enable-rotation", {"period": "10"}, 400, "90"),
        (f"/ui/keys/{key}/tags", {"tags": "=v"}, 400, "name=value"),
        (f"/ui/keys/{key}/no-such-action", {}, 404, "No such action"),
        ("/ui/keys/no-such-key/disable", {}, 404, "not found"),
        ("/ui/policies", {"name": "ok-name", "document": "{not json"}, 400, "Not valid JSON"),
        ("/ui/simulator", {"principal": "p", "action": "kms:Decrypt", "context": "no-equals"}, 400, "name=value"),
        ("/ui/simulator", {"principal": "p", "action": "kms:NoSuchThing"}, 400, "not known"),
        ("/ui/simulator", {"principal": "p", "action": "kms:Decrypt", "time": "yesterday"}, 400, "Time"),
    ]
    for path, data, status, words in cases:
        r = admin.post(path, data)
        assert r.status_code == status, (path, data, r.status_code, r.text[-400:])
        assert "Traceback" not in r.text
        assert 'role="alert"' in r.text, path
        assert words in r.text, (path, words)
    assert admin.get("/ui/keys?text=" + "x" * 300).status_code == 400
    assert admin.broker.snapshot() == before


def test_an_unknown_key_page_is_a_404_page(admin: Console) -> None:
    r = admin.get("/ui/keys/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and 'role="alert"' in r.text


# ------------------------------------------------------------------------------------------------ headers


def test_every_page_has_a_strict_csp_and_no_store(admin: Console) -> None:
    for path in ("/ui/login", "/ui/keys", "/ui/keys/new", "/ui/policies", "/ui/simulator"):
        r = admin.get(path) if path != "/ui/login" else requests.get(admin.url(path))
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Frame-Options"] == "DENY"
