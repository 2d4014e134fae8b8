"""The keyring bridge's read hot path.

- One store round trip per key read, on SQLite and PostgreSQL, answering exactly what the two-read path answered
  (latest, version N, no such version, no such entry, soft-deleted, destroyed).
- The key read mariadbd makes (`GET /v1/<mount>/data/<id>[?version=N]`) served without Flask's request cycle: every
  request, hostile ones included, gets the same status, headers, body and audit record as through the Flask view,
  and anything that is not plainly such a read still goes through Flask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import Client

from broker import errors
from broker.app import SYSTEM
from broker.audit import AuditLog
from broker.auth.tokens import TokenAuth
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.settings import Settings
from broker.store import Store
from keyring_bridge.keyring import DeletedVersion, KeyringService, secret_material
from keyring_bridge.repository import KeyringRepository
from keyring_bridge.vault_app import _Dropper, _FastRead, create_bridge_app

MOUNT = "kv/read-path"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keyring.db'}"
    return request.getfixturevalue("postgres_url")


def _append(repo: KeyringRepository, entry_id: str, current: int, sealed: str) -> None:
    repo.append(MOUNT, entry_id, current=current, sealed=sealed, origin="written", now=datetime.now(UTC),
                custom_metadata={"owner": "db1"} if current == 0 else None)


def test_one_statement_reads_entry_and_version_on_both_stores(store_url: str) -> None:
    store = Store(store_url)
    store.migrate()
    try:
        repo = KeyringRepository(store)
        entry_id = f"e-{store_url[:6]}"
        for current, sealed in enumerate(("s1", "s2", "s3")):
            _append(repo, entry_id, current, sealed)
        repo.set_deleted(MOUNT, entry_id, [2], datetime.now(UTC))

        latest = repo.read(MOUNT, entry_id, None)
        assert latest is not None and (latest.latest_version, latest.wanted) == (3, 3)
        assert latest.version is not None and latest.version.sealed == "s3"
        assert latest.custom_metadata == {"owner": "db1"}

        first = repo.read(MOUNT, entry_id, 1)
        assert first is not None and first.wanted == 1 and first.version is not None
        assert first.version.sealed == "s1" and first.version.deleted_at is None and not first.version.destroyed

        deleted = repo.read(MOUNT, entry_id, 2)
        assert deleted is not None and deleted.version is not None and deleted.version.deleted_at is not None

        beyond = repo.read(MOUNT, entry_id, 4)
        assert beyond is not None and beyond.wanted == 4 and beyond.version is None
        assert repo.read(MOUNT, "no-such-entry", None) is None
        assert repo.read(MOUNT, "no-such-entry", 1) is None
        assert repo.read("kv", f"read-path/{entry_id}", None) is None  # a nesting name is another entry

        repo.destroy(MOUNT, entry_id, [1], datetime.now(UTC))
        gone = repo.read(MOUNT, entry_id, 1)
        assert gone is not None and gone.version is not None and gone.version.destroyed
        assert gone.version.sealed == ""
    finally:
        store.dispose()


@pytest.fixture
def keyring(key_service: KeyService) -> Iterator[KeyringService]:
    yield KeyringService(key_service, key_service.root, TokenAuth(key_service.store))


def test_service_read_answers_as_before(keyring: KeyringService) -> None:
    ctx = RequestContext(SYSTEM)
    keyring.create(ctx, MOUNT, "1")
    keyring.rotate(ctx, MOUNT, "1")
    v1, v2 = keyring.read(ctx, MOUNT, "1", 1), keyring.read(ctx, MOUNT, "1")
    assert (v1.version, v2.version) == (1, 2)
    assert len(secret_material(v1.data) or b"") == 32 and v1.data != v2.data
    with pytest.raises(errors.NotFound, match="has no version 3"):
        keyring.read(ctx, MOUNT, "1", 3)
    with pytest.raises(errors.NotFound, match="not found"):
        keyring.read(ctx, MOUNT, "2")
    keyring.delete_versions(ctx, MOUNT, "1", [1])
    with pytest.raises(DeletedVersion) as gone:
        keyring.read(ctx, MOUNT, "1", 1)
    assert gone.value.version == 1 and gone.value.deleted_at is not None and not gone.value.destroyed
    assert keyring.read(ctx, MOUNT, "1").version == 2


# ------------------------------------------------------------------------------------------------- the fast key read


@dataclass
class Bridged:
    app: Flask
    flask_only: Client  # the same app with the fast key read taken out: what every read went through before
    keyring: KeyringService
    audit: Path
    token: str
    accessor: str
    store_url: str


@pytest.fixture
def bridged(key_service: KeyService, tmp_path: Path) -> Bridged:
    settings = Settings(data_dir=tmp_path / "data", providers={"hsm": {"kind": "pkcs11"}})  # not opened: service= given
    app = create_bridge_app(settings, service=key_service)
    keyring: KeyringService = app.extensions["kms"].keyring
    ctx = RequestContext(SYSTEM)
    keyring.create_mount(ctx, MOUNT, 2)
    keyring.create(ctx, MOUNT, "1")
    keyring.rotate(ctx, MOUNT, "1")
    keyring.create(ctx, MOUNT, "gone")
    keyring.rotate(ctx, MOUNT, "gone")
    keyring.delete_versions(ctx, MOUNT, "gone", [1])
    keyring.create(ctx, "kv/other", "1")
    fast = app.wsgi_app.app  # _Dropper -> _FastRead -> Flask
    issued = keyring.create_token(ctx, MOUNT)
    return Bridged(app, Client(_Dropper(fast._flask)), keyring, tmp_path / "data" / "audit.jsonl", issued.token,
                   issued.accessor, key_service.store.url)


def audit_tail(bridged: Bridged, seen: int) -> list[dict]:
    with open(bridged.audit) as f:
        records = [json.loads(line) for line in f][seen:]
    return [{k: r.get(k) for k in ("action", "outcome", "error_code", "principal", "auth_method", "key_version",
                                   "front_door", "source_ip")} for r in records]


def answer(client: Client, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], object]:
    r = client.get(path, headers=headers)
    body: object = r.get_data()
    if r.mimetype == "application/json":
        body = json.loads(body)
        assert isinstance(body, dict)
        body.pop("request_id", None)
    return r.status_code, dict(r.headers), body


def test_fast_read_answers_and_audits_exactly_as_the_flask_view(bridged: Bridged) -> None:
    token, foreign = bridged.token, bridged.keyring.create_token(RequestContext(SYSTEM), "kv/other").token
    ok, bearer = {"X-Vault-Token": token, "Accept": "*/*"}, {"Authorization": f"Bearer {token}"}
    fast_client = Client(bridged.app.wsgi_app)
    cases = [
        (f"/v1/{MOUNT}/data/1", ok), (f"/v1/{MOUNT}/data/1?version=1", ok), (f"/v1/{MOUNT}/data/1?version=0", ok),
        (f"/v1/{MOUNT}/data/1?version=", ok), (f"/v1/{MOUNT}/data/1/", ok), (f"/v1/{MOUNT}/data/1", bearer),
        (f"/v1/{MOUNT}/data/1?version=00", ok),  # 400: not a positive integer
        (f"/v1/{MOUNT}/data/1?version=3", ok), (f"/v1/{MOUNT}/data/1?version=12345678901", ok),  # 404, 400
        (f"/v1/{MOUNT}/data/nope", ok), (f"/v1/{MOUNT}/data/gone?version=1", ok),  # 404, 404 with its metadata
        (f"/v1/{MOUNT}/data/a/../1", ok), (f"/v1/{MOUNT}/data/./1", ok), (f"/v1/{MOUNT}//data/1", ok),
        (f"/v1/{MOUNT}/data/" + "x" * 100_000, ok), (f"/v1/{MOUNT}/data/%ED%A0%80", ok),  # lone surrogate bytes
        (f"/v1/{MOUNT}/data/%FF%FE", ok), ("/v1/kv/other/data/1", ok),  # another mount's key: dropped
        (f"/v1/{MOUNT}/data/1", {}), (f"/v1/{MOUNT}/data/1", {"X-Vault-Token": "hvs.forged"}),
        (f"/v1/{MOUNT}/data/1", {"X-Vault-Token": foreign}), (f"/v1/{MOUNT}/data/1", {"Authorization": token}),
        ("/v1/kv/unregistered/data/1", ok), (f"/v1/{MOUNT}/data/*", ok), (f"/v1/{MOUNT}/data/1*", ok),
    ]
    for path, headers in cases:
        seen = len(bridged.audit.read_text().splitlines())
        fast = answer(fast_client, path, headers)
        fast_audit = audit_tail(bridged, seen)
        seen += len(fast_audit)
        slow = answer(bridged.flask_only, path, headers)
        assert fast == slow, path[:80]
        assert fast_audit == audit_tail(bridged, seen) and len(fast_audit) == 1, path[:80]
        if fast[0] == 200:
            assert fast[1]["Cache-Control"] == "no-store" and fast[1]["Content-Type"] == "application/json"
    assert answer(fast_client, f"/v1/{MOUNT}/data/1", ok)[2]["data"]["metadata"]["version"] == 2  # type: ignore
    assert answer(fast_client, f"/v1/{MOUNT}/data/1", {})[1].get("X-Kmsb-Dropped") == "1"


def test_only_plain_key_reads_take_the_fast_path(bridged: Bridged) -> None:
    fast: _FastRead = bridged.app.wsgi_app.app
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/v1/{MOUNT}/data/1", "QUERY_STRING": ""}
    assert fast.route(base) == (MOUNT, "1", "")
    assert fast.route({**base, "QUERY_STRING": "version=2"}) == (MOUNT, "1", "version=2")
    for changed in ({"REQUEST_METHOD": "HEAD"}, {"REQUEST_METHOD": "POST"}, {"REQUEST_METHOD": "LIST"},
                    {"QUERY_STRING": "list=true"}, {"QUERY_STRING": "version=1&version=2"},
                    {"QUERY_STRING": "version=%31"}, {"CONTENT_LENGTH": "5"}, {"HTTP_TRANSFER_ENCODING": "chunked"},
                    {"PATH_INFO": f"/v1/{MOUNT}/metadata/1"}, {"PATH_INFO": f"/v1/{MOUNT}/data/"},
                    {"PATH_INFO": f"/v1/sys/mounts/{MOUNT}/tune"}, {"PATH_INFO": "/v1/sys/data/1"},
                    {"PATH_INFO": "/v1/auth/data/1"}, {"PATH_INFO": "/v1//kv/data/1"},
                    {"PATH_INFO": f"/v1/{MOUNT}/data/a\nb"}, {"PATH_INFO": f"/v1/{MOUNT}/data/a\x7fb"},
                    {"PATH_INFO": "/v2/kv/data/1"}, {"PATH_INFO": f"/v1/{MOUNT}/data/\u0100"}):
        assert fast.route({**base, **changed}) is None, changed


def read_once(bridged: Bridged, query: str = "") -> tuple[int, object]:
    status, headers, body = answer(Client(bridged.app.wsgi_app), f"/v1/{MOUNT}/data/1{query}",
                                   {"X-Vault-Token": bridged.token})
    return (-1 if headers.get("X-Kmsb-Dropped") == "1" else status), body


def test_fast_read_refuses_a_token_revoked_here_at_once(bridged: Bridged) -> None:
    assert read_once(bridged)[0] == 200
    bridged.app.extensions["kms"].identity.token_store.revoke_accessor(bridged.accessor)
    assert read_once(bridged)[0] == -1  # dropped, never an answer
    assert audit_tail(bridged, -1)[0]["outcome"] == "denied"


def test_fast_read_refuses_a_token_revoked_by_another_process_within_the_bound(bridged: Bridged) -> None:
    assert read_once(bridged)[0] == 200  # the token is now in this process's cache (auth_cache_seconds = 1)
    other = Store(bridged.store_url)
    try:
        TokenAuth(other).revoke_accessor(bridged.accessor)
    finally:
        other.dispose()
    revoked_at = time.monotonic()
    while read_once(bridged)[0] == 200:
        assert time.monotonic() - revoked_at < 1.0 + 0.25, "a revoked token still read a key past the bound"
        time.sleep(0.05)
    assert read_once(bridged)[0] == -1
    assert audit_tail(bridged, -1)[0]["outcome"] == "denied"


def test_fast_read_sees_another_process_change_at_once(bridged: Bridged, hsm_provider, tmp_path: Path) -> None:
    """A rotation, a soft delete and an undelete made by another process (its own Store, KeyService and
    KeyringService) are what the very next read answers (test_read_cache.py: the same with rows kept)."""
    status, body = read_once(bridged)
    assert status == 200 and body["data"]["metadata"]["version"] == 2  # type: ignore[index]
    store = Store(bridged.store_url)
    audit = AuditLog(tmp_path / "other-audit.jsonl", hsm_provider.root_of_trust().audit_hmac)
    try:
        keys = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
        other, ctx = KeyringService(keys, keys.root, TokenAuth(store)), RequestContext(SYSTEM)
        other.rotate(ctx, MOUNT, "1")
        status, body = read_once(bridged)
        assert status == 200 and body["data"]["metadata"]["version"] == 3  # type: ignore[index]
        other.delete_versions(ctx, MOUNT, "1", [3])
        status, body = read_once(bridged)
        assert status == 404 and body["data"]["metadata"]["deletion_time"]  # type: ignore[index]
        assert read_once(bridged, "?version=2")[0] == 200
        other.undelete_versions(ctx, MOUNT, "1", [3])
        assert read_once(bridged)[0] == 200
    finally:
        audit.close()
        store.dispose()


# ------------------------------------------------------------------------------------------------- the listener


def test_fast_read_never_answers_5xx_on_a_bug(bridged: Bridged, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure the mapping does not cover (a bug rendering the answer, a bug routing) drops the connection, as
    the Flask view does: mariadbd aborts on a 5xx for a key it uses and survives a dropped connection."""
    fast: _FastRead = bridged.app.wsgi_app.app
    client, path, headers = Client(bridged.app.wsgi_app), f"/v1/{MOUNT}/data/1", {"X-Vault-Token": bridged.token}

    def broken(*_a: object, **_k: object) -> str:
        raise RuntimeError("a bug")
    monkeypatch.setattr(bridged.app.json, "dumps", broken)
    r = client.get(path, headers=headers)
    assert r.headers.get("X-Kmsb-Dropped") == "1" and r.get_data() == b""
    monkeypatch.undo()
    monkeypatch.setattr(fast._mounts, "get", broken)  # routing fails: Flask serves it, and maps the failure
    r = client.get(path, headers=headers)
    assert r.headers.get("X-Kmsb-Dropped") == "1" and r.get_data() == b""


