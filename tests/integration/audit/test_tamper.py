"""Tamper evidence: each manipulation of the log is found, and verify names the first tampered line every time."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.audit import PUBLIC_KEY_NAME, verify_lines
from broker.audit.chain import checkpoint_message, key_fingerprint, load_public_key, record_hash, seal_record
from broker.service import KeyService, RequestContext

CLI = [sys.executable, "-m", "broker.cli"]


@pytest.fixture
def log(audited: KeyService, root_ctx: RequestContext) -> tuple[Path, list[bytes]]:
    """22 events (CreateKey's intent and outcome, 20 Encrypt) and 4 checkpoints (after every 5 events): checkpoints
    sit on lines 6, 12, 18, 24."""
    key = audited.create_key(root_ctx)["KeyId"]
    for i in range(20):
        audited.encrypt(root_ctx, key, b"data %d" % i, context={"n": str(i)})
    path = audited.audit.path
    lines = path.read_bytes().splitlines(keepends=True)
    kinds = [json.loads(line)["type"] for line in lines]
    assert len(lines) == 26 and [i + 1 for i, k in enumerate(kinds) if k == "checkpoint"] == [6, 12, 18, 24]
    return path, lines


def check(path: Path, data: bytes) -> tuple[int | None, str]:
    key = load_public_key((path.parent / PUBLIC_KEY_NAME).read_bytes())
    report = verify_lines(data, key)
    assert not report.ok, "tampering went unnoticed"
    return report.line, report.problem


def rechain(records: list[dict], start: int) -> list[dict]:
    """What a forger without the signing key can do: recompute every hash from `start` on."""
    for i in range(start, len(records)):
        body = {k: v for k, v in records[i].items() if k not in ("hash", "prev_hash")}
        records[i] = seal_record(body, records[i - 1]["hash"] if i else "0" * 64)
    return records


def test_untouched_log_verifies(log):
    path, lines = log
    key = load_public_key((path.parent / PUBLIC_KEY_NAME).read_bytes())
    report = verify_lines(b"".join(lines), key)
    assert report.ok, report.problem
    assert (report.records, report.events, report.checkpoints) == (26, 22, 4)


def test_edited_field(log):
    path, lines = log
    record = json.loads(lines[8])
    record["outcome"] = "denied"
    lines[8] = json.dumps(record).encode() + b"\n"
    line, problem = check(path, b"".join(lines))
    assert line == 9 and "edited" in problem and "line 9" in problem


def test_deleted_record(log):
    path, lines = log
    del lines[6]
    line, problem = check(path, b"".join(lines))
    assert line == 7 and "deleted" in problem and "seq 7" in problem


def test_swapped_records(log):
    path, lines = log
    lines[13], lines[14] = lines[14], lines[13]
    line, problem = check(path, b"".join(lines))
    assert line == 14 and "reordered" in problem


def test_inserted_record(log):
    """A well-formed record linked to its predecessor: the chain breaks at the next one, the insert is named."""
    path, lines = log
    previous = json.loads(lines[2])
    forged = {k: v for k, v in previous.items() if k not in ("hash", "prev_hash")}
    forged.update(seq=previous["seq"] + 1, request_id="forged", principal="nobody")
    lines.insert(3, json.dumps(seal_record(forged, previous["hash"]), sort_keys=True).encode() + b"\n")
    line, problem = check(path, b"".join(lines))
    assert line == 4 and "inserted" in problem


def test_copied_record_inserted(log):
    path, lines = log
    lines.insert(10, lines[1])
    line, problem = check(path, b"".join(lines))
    assert line == 11 and "inserted" in problem


def test_truncated_mid_record(log):
    path, lines = log
    line, problem = check(path, b"".join(lines)[:-40])
    assert line == 26 and "truncated" in problem


def test_truncated_tail_needs_the_store(log, audited: KeyService):
    """Whole records cut after the last checkpoint leave a valid shorter chain: the store's copy shows the cut."""
    from broker.audit.verify import compare_with_store

    path, lines = log
    key = load_public_key((path.parent / PUBLIC_KEY_NAME).read_bytes())
    cut = b"".join(lines[:23])
    alone = verify_lines(cut, key)
    assert alone.ok and "after the last checkpoint" in alone.notes[-1]  # the documented limit of --file
    audited.audit.catch_up()
    with audited.store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql("select seq, hash from audit_events order by seq")]
    file_records = [(json.loads(line)["seq"], json.loads(line)["hash"]) for line in cut.splitlines()]
    report = compare_with_store(alone, file_records, rows)
    assert not report.ok and report.line == 24 and "truncated tail" in report.problem


