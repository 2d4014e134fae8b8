"""The console in a real Chromium: the issue's end-to-end scenarios. Assertions wait for the page (Playwright's
auto-waiting `expect`), never for a fixed time."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.console.browser import Tab, chromium, open_tab
from tests.console.conftest import api, make_key


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from chromium()


@pytest.fixture
def tab(browser) -> Iterator[Tab]:
    t = open_tab(browser)
    yield t
    t.page.context.close()


def login_with_token(page: Page, addr: str, token: str) -> None:
    page.goto(f"{addr}/ui/keys")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.get_by_label("Broker token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()


def test_token_login_lands_on_keys_with_csp_and_no_console_errors(console_broker, tab: Tab) -> None:
    responses = []
    tab.page.on("response", lambda r: responses.append(r) if "/ui/" in r.url else None)
    login_with_token(tab.page, console_broker.addr, console_broker.root_token)
    expect(tab.page.locator(".principal")).to_have_text("root")
    html = [r for r in responses if r.headers.get("content-type", "").startswith("text/html")]
    assert html and all("script-src 'self'" in r.headers["content-security-policy"] for r in html)
    cookies = {c["name"]: c for c in tab.page.context.cookies()}
    assert cookies["kmsb_console"]["httpOnly"] and cookies["kmsb_console"]["sameSite"] == "Strict"
    assert console_broker.root_token not in cookies["kmsb_console"]["value"]
    assert tab.problems == []


def test_keyboard_only_key_creation(console_broker, tab: Tab) -> None:
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    page.goto(f"{console_broker.addr}/ui/keys")
    page.locator("#create-key").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Create key")).to_be_visible()
    page.locator("#provider").focus()
    for _ in range(2):  # provider -> spec -> usage
        page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#description")).to_be_focused()
    page.keyboard.type("typed without a mouse")
    page.keyboard.press("Tab")
    expect(page.locator("#alias")).to_be_focused()
    page.keyboard.type("keyboard-made")
    page.keyboard.press("Tab")
    page.keyboard.type("team=a11y")
    page.keyboard.press("Enter")
    expect(page.locator(".notice")).to_contain_text("created")
    expect(page.locator("#key-description")).to_have_text("typed without a mouse")
    key_id = page.url.rsplit("/", 1)[1]
    meta = api(console_broker, "GET", "/keys/alias/keyboard-made").json()["KeyMetadata"]
    assert meta["KeyId"] == key_id and meta["Description"] == "typed without a mouse"
    assert tab.problems == []


def test_rotate_and_disable_from_the_key_page(console_broker, tab: Tab) -> None:
    key = make_key(console_broker, "rotate me")
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    page.goto(f"{console_broker.addr}/ui/keys/{key}")
    expect(page.locator("#primary-version")).to_have_text("1")
    page.locator("#action-rotate").click()
    expect(page.locator(".notice")).to_contain_text("rotated")
    expect(page.locator("#primary-version")).to_have_text("2")
    page.locator("#action-disable").click()
    expect(page.locator("#key-state")).to_have_text("Disabled")
    assert api(console_broker, "GET", f"/keys/{key}").json()["KeyMetadata"]["KeyState"] == "Disabled"
    page.locator("#action-enable").click()
    expect(page.locator("#key-state")).to_have_text("Enabled")
    # deletion: the button waits for the key id to be typed, and the server checks it again
    expect(page.locator("#schedule-deletion")).to_be_disabled()
    page.locator("#confirm").fill(key[:8])
    expect(page.locator("#schedule-deletion")).to_be_disabled()
    page.locator("#confirm").fill(key)
    page.locator("#days").fill("7")
    page.locator("#schedule-deletion").click()
    expect(page.locator("#key-state")).to_have_text("Pending deletion")
    page.locator("#action-cancel-deletion").click()
    expect(page.locator("#key-state")).to_have_text("Disabled")
    assert tab.problems == []


def test_a_non_admin_sees_disabled_buttons_and_the_server_refuses_anyway(console_broker, auditor_token,
                                                                         tab: Tab) -> None:
    key = make_key(console_broker, "not yours to disable")
    page = tab.page
    login_with_token(page, console_broker.addr, auditor_token)
    page.goto(f"{console_broker.addr}/ui/keys/{key}")
    for button in ("#action-disable", "#action-rotate", "#schedule-deletion"):
        expect(page.locator(button)).to_be_disabled()
    expect(page.locator("#create-key")).to_have_count(0)
    # force it: enable the button in the DOM and submit; the gate refuses, the page says so, nothing changed
    page.locator("#action-disable").evaluate("b => { b.disabled = false; b.removeAttribute('aria-disabled'); }")
    page.locator("#action-disable").click()
    expect(page.get_by_role("alert")).to_contain_text("not allowed")
    assert api(console_broker, "GET", f"/keys/{key}").json()["KeyMetadata"]["KeyState"] == "Enabled"
    assert [p for p in tab.problems if "403" not in p] == []


def test_the_simulator_answers_with_the_deciding_statement(console_broker, tab: Tab) -> None:
    key = make_key(console_broker, "simulated")
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    page.goto(f"{console_broker.addr}/ui/simulator")
    page.get_by_label("Principal name").fill("alice")
    page.get_by_label("Its policies").fill("key-user")
    page.get_by_label("Action").fill("kms:Decrypt")
    page.get_by_label("Key (id or alias)").fill(key)
    page.get_by_role("button", name="Simulate").click()
    expect(page.locator("#sim-result h2")).to_have_text("Allowed")
    expect(page.locator("#sim-source")).to_have_text("identity:key-user")
    expect(page.locator("#sim-sid")).to_have_text("CryptoOnPermittedKeys")
    expect(page.locator("#sim-statement")).to_contain_text("kms:Decrypt")
    page.get_by_label("Its policies").fill("auditor")
    page.get_by_role("button", name="Simulate").click()
    expect(page.locator("#sim-result h2")).to_have_text("Denied")
    assert tab.problems == []


def test_a_policy_validation_error_is_shown_at_the_right_field(console_broker, tab: Tab) -> None:
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    page.goto(f"{console_broker.addr}/ui/policies-new")
    page.get_by_label("Name").fill("ops-readers")
    document = ('{\n  "Version": "2012-10-17",\n  "Statement": [\n    {\n      "Effect": "Allow",\n'
                '      "Action": ["kms:DescribeKey"],\n      "Resource": "*"\n    },\n    {\n'
                '      "Effect": "Allow",\n      "Action": ["kms:Decrypt", "kms:Frobnicate"],\n'
                '      "Resource": "*"\n    }\n  ]\n}')
    page.locator("#document").fill(document)
    page.locator("#save-policy").click()
    error = page.locator("#document-error")
    expect(error).to_contain_text("Statement[1].Action[1]")
    expect(error).to_contain_text("kms:Frobnicate")
    expect(error).to_have_attribute("data-line", "11")
    expect(page.locator("#document")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#document")).to_be_focused()
    selected = page.locator("#document").evaluate("a => a.value.substring(a.selectionStart, a.selectionEnd)")
    assert "kms:Frobnicate" in selected
    assert api(console_broker, "GET", "/policies/ops-readers").status_code == 404
    assert [p for p in tab.problems if "400" not in p] == []


UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
  .map(el => el.outerHTML.slice(0, 80))"""
OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
PAGES = ["/ui/keys", "/ui/keys/new", "/ui/policies", "/ui/policies-new", "/ui/simulator", "/ui/keyring",
         "/ui/cross-cloud", "/ui/approvals"]


def test_every_control_has_a_label_and_the_skip_link_comes_first(console_broker, tab: Tab) -> None:
    key = make_key(console_broker, "labelled")
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    for path in [*PAGES, f"/ui/keys/{key}"]:
        page.goto(f"{console_broker.addr}{path}")
        assert page.evaluate(UNLABELLED) == [], path
        assert page.locator("h1").count() == 1, path
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    assert tab.problems == []


def test_phone_width_pages_fit_the_screen(console_broker, browser) -> None:
    key = make_key(console_broker, "small screen")
    tab = open_tab(browser, width=390, height=844)
    try:
        page = tab.page
        login_with_token(page, console_broker.addr, console_broker.root_token)
        for path in [*PAGES, f"/ui/keys/{key}"]:
            page.goto(f"{console_broker.addr}{path}")
            assert page.evaluate(OVERFLOW) <= 0, path
        page.goto(f"{console_broker.addr}/ui/keys/{key}")
        expect(page.locator("#action-rotate")).to_be_in_viewport(ratio=0.5)
        assert tab.problems == []
    finally:
        tab.page.context.close()


