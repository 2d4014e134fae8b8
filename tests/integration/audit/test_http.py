"""The audit pipeline behind a real gunicorn broker (2 workers, one chain): secrets never recorded, the auditor's
query API, concurrent writers in two processes, 503 with nothing done when the sink fails, verify --data-dir."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.support.broker import RunningBroker

CLI = [sys.executable, "-m", "broker.cli"]
ENV = {**os.environ, "KMSB_AUDIT_CHECKPOINT_RECORDS": "5"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audit_text(broker: RunningBroker) -> str:
    return (broker.data_dir / "audit" / "audit.jsonl").read_text()


def store_rows(broker: RunningBroker) -> list[tuple]:
    con = sqlite3.connect(f"file:{broker.data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        return con.execute("select * from audit_events order by seq").fetchall()
    finally:
        con.close()


def store_text(broker: RunningBroker) -> str:
    return "\n".join(repr(row) for row in store_rows(broker))


def cli(*args: str, data_dir=None, input_: str | None = None) -> subprocess.CompletedProcess:
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run([*CLI, "audit", *args, *extra], capture_output=True, text=True, timeout=120, env=ENV,
                          input=input_)


def test_no_secret_reaches_a_record(audit_broker: RunningBroker):
    b = audit_broker
    api = b.session()
    plaintext = b"PLAINTEXT-" + uuid.uuid4().hex.encode()
    context_value = "ctx-" + uuid.uuid4().hex
    key = api.post(b.url("/keys"), json={"Description": "secrets scan"}).json()["KeyMetadata"]["KeyId"]
    enc = api.post(b.url(f"/keys/{key}/encrypt"),
                   json={"Plaintext": b64(plaintext), "EncryptionContext": {"tenant": context_value}}).json()
    blob = enc["CiphertextBlob"]
    dec = api.post(b.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"tenant": context_value}})
    assert dec.status_code == 200
    dk = api.post(b.url(f"/keys/{key}/generate-data-key"),
                  json={"KeySpec": "AES_256", "EncryptionContext": {"tenant": context_value}}).json()
    mac_key = api.post(b.url("/keys"), json={"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}).json()
    mac = api.post(b.url(f"/keys/{mac_key['KeyMetadata']['KeyId']}/generate-mac"),
                   json={"Message": b64(plaintext), "MacAlgorithm": "HMAC_SHA_256"}).json()
    child = api.post(b.url("/auth/token/create"), json={"policies": ["key-user"], "display_name": "scan"}).json()
    child_token = child["auth"]["client_token"]
    assert b.session(child_token).post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(plaintext)}).ok
    assert api.post(b.url("/auth/approle/role/scanner"), json={"policies": ["key-user"]}).status_code == 204
    role_id = api.get(b.url("/auth/approle/role/scanner/role-id")).json()["data"]["role_id"]
    secret_id = api.post(b.url("/auth/approle/role/scanner/secret-id"), json={}).json()["data"]["secret_id"]
    login = requests.post(b.url("/auth/approle/login"), json={"role_id": role_id, "secret_id": secret_id}).json()
    approle_token = login["auth"]["client_token"]
    wrong = requests.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(plaintext)},
                          headers={"X-KMSB-Token": "hvs.not-a-real-token-" + uuid.uuid4().hex})
    assert wrong.status_code in (401, 403)

    secrets = {
        "plaintext": plaintext.decode(), "plaintext b64": b64(plaintext), "ciphertext": blob,
        "ciphertext prefix": blob[:40], "data key": dk["Plaintext"], "wrapped data key": dk["CiphertextBlob"],
        "mac": mac["Mac"], "context value": context_value, "root token": b.root_token, "child token": child_token,
        "approle secret_id": secret_id, "approle token": approle_token,
        "wrong token": wrong.request.headers["X-KMSB-Token"],
    }
    mirrored(b, b.data_dir / "audit" / "audit.jsonl")  # the store copy is scanned whole
    for where, text in (("audit file", audit_text(b)), ("store", store_text(b))):
        assert "kms:Encrypt" in text
        leaked = [name for name, value in secrets.items() if value in text]
        assert not leaked, f"{where} contains: {leaked}"
    # the context value is findable the way an auditor looks it up
    found = cli("hash", context_value, data_dir=b.data_dir)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() in audit_text(b)
    assert cli("hash", "-", data_dir=b.data_dir, input_=context_value + "\n").stdout == found.stdout


def test_record_content(audit_broker: RunningBroker):
    b = audit_broker
    api = b.session()
    key = api.post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    rid = str(uuid.uuid4())
    r = api.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x"), "EncryptionContext": {"a": "1"}},
                 headers={"X-Request-Id": rid})
    assert r.ok
    record = next(json.loads(line) for line in audit_text(b).splitlines() if rid in line)
    assert record["request_id"] == rid and record["type"] == "event"
    assert record["principal"] == "root" and record["auth_method"] == "token"
    assert record["source_ip"] == "127.0.0.1" and record["action"] == "kms:Encrypt"
    assert (record["key_id"], record["key_version"], record["provider"]) == (key, 1, "hsm")
    assert list(record["encryption_context"]) == ["a"]
    assert record["encryption_context"]["a"].startswith("hmac-sha256:")
    assert (record["outcome"], record["error_code"]) == ("allowed", None)
    assert record["latency_ms"] > 0 and record["seq"] >= 1 and len(record["hash"]) == 64


def test_query_api_filters_and_pages(audit_broker: RunningBroker):
    b = audit_broker
    api = b.session()
    k1 = api.post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    k2 = api.post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    for _ in range(7):
        assert api.post(b.url(f"/keys/{k1}/encrypt"), json={"Plaintext": b64(b"x")}).ok
    assert api.post(b.url(f"/keys/{k2}/disable")).ok
    assert api.post(b.url(f"/keys/{k2}/encrypt"), json={"Plaintext": b64(b"x")}).status_code == 409  # Disabled

    def events(**params):
        r = api.get(b.url("/audit/events"), params=params)
        assert r.status_code == 200, r.text
        return r.json()

    page = events(key=k1, action="kms:Encrypt")
    assert len(page["Events"]) == 7 and {e["key_id"] for e in page["Events"]} == {k1}
    errors_ = events(key=k2, outcome="error")["Events"]
    assert [(e["action"], e["error_code"]) for e in errors_] == [("kms:Encrypt", "DisabledException")]
    assert {e["principal"] for e in events(principal="root", limit=50)["Events"]} == {"root"}
    assert events(principal="nobody-at-all")["Events"] == []

    seen, marker = [], None
    while True:  # pages of 3: every record once, in order
        page = events(key=k1, limit=3, **({"marker": marker} if marker else {}))
        assert len(page["Events"]) <= 3
        seen += [e["seq"] for e in page["Events"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert len(seen) == 9 and seen == sorted(set(seen))  # CreateKey (intent + outcome) + 7 Encrypt
    newest = events(key=k1, limit=2, order="desc")["Events"]
    assert [e["seq"] for e in newest] == sorted(seen, reverse=True)[:2]
    intent, created = events(key=k1, action="kms:CreateKey")["Events"]
    assert (intent["outcome"], created["outcome"], created["intent_seq"]) == ("pending", "allowed", intent["seq"])
    assert events(key=k1, outcome="pending")["Events"] == [intent]

    first = events(key=k1, limit=1)["Events"][0]
    since = events(key=k1, since=first["time"])["Events"]
    until = events(key=k1, until=first["time"])["Events"]
    assert len(since) == 9 and until == []
    assert "checkpoint" in {e["type"] for e in events(checkpoints="true", limit=1000)["Events"]}

    bad = api.get(b.url("/audit/events"), params={"outcome": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "ValidationException"
    naive = api.get(b.url("/audit/events"), params={"since": "2026-01-01T00:00:00"})
    assert naive.status_code == 400


def test_query_api_is_for_auditors_only(audit_broker: RunningBroker):
    b = audit_broker
    api = b.session()

    def token(policies):
        return api.post(b.url("/auth/token/create"), json={"policies": policies}).json()["auth"]["client_token"]

    denied = b.session(token(["key-user"])).get(b.url("/audit/events"))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "AccessDeniedException"
    allowed = b.session(token(["auditor"])).get(b.url("/audit/events"), params={"action": "broker:ReadAudit",
                                                                                "outcome": "denied"})
    assert allowed.status_code == 200
    assert any(e["error_code"] == "AccessDeniedException" for e in allowed.json()["Events"])
    assert "/v1/audit/events" in requests.get(b.url("/openapi.json")).json()["paths"]


def test_two_workers_keep_one_valid_chain(audit_broker: RunningBroker):
    b = audit_broker
    key = b.session().post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    ids = [str(uuid.uuid4()) for _ in range(240)]

    def call(rid):
        with requests.Session() as s:
            s.headers["X-KMSB-Token"] = b.root_token
            return s.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")},
                          headers={"X-Request-Id": rid}).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(call, ids)) == {200}
    records = [json.loads(line) for line in audit_text(b).splitlines()]
    seen = [r["request_id"] for r in records if r.get("request_id") in set(ids)]
    assert sorted(seen) == sorted(ids)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    out = cli("verify", data_dir=b.data_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(records)} records" in out.stdout and "OK" in out.stdout


def mirrored(b: RunningBroker, path: Path) -> None:
    """Wait until the store copy holds every record of the file (the mirror runs every 0.25 s)."""
    deadline = time.monotonic() + 10
    while len(store_rows(b)) != len(path.read_bytes().splitlines()):
        assert time.monotonic() < deadline, "the store copy did not catch up with the file"
        time.sleep(0.05)


def test_unwritable_sink_answers_503_and_changes_nothing(audit_broker: RunningBroker):
    b = audit_broker
    api = b.session()
    key = api.post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    path = b.data_dir / "audit" / "audit.jsonl"
    mirrored(b, path)
    before_rows, before_file, before_audit = b.snapshot(), path.read_bytes(), store_rows(b)
    moved = path.with_name("audit.jsonl.moved")
    path.rename(moved)
    path.mkdir()
    try:
        attempts = [
            api.post(b.url("/keys"), json={}),
            api.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")}),
            api.post(b.url(f"/keys/{key}/rotate")),
            api.post(b.url(f"/keys/{key}/disable")),
            api.post(b.url(f"/keys/{key}/schedule-deletion"), json={"PendingWindowInDays": 7}),
            api.post(b.url("/aliases"), json={"AliasName": "alias/never", "TargetKeyId": key}),
        ]
        for r in attempts:
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "ServiceUnavailableException"
        assert b.snapshot() == before_rows  # no key, no version, no alias, no state change
        assert store_rows(b) == before_audit  # and no audit row: the batches were refused by every sink
    finally:
        path.rmdir()
        moved.rename(path)
    assert path.read_bytes() == before_file
    assert api.get(b.url(f"/keys/{key}/versions")).json()["Versions"][0]["KeyVersion"] == 1
    r = api.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")})
    assert r.status_code == 200 and r.json()["KeyVersion"] == 1
    out = cli("verify", data_dir=b.data_dir)
    assert out.returncode == 0, out.stdout + out.stderr


def test_verify_data_dir_finds_a_truncated_tail(audit_broker: RunningBroker):
    """Last in this module: stops the broker, cuts whole records off the end, and restores the file."""
    b = audit_broker
    api = b.session()
    key = api.post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    for _ in range(3):
        api.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")})
    b.server.stop()
    path = b.data_dir / "audit" / "audit.jsonl"
    original = path.read_bytes()
    lines = original.splitlines(keepends=True)
    try:
        path.write_bytes(b"".join(lines[:-2]))
        out = cli("verify", "--output", "json", data_dir=b.data_dir)
        assert out.returncode == 1
        report = json.loads(out.stdout)
        assert "truncated tail" in report["problem"] and report["line"] == len(lines) - 1
        edited = json.loads(lines[3])
        edited["principal"] = "mallory"
        path.write_bytes(b"".join(lines[:3] + [json.dumps(edited).encode() + b"\n"] + lines[4:]))
        out = cli("verify", data_dir=b.data_dir)
        assert out.returncode == 1 and "line 4" in out.stdout and "edited" in out.stdout
    finally:
        path.write_bytes(original)
    assert cli("verify", data_dir=b.data_dir).returncode == 0
