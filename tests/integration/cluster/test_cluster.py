"""Three broker nodes (own data folders and SoftHSM tokens, joined with `kms-broker node join`) on one PostgreSQL,
HAProxy in front of their APIs and keyring bridges, a MariaDB reading its keys through HAProxy. One cluster, one
story, in order: a node is killed with SIGKILL under load, then PostgreSQL is restarted under load, then the
background jobs run on all three nodes at once under a driven clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from broker.client import BrokerClient
from tests.integration.cluster.load import Load
from tests.integration.keyring_bridge.support import MariaDB, have_mariadb
from tests.support.cluster import Cluster, build_cluster, have_haproxy, kmsb

pytestmark = [
    pytest.mark.skipif(not have_haproxy(), reason="haproxy is not installed (scripts/bootstrap.sh --test)"),
    pytest.mark.skipif(not have_mariadb(), reason="mariadb + hashicorp plugin not installed"),
    pytest.mark.timeout(900),
]
MOUNT = "kv/cluster"
THREADS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    running = build_cluster(tmp_path_factory.mktemp("cluster"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key_id(cluster: Cluster) -> str:
    return BrokerClient(cluster.haproxy.addr, cluster.root_token).create_key(description="cluster load")["KeyId"]


@pytest.fixture(scope="module")
def mariadb(cluster: Cluster, tmp_path_factory):
    """A MariaDB whose keyring plugin asks HAProxy's bridge port (any node may answer), re-fetching every second."""
    addr, root = cluster.haproxy.addr, cluster.root_token
    kmsb("keyring", "create", "--mount", MOUNT, "--id", "1", "--id", "2", addr=addr, token=root)
    token = json.loads(kmsb("keyring", "token", "create", "--mount", MOUNT, "--output", "json",
                            addr=addr, token=root).stdout)["token"]
    db = MariaDB(tmp_path_factory.mktemp("mariadb"))
    db.install()
    db.options = {
        "plugin_load_add": "hashicorp_key_management",
        "hashicorp-key-management-vault-url": f"{cluster.haproxy.vault}/v1/{MOUNT}",
        "hashicorp-key-management-token": token,
        "hashicorp-key-management-timeout": "2",
        "hashicorp-key-management-max-retries": "2",
        "hashicorp-key-management-cache-version-timeout": "1000",
        "innodb_encrypt_tables": "ON",
        "innodb_encrypt_log": "ON",
    }
    db.start()
    db.query("CREATE DATABASE c")
    db.query("CREATE TABLE c.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB ENCRYPTED=YES "
             "ENCRYPTION_KEY_ID=2")
    yield db
    db.stop()


class DatabaseLoad:
    """A thread writing to an encrypted table and asking I_S for key versions (which makes the plugin re-fetch)."""

    def __init__(self, db: MariaDB) -> None:
        self.db, self.rows, self.failures = db, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.db.query("INSERT INTO c.t (v) VALUES ('under load')")
                self.rows += 1
                self.db.query("SELECT * FROM information_schema.INNODB_TABLESPACES_ENCRYPTION")
            except Exception as exc:  # noqa: BLE001 - counted: the test says how many there may be (none)
                self.failures.append(type(exc).__name__)

    def __enter__(self) -> DatabaseLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def _check_acknowledged(cluster: Cluster, load: Load) -> None:
    """Every acknowledged answer still holds: its ciphertext decrypts (through HAProxy) and its audit record is in
    some node's chain as allowed."""
    client = BrokerClient(cluster.haproxy.addr, cluster.root_token, retries=6, backoff=0.2)
    for ack in {a.blob: a for a in load.acks}.values():
        assert client.decrypt(ack.blob, ack.context) == ack.plaintext
    allowed = {r.get("request_id") for r in cluster.audit_records() if r.get("outcome") == "allowed"}
    lost = [a.request_id for a in load.acks if a.request_id not in allowed]
    assert not lost, f"{len(lost)} acknowledged requests have no audit record: {lost[:5]}"


def _verify_chains(cluster: Cluster) -> None:
    for node in cluster.nodes:
        done = kmsb("audit", "verify", "--data-dir", str(node.data_dir), check=False)
        assert done.returncode == 0, f"node {node.name}: {done.stdout[-1500:]} {done.stderr[-1500:]}"


