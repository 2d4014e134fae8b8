"""The keyring bridge, attacked: nested mounts, dot segments, globs, wider grants, stale credentials, hostile strings.

Everything runs against a real `kms-broker serve --keyring-bind` (SoftHSM root of trust, SQLite store, gunicorn) over
HTTP: the Vault-KV bridge as a database's plugin speaks it, and the native `/v1/keyring/*` routes the CLI uses.
Every refusal must change nothing (the store is compared before and after) and be audited.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.keyring_bridge.support import Bridge, start_bridge

OUTER, INNER = "kv", "kv/mdb"  # INNER nests under OUTER: the confusion this file is about


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    running = start_bridge(tmp_path_factory.mktemp("keyring-attacks"))
    try:
        admin = api(running)
        # Mount kv holds an entry whose id looks like the nested mount's path, and the nested mount kv/mdb holds one.
        for mount, entry_id in ((OUTER, "mdb/1"), (OUTER, "1"), (INNER, "1"), (INNER, "2")):
            r = admin.post(f"{running.addr}/v1/keyring/entries", json={"Mount": mount, "Id": entry_id}, timeout=10)
            assert r.status_code == 201, r.text
        yield running
    finally:
        running.stop()


# ------------------------------------------------------------------------------------------------- helpers


def api(bridge: Bridge, token: str | None = None) -> requests.Session:
    s = requests.Session()
    s.headers["X-KMSB-Token"] = token or bridge.root_token
    return s


def vault(bridge: Bridge, method: str, path: str, token: str, **kw) -> requests.Response:
    return requests.request(method, f"{bridge.vault}/v1/{path}", headers={"X-Vault-Token": token}, timeout=10, **kw)


def refused_read(bridge: Bridge, path: str, token: str, **kw) -> bool:
    """A key read the bridge refuses: the connection is dropped (mariadbd aborts on a 403 for a key it uses, and
    survives a dropped connection), never an answer with the key."""
    try:
        r = vault(bridge, "GET", path, token, **kw)
    except requests.ConnectionError:
        return True
    raise AssertionError(f"GET {path} answered {r.status_code} instead of dropping the connection")


def raw(bridge: Bridge, method: str, path: str, token: str = "", body: bytes | None = None) -> tuple[int, bytes]:
    """A request with the path exactly as written (requests/urllib3 would normalise dot segments away)."""
    conn = http.client.HTTPConnection("127.0.0.1", bridge.bridge_port, timeout=10)
    try:
        headers = {"X-Vault-Token": token} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def db_token(bridge: Bridge, mount: str) -> str:
    r = api(bridge).post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": mount}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["token"]


def token_with(bridge: Bridge, name: str, statements: list[dict]) -> str:
    """A token holding only the identity policy `name` made of `statements`."""
    admin = api(bridge)
    r = admin.put(f"{bridge.addr}/v1/policies/{name}", json={"Document": {"Version": "2012-10-17",
                                                                          "Statement": statements}}, timeout=10)
    assert r.status_code == 200, r.text
    r = admin.post(f"{bridge.addr}/v1/auth/token/create", json={"policies": [name], "no_parent": True,
                                                               "display_name": name}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["auth"]["client_token"]


def snapshot(bridge: Bridge) -> dict[str, list]:
    """Every keyring and token row (not the audit trail, which must grow): a refusal changes none of them."""
    con = sqlite3.connect(f"file:{bridge.data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")
                  if r[0].startswith(("keyring_", "auth_tokens", "identity_tokens"))]
        return {t: sorted(con.execute(f'select * from "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        con.close()


def audited(bridge: Bridge, since: str, **match) -> list[dict]:
    return [r for r in bridge.audit() if r["time"] >= since and all(r.get(k) == v for k, v in match.items())]


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


# ------------------------------------------------------------------------------------------------- nested mounts


def test_a_token_for_a_mount_reaches_nothing_of_a_mount_nested_in_it(bridge: Bridge):
    outer = db_token(bridge, OUTER)
    since, before = now_iso(), snapshot(bridge)
    # Through the bridge, as a database plugin would ask.
    assert refused_read(bridge, f"{INNER}/data/1", outer)
    assert refused_read(bridge, f"{INNER}/data/1", outer, params={"version": 1})
    assert vault(bridge, "GET", f"{INNER}/metadata/1", outer).status_code == 403
    assert vault(bridge, "LIST", f"{INNER}/metadata/", outer).status_code == 403
    assert vault(bridge, "GET", f"sys/mounts/{INNER}/tune", outer).status_code == 403
    assert vault(bridge, "POST", f"{INNER}/data/1", outer, json={"data": {"data": "00" * 32}}).status_code == 403
    assert vault(bridge, "POST", f"{INNER}/data/new", outer, json={"data": {"x": "y"}}).status_code == 403
    # Through the native routes, export included (plaintext of every version of the mount).
    native = api(bridge, outer)
    assert native.post(f"{bridge.addr}/v1/keyring/export", json={"Mount": INNER}, timeout=10).status_code == 403
    assert native.get(f"{bridge.addr}/v1/keyring/entries", params={"mount": INNER}, timeout=10).status_code == 403
    for path, body in (("entries", {"Mount": INNER, "Id": "9"}), ("entries/rotate", {"Mount": INNER, "Id": "1"}),
                       ("entries/rotation", {"Mount": INNER, "Id": "1", "PeriodSeconds": 3600}),
                       ("import", {"Mount": INNER, "Entries": [{"Id": "7", "Versions": ["AAAAAAAAAAAAAAAAAAAAAA=="]}]})):
        assert native.post(f"{bridge.addr}/v1/keyring/{path}", json=body, timeout=10).status_code == 403, path
    assert snapshot(bridge) == before
    denied = audited(bridge, since, outcome="denied", principal=f"keyring:{OUTER}")
    assert len(denied) >= 12 and all(r["resource"].startswith("keyring/kv%2Fmdb/") for r in denied
                                     if r.get("resource"))
    assert not audited(bridge, since, outcome="allowed", principal=f"keyring:{OUTER}")


def test_a_token_for_a_nested_mount_reaches_nothing_of_the_mount_above_it(bridge: Bridge):
    inner = db_token(bridge, INNER)
    before = snapshot(bridge)
    # Mount kv's entry "mdb/1" has the same `keyring/<mount>/<id>` spelling as mount kv/mdb's entry "1" had.
    assert refused_read(bridge, f"{OUTER}/data/mdb/1", inner)
    assert refused_read(bridge, f"{OUTER}/data/1", inner)
    assert vault(bridge, "POST", f"{OUTER}/data/mdb/1", inner, json={"data": {"data": "11" * 32}}).status_code == 403
    assert vault(bridge, "POST", f"{OUTER}/data/x", inner, json={"data": {"x": "y"}}).status_code == 403
    native = api(bridge, inner)
    assert native.post(f"{bridge.addr}/v1/keyring/export", json={"Mount": OUTER}, timeout=10).status_code == 403
    assert native.get(f"{bridge.addr}/v1/keyring/entries", params={"mount": OUTER}, timeout=10).status_code == 403
    assert snapshot(bridge) == before


def test_each_token_still_reaches_its_own_mount_and_only_its_own_entries(bridge: Bridge):
    outer, inner = db_token(bridge, OUTER), db_token(bridge, INNER)
    own_outer = vault(bridge, "GET", f"{OUTER}/data/mdb/1", outer)
    own_inner = vault(bridge, "GET", f"{INNER}/data/1", inner)
    assert own_outer.status_code == own_inner.status_code == 200
    assert own_outer.json()["data"]["data"] != own_inner.json()["data"]["data"]
    exported = api(bridge, inner).post(f"{bridge.addr}/v1/keyring/export", json={"Mount": INNER}, timeout=10)
    assert exported.status_code == 200
    assert sorted(e["Id"] for e in exported.json()["Entries"]) == ["1", "2"]
    listed = api(bridge, outer).get(f"{bridge.addr}/v1/keyring/entries", params={"mount": OUTER}, timeout=10)
    assert {(e["Mount"], e["Id"]) for e in listed.json()["Entries"]} == {(OUTER, "1"), (OUTER, "mdb/1")}


def test_a_policy_written_for_one_mount_never_globs_into_a_nested_one(bridge: Bridge):
    token = token_with(bridge, "outer-reader", [
        {"Effect": "Allow", "Action": ["keyring:Read", "keyring:Export"], "Resource": "keyring/kv/*"}])
    assert vault(bridge, "GET", f"{OUTER}/data/mdb/1", token).status_code == 200
    assert refused_read(bridge, f"{INNER}/data/1", token)
    assert api(bridge, token).post(f"{bridge.addr}/v1/keyring/export", json={"Mount": INNER},
                                   timeout=10).status_code == 403


def test_a_deny_on_one_entry_refuses_the_export_of_its_mount(bridge: Bridge):
    token = token_with(bridge, "export-but-one", [
        {"Effect": "Allow", "Action": "keyring:Export", "Resource": "keyring/kv%2Fmdb/*"},
        {"Effect": "Deny", "Action": "keyring:Export", "Resource": "keyring/kv%2Fmdb/2"}])
    r = api(bridge, token).post(f"{bridge.addr}/v1/keyring/export", json={"Mount": INNER}, timeout=10)
    assert r.status_code == 403 and "Secret" not in r.text


# ------------------------------------------------------------------------------------------------- names


BAD_MOUNTS = ["../x", "kv/..", "kv/./x", ".", "..", "kv//x", "kv*", "kv/?", "[k]v", "kv%2Fmdb", "kv/data",
              "a" * 300, "kv/\ud800", "kv\x00", ""]
BAD_IDS = ["..", ".", "a/../b", "./1", "1/.", "a//b", "/1", "1/", "x\x01", "\ud800", "9" * 600]


@pytest.mark.parametrize("mount", BAD_MOUNTS)
def test_a_mount_that_is_not_one_unambiguous_name_is_refused(bridge: Bridge, mount: str):
    before = snapshot(bridge)
    admin = api(bridge)
    for path, body in (("entries", {"Mount": mount, "Id": "1"}), ("tokens", {"Mount": mount}),
                       ("approles", {"Mount": mount, "RoleName": "r"}), ("mounts", {"Mount": mount}),
                       ("export", {"Mount": mount})):
        r = admin.post(f"{bridge.addr}/v1/keyring/{path}", json=body, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationException", (path, r.text)
    assert snapshot(bridge) == before


@pytest.mark.parametrize("entry_id", BAD_IDS)
def test_an_entry_id_with_dot_or_empty_segments_is_refused(bridge: Bridge, entry_id: str):
    before = snapshot(bridge)
    r = api(bridge).post(f"{bridge.addr}/v1/keyring/entries", json={"Mount": INNER, "Id": entry_id}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationException", r.text
    r = api(bridge).post(f"{bridge.addr}/v1/keyring/import", json={"Mount": INNER, "Entries": [
        {"Id": entry_id, "Versions": ["AAAAAAAAAAAAAAAAAAAAAA=="]}]}, timeout=10)
    assert r.status_code == 400, r.text
    assert snapshot(bridge) == before


@pytest.mark.parametrize("path", [
    "/v1/kv/mdb/data/../1", "/v1/kv/mdb/data/./1", "/v1/kv/data/../mdb/data/1", "/v1/kv/../kv/mdb/data/1",
    "/v1/kv/mdb/data/%2E%2E/1", "/v1/./kv/mdb/data/1", "/v1/sys/mounts/kv/../kv/mdb/tune", "/v1/kv/mdb/data/a//b"])
def test_dot_segments_in_bridge_paths_are_refused_not_resolved(bridge: Bridge, path: str):
    token = db_token(bridge, INNER)
    status, body = raw(bridge, "GET", path, token)
    assert status in (400, 404), (status, body)
    assert b'"data"' not in body  # no key material, whatever the route


# ------------------------------------------------------------------------------------------------- no escalation


def test_minting_keyring_credentials_needs_every_keyring_right_on_that_mount(bridge: Bridge):
    narrow = token_with(bridge, "mdb-minter", [
        {"Effect": "Allow", "Action": ["keyring:CreateToken", "keyring:CreateAppRole"],
         "Resource": "keyring-admin/kv%2Fmdb"},
        {"Effect": "Allow", "Action": "keyring:Read", "Resource": "keyring/kv%2Fmdb/*"}])
    since, before = now_iso(), snapshot(bridge)
    s = api(bridge, narrow)
    r = s.post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": INNER}, timeout=10)
    assert r.status_code == 403 and "token" not in r.json()
    r = s.post(f"{bridge.addr}/v1/keyring/approles", json={"Mount": INNER, "RoleName": "escalate"}, timeout=10)
    assert r.status_code == 403 and "secret_id" not in r.json()
    assert snapshot(bridge) == before
    refused = audited(bridge, since, outcome="denied", principal="mdb-minter")
    assert {r["action"] for r in refused} == {"keyring:CreateToken", "keyring:CreateAppRole"}


def test_a_minter_holding_the_mount_may_mint_for_it_and_only_for_it(bridge: Bridge):
    full = token_with(bridge, "mdb-owner", [
        {"Effect": "Allow", "Action": ["keyring:CreateToken", "keyring:CreateAppRole"],
         "Resource": "keyring-admin/kv%2Fmdb"},
        {"Effect": "Allow", "Action": "keyring:*", "Resource": "keyring/kv%2Fmdb/*"}])
    s = api(bridge, full)
    minted = s.post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": INNER}, timeout=10)
    assert minted.status_code == 201 and minted.json()["policies"] == [f"keyring:{INNER}"]
    assert vault(bridge, "GET", f"{INNER}/data/1", minted.json()["token"]).status_code == 200
    assert s.post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": OUTER}, timeout=10).status_code == 403
    # Holding the policy itself is enough to hand it on.
    holder = token_with(bridge, "mdb-holder", [
        {"Effect": "Allow", "Action": "keyring:CreateToken", "Resource": "keyring-admin/kv%2Fmdb"}])
    r = api(bridge).post(f"{bridge.addr}/v1/auth/token/create", json={
        "policies": ["mdb-holder", f"keyring:{INNER}"], "no_parent": True}, timeout=10)
    holder = r.json()["auth"]["client_token"]
    assert api(bridge, holder).post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": INNER},
                                    timeout=10).status_code == 201


def test_nothing_minted_outlives_the_short_lived_token_that_minted_it(bridge: Bridge):
    r = api(bridge).post(f"{bridge.addr}/v1/auth/token/create", json={
        "policies": ["keyring-admin"], "ttl": "4s", "no_parent": True, "display_name": "brief-admin"}, timeout=10)
    brief = r.json()["auth"]["client_token"]
    s = api(bridge, brief)
    minted = s.post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": INNER}, timeout=10)
    assert minted.status_code == 201 and 0 < minted.json()["ttl"] <= 4
    asked_for_more = s.post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": INNER, "TtlSeconds": 86400},
                            timeout=10)
    assert asked_for_more.status_code == 201 and 0 < asked_for_more.json()["ttl"] <= 4
    role = s.post(f"{bridge.addr}/v1/keyring/approles", json={"Mount": INNER, "RoleName": "brief"}, timeout=10).json()
    from datetime import UTC, datetime

    expires = datetime.fromisoformat(role["secret_id_expires_at"].replace("Z", "+00:00"))
    assert (expires - datetime.now(UTC)).total_seconds() <= 4
    login_ = login(bridge, {"role_id": role["role_id"], "secret_id": role["secret_id"]})
    assert login_.status_code == 200 and login_.json()["auth"]["lease_duration"] <= 4
    for token in (minted.json()["token"], asked_for_more.json()["token"], login_.json()["auth"]["client_token"]):
        assert vault(bridge, "GET", f"{INNER}/data/1", token).status_code == 200
    time.sleep(5)
    for token in (minted.json()["token"], asked_for_more.json()["token"], login_.json()["auth"]["client_token"]):
        assert refused_read(bridge, f"{INNER}/data/1", token)
    assert login(bridge, {"role_id": role["role_id"], "secret_id": role["secret_id"]}).status_code == 400


def test_a_database_token_cannot_mint_or_sweep(bridge: Bridge):
    token = db_token(bridge, INNER)
    s = api(bridge, token)
    assert s.post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": INNER}, timeout=10).status_code == 403
    assert s.post(f"{bridge.addr}/v1/keyring/approles", json={"Mount": INNER, "RoleName": "x"},
                  timeout=10).status_code == 403
    assert s.post(f"{bridge.addr}/v1/keyring/mounts", json={"Mount": INNER}, timeout=10).status_code == 403
    assert s.post(f"{bridge.addr}/v1/keyring/rotate-due", timeout=10).status_code == 403
    assert s.get(f"{bridge.addr}/v1/keyring/entries", timeout=10).status_code == 403


def test_a_keyring_policy_name_cannot_carry_a_glob(bridge: Bridge):
    # A token minted with a policy named like the family but not a valid mount gets no document at all.
    r = api(bridge).post(f"{bridge.addr}/v1/auth/token/create", json={"policies": ["keyring:*"], "no_parent": True},
                         timeout=10)
    token = r.json()["auth"]["client_token"]
    for path in (f"{INNER}/data/1", f"{OUTER}/data/1"):
        assert refused_read(bridge, path, token)


# ------------------------------------------------------------------------------------------------- AppRoles


def approle(bridge: Bridge, name: str, **ttls: int) -> dict:
    r = api(bridge).post(f"{bridge.addr}/v1/keyring/approles", json={"Mount": INNER, "RoleName": name, **ttls},
                         timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def login(bridge: Bridge, body: object) -> requests.Response:
    return requests.post(f"{bridge.vault}/v1/auth/approle/login", json=body, timeout=10)


def test_approle_secrets_and_their_tokens_are_bounded_by_default(bridge: Bridge):
    role = approle(bridge, "bounded")
    from datetime import UTC, datetime

    expires = datetime.fromisoformat(role["secret_id_expires_at"].replace("Z", "+00:00"))
    assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 31 * 86400
    auth = login(bridge, {"role_id": role["role_id"], "secret_id": role["secret_id"]}).json()["auth"]
    assert 0 < auth["lease_duration"] <= 31 * 86400 and auth["renewable"] is False


def test_an_expired_secret_id_and_an_expired_login_token_stop_working(bridge: Bridge):
    role = approle(bridge, "short", SecretIdTtlSeconds=4, TokenTtlSeconds=2)
    first = login(bridge, {"role_id": role["role_id"], "secret_id": role["secret_id"]})
    assert first.status_code == 200 and first.json()["auth"]["lease_duration"] == 2
    token = first.json()["auth"]["client_token"]
    assert vault(bridge, "GET", f"{INNER}/data/1", token).status_code == 200
    time.sleep(4.5)
    assert refused_read(bridge, f"{INNER}/data/1", token)
    late = login(bridge, {"role_id": role["role_id"], "secret_id": role["secret_id"]})
    assert late.status_code == 400 and late.json() == {"errors": ["invalid role or secret ID"]}


def test_a_replaced_secret_id_is_refused(bridge: Bridge):
    old = approle(bridge, "rotated")
    new = approle(bridge, "rotated")
    assert new["role_id"] == old["role_id"] and new["secret_id"] != old["secret_id"]
    assert login(bridge, {"role_id": old["role_id"], "secret_id": old["secret_id"]}).status_code == 400
    assert login(bridge, {"role_id": new["role_id"], "secret_id": new["secret_id"]}).status_code == 200


@pytest.mark.parametrize("body", [
    b'{"role_id": "\\ud800", "secret_id": "x"}', b'{"role_id": "x", "secret_id": "\\udfff"}',
    b"[" * 100_000 + b"]" * 100_000, b'{"role_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"role_id": "' + b"r" * 100_000 + b'", "secret_id": "x"}', b'{"role_id": 1, "secret_id": ["x"]}',
    b"not json", b"\xff\xfe", b'"a string"', b"{}"], ids=[
    "surrogate-role", "surrogate-secret", "deep-array", "deep-role", "huge-role", "wrong-types", "not-json",
    "not-utf8", "not-object", "empty-object"])
def test_approle_login_answers_400_on_hostile_input_not_a_dropped_connection(bridge: Bridge, body: bytes):
    before = snapshot(bridge)
    status, answer = raw(bridge, "POST", "/v1/auth/approle/login", body=body)
    assert status in (400, 413), (status, answer)
    assert json.loads(answer)["errors"]
    assert snapshot(bridge) == before


# ------------------------------------------------------------------------------------------------- hostile values


@pytest.mark.parametrize("body", [
    b'{"data": {"k": "\\ud800"}}', b'{"data": {"\\ud800": "v"}}', b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"data": ' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}", b'{"data": {"k": "' + b"v" * 70_000 + b'"}}',
    b'{"data": {}}', b'{"data": "x"}', b'{"data": {"k": "v"}, "options": {"cas": -1}}',
    b'{"data": {"k": "v"}, "options": {"cas": true}}'], ids=[
    "surrogate-value", "surrogate-key", "deep-array", "deep-object-200", "70kb-value", "empty", "not-object",
    "negative-cas", "bool-cas"])
def test_hostile_writes_are_400_and_change_nothing(bridge: Bridge, body: bytes):
    token = db_token(bridge, INNER)
    before = snapshot(bridge)
    status, answer = raw(bridge, "POST", "/v1/kv/mdb/data/hostile", token, body=body)
    assert status == 400, (status, answer)
    assert json.loads(answer)["errors"]
    assert snapshot(bridge) == before


def test_zero_byte_and_oversized_imported_keys_are_refused(bridge: Bridge):
    before = snapshot(bridge)
    for versions in ([""], ["AAAAAAAAAAAAAAAAAAAAAA==", ""], ["A" * 24000]):
        r = api(bridge).post(f"{bridge.addr}/v1/keyring/import", json={"Mount": INNER, "Entries": [
            {"Id": "zero", "Versions": versions}]}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationException", r.text
    assert snapshot(bridge) == before


def test_a_replayed_or_revoked_database_token_is_refused(bridge: Bridge):
    r = api(bridge).post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": INNER}, timeout=10).json()
    assert vault(bridge, "GET", f"{INNER}/data/1", r["token"]).status_code == 200
    revoked = api(bridge).post(f"{bridge.addr}/v1/auth/token/revoke", json={"accessor": r["accessor"]}, timeout=10)
    assert revoked.status_code in (200, 204), revoked.text
    time.sleep(1.2)  # other workers' auth caches live at most auth_cache_seconds (1 s)
    assert refused_read(bridge, f"{INNER}/data/1", r["token"])


# ------------------------------------------------------------------------------------------------- the CLI


CLI = [sys.executable, "-m", "broker.cli"]


@pytest.mark.parametrize("fmt,content", [
    ("mariadb-file", b"9" * 5000 + b";" + b"00" * 32 + b"\n"),
    ("mysql-component-json", b'{"version": "1.0", "elements": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("mysql-component-json", b'{"version": "1.0", "elements": [{"data_id": "' + b"9" * 5000
     + b'", "user": "", "data": "' + b"00" * 32 + b'"}]}'),
    ("mysql-component-json", b'{"version": "1.0", "elements": [{"data_id": "1", "user": "", "data": ""}]}'),
    ("mariadb-file", b"\xff\xfe\x00garbage"),
], ids=["mariadb-5000-digit-id", "component-deep-json", "component-5000-digit-id", "component-empty-key",
        "mariadb-binary"])
def test_keyring_import_prints_a_clear_error_never_a_traceback(bridge: Bridge, tmp_path: Path, fmt: str,
                                                               content: bytes):
    before = snapshot(bridge)
    path = tmp_path / "keys"
    path.write_bytes(content)
    out = subprocess.run([*CLI, "keyring", "import", "--mount", INNER, "--format", fmt, "--file", str(path)],
                         env=bridge.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: "), out.stderr
    assert len(out.stderr.splitlines()) == 1 and len(out.stderr) < 400
    assert snapshot(bridge) == before
