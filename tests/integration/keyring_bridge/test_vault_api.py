"""The Vault-KV wire contract of the bridge, over real HTTP against `kms-broker serve --keyring-bind`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import requests

from tests.integration.keyring_bridge.support import Bridge

MOUNT = "kv/api"


@pytest.fixture(scope="module")
def db_token(bridge: Bridge) -> str:
    bridge.cli("keyring", "create", "--mount", MOUNT, "--id", "1", "--id", "2")
    return bridge.db_token(MOUNT)[0]


def get(bridge: Bridge, path: str, token: str, **kw) -> requests.Response:
    return requests.get(f"{bridge.vault}/v1/{path}", headers={"X-Vault-Token": token}, timeout=10, **kw)


def test_tune_answers_kv_version_2_at_top_level(bridge: Bridge, db_token: str):
    r = get(bridge, f"sys/mounts/{MOUNT}/tune", db_token)
    assert r.status_code == 200
    assert r.json()["options"] == {"version": "2"}


def test_each_version_is_exactly_itself_and_never_pruned(bridge: Bridge, db_token: str):
    for _ in range(2):
        bridge.cli("keyring", "rotate", "--mount", MOUNT, "--id", "2")
    latest = get(bridge, f"{MOUNT}/data/2", db_token).json()["data"]
    assert latest["metadata"]["version"] == 3 and isinstance(latest["metadata"]["version"], int)
    materials = {}
    for v in (1, 2, 3):
        body = get(bridge, f"{MOUNT}/data/2", db_token, params={"version": v}).json()["data"]
        assert body["metadata"]["version"] == v
        hexkey = body["data"]["data"]
        assert len(hexkey) == 64 and bytes.fromhex(hexkey)
        materials[v] = hexkey
    assert len(set(materials.values())) == 3
    assert materials[3] == latest["data"]["data"]
    assert get(bridge, f"{MOUNT}/data/2", db_token, params={"version": 4}).status_code == 404
    assert get(bridge, f"{MOUNT}/data/2", db_token, params={"version": "x"}).status_code == 400
    meta = get(bridge, f"{MOUNT}/metadata/2", db_token).json()["data"]
    assert meta["current_version"] == 3 and sorted(meta["versions"]) == ["1", "2", "3"] and meta["max_versions"] == 0
    # a delete is Vault's soft delete: the version reads 404, its material is kept, and it comes back
    deleted = requests.delete(f"{bridge.vault}/v1/{MOUNT}/data/2", headers={"X-Vault-Token": db_token}, timeout=10)
    assert deleted.status_code == 204
    assert get(bridge, f"{MOUNT}/data/2", db_token).status_code == 404
    assert get(bridge, f"{MOUNT}/data/2", db_token, params={"version": 1}).json()["data"]["data"]["data"] == materials[1]
    restored = requests.post(f"{bridge.vault}/v1/{MOUNT}/undelete/2", json={"versions": [3]},
                             headers={"X-Vault-Token": db_token}, timeout=10)
    assert restored.status_code == 204
    assert get(bridge, f"{MOUNT}/data/2", db_token).json()["data"]["data"]["data"] == materials[3]


def test_unknown_key_is_404_bad_or_foreign_token_is_dropped_and_audited(bridge: Bridge, db_token: str):
    """A refused key read is a dropped connection (mariadbd aborts on a 403 for a key it uses); the start-up tune
    call and writes still answer Vault's 403."""
    since = datetime.now(UTC).isoformat()
    missing = get(bridge, f"{MOUNT}/data/99", db_token)
    assert missing.status_code == 404 and missing.json() == {"errors": []}
    with pytest.raises(requests.ConnectionError):
        get(bridge, f"{MOUNT}/data/1", "kmsb.not-a-token")
    tune = get(bridge, f"sys/mounts/{MOUNT}/tune", "kmsb.not-a-token")
    assert tune.status_code == 403 and tune.json() == {"errors": ["permission denied"]}
    other = bridge.db_token("kv/other")[0]
    with pytest.raises(requests.ConnectionError):
        get(bridge, f"{MOUNT}/data/1", other)
    write = requests.post(f"{bridge.vault}/v1/{MOUNT}/data/1", json={"data": {"data": "00" * 32}},
                          headers={"X-Vault-Token": other}, timeout=10)
    assert write.status_code == 403
    records = [r for r in bridge.audit() if r["time"] >= since and r["front_door"] == "keyring"]
    outcomes = [(r["action"], r["outcome"], r["error_code"]) for r in records]
    assert ("keyring:Read", "error", "NotFoundException") in outcomes
    assert ("keyring:Read", "denied", "UnrecognizedClientException") in outcomes
    assert ("keyring:Read", "denied", "AccessDeniedException") in outcomes
    assert not any("kmsb." in json.dumps(r) for r in records), "no token in the audit log"