def test_removed_checkpoint_with_rechained_hashes_breaks_the_count_rule(log):
    """A forger drops a checkpoint and recomputes every hash: the run is now longer than a run may be."""
    path, lines = log
    records = [json.loads(line) for line in lines]
    del records[11]
    for r in records[11:]:
        r["seq"] -= 1
        if r["type"] == "checkpoint":
            r["count"] -= 1
    rechain(records, 11)
    line, problem = check(path, b"".join(json.dumps(r).encode() + b"\n" for r in records))
    # the 6th event of the merged run (line 12) is where a checkpoint had to be
    assert line == 12 and "checkpoint was due" in problem


def test_removed_checkpoint_breaks_the_time_rule(tmp_path, hsm_provider, root_ctx):
    import time

    from broker.policy import PolicyEngine
    from broker.store import Store
    from tests.integration.audit.conftest import make_audit

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    audit = make_audit(tmp_path, hsm_provider, store, checkpoint_seconds=0.5, checkpoint_records=100)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    try:
        svc.list_keys(root_ctx)
        svc.list_keys(root_ctx)
        audit.close()  # no idle checkpoint from here on
        time.sleep(0.6)
        audit = make_audit(tmp_path, hsm_provider, store, checkpoint_seconds=0.5, checkpoint_records=100)
        svc.audit = audit
        svc.list_keys(root_ctx)
        records = [json.loads(line) for line in audit.path.read_text().splitlines()]
        assert [r["type"] for r in records] == ["event", "event", "checkpoint", "event"]
        key = load_public_key(audit.public_key_path.read_bytes())
        assert verify_lines(audit.path.read_bytes(), key).ok
        forged = records[:2] + [dict(records[3], seq=3)]
        rechain(forged, 2)
        # no checkpoint is left to carry the limits: the verifier takes them from the settings (as --data-dir does)
        report = verify_lines(b"".join(json.dumps(r).encode() + b"\n" for r in forged), key, every_seconds=0.5)
        assert not report.ok and report.line == 3 and "0.5s" in report.problem
    finally:
        audit.close()
        store.dispose()


def test_forged_checkpoint_signature(log):
    path, lines = log
    records = [json.loads(line) for line in lines]
    stranger = ec.generate_private_key(ec.SECP256R1())
    cp = records[11]
    cp["signature"] = base64.b64encode(stranger.sign(checkpoint_message(cp), ec.ECDSA(hashes.SHA256()))).decode()
    rechain(records, 11)
    line, problem = check(path, b"".join(json.dumps(r).encode() + b"\n" for r in records))
    assert line == 12 and "forged checkpoint" in problem


def test_forged_checkpoint_with_the_forgers_key_id(log):
    path, lines = log
    records = [json.loads(line) for line in lines]
    stranger = ec.generate_private_key(ec.SECP256R1())
    spki = stranger.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    cp = records[5]
    cp["key_id"] = key_fingerprint(spki)
    cp["signature"] = base64.b64encode(stranger.sign(checkpoint_message(cp), ec.ECDSA(hashes.SHA256()))).decode()
    rechain(records, 5)
    line, problem = check(path, b"".join(json.dumps(r).encode() + b"\n" for r in records))
    assert line == 6 and "forged checkpoint" in problem


def test_rewritten_history_is_caught_by_the_next_checkpoint(log):
    """Edit an event and recompute the whole chain after it: the hashes hold, the next signed checkpoint does not."""
    path, lines = log
    records = [json.loads(line) for line in lines]
    records[14]["principal"] = "someone-else"
    rechain(records, 14)
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    line, problem = check(path, data)
    assert line == 18 and "forged checkpoint" in problem


def test_deleted_checkpoint(log):
    path, lines = log
    del lines[11]
    line, problem = check(path, b"".join(lines))
    assert line == 12 and "deleted" in problem


def test_record_hash_is_what_the_file_says(log):
    _, lines = log
    record = json.loads(lines[0])
    body = {k: v for k, v in record.items() if k != "hash"}
    assert record_hash(record["prev_hash"], body) == record["hash"]


def run_verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "audit", "verify", *args], capture_output=True, text=True, timeout=60)


def test_cli_verify_file_exit_codes(log, tmp_path):
    path, lines = log
    ok = run_verify("--file", str(path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "26 records" in ok.stdout and "4 signed checkpoints" in ok.stdout
    tampered = tmp_path / "copy" / "audit.jsonl"
    tampered.parent.mkdir()
    (tampered.parent / PUBLIC_KEY_NAME).write_bytes((path.parent / PUBLIC_KEY_NAME).read_bytes())
    tampered.write_bytes(b"".join(lines[:7] + lines[8:]))
    bad = run_verify("--file", str(tampered), "--output", "json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["line"] == 8 and "deleted" in report["problem"]
