"""Standard Vault clients at home on the keyring bridge: hvac (the Python Vault client) against a real bridge over
HTTP — token lookup/renew, sys reads, KV v2 (read, write, list, metadata, config, delete/undelete, destroy through a
quorum-approved request), KV v1, Vault's error bodies, and the attacks on the new surface."""

from __future__ import annotations

import time

import hvac
import hvac.exceptions
import pytest
import requests

from tests.integration.keyring_bridge.support import Bridge

MOUNT = "kv/hvac"
V1_MOUNT = "hvac-v1"


def client(bridge: Bridge, token: str | None) -> hvac.Client:
    return hvac.Client(url=bridge.vault, token=token, timeout=10)


def raw(bridge: Bridge, method: str, path: str, token: str, **kw) -> requests.Response:
    return requests.request(method, f"{bridge.vault}/v1/{path}", headers={"X-Vault-Token": token}, timeout=10, **kw)


@pytest.fixture(scope="module")
def db(bridge: Bridge) -> hvac.Client:
    bridge.cli("keyring", "mount", "--mount", MOUNT, "--kv-version", "2")
    return client(bridge, bridge.db_token(MOUNT)[0])


@pytest.fixture(scope="module")
def root(bridge: Bridge) -> hvac.Client:
    return client(bridge, bridge.root_token)


def api(bridge: Bridge, method: str, path: str, token: str, **kw) -> requests.Response:
    return requests.request(method, f"{bridge.addr}/v1/{path}", headers={"X-KMSB-Token": token}, timeout=10, **kw)


def named_root_token(bridge: Bridge, name: str, **extra) -> str:
    r = api(bridge, "POST", "auth/token/create", bridge.root_token,
            json={"policies": ["root"], "display_name": name, **extra})
    assert r.status_code == 200, r.text
    return r.json()["auth"]["client_token"]


def write(c: hvac.Client, path: str, secret: dict, mount: str = MOUNT) -> int:
    return c.secrets.kv.v2.create_or_update_secret(path=path, secret=secret, mount_point=mount)["data"]["version"]


def read(c: hvac.Client, path: str, version: int | None = None, mount: str = MOUNT) -> dict:
    return c.secrets.kv.v2.read_secret_version(path=path, version=version, mount_point=mount,
                                               raise_on_deleted_version=True)["data"]


# ------------------------------------------------------------------------------------------------ tokens


def test_is_authenticated_and_lookup_self(bridge: Bridge, db: hvac.Client):
    assert db.is_authenticated() is True
    assert client(bridge, "kmsb.not-a-token").is_authenticated() is False
    data = db.lookup_token()["data"]
    assert data["policies"] == [f"keyring:{MOUNT}"] and data["id"] == db.token and data["accessor"]
    assert data["type"] == "service" and data["renewable"] is False and data["num_uses"] == 0


def test_renew_self(bridge: Bridge, db: hvac.Client):
    # a database token never expires unless asked: renewing it changes nothing and is not an error
    assert db.auth.token.renew_self()["auth"]["client_token"] == db.token
    # a renewable token with a TTL is extended; a database token with a TTL is not renewable (Vault's 400)
    renewable = client(bridge, named_root_token(bridge, "renewer", ttl="1h", explicit_max_ttl="3h"))
    auth = renewable.auth.token.renew_self(increment="2h")["auth"]
    assert auth["renewable"] is True and 3600 < auth["lease_duration"] <= 7200
    minted = api(bridge, "POST", "keyring/tokens", bridge.root_token, json={"Mount": MOUNT, "TtlSeconds": 3600})
    assert minted.status_code in (200, 201), minted.text
    short = client(bridge, minted.json()["token"])
    with pytest.raises(hvac.exceptions.InvalidRequest):
        short.auth.token.renew_self()
    assert client(bridge, "kmsb.nope").adapter.post("/v1/auth/token/renew-self", raise_exception=False) \
        .status_code == 403


# ------------------------------------------------------------------------------------------------ sys


