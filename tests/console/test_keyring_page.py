"""The keyring page over HTTP: entries and versions without material, rotation, schedules, a database token shown
once (and kept nowhere by the console), and a mount-bound principal seeing only its own mount."""

from __future__ import annotations

import re

import requests

from tests.console.conftest import Console, api, make_token


def _entry_row(html: str, name: str) -> str:
    m = re.search(rf'<tr data-entry="{re.escape(name)}">(.*?)</tr>', html, re.S)
    assert m, name
    return m.group(1)


def test_create_rotate_and_schedule_an_entry_without_ever_showing_material(admin: Console) -> None:
    admin.get("/ui/keyring")
    r = admin.post("/ui/keyring/entries", {"mount": "kv", "entry": "db-one", "key_bytes": "32"})
    assert r.status_code == 302, r.text[-600:]
    page = admin.get("/ui/keyring").text
    assert "latest v1" in _entry_row(page, "kv/db-one")
    assert admin.post("/ui/keyring/rotate", {"mount": "kv", "entry": "db-one"}).status_code == 302
    assert admin.post("/ui/keyring/rotation", {"mount": "kv", "entry": "db-one", "period_days": "30"}).status_code == 302
    row = _entry_row(admin.get("/ui/keyring").text, "kv/db-one")
    assert "latest v2" in row and "every 30 days" in row and "v1 · hsm" in row
    exported = api(admin.broker, "POST", "/keyring/export", json={"Mount": "kv"}).json()
    secrets = [v["Secret"]["data"] for e in exported["Entries"] for v in e["Versions"]]
    html = admin.get("/ui/keyring").text
    assert secrets and not any(s in html for s in secrets)


def test_a_database_token_is_shown_once_and_works(admin: Console) -> None:
    admin.get("/ui/keyring")
    r = admin.post("/ui/keyring/tokens", {"token_mount": "kv"})
    assert r.status_code == 200, r.text[-600:]
    token = re.search(r'<code id="token-value">([^<]+)</code>', r.text).group(1)
    assert token.startswith("kmsb.")
    assert token not in admin.get("/ui/keyring").text
    assert api(admin.broker, "GET", "/auth/token/lookup-self", token=token).status_code == 200
    db = admin.broker.data_dir / "console" / "sessions.db"
    assert token.encode() not in db.read_bytes()


def test_bad_keyring_input_is_a_4xx_in_the_page(admin: Console) -> None:
    admin.get("/ui/keyring")
    before = admin.broker.snapshot()
    for path, data in (("/ui/keyring/entries", {"mount": "kv", "entry": "x", "key_bytes": "7"}),
                       ("/ui/keyring/entries", {"mount": "", "entry": "x"}),
                       ("/ui/keyring/entries", {"mount": "kv", "entry": "../up"}),
                       ("/ui/keyring/rotation", {"mount": "kv", "entry": "nope", "period_days": "ten"}),
                       ("/ui/keyring/rotate", {"mount": "kv", "entry": "no-such-entry"}),
                       ("/ui/keyring/tokens", {"token_mount": "kv", "ttl_days": "x"})):
        r = admin.post(path, data)
        assert 400 <= r.status_code < 500, (path, data, r.status_code)
        assert 'role="alert"' in r.text and "Traceback" not in r.text
    assert admin.broker.snapshot() == before


def test_a_mount_bound_principal_sees_only_its_mount_and_cannot_mint_tokens(console_broker, admin: Console) -> None:
    admin.get("/ui/keyring")
    for mount in ("tenant-a", "tenant-b"):
        assert admin.post("/ui/keyring/entries", {"mount": mount, "entry": "e1"}).status_code == 302
    tenant = Console(console_broker, requests.Session())
    tenant.login(make_token(console_broker, ["keyring:tenant-a"]), check=False)
    page = tenant.get("/ui/keyring")
    assert page.status_code == 200
    assert 'data-entry="tenant-a/e1"' in page.text and 'data-entry="tenant-b/e1"' not in page.text
    r = tenant.post("/ui/keyring/tokens", {"token_mount": "tenant-b"})
    assert r.status_code == 403 and "kmsb." not in r.text
    r = tenant.post("/ui/keyring/rotate", {"mount": "tenant-b", "entry": "e1"})
    assert r.status_code == 403
    # A policy name of the family that names no valid mount ("keyring:*", which grants nothing) is ignored, not a 400
    globbed = Console(console_broker, requests.Session())
    globbed.login(make_token(console_broker, ["keyring:tenant-a", "keyring:*"]), check=False)
    page = globbed.get("/ui/keyring")
    assert page.status_code == 200, page.text[-600:]
    assert 'data-entry="tenant-a/e1"' in page.text and 'data-entry="tenant-b/e1"' not in page.text