def test_the_console_speaks_chinese_from_one_file(console_broker, tab: Tab) -> None:
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    page.get_by_label("Language").select_option("zh-CN")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("heading", name="密钥")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.goto(f"{console_broker.addr}/ui/simulator")
    expect(page.get_by_role("heading", name="策略模拟器")).to_be_visible()
    page.get_by_label("语言").select_option("en")
    page.get_by_role("button", name="应用").click()
    expect(page.get_by_role("heading", name="Policy simulator")).to_be_visible()
def test_encrypt_from_the_api_and_see_the_audit_event_appear(console_broker, tab: Tab) -> None:
    key = make_key(console_broker, "watched")
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    page.goto(f"{console_broker.addr}/ui/audit?key={key}")
    expect(page.locator("#live")).to_be_checked()
    rows = page.locator("#audit-rows tr", has_text="kms:Encrypt")
    expect(rows).to_have_count(0)
    r = api(console_broker, "POST", f"/keys/{key}/encrypt", json={"Plaintext": "aGVsbG8="})
    assert r.status_code == 200
    expect(rows).to_have_count(1, timeout=20_000)   # the live view refreshes itself; no reload
    expect(rows.first).to_contain_text("rest")
    rows.first.locator("summary").click()
    expect(rows.first.locator("pre")).to_contain_text('"action": "kms:Encrypt"')
    assert tab.problems == []


def test_ldap_login_and_logout(console_broker, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{console_broker.addr}/ui/policies")
    page.get_by_role("listitem").filter(has_text="LDAP").click()
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("alice-pw")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Policies")).to_be_visible()   # back where it was going
    expect(page.locator(".principal")).to_have_text("ldap/alice")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(f"{console_broker.addr}/ui/keys")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    assert tab.problems == []


def test_single_sign_on_with_the_test_issuer(console_broker, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{console_broker.addr}/ui/login")
    page.get_by_role("link", name="Log in with Test SSO").click()
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    expect(page.locator(".principal")).to_have_text("jwt/console/oidc-alice")
    assert tab.problems == []


def test_a_form_without_its_csrf_token_is_refused(console_broker, tab: Tab) -> None:
    key = make_key(console_broker, "csrf target")
    page = tab.page
    login_with_token(page, console_broker.addr, console_broker.root_token)
    page.goto(f"{console_broker.addr}/ui/keys/{key}")
    form = page.locator("form", has=page.locator("#action-disable"))
    form.locator("input[name=csrf]").evaluate("i => i.remove()")
    page.locator("#action-disable").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    assert api(console_broker, "GET", f"/keys/{key}").json()["KeyMetadata"]["KeyState"] == "Enabled"
    page.goto(f"{console_broker.addr}/ui/keys/{key}")
    form.locator("input[name=csrf]").evaluate("i => { i.value = 'forged'; }")
    page.locator("#action-disable").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    assert api(console_broker, "GET", f"/keys/{key}").json()["KeyMetadata"]["KeyState"] == "Enabled"
    assert [p for p in tab.problems if "403" not in p] == []


CONTRAST = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => { const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = el => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
                               if (c.length < 4 || c[3] > 0) { return c.slice(0, 3); } } return [255, 255, 255]; };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(el);
    if (!own || style.visibility === 'hidden' || style.display === 'none' || el.closest('svg')) { continue; }
    const [a, b] = [lum(rgb(style.color).slice(0, 3)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) { low.push(el.tagName + '.' + el.className + ' ' + ratio.toFixed(2) + ' ' + el.textContent.trim().slice(0, 30)); }
  }
  return low;
}"""


def test_text_contrast_meets_wcag_aa(console_broker, auditor_token, tab: Tab) -> None:
    key = make_key(console_broker, "contrast", Tags={"team": "a11y"})
    api(console_broker, "POST", f"/keys/{make_key(console_broker, 'disabled one')}/disable")
    page = tab.page
    login_with_token(page, console_broker.addr, auditor_token)   # disabled buttons too
    for path in ["/ui/keys", f"/ui/keys/{key}", "/ui/policies", "/ui/simulator", "/ui/login?method=ldap"]:
        page.goto(f"{console_broker.addr}{path}")
        assert page.evaluate(CONTRAST) == [], path