def test_sys_seal_status_health_and_mounts(bridge: Bridge, db: hvac.Client, root: hvac.Client):
    seal = db.sys.read_seal_status()
    assert seal["sealed"] is False and seal["initialized"] is True and seal["type"] == "pkcs11"
    health = db.sys.read_health_status(method="GET")
    assert health["initialized"] is True and health["sealed"] is False and health["standby"] is False
    assert requests.head(f"{bridge.vault}/v1/sys/health", timeout=10).status_code == 200
    assert requests.get(f"{bridge.vault}/v1/sys/health", params={"activecode": "299"}, timeout=10).status_code == 299
    assert requests.get(f"{bridge.vault}/v1/sys/health", params={"activecode": "x"}, timeout=10).status_code == 400
    mounts = db.sys.list_mounted_secrets_engines()
    assert set(mounts["data"]) == {f"{MOUNT}/"}  # a database token sees its own mount only
    assert mounts["data"][f"{MOUNT}/"]["type"] == "kv" and mounts["data"][f"{MOUNT}/"]["options"] == {"version": "2"}
    assert f"{MOUNT}/" in root.sys.list_mounted_secrets_engines()["data"]
    with pytest.raises(hvac.exceptions.Forbidden):
        client(bridge, "kmsb.nope").sys.list_mounted_secrets_engines()


# ------------------------------------------------------------------------------------------------ KV v2