def test_kv2_writes_with_check_and_set_and_listing(bridge: Bridge, db_token: str):
    url = f"{bridge.vault}/v1/{MOUNT}/data/percona/uuid_INNODBKey-1"
    h = {"X-Vault-Token": db_token}
    first = requests.post(url, json={"data": {"type": "AES", "value": "c2VjcmV0"}, "options": {"cas": 0}}, headers=h)
    assert first.status_code == 200 and first.json()["data"]["version"] == 1
    clash = requests.post(url, json={"data": {"type": "AES", "value": "b3RoZXI="}, "options": {"cas": 0}}, headers=h)
    assert clash.status_code == 400
    second = requests.put(url, json={"data": {"type": "AES", "value": "b3RoZXI="}}, headers=h)
    assert second.json()["data"]["version"] == 2
    assert get(bridge, f"{MOUNT}/data/percona/uuid_INNODBKey-1", db_token).json()["data"]["data"] == {
        "type": "AES", "value": "b3RoZXI="}
    listed = requests.request("LIST", f"{bridge.vault}/v1/{MOUNT}/metadata/percona", headers=h).json()
    assert listed["data"]["keys"] == ["uuid_INNODBKey-1"]
    top = get(bridge, f"{MOUNT}/metadata/", db_token, params={"list": "true"}).json()
    assert "percona/" in top["data"]["keys"] and "1" in top["data"]["keys"]


def test_kv1_mount_reads_and_writes(bridge: Bridge):
    bridge.cli("keyring", "mount", "--mount", "mysql-v1", "--kv-version", "1")
    token = bridge.db_token("mysql-v1")[0]
    h = {"X-Vault-Token": token}
    assert get(bridge, "sys/mounts/mysql-v1/tune", token).json()["options"]["version"] == "1"
    # Mount registrations are re-read every few seconds by each bridge worker.
    import time
    deadline = time.monotonic() + 10
    while True:
        put = requests.put(f"{bridge.vault}/v1/mysql-v1/server1/key_a", json={"key": "AAAA", "type": "AES"}, headers=h)
        if put.status_code == 204 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert put.status_code == 204
    r = get(bridge, "mysql-v1/server1/key_a", token)
    assert r.status_code == 200 and r.json()["data"] == {"key": "AAAA", "type": "AES"}
    assert requests.request("LIST", f"{bridge.vault}/v1/mysql-v1/server1", headers=h).json()["data"]["keys"] == [
        "key_a"]


def test_approle_login_answers_as_vault(bridge: Bridge, db_token: str):
    role = json.loads(bridge.cli("keyring", "approle", "create", "--mount", MOUNT, "--role", "mysql-a",
                                 "--output", "json").stdout)
    login = requests.post(f"{bridge.vault}/v1/auth/approle/login",
                          json={"role_id": role["role_id"], "secret_id": role["secret_id"]}, timeout=10)
    assert login.status_code == 200
    auth = login.json()["auth"]
    assert auth["client_token"] and auth["policies"] == [f"keyring:{MOUNT}"]
    assert get(bridge, f"{MOUNT}/data/1", auth["client_token"]).status_code == 200
    with pytest.raises(requests.ConnectionError):  # another mount's key: refused, as a dropped connection
        get(bridge, "kv/other/data/1", auth["client_token"])
    wrong = requests.post(f"{bridge.vault}/v1/auth/approle/login",
                          json={"role_id": role["role_id"], "secret_id": "nope"}, timeout=10)
    assert wrong.status_code == 400


