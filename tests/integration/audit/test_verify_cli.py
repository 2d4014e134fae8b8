"""`kms-broker audit verify --data-dir` against a real broker's folder, after a clean stop: the stop wrote a checkpoint
that the HSM pinned; verify takes the key and the mark from the HSM (never from a file an attacker can delete or
replace), reports a cut of file and store together, and refuses to vouch for anything when it cannot ask the HSM."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.broker import RunningBroker, start_broker

CLI = [sys.executable, "-m", "broker.cli"]


def verify(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    done = subprocess.run([*CLI, "audit", "verify", "--data-dir", str(data_dir), "--output", "json", *extra],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Iterator[RunningBroker]:
    """A broker that served some traffic and was then stopped cleanly (SIGTERM: workers exit, checkpoint first)."""
    base = tmp_path_factory.mktemp("verify-cli")
    b = start_broker(base / "data", base / "logs", env={"KMSB_AUDIT_CHECKPOINT_RECORDS": "5"}, name="verify-cli")
    try:
        api = b.session()
        key = api.post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        for _ in range(7):
            assert api.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": "eA=="}).ok
        assert api.post(b.url(f"/keys/{key}/rotate")).ok
    finally:
        b.server.stop()
    yield b


@pytest.fixture
def pristine(stopped: RunningBroker) -> Iterator[RunningBroker]:
    """Each test may tamper with the folder: it gets it back as the stop left it."""
    audit = stopped.data_dir / "audit"
    saved = stopped.data_dir.parent / "saved"
    shutil.copytree(audit, saved / "audit")
    shutil.copy2(stopped.data_dir / "broker.db", saved / "broker.db")
    yield stopped
    shutil.rmtree(audit, ignore_errors=True)
    shutil.copytree(saved / "audit", audit)
    shutil.copy2(saved / "broker.db", stopped.data_dir / "broker.db")
    shutil.rmtree(saved)


def lines(b: RunningBroker) -> list[bytes]:
    return (b.data_dir / "audit" / "audit.jsonl").read_bytes().splitlines(keepends=True)


def test_a_clean_stop_leaves_a_pinned_checkpoint_last(pristine: RunningBroker) -> None:
    records = [json.loads(line) for line in lines(pristine)]
    assert records[-1]["type"] == "checkpoint" and records[-1]["count"] == records[-2]["seq"]
    code, report = verify(pristine.data_dir)
    assert code == 0, report
    assert not report["crash"] and any(f"mark seq {records[-1]['seq']}" in n for n in report["notes"])
    assert any(n.startswith("holds the checkpoint the HSM pinned") for n in report["notes"])


def test_the_public_key_file_is_not_what_verify_trusts(pristine: RunningBroker) -> None:
    pem = pristine.data_dir / "audit" / "audit-signing.pub.pem"
    pem.unlink()
    code, report = verify(pristine.data_dir)
    assert code == 0, report  # removed: the key comes from the HSM
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem.write_bytes(stranger.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, report = verify(pristine.data_dir)
    assert code == 1 and "not the HSM's audit signing key" in report["problem"]


def test_a_cut_of_file_and_store_together_fails_verify(pristine: RunningBroker) -> None:
    kept = lines(pristine)[:6]  # back to the first checkpoint: a valid, signed, shorter chain
    (pristine.data_dir / "audit" / "audit.jsonl").write_bytes(b"".join(kept))
    con = sqlite3.connect(pristine.data_dir / "broker.db")
    with con:
        con.execute("delete from audit_events where seq > 6")
    con.close()
    code, report = verify(pristine.data_dir)
    assert code == 1 and [p["kind"] for p in report["problems"]] == ["cut-tail"], report


def test_a_deleted_chain_fails_verify(pristine: RunningBroker) -> None:
    shutil.rmtree(pristine.data_dir / "audit")
    con = sqlite3.connect(pristine.data_dir / "broker.db")
    with con:
        con.execute("delete from audit_events")
    con.close()
    code, report = verify(pristine.data_dir)
    assert code == 1 and [p["kind"] for p in report["problems"]] == ["deleted-chain"], report


def test_without_the_hsm_verify_vouches_for_nothing(pristine: RunningBroker) -> None:
    wrong_pin = {"KMSB_HSM_PIN": "0000"}  # the PIN variable wins over the pin file: the HSM refuses the login
    code, report = verify(pristine.data_dir, env=wrong_pin)
    assert code == 2 and "cannot verify" in report["problem"], report
    pem = pristine.data_dir / "audit" / "audit-signing.pub.pem"
    code, report = verify(pristine.data_dir, "--public-key", str(pem), env=wrong_pin)
    assert code == 0 and any("a cut tail or a deleted chain is not detected" in n for n in report["notes"])


def test_text_output_lists_every_problem(pristine: RunningBroker) -> None:
    original = lines(pristine)
    edited = [json.loads(line) for line in original]
    edited[2]["principal"] = "mallory"
    edited[9]["principal"] = "mallory"
    (pristine.data_dir / "audit" / "audit.jsonl").write_bytes(
        b"".join(json.dumps(r).encode() + b"\n" for r in edited))
    done = subprocess.run([*CLI, "audit", "verify", "--data-dir", str(pristine.data_dir)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "audit chain BROKEN: 2 problem(s)" in done.stdout
    assert "line 3 (seq 3)" in done.stdout and "line 10 (seq 10)" in done.stdout