def test_kv2_read_write_list_metadata_and_config(bridge: Bridge, db: hvac.Client, root: hvac.Client):
    assert write(db, "app/one", {"k": "v1"}) == 1
    assert write(db, "app/one", {"k": "v2"}) == 2
    with pytest.raises(hvac.exceptions.InvalidRequest):  # check-and-set
        db.secrets.kv.v2.create_or_update_secret(path="app/one", secret={"k": "x"}, cas=1, mount_point=MOUNT)
    assert read(db, "app/one")["data"] == {"k": "v2"}
    assert read(db, "app/one", 1)["data"] == {"k": "v1"}
    assert db.secrets.kv.v2.list_secrets(path="app", mount_point=MOUNT)["data"]["keys"] == ["one"]
    db.secrets.kv.v2.update_metadata(path="app/one", custom_metadata={"owner": "db1"}, mount_point=MOUNT)
    meta = db.secrets.kv.v2.read_secret_metadata(path="app/one", mount_point=MOUNT)["data"]
    assert meta["current_version"] == 2 and meta["custom_metadata"] == {"owner": "db1"}
    assert meta["max_versions"] == 0 and set(meta["versions"]) == {"1", "2"}
    with pytest.raises(hvac.exceptions.InvalidRequest):  # versions are never pruned
        db.secrets.kv.v2.update_metadata(path="app/one", max_versions=1, mount_point=MOUNT)
    assert db.secrets.kv.v2.read_configuration(mount_point=MOUNT)["data"] == {
        "cas_required": False, "delete_version_after": "0s", "max_versions": 0}
    root.secrets.kv.v2.configure(max_versions=0, mount_point=MOUNT)  # the values it keeps anyway
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root.secrets.kv.v2.configure(max_versions=10, mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.Forbidden):  # configuring a mount is an administrator's
        db.secrets.kv.v2.configure(max_versions=0, mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(db, "app/none")


def test_kv2_soft_delete_and_undelete_keep_the_material(bridge: Bridge, db: hvac.Client):
    write(db, "soft", {"k": "a"})
    write(db, "soft", {"k": "b"})
    db.secrets.kv.v2.delete_latest_version_of_secret(path="soft", mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath) as gone:
        read(db, "soft")
    assert gone.value.json["data"]["data"] is None and gone.value.json["data"]["metadata"]["deletion_time"]
    deleted = db.secrets.kv.v2.read_secret_version(path="soft", mount_point=MOUNT, raise_on_deleted_version=False)
    assert deleted["data"]["metadata"]["version"] == 2 and deleted["data"]["metadata"]["destroyed"] is False
    assert read(db, "soft", 1)["data"] == {"k": "a"}  # other versions are untouched
    db.secrets.kv.v2.undelete_secret_versions(path="soft", versions=[2], mount_point=MOUNT)
    assert read(db, "soft")["data"] == {"k": "b"}
    db.secrets.kv.v2.delete_secret_versions(path="soft", versions=[1], mount_point=MOUNT)
    meta = db.secrets.kv.v2.read_secret_metadata(path="soft", mount_point=MOUNT)["data"]["versions"]
    assert meta["1"]["deletion_time"] and not meta["2"]["deletion_time"]
    db.secrets.kv.v2.delete_metadata_and_all_versions(path="soft", mount_point=MOUNT)
    for version in (1, 2):
        with pytest.raises(hvac.exceptions.InvalidPath):
            read(db, "soft", version)
    db.secrets.kv.v2.undelete_secret_versions(path="soft", versions=[1, 2], mount_point=MOUNT)
    assert read(db, "soft", 1)["data"] == {"k": "a"} and read(db, "soft")["data"] == {"k": "b"}


def test_kv2_destroy_needs_an_approved_request(bridge: Bridge, root: hvac.Client, db: hvac.Client):
    write(db, "doomed", {"k": "x"})
    write(db, "doomed", {"k": "y"})
    # a database token may not file the request (it holds no broker:RequestApproval)
    with pytest.raises(hvac.exceptions.Forbidden):
        db.secrets.kv.v2.destroy_secret_versions(path="doomed", versions=[1], mount_point=MOUNT)
    # without designated approvers nothing can be requested
    first = raw(bridge, "PUT", f"{MOUNT}/destroy/doomed", bridge.root_token, json={"versions": [1]})
    if first.status_code == 400:
        assert "no approvers" in first.json()["errors"][0]
    approvers = ["destroy-approver-a", "destroy-approver-b"]
    rule = api(bridge, "PUT", "approvals/rules/keyring-destroy", bridge.root_token,
               json={"Approvers": approvers, "Required": 2, "CoolingOffSeconds": 0})
    assert rule.status_code == 200, rule.text
    requested = root.secrets.kv.v2.destroy_secret_versions(path="doomed", versions=[1], mount_point=MOUNT)
    assert requested.status_code == 202
    request_id = requested.json()["data"]["approval_request_id"]
    assert requested.json()["data"]["state"] == "pending" and requested.json()["warnings"]
    assert read(db, "doomed", 1)["data"] == {"k": "x"}  # nothing destroyed yet
    executed = api(bridge, "POST", f"approvals/{request_id}/execute", bridge.root_token)
    assert executed.status_code == 409 or executed.status_code == 400, executed.text  # not approved
    for name in approvers:
        r = api(bridge, "POST", f"approvals/{request_id}/approve", named_root_token(bridge, name), json={})
        assert r.status_code == 200, r.text
    executed = api(bridge, "POST", f"approvals/{request_id}/execute", bridge.root_token)
    assert executed.status_code == 200, executed.text
    assert executed.json()["Result"]["Destroyed"] == [1]
    with pytest.raises(hvac.exceptions.InvalidPath) as gone:
        read(db, "doomed", 1)
    assert gone.value.json["data"]["metadata"]["destroyed"] is True
    meta = db.secrets.kv.v2.read_secret_metadata(path="doomed", mount_point=MOUNT)["data"]["versions"]
    assert meta["1"]["destroyed"] is True and meta["2"]["destroyed"] is False
    db.secrets.kv.v2.undelete_secret_versions(path="doomed", versions=[1], mount_point=MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):  # destroyed stays destroyed
        read(db, "doomed", 1)
    assert read(db, "doomed")["data"] == {"k": "y"}
    again = api(bridge, "POST", f"approvals/{request_id}/execute", bridge.root_token)
    assert again.status_code in (400, 409)  # at most once


# ------------------------------------------------------------------------------------------------ KV v1, errors


def test_kv1_through_hvac(bridge: Bridge):
    bridge.cli("keyring", "mount", "--mount", V1_MOUNT, "--kv-version", "1")
    v1 = client(bridge, bridge.db_token(V1_MOUNT)[0])
    deadline = time.monotonic() + 10
    while True:  # mount registrations are re-read every few seconds by each bridge worker
        try:
            v1.secrets.kv.v1.create_or_update_secret(path="srv/key_a", secret={"key": "AAAA"}, mount_point=V1_MOUNT)
            break
        except hvac.exceptions.VaultError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert v1.secrets.kv.v1.read_secret(path="srv/key_a", mount_point=V1_MOUNT)["data"] == {"key": "AAAA"}
    assert v1.secrets.kv.v1.list_secrets(path="srv", mount_point=V1_MOUNT)["data"]["keys"] == ["key_a"]
    v1.secrets.kv.v1.delete_secret(path="srv/key_a", mount_point=V1_MOUNT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        v1.secrets.kv.v1.read_secret(path="srv/key_a", mount_point=V1_MOUNT)
    r = raw(bridge, "GET", f"{V1_MOUNT}/srv/nothing", v1.token)
    assert (r.status_code, r.json()) == (404, {"errors": []})


def test_error_bodies_have_vault_shape(bridge: Bridge, db: hvac.Client):
    missing = raw(bridge, "GET", f"{MOUNT}/data/none", db.token)
    assert (missing.status_code, missing.json()) == (404, {"errors": []})
    denied = raw(bridge, "GET", f"sys/mounts/{MOUNT}/tune", "kmsb.nope")
    assert (denied.status_code, denied.json()) == (403, {"errors": ["permission denied"]})
    denied_write = raw(bridge, "POST", f"{MOUNT}/data/x", "kmsb.nope", json={"data": {"k": "v"}})
    assert (denied_write.status_code, denied_write.json()) == (403, {"errors": ["permission denied"]})
    # A refused key read is a dropped connection, never a status (a running mariadbd aborts on any non-2xx).
    with pytest.raises(requests.ConnectionError):
        raw(bridge, "GET", f"{MOUNT}/data/none", "kmsb.nope")
    empty = raw(bridge, "POST", f"{MOUNT}/data/x", db.token, json={"options": {}})
    assert (empty.status_code, empty.json()) == (400, {"errors": ["no data provided"]})
    bad = raw(bridge, "POST", f"{MOUNT}/data/x", db.token, data=b"{not json")
    assert bad.status_code == 400 and list(bad.json()) == ["errors"]
    patch = raw(bridge, "PATCH", f"{MOUNT}/data/x", db.token, json={"data": {}})
    assert patch.status_code == 405 and list(patch.json()) == ["errors"]


# ------------------------------------------------------------------------------------------------ attacks


def test_another_mounts_token_cannot_delete_undelete_or_destroy(bridge: Bridge, db: hvac.Client):
    write(db, "mine", {"k": "v"})
    other = client(bridge, bridge.db_token("kv/hvac-other")[0])
    for call in (lambda: other.secrets.kv.v2.delete_latest_version_of_secret(path="mine", mount_point=MOUNT),
                 lambda: other.secrets.kv.v2.delete_secret_versions(path="mine", versions=[1], mount_point=MOUNT),
                 lambda: other.secrets.kv.v2.undelete_secret_versions(path="mine", versions=[1], mount_point=MOUNT),
                 lambda: other.secrets.kv.v2.destroy_secret_versions(path="mine", versions=[1], mount_point=MOUNT),
                 lambda: other.secrets.kv.v2.delete_metadata_and_all_versions(path="mine", mount_point=MOUNT),
                 lambda: other.secrets.kv.v2.update_metadata(path="mine", custom_metadata={"a": "b"},
                                                             mount_point=MOUNT)):
        with pytest.raises(hvac.exceptions.Forbidden):
            call()
    assert read(db, "mine")["data"] == {"k": "v"}
    assert set(other.sys.list_mounted_secrets_engines()["data"]) <= {"kv/hvac-other/"}


@pytest.mark.parametrize("versions", [None, [], ["1"], [0], [-1], [True], [2**40], "1", {"1": 1}, list(range(2000))])
def test_hostile_version_lists_change_nothing(bridge: Bridge, db: hvac.Client, versions):
    write(db, "hostile", {"k": "v"})
    before = db.secrets.kv.v2.read_secret_metadata(path="hostile", mount_point=MOUNT)["data"]
    for op in ("delete", "undelete"):
        body = {} if versions is None else {"versions": versions}
        r = raw(bridge, "POST", f"{MOUNT}/{op}/hostile", db.token, json=body)
        assert r.status_code == 400 and list(r.json()) == ["errors"], (op, r.text)
    assert db.secrets.kv.v2.read_secret_metadata(path="hostile", mount_point=MOUNT)["data"] == before


@pytest.mark.parametrize("path", [f"{MOUNT}/delete/../x", f"{MOUNT}/undelete/a//b", f"{MOUNT}/destroy/%2e%2e"])
def test_hostile_paths(bridge: Bridge, db: hvac.Client, path):
    r = raw(bridge, "POST", path, db.token, json={"versions": [1]})
    assert r.status_code in (400, 403, 404) and list(r.json()) == ["errors"]  # destroy: 403 (no approvals)