def test_kill9_of_a_node_under_load(cluster: Cluster, key_id: str, mariadb: MariaDB):
    victim = cluster.node("b")
    with DatabaseLoad(mariadb) as dbload:
        load = Load(cluster.haproxy.addr, cluster.root_token, key_id, threads=THREADS).start()
        try:
            load.wait_for(15)
            victim.kill9()
            load.wait_for(30)
        finally:
            load.stop()
        assert mariadb.alive(), f"mariadbd died:\n{mariadb.tail()}"
    # Retryable errors are bounded: the requests in flight on the dead node, retried by the client on another.
    assert load.errors == [], load.errors
    assert 1 <= load.retried <= 2 * THREADS, load.retried  # the kill was felt (4 connections span 3 nodes)
    assert sum(load.ops) >= THREADS * 45
    assert dbload.failures == [] and dbload.rows > 0
    assert mariadb.query("SELECT COUNT(*) FROM c.t")[0][0] == dbload.rows
    assert "Assertion failure" not in mariadb.tail(200)
    victim.start()  # an operator restarts the node; its audit writer recovers the chain's tail
    _check_acknowledged(cluster, load)
    _verify_chains(cluster)


def test_postgres_restart_under_load(cluster: Cluster, key_id: str):
    """PostgreSQL stopped and started again while clients run: every node reports not ready while it is down and,
    once what it read before the stop is past its cache bounds (auth and key metadata, 1 s each), answers 503 (never
    a 500); every node serves again once it is back, same processes, no restart, and its chain verifies (the store
    copy of what was written meanwhile is caught up from the file)."""
    pids = {n.name: n.server.pid for n in cluster.nodes}
    addrs = [n.addr for n in cluster.nodes]  # straight to the nodes: every answer is a node's own
    load = Load(addrs, cluster.root_token, key_id, threads=THREADS).start()
    try:
        load.wait_for(10)
        cluster.pg.halt()
        try:
            s = cluster.session()
            for node in cluster.nodes:
                deadline = time.monotonic() + 10  # the caches' bounds, with room for a loaded machine
                while True:
                    r = s.post(f"{node.addr}/v1/keys/{key_id}/encrypt", json={"Plaintext": "aGk="}, timeout=30)
                    if r.status_code != 200 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)  # served from what the node read within its cache bounds, audited in its file
                assert r.status_code == 503 and r.json()["error"]["code"] == "ServiceUnavailableException", r.text
                r = s.get(f"{node.addr}/v1/ready", timeout=30)
                assert r.status_code == 503 and r.json()["store"].startswith("unavailable"), r.text
        finally:
            cluster.pg.resume(cluster.base / "pg-logs")
        back = list(load.ops)
        load.wait_for(15)
    finally:
        load.stop()
    assert all(o >= b + 15 for o, b in zip(load.ops, back, strict=True)), (back, load.ops)  # the load recovered
    assert {status for status, _ in load.errors} <= {503, 0}, load.errors  # never a 500
    s = cluster.session()
    for node in cluster.nodes:  # each node on its own, first time (the load's client may have kept to one)
        r = s.post(f"{node.addr}/v1/keys/{key_id}/encrypt", json={"Plaintext": "aGk="}, timeout=30)
        assert r.status_code == 200, (node.name, r.text)
        assert s.get(f"{node.addr}/v1/ready", timeout=30).status_code == 200, node.name
    assert {n.name: n.server.pid for n in cluster.nodes} == pids and all(n.alive() for n in cluster.nodes)
    _check_acknowledged(cluster, load)
    _verify_chains(cluster)
    for node in cluster.nodes:
        assert "Traceback" not in node.server.log_path.read_text()


def test_background_jobs_run_once_across_three_nodes(cluster: Cluster):
    """Due deletions, rotations and keyring rotation schedules, with every node ticking at the same driven instant:
    each job runs on exactly one node per period, and each due change happens exactly once."""
    addr, root = cluster.haproxy.addr, cluster.root_token
    client = BrokerClient(addr, root)
    doomed = client.create_key(description="doomed")["KeyId"]
    client.schedule_key_deletion(doomed, 7)
    rotating = client.create_key(description="rotating")["KeyId"]
    client.call("PUT", f"/keys/{rotating}/rotation", {"RotationPeriodInDays": 90})
    kmsb("keyring", "create", "--mount", "kv/jobs", "--id", "1", "--rotation-period", "1d", addr=addr, token=root)

    t0 = datetime.now(UTC) + timedelta(days=91)
    ticks = [t0, t0 + timedelta(seconds=10), t0 + timedelta(days=2)]
    outcomes = []
    for tick in ticks:
        procs = [_run_due(node.data_dir, tick) for node in cluster.nodes]
        done = [p.communicate(timeout=300) for p in procs]
        assert all(out.strip() for out, _ in done), done  # each node printed its round (stderr says why not)
        outcomes.append([json.loads(out) for out, _ in done])
    ran = [{job: sum(o[job] == "ran" for o in tick) for job in ("keys", "keyring-rotation")} for tick in outcomes]
    assert ran == [{"keys": 1, "keyring-rotation": 1}, {"keys": 0, "keyring-rotation": 0},
                   {"keys": 1, "keyring-rotation": 1}], outcomes

    assert client.describe_key(rotating)["KeyState"] == "Enabled"
    assert [v["KeyVersion"] for v in client.list_key_versions(rotating)["Versions"]] == [1, 2]
    entries = json.loads(kmsb("keyring", "list", "--mount", "kv/jobs", "--output", "json", addr=addr,
                              token=root).stdout)
    assert [v["Version"] for v in entries[0]["Versions"]] == [1, 2, 3]
    engine = create_engine(cluster.store_url)
    try:
        with engine.connect() as conn:
            destroyed = conn.execute(text(
                "SELECT chain FROM audit_events WHERE action = 'broker:DestroyKey' AND key_id = :k "
                "AND outcome = 'allowed'"), {"k": doomed}).all()
            runs = dict(conn.execute(text("SELECT name, runs FROM job_leases")).all())
            state = conn.execute(text("SELECT state FROM keys WHERE key_id = :k"), {"k": doomed}).scalar()
    finally:
        engine.dispose()
    assert len(destroyed) == 1 and state == "Destroyed", (destroyed, state)
    assert runs["keys"] >= 2 and runs["keyring-rotation"] >= 2