def test_material_is_stored_only_sealed(bridge: Bridge, db_token: str):
    hexkey = get(bridge, f"{MOUNT}/data/1", db_token).json()["data"]["data"]["data"]
    raw = (bridge.data_dir / "broker.db").read_bytes()
    wal = bridge.data_dir / "broker.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert hexkey.encode() not in raw and bytes.fromhex(hexkey) not in raw
    con = sqlite3.connect(f"file:{bridge.data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        origins = {r[0] for r in con.execute("select origin from keyring_versions where mount = ?", (MOUNT,))}
    finally:
        con.close()
    assert "hsm" in origins


_ROTATE_DUE_AT = """
import json, sys
from datetime import UTC, datetime, timedelta
from broker.app import SYSTEM
from broker.service import RequestContext
from broker.settings import load_settings
from keyring_bridge.vault_app import create_bridge_app
app = create_bridge_app(load_settings(sys.argv[1]))
ctx = RequestContext(SYSTEM, front_door="jobs")
print(json.dumps([app.extensions["kms"].keyring.rotate_due(ctx, now=datetime.now(UTC) + timedelta(minutes=m))
                  for m in map(int, sys.argv[2:])]))
"""


def _rotate_due_at(bridge: Bridge, *minutes: int) -> list[list[str]]:
    """rotate_due at future instants, in a fresh process: SoftHSM reads its token config once per process, and
    this test process already holds another token's."""
    out = subprocess.run([sys.executable, "-c", _ROTATE_DUE_AT, str(bridge.data_dir), *map(str, minutes)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_scheduled_rotation_is_due_only_after_its_period(bridge: Bridge, db_token: str):
    bridge.cli("keyring", "schedule", "--mount", MOUNT, "--id", "1", "--period", "1h")
    assert "nothing due" in bridge.cli("keyring", "rotate-due").stdout
    assert _rotate_due_at(bridge, 30, 120) == [[], [f"{MOUNT}/1"]]
    assert get(bridge, f"{MOUNT}/data/1", db_token).json()["data"]["metadata"]["version"] == 2
    # The next rotation is one period after this one.
    assert _rotate_due_at(bridge, 30) == [[]]


def test_admin_routes_are_in_the_openapi_document(bridge: Bridge):
    doc = requests.get(f"{bridge.addr}/v1/openapi.json", headers={"X-KMSB-Token": bridge.root_token}, timeout=10)
    paths = doc.json()["paths"]
    for path in ("/v1/keyring/entries", "/v1/keyring/entries/rotate", "/v1/keyring/import", "/v1/keyring/export",
                 "/v1/keyring/tokens", "/v1/keyring/approles", "/v1/keyring/rotate-due"):
        assert path in paths, path


def test_a_database_token_cannot_mint_tokens_or_list_other_mounts(bridge: Bridge, db_token: str):
    s = requests.Session()
    s.headers["X-KMSB-Token"] = db_token
    assert s.post(f"{bridge.addr}/v1/keyring/tokens", json={"Mount": MOUNT}, timeout=10).status_code == 403
    assert s.get(f"{bridge.addr}/v1/keyring/entries", timeout=10).status_code == 403
    own = s.get(f"{bridge.addr}/v1/keyring/entries", params={"mount": MOUNT}, timeout=10)
    assert own.status_code == 200 and {e["Mount"] for e in own.json()["Entries"]} == {MOUNT}
    assert s.get(f"{bridge.addr}/v1/keyring/entries", params={"mount": "kv/other"}, timeout=10).status_code == 403
