"""`kms-broker stack up` then `kms-broker serve --with-stack`: one broker over the HSM and the emulated clouds."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
import requests

from tests.support.broker import CLI, init_data_dir
from tests.support.procs import free_port, start_server

CLOUDS = ["azure", "gcp", "aliyun"]  # AWS (LocalStack) is covered by the conformance suite; it is slow to start


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("with-stack")
    stack_dir = base / "stack"
    up = subprocess.run([*CLI, "stack", "up", "--only", ",".join(CLOUDS), "--state-dir", str(stack_dir),
                         "--output", "json"], capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    token = init_data_dir(base / "data")
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    server = start_server("broker-with-stack", [sys.executable, "-m", "broker.cli", "serve", "--data-dir",
                                                str(base / "data"), "--bind", f"127.0.0.1:{port}", "--with-stack",
                                                "--stack-dir", str(stack_dir)],
                          log_dir=base / "logs", ready=lambda: requests.get(f"{addr}/v1/health", timeout=1).ok)
    yield addr, token, json.loads(up.stdout)
    server.stop()
    subprocess.run([*CLI, "stack", "down", "--state-dir", str(stack_dir)], capture_output=True, timeout=60)


def test_every_cloud_of_the_stack_is_a_ready_provider(served):
    addr, _, clouds = served
    assert set(clouds) == set(CLOUDS)
    ready = requests.get(f"{addr}/v1/ready").json()
    assert ready == {"status": "ready", "audit": "ok", "store": "ok",
                     "providers": {"hsm": "ok", **{c: "ok" for c in CLOUDS}}}


@pytest.mark.parametrize("provider", CLOUDS)
def test_key_on_each_cloud_round_trips(served, provider):
    addr, token, _ = served
    s = requests.Session()
    s.headers["X-KMSB-Token"] = token
    meta = s.post(f"{addr}/v1/keys", json={"Provider": provider}).json()["KeyMetadata"]
    assert meta["Provider"] == provider
    blob = s.post(f"{addr}/v1/keys/{meta['KeyId']}/encrypt", json={
        "Plaintext": base64.b64encode(b"multi-cloud").decode(), "EncryptionContext": {"c": provider}}).json()
    out = s.post(f"{addr}/v1/decrypt", json={"CiphertextBlob": blob["CiphertextBlob"], "EncryptionContext": {"c": provider}})
    assert base64.b64decode(out.json()["Plaintext"]) == b"multi-cloud"


def test_serve_refuses_when_the_stack_is_down(tmp_path):
    init_data_dir(tmp_path / "d")
    result = subprocess.run([*CLI, "serve", "--data-dir", str(tmp_path / "d"), "--with-stack", "--stack-dir",
                             str(tmp_path / "no-stack")], capture_output=True, timeout=60)
    assert result.returncode == 1 and b"stack is not up" in result.stderr and b"Traceback" not in result.stderr