def _run_due(data_dir, now: datetime) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    return subprocess.Popen([sys.executable, "-m", "broker.cli", "jobs", "run-due", "--data-dir", str(data_dir),
                             "--now", now.isoformat(), "--output", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_a_backup_schedule_on_every_node_makes_one_backup_per_period(cluster: Cluster, tmp_path):
    """`backup create --every 1h` started on all three nodes at once: one node wins the period's lease and writes
    the archive, the other two say it is not their turn (and would take over if that node died)."""
    first = cluster.nodes[0]
    kmsb("backup", "custodians", "--shares", "3", "--threshold", "2", "--data-dir", str(first.data_dir),
         "--output", "json")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    procs, logs = [], []
    for node in cluster.nodes:
        log = tmp_path / f"backup-{node.name}.log"
        logs.append(log)
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "backup", "create", "--every", "1h", "--out-dir",
                 str(tmp_path / f"backups-{node.name}"), "--data-dir", str(node.data_dir)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    try:
        deadline = time.monotonic() + 300  # a bound on waiting for each node's first round, not a check
        while not all(log.exists() and log.read_text().strip() for log in logs) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(60)
    said = [log.read_text() for log in logs]
    archives = sorted(tmp_path.glob("backups-*/kmsb-backup-*.kmsb"))
    assert len(archives) == 1, (archives, said)
    assert sum("written to" in s for s in said) == 1 and sum("not due" in s for s in said) == 2, said
    done = kmsb("backup", "verify", str(archives[0]), check=False)
    assert done.returncode == 0, done.stderr


def test_a_sync_schedule_on_every_node_applies_once_per_period(cluster: Cluster, tmp_path):
    """`sync apply --every 1h` started on all three nodes at once, one round each, under a driven clock: in each
    period one node applies the manifest and the other two say it is not their turn. A key added to the manifest
    within a period waits for the next one, and then exists once."""
    manifest = tmp_path / "cluster.yaml"
    keys = "manifest: cluster-sync\nkeys:\n  - name: shared-db\n    targets: [hsm]\n    aliases: [alias/cluster-sync-db]\n"
    more = "  - name: shared-cache\n    targets: [hsm]\n    aliases: [alias/cluster-sync-cache]\n"
    client = BrokerClient(cluster.haproxy.addr, cluster.root_token)

    def aliases() -> list[str]:
        return [a["AliasName"] for a in client.list_aliases()["Aliases"]]

    t0 = datetime.now(UTC) + timedelta(days=400)
    manifest.write_text(keys)
    first = _sync_round(cluster, manifest, t0)
    manifest.write_text(keys + more)
    same_period = _sync_round(cluster, manifest, t0 + timedelta(minutes=10))
    assert "alias/cluster-sync-cache" not in aliases()
    next_period = _sync_round(cluster, manifest, t0 + timedelta(hours=1, minutes=1))
    assert [sorted(r.get("mode", r.get("status")) for r in round_) for round_ in (first, same_period, next_period)] \
        == [["apply", "not due", "not due"], ["not due"] * 3, ["apply", "not due", "not due"]], (first, next_period)
    now = aliases()
    assert now.count("alias/cluster-sync-db") == 1 and now.count("alias/cluster-sync-cache") == 1, now


def _sync_round(cluster: Cluster, manifest, at: datetime) -> list[dict]:
    """`sync apply --every 1h` on every node at once, one round at the driven time `at`: each node's report."""
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    procs = [subprocess.Popen([sys.executable, "-m", "broker.cli", "sync", "apply", str(manifest), "--data-dir",
                               str(node.data_dir), "--every", "1h", "--max-runs", "1", "--now", at.isoformat(),
                               "--no-inventory", "--output", "json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for node in cluster.nodes]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(out.strip() for out, _ in outs), outs  # each node printed its round (stderr says why not)
    return [json.loads(out.strip().splitlines()[-1]) for out, _err in outs]
