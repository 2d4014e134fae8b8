"""`kms-broker approval` against a real served broker: every approver with their own token, over HTTP.

The clock of a served broker is the real one: this test configures a zero cooling-off (the in-process tests in
test_approvals.py drive the clock through 72 hours).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.broker import RunningBroker, start_broker

CLI = [sys.executable, "-m", "broker.cli"]
APPROVER = {"Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
    "broker:RequestApproval", "broker:Approve", "broker:Veto", "broker:ExecuteApproval", "broker:GetApproval",
    "broker:ListApprovals", "broker:GenerateRootToken"]}]}


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("approvals")
    running = start_broker(base / "data", base / "logs", workers=1)
    try:
        yield running
    finally:
        running.server.stop()


def token_for(broker: RunningBroker, name: str) -> str:
    s = broker.session()
    assert s.put(broker.url("/policies/approver"), json={"Document": APPROVER}).status_code in (200, 204)
    r = s.post(broker.url("/auth/token/create"), json={"display_name": name, "policies": ["approver"]})
    assert r.status_code == 200, r.text
    return r.json()["auth"]["client_token"]


def kmsb(broker: RunningBroker, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KMSB_ADDR": broker.addr, "KMSB_TOKEN": token}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60)


def test_root_token_generation_through_the_cli(broker: RunningBroker) -> None:
    alice, bob, mallory = (token_for(broker, n) for n in ("alice", "bob", "mallory"))
    done = kmsb(broker, broker.root_token, "approval", "configure", "root-token", "--approver", "alice",
                "--approver", "bob", "--approver", "mallory", "--required", "2", "--cooling-off", "0s")
    assert done.returncode == 0, done.stderr
    # a designated approver cannot configure the rules (default deny), and gets a clear error, no traceback
    done = kmsb(broker, mallory, "approval", "configure", "root-token", "--approver", "mallory", "--required", "1")
    assert done.returncode == 1 and "AccessDeniedException" in done.stderr and "Traceback" not in done.stderr
    done = kmsb(broker, mallory, "approval", "request", "root-token", "--param", "TtlSeconds=600",
                "--reason", "break glass", "--output", "json")
    assert done.returncode == 0, done.stderr
    request = json.loads(done.stdout)
    rid, digest = request["RequestId"], request["Digest"]
    assert request["State"] == "pending" and request["Requester"] == "mallory"
    done = kmsb(broker, mallory, "approval", "approve", rid)
    assert done.returncode == 1 and "requester" in done.stderr
    assert kmsb(broker, alice, "approval", "approve", rid, "--digest", digest).returncode == 0
    done = kmsb(broker, alice, "approval", "approve", rid)
    assert done.returncode == 1 and "already voted" in done.stderr
    done = kmsb(broker, alice, "approval", "execute", rid)
    assert done.returncode == 1 and "1 of 2" in done.stderr
    assert kmsb(broker, bob, "approval", "approve", rid, "--digest", digest).returncode == 0
    shown = json.loads(kmsb(broker, bob, "approval", "show", rid, "--output", "json").stdout)
    assert shown["Approvals"] == ["alice", "bob"] and shown["ExecutableAt"]
    done = kmsb(broker, mallory, "approval", "execute", rid)
    assert done.returncode == 0, done.stderr
    token = json.loads(done.stdout)["Result"]["Token"]
    assert broker.session(token).get(broker.url("/auth/token/lookup-self")).json()["data"]["policies"] == ["root"]
    done = kmsb(broker, mallory, "approval", "execute", rid)
    assert done.returncode == 1 and "executed" in done.stderr
    listed = json.loads(kmsb(broker, alice, "approval", "list", "--state", "executed", "--output", "json").stdout)
    assert [r["RequestId"] for r in listed] == [rid]
    # the token was shown once, to the executor: it is nowhere in the audit trail
    assert token not in (broker.data_dir / "audit" / "audit.jsonl").read_text()


def test_bad_requests_are_4xx_and_clear(broker: RunningBroker) -> None:
    s = broker.session()
    for method, path, body in [("POST", "/approvals", {"Operation": "nope"}),
                               ("POST", "/approvals", {"Operation": "root-token", "Params": {"TtlSeconds": "x"}}),
                               ("POST", "/approvals", {"Operation": "\ud800"}),
                               ("GET", "/approvals/apr-zz", None),
                               ("POST", "/approvals/apr-" + "0" * 24 + "/approve", {}),
                               ("PUT", "/approvals/rules/root-token", {"Approvers": [], "Required": 1}),
                               ("GET", "/approvals?State=weird", None)]:
        r = s.request(method, broker.url(path), data=json.dumps(body) if body is not None else None,
                      headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert r.json()["error"]["code"]
