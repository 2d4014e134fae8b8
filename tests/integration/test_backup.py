"""Backup and restore, as an operator runs them: a restore drill onto a fresh data folder with its own HSM token.

A broker serves node A. Custodians get 3 shares (any 2 restore); an archive is made while A serves. Attack tests
first: fewer than M shares, a mistyped share, a share of another set, a tampered archive, a non-empty target —
each a clear error with nothing written. Then the drill: restore with 2 shares into a new folder, serve it, and every
old ciphertext decrypts, every keyring entry has the same bytes, the audit chain verifies and continues with a
restore record naming the backup. Scheduled backups keep the newest N; rotating custodians needs M current shares.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.broker import RunningBroker, start_broker

CLI = [sys.executable, "-m", "broker.cli"]


def kmsb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@dataclass
class Source:
    broker: RunningBroker
    archive: Path
    shares: list[str]
    ciphertexts: dict[bytes, bytes]  # plaintext -> ciphertext
    keyring: list[dict]
    base: Path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Source]:
    base = tmp_path_factory.mktemp("backup")
    broker = start_broker(base / "a", base / "logs", workers=1)
    try:
        s = broker.session()
        ciphertexts = {}
        for n in range(3):
            key_id = s.post(broker.url("/keys"), json={"Description": f"k{n}"}).json()["KeyMetadata"]["KeyId"]
            if n == 1:
                assert s.post(broker.url(f"/keys/{key_id}/rotate")).ok
            plain = f"secret {n}".encode()
            r = s.post(broker.url(f"/keys/{key_id}/encrypt"), json={
                "Plaintext": base64.b64encode(plain).decode(), "EncryptionContext": {"n": str(n)}})
            assert r.ok, r.text
            ciphertexts[plain] = base64.b64decode(r.json()["CiphertextBlob"])
        assert s.post(broker.url("/keyring/mounts"), json={"Mount": "kv"}).status_code in (200, 201)
        for entry in ("1", "2"):
            assert s.post(broker.url("/keyring/entries"), json={"Mount": "kv", "Id": entry}).status_code == 201
        keyring = s.post(broker.url("/keyring/export"), json={"Mount": "kv"}).json()["Entries"]
        done = kmsb("backup", "custodians", "--shares", "3", "--threshold", "2", "--data-dir", str(broker.data_dir),
                    "--output", "json")
        assert done.returncode == 0, done.stderr
        shares = json.loads(done.stdout)["shares"]
        assert len(shares) == 3 and len(set(shares)) == 3
        archive = base / "a.kmsb"
        done = kmsb("backup", "create", "--out", str(archive), "--data-dir", str(broker.data_dir))
        assert done.returncode == 0, done.stderr
        yield Source(broker, archive, shares, ciphertexts, keyring, base)
    finally:
        broker.server.stop()


# ------------------------------------------------------------------------------------------------ the archive


def test_the_archive_holds_no_key_material_in_clear(source: Source) -> None:
    data = source.archive.read_bytes()
    doc = json.loads(data)
    assert set(doc) == {"format", "manifest", "signature", "payload"}
    for entry in source.keyring:
        for version in entry["Versions"]:
            assert version["Secret"]["data"].encode() not in data
    for share in source.shares:
        assert share.split()[5].encode() + b" " + share.split()[6].encode() not in data
    assert b"kmsb." not in data  # not even a token (the store holds only their hashes; the payload is encrypted)


def test_verify_checks_signature_and_pinned_key(source: Source) -> None:
    pem = source.broker.data_dir / "audit" / "audit-signing.pub.pem"
    done = kmsb("backup", "verify", str(source.archive), "--public-key", str(pem))
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr
    done = kmsb("backup", "verify", str(source.archive), "--share", source.shares[0], "--share", source.shares[2],
                "--output", "json")
    assert done.returncode == 0 and json.loads(done.stdout)["Opened"] is True
    other = source.base / "other.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    done = kmsb("backup", "verify", str(source.archive), "--public-key", str(other))
    assert done.returncode == 1 and "expected audit signing key" in done.stderr


# ------------------------------------------------------------------------------------------------ attacks


def _refused(source: Source, archive: Path, shares: list[str], match: str, target: Path | None = None) -> None:
    target = target or source.base / "never"
    args = [a for s in shares for a in ("--share", s)]
    done = kmsb("backup", "restore", str(archive), "--data-dir", str(target), *args)
    assert done.returncode == 1, done.stdout
    assert match in done.stderr and "nothing was written" in done.stderr and "Traceback" not in done.stderr
    if target.name == "never":
        assert not target.exists()


def test_fewer_than_m_shares_are_refused(source: Source) -> None:
    _refused(source, source.archive, source.shares[:1], "fewer shares than the threshold")
    _refused(source, source.archive, [], "no custodian shares")


def test_a_mistyped_share_is_refused(source: Source) -> None:
    words = source.shares[1].split()
    words[4] = "academic" if words[4] != "academic" else "acid"
    _refused(source, source.archive, [source.shares[0], " ".join(words)], "mistyped")


def test_a_share_of_another_set_is_refused(source: Source) -> None:
    from broker.backup import custodians

    foreign = custodians.split(custodians.new_secret(), 2, 3)
    _refused(source, source.archive, [source.shares[0], foreign[1]], "same custodian set")
    _refused(source, source.archive, foreign[:2], "not the custodians of this backup")


def test_a_tampered_archive_is_refused(source: Source) -> None:
    doc = json.loads(source.archive.read_bytes())
    payload = bytearray(base64.b64decode(doc["payload"]))
    payload[100] ^= 1
    flipped = source.base / "flipped.kmsb"
    flipped.write_text(json.dumps({**doc, "payload": base64.b64encode(bytes(payload)).decode()}))
    _refused(source, flipped, source.shares[:2], "altered")
    edited = source.base / "edited.kmsb"
    edited.write_text(json.dumps({**doc, "manifest": {**doc["manifest"], "audit_head": {"seq": 1, "hash": "0" * 64}}}))
    _refused(source, edited, source.shares[:2], "altered")
    garbage = source.base / "garbage.kmsb"
    garbage.write_bytes(b"\x00not json")
    _refused(source, garbage, source.shares[:2], "not a kms-broker backup")


def test_a_non_empty_target_is_refused(source: Source) -> None:
    target = source.base / "occupied"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    _refused(source, source.archive, source.shares[:2], "not empty", target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------------------------------ the drill


def test_restore_drill_serves_every_key_and_continues_the_chain(source: Source) -> None:
    target = source.base / "restored"
    done = kmsb("backup", "restore", str(source.archive), "--data-dir", str(target), "--share", source.shares[2],
                "--share", source.shares[0], "--output", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    backup_id = json.loads(source.archive.read_bytes())["manifest"]["backup_id"]
    assert report["backup_id"] == backup_id
    restored = start_broker(target, source.base / "logs-restored", workers=1, name="restored")
    try:
        s = restored.session(source.broker.root_token)  # tokens are part of the store: the old root token works
        for plain, blob in source.ciphertexts.items():
            n = plain.decode().split()[-1]
            r = s.post(restored.url("/decrypt"), json={"CiphertextBlob": base64.b64encode(blob).decode(),
                                                       "EncryptionContext": {"n": n}})
            assert r.ok, r.text
            assert base64.b64decode(r.json()["Plaintext"]) == plain
        assert s.post(restored.url("/keyring/export"), json={"Mount": "kv"}).json()["Entries"] == source.keyring
        # new work goes on under the restored root
        key_id = s.post(restored.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        assert s.post(restored.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": "aGk="}).ok
    finally:
        restored.server.stop()
    done = kmsb("audit", "verify", "--data-dir", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (target / "audit" / "audit.jsonl").read_text().splitlines()]
    restore_records = [r for r in records if r.get("action") == "broker:RestoreBackup"]
    assert len(restore_records) == 1 and restore_records[0]["backup"] == backup_id
    source_head = json.loads(source.archive.read_bytes())["manifest"]["audit_head"]
    carried = [r for r in records if r["seq"] <= source_head["seq"]]
    assert carried[-1]["hash"] == source_head["hash"]


# ------------------------------------------------------------------------------------------------ operations


def test_scheduled_backups_keep_the_newest(source: Source) -> None:
    folder = source.base / "scheduled"
    done = kmsb("backup", "create", "--every", "1s", "--keep", "2", "--count", "3", "--out-dir", str(folder),
                "--data-dir", str(source.broker.data_dir))
    assert done.returncode == 0, done.stderr
    kept = sorted(folder.glob("*.kmsb"))
    assert len(kept) == 2 and kept[-1].name.endswith("000002.kmsb")
    for path in kept:
        assert kmsb("backup", "verify", str(path)).returncode == 0


def test_rotating_custodians_needs_m_current_shares(source: Source) -> None:
    data_dir = str(source.broker.data_dir)
    done = kmsb("backup", "custodians", "--shares", "2", "--threshold", "2", "--data-dir", data_dir)
    assert done.returncode == 1 and "give 2 of its shares" in done.stderr
    done = kmsb("backup", "custodians", "--shares", "2", "--threshold", "2", "--data-dir", data_dir,
                "--share", source.shares[0])
    assert done.returncode == 1 and "fewer shares" in done.stderr
    done = kmsb("backup", "custodians", "--shares", "2", "--threshold", "2", "--data-dir", data_dir,
                "--share", source.shares[0], "--share", source.shares[1], "--output", "json")
    assert done.returncode == 0, done.stderr
    new_shares = json.loads(done.stdout)["shares"]
    archive = source.base / "after-rotation.kmsb"
    assert kmsb("backup", "create", "--out", str(archive), "--data-dir", data_dir).returncode == 0
    assert kmsb("backup", "verify", str(archive), "--share", new_shares[0], "--share", new_shares[1]).returncode == 0
    done = kmsb("backup", "verify", str(archive), "--share", source.shares[0], "--share", source.shares[1])
    assert done.returncode == 1  # the old custodians no longer open new backups
    # an older archive still opens with the shares of its own set
    assert kmsb("backup", "verify", str(source.archive), "--share", source.shares[0], "--share",
                source.shares[1]).returncode == 0
    # bad counts are a clear error
    done = kmsb("backup", "custodians", "--shares", "3", "--threshold", "5", "--data-dir", data_dir)
    assert done.returncode == 1 and "threshold" in done.stderr and "Traceback" not in done.stderr


def test_a_backup_over_the_api_needs_create_backup(source: Source) -> None:
    broker = source.broker
    r = broker.session().post(broker.url("/backups"))
    assert r.status_code == 201, r.text
    archive = source.base / "api.kmsb"
    archive.write_bytes(base64.b64decode(r.json()["Archive"]))
    assert kmsb("backup", "verify", str(archive)).returncode == 0
    s = broker.session()
    token = s.post(broker.url("/auth/token/create"), json={"display_name": "reader", "policies": ["key-admin"]})
    assert token.ok, token.text
    r = broker.session(token.json()["auth"]["client_token"]).post(broker.url("/backups"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "AccessDeniedException"
