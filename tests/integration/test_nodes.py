"""Two nodes, each with its own data folder and SoftHSM token, on one PostgreSQL store.

Node B joins through a quorum-approved `node-join`: its HSM makes a transport key, approvers agree, executing the
request on node A has A's security officer trust B's transport key and wraps the root keys for it inside A's HSM;
B unwraps them inside its own. Afterwards B decrypts what A encrypted and serves the same keyring bytes.
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
from tests.support.postgres import start_postgres

CLI = [sys.executable, "-m", "broker.cli"]
PEOPLE = {"Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
    "broker:RequestApproval", "broker:Approve", "broker:Veto", "broker:ExecuteApproval", "broker:GetApproval",
    "broker:ListApprovals", "broker:JoinNode", "broker:ListNodes", "broker:RemoveNode"]}]}


def kmsb(*args: str, addr: str = "", token: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KMSB_ADDR": addr, "KMSB_TOKEN": token}
    env.pop("SOFTHSM2_CONF", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


@dataclass
class Cluster:
    a: RunningBroker
    store_url: str
    base: Path
    tokens: dict[str, str]
    blob: bytes
    keyring: list


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("nodes")
    postgres = start_postgres(base / "pg-logs")
    a = None
    try:
        url = postgres.create_database("kmsb_nodes")
        done = kmsb("init", "--data-dir", str(base / "a"), "--store-url", url, "--output", "json")
        assert done.returncode == 0, done.stderr
        root_token = json.loads(done.stdout)["root_token"]
        a = start_broker(base / "a", base / "logs", workers=1, name="node-a")
        a.root_token = root_token
        s = a.session()
        assert s.put(a.url("/policies/people"), json={"Document": PEOPLE}).status_code in (200, 204)
        tokens = {}
        for name in ("ops", "alice", "bob"):
            r = s.post(a.url("/auth/token/create"), json={"display_name": name, "policies": ["people"]})
            tokens[name] = r.json()["auth"]["client_token"]
        done = kmsb("approval", "configure", "node-join", "--approver", "alice", "--approver", "bob",
                    "--required", "2", "--cooling-off", "0s", addr=a.addr, token=root_token)
        assert done.returncode == 0, done.stderr
        key_id = s.post(a.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        r = s.post(a.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": base64.b64encode(b"made on A").decode(),
                                                           "EncryptionContext": {"app": "x"}})
        blob = base64.b64decode(r.json()["CiphertextBlob"])
        assert s.post(a.url("/keyring/mounts"), json={"Mount": "kv"}).ok
        assert s.post(a.url("/keyring/entries"), json={"Mount": "kv", "Id": "1"}).status_code == 201
        keyring = s.post(a.url("/keyring/export"), json={"Mount": "kv"}).json()["Entries"]
        yield Cluster(a, url, base, tokens, blob, keyring)
    finally:
        if a is not None:
            a.server.stop()
        postgres.stop()


def test_node_b_joins_after_a_quorum_and_serves_what_a_made(cluster: Cluster) -> None:
    a, t = cluster.a, cluster.tokens
    b_dir = cluster.base / "b"
    done = kmsb("node", "join", "--data-dir", str(b_dir), "--store-url", cluster.store_url, "--name", "b",
                "--reason", "capacity", "--output", "json", addr=a.addr, token=t["ops"])
    assert done.returncode == 0, done.stderr
    rid = json.loads(done.stdout)["request_id"]
    # not approved yet: B cannot finish, and has no root keys
    done = kmsb("node", "join", "--data-dir", str(b_dir))
    assert done.returncode == 1 and "not approved and executed" in done.stderr + done.stdout, done.stderr
    for approver in ("alice", "bob"):
        assert kmsb("approval", "approve", rid, addr=a.addr, token=t[approver]).returncode == 0
    done = kmsb("approval", "execute", rid, addr=a.addr, token=t["ops"])
    assert done.returncode == 0, done.stderr
    admitted = json.loads(done.stdout)["Result"]
    assert admitted["State"] == "admitted"
    done = kmsb("node", "join", "--data-dir", str(b_dir), "--output", "json")
    assert done.returncode == 0, done.stderr
    joined = json.loads(done.stdout)
    assert joined["root_fingerprint"] == admitted["RootFingerprint"]
    b = start_broker(b_dir, cluster.base / "logs-b", workers=1, name="node-b")
    try:
        s = b.session(a.root_token)  # one store: A's tokens are B's
        r = s.post(b.url("/decrypt"), json={"CiphertextBlob": base64.b64encode(cluster.blob).decode(),
                                            "EncryptionContext": {"app": "x"}})
        assert r.ok, r.text
        assert base64.b64decode(r.json()["Plaintext"]) == b"made on A"
        assert s.post(b.url("/keyring/export"), json={"Mount": "kv"}).json()["Entries"] == cluster.keyring
        # and the other way round: A decrypts what B encrypts
        key_id = s.post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        blob = s.post(b.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": "aGk="}).json()["CiphertextBlob"]
        assert a.session().post(a.url("/decrypt"), json={"CiphertextBlob": blob}).json()["Plaintext"] == "aGk="
    finally:
        b.server.stop()
    nodes = json.loads(kmsb("node", "list", "--output", "json", addr=a.addr, token=t["ops"]).stdout)
    assert [(n["Name"], n["State"], n["RootFingerprint"]) for n in nodes] == [("b", "joined", joined["root_fingerprint"])]
    assert kmsb("audit", "verify", "--data-dir", str(b_dir)).returncode == 0
    # the request ran once; joining again is refused
    done = kmsb("approval", "execute", rid, addr=a.addr, token=t["ops"])
    assert done.returncode == 1 and "executed" in done.stderr
    done = kmsb("node", "join", "--data-dir", str(b_dir))
    assert done.returncode == 2 and "joined already" in done.stderr


def test_a_join_needs_the_quorum_and_is_refused_to_bad_input(cluster: Cluster) -> None:
    a, t = cluster.a, cluster.tokens
    c_dir = cluster.base / "c"
    done = kmsb("node", "join", "--data-dir", str(c_dir), "--store-url", cluster.store_url, "--name", "c",
                "--output", "json", addr=a.addr, token=t["alice"])
    assert done.returncode == 0, done.stderr
    rid = json.loads(done.stdout)["request_id"]
    done = kmsb("approval", "approve", rid, addr=a.addr, token=t["alice"])
    assert done.returncode == 1 and "requester" in done.stderr
    assert kmsb("approval", "approve", rid, addr=a.addr, token=t["bob"]).returncode == 0
    done = kmsb("approval", "execute", rid, addr=a.addr, token=t["ops"])
    assert done.returncode == 1 and "1 of 2" in done.stderr
    assert kmsb("approval", "veto", rid, addr=a.addr, token=t["bob"]).returncode == 1  # bob voted already
    done = kmsb("node", "join", "--data-dir", str(c_dir))
    assert done.returncode == 1 and "not approved and executed" in done.stderr
    for args, match in [(["--name", "Bad_Name"], "lower-case"), (["--name", "x"], "needs --store-url")]:
        done = kmsb("node", "join", "--data-dir", str(cluster.base / "d"), *args, addr=a.addr, token=t["ops"])
        assert done.returncode == 2 and match in done.stderr and "Traceback" not in done.stderr
    done = kmsb("node", "remove", "c", addr=a.addr, token=t["ops"])
    assert done.returncode == 1 and "NotFound" in done.stderr  # never admitted: nothing to remove