def test_request_ids_are_fresh_uuid4s_from_the_pool_on_both_paths(bridged: Bridged,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read (fast path and Flask view) has its own uuid4, the one its audit record carries, and the ids come
    from the pooled random bytes (broker/api/limits.py): no getrandom per read."""
    import uuid

    from broker.api import limits
    from broker.random_pool import RandomPool

    monkeypatch.setattr(limits, "_REQUEST_IDS", RandomPool(block=16 * 256))
    draws: list[int] = []
    real = limits.os.urandom
    monkeypatch.setattr(limits.os, "urandom", lambda n: draws.append(n) or real(n))
    headers = {"X-Vault-Token": bridged.token}
    seen = len(bridged.audit.read_text().splitlines())
    ids = []
    for client in (Client(bridged.app.wsgi_app), bridged.flask_only) * 20:
        r = client.get(f"/v1/{MOUNT}/data/1", headers=headers)
        assert r.status_code == 200
        ids.append(r.get_json()["request_id"])
    assert len(set(ids)) == len(ids) == 40
    assert all(uuid.UUID(i).version == 4 for i in ids)
    with open(bridged.audit) as f:
        audited = [json.loads(line)["request_id"] for line in f][seen:]
    assert audited == ids
    assert draws == [16 * 256]  # one draw for the 40 ids, none per read
