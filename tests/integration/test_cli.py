"""The README's ten-minute tour, run command by command through the real CLI against a real broker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.support.broker import CLI, RunningBroker, init_data_dir


def run(broker: RunningBroker, *args: str, stdin: bytes = b"", token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KMSB_ADDR": broker.addr, "KMSB_TOKEN": broker.root_token if token is None else token}
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, env=env, timeout=60)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_tour(broker):
    key_id = ok(run(broker, "key", "create", "--description", "tour")).strip()
    assert json.loads(ok(run(broker, "key", "describe", key_id, "--output", "json")))["KeyState"] == "Enabled"
    ok(run(broker, "alias", "create", "tour-app", key_id))
    blob = ok(run(broker, "encrypt", "--key", "alias/tour-app", "--context", "app=billing", stdin=b"hello tour"))
    assert ok(run(broker, "decrypt", "--context", "app=billing", stdin=blob.encode())) == "hello tour"
    wrong = run(broker, "decrypt", "--context", "app=other", stdin=blob.encode())
    assert wrong.returncode == 1 and b"InvalidCiphertextException" in wrong.stderr and b"Traceback" not in wrong.stderr
    rotated = json.loads(ok(run(broker, "key", "rotate", key_id, "--output", "json")))
    assert rotated["KeyVersion"] == 2
    assert ok(run(broker, "decrypt", "--context", "app=billing", stdin=blob.encode())) == "hello tour"
    listed = json.loads(ok(run(broker, "key", "list", "--output", "json")))
    assert key_id in {k["KeyId"] for k in listed}
    ok(run(broker, "key", "disable", key_id))
    refused = run(broker, "encrypt", "--key", key_id, stdin=b"x")
    assert refused.returncode == 1 and b"DisabledException" in refused.stderr
    ok(run(broker, "key", "enable", key_id))
    out = json.loads(ok(run(broker, "key", "schedule-deletion", key_id, "--days", "7", "--output", "json")))
    assert out["KeyState"] == "PendingDeletion"


def test_encrypt_json_output_and_bad_token(broker):
    key_id = ok(run(broker, "key", "create")).strip()
    out = json.loads(ok(run(broker, "encrypt", "--key", key_id, "--output", "json", stdin=b"abc")))
    assert set(out) == {"CiphertextBlob"}
    denied = run(broker, "key", "list", token="kmsb.wrong")
    assert denied.returncode == 1 and b"UnrecognizedClientException" in denied.stderr


@pytest.mark.parametrize("args", [["decrypt"], ["encrypt", "--key", "x", "--context", "novalue"]])
def test_cli_usage_errors_are_clean(broker, args):
    result = run(broker, *args, stdin=b"@@not base64@@")
    assert result.returncode in (1, 2) and b"Traceback" not in result.stderr and result.stderr


def test_init_twice_refuses_and_loses_nothing(tmp_path):
    token = init_data_dir(tmp_path / "d")
    assert token.startswith("kmsb.")
    before = {p: p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    again = subprocess.run([*CLI, "init", "--data-dir", str(tmp_path / "d")], capture_output=True, timeout=60)
    assert again.returncode == 1 and b"already initialised" in again.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    assert after == before
    assert token.encode() not in b"".join(after.values())


def test_console_script_is_installed():
    exe = shutil.which("kms-broker")
    assert exe, "the kms-broker console script is not on PATH"
    result = subprocess.run([exe, "--help"], capture_output=True, timeout=30)
    assert result.returncode == 0 and b"serve" in result.stdout and b"init" in result.stdout
