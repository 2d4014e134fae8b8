"""Store outage while mariadbd runs: the bridge on a real PostgreSQL store, PostgreSQL stopped and started again.

The bridge cannot read keys or tokens, so it must drop the database's connections (never a 5xx). mariadbd keeps
running from its cache, and works normally once the store is back. The audit goes to the file sink only here, so this
is the store path on its own, not the audit path (test_mariadb covers that one).
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import requests

from broker.auth import TokenAuth
from broker.store import Store
from tests.integration.keyring_bridge.support import (
    Bridge,
    MariaDB,
    hashicorp_options,
    have_mariadb,
)
from tests.support.broker import init_data_dir
from tests.support.postgres import _as_user, _os_user, pg_bin_dir, start_postgres
from tests.support.procs import free_port, start_server

pytestmark = pytest.mark.skipif(not have_mariadb(), reason="mariadb-server + hashicorp plugin not installed")
MOUNT = "pg/mdb"


def _restart_postgres(pg, log_dir) -> None:
    """Start the same cluster again (same data dir, port, sockets) after a fast shutdown."""
    cmd = _as_user(_os_user(), [str(pg_bin_dir() / "postgres"), "-D", str(pg.root / "data"), "-h", "127.0.0.1",
                                "-p", str(pg.port), "-k", str(pg.root / "sock"), "-c", "fsync=off",
                                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                "-c", "max_connections=50"])

    def ready() -> bool:
        import psycopg

        with psycopg.connect(pg.url("postgres", driver="postgresql"), connect_timeout=2):
            return True

    pg.server = start_server("postgres-again", cmd, log_dir=log_dir, ready=ready, cwd=pg.root, timeout=60)


def _stop_postgres(pg) -> None:
    proc = pg.server.proc
    os.kill(proc.pid, signal.SIGINT)  # fast shutdown of exactly our postmaster
    proc.wait(30)


def test_store_down_drops_connections_and_mariadb_survives(tmp_path_factory):
    base = tmp_path_factory.mktemp("keyring-pg")
    pg = start_postgres(base / "pg-logs")
    db = None
    bridge = None
    try:
        url = pg.create_database("kmsb_keyring")
        data_dir = base / "broker" / "data"
        init_data_dir(data_dir)
        config = data_dir / "broker.toml"
        config.write_text(re.sub(r'^store_url = .*$', f'store_url = "{url}"', config.read_text(), flags=re.M)
                          + 'audit_sinks = ["file"]\n')
        store = Store(url)
        store.migrate()
        root, _ = TokenAuth(store).create("root", ["root"])
        store.dispose()
        bridge = Bridge(data_dir, base / "broker" / "logs", free_port(), free_port(), root)
        bridge.start()
        bridge.cli("keyring", "create", "--mount", MOUNT, "--id", "1", "--id", "2")
        token = bridge.db_token(MOUNT)[0]

        db = MariaDB(base / "mariadb")
        db.install()
        db.options = hashicorp_options(bridge, MOUNT, token,
                                       **{"hashicorp-key-management-cache-version-timeout": "1000"})
        db.start()
        db.query("CREATE DATABASE s")
        db.query("CREATE TABLE s.t (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB ENCRYPTED=YES "
                 "ENCRYPTION_KEY_ID=2")
        db.query("INSERT INTO s.t VALUES (1, 'before the outage')")

        _stop_postgres(pg)
        try:
            time.sleep(1.5)  # past the bridge's token cache and the plugin's version cache
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{bridge.vault}/v1/{MOUNT}/data/2", headers={"X-Vault-Token": token}, timeout=10)
            for i in range(3):
                db.query("SELECT * FROM information_schema.INNODB_TABLESPACES_ENCRYPTION")
                db.query("INSERT INTO s.t VALUES (%s, 'during the outage')", (10 + i,))
                db.query("FLUSH TABLES s.t FOR EXPORT")
                db.query("UNLOCK TABLES")
                time.sleep(1)
            # Vault's health codes: a node that cannot serve keys is "sealed" (503, or the sealedcode asked for),
            # so a load balancer's check takes it out of rotation; seal-status says the same
            health = requests.get(f"{bridge.vault}/v1/sys/health", timeout=10)
            assert health.status_code == 503, health.text
            assert health.json()["sealed"] is True and "store" in health.json()["kmsb_not_ready"]
            assert requests.get(f"{bridge.vault}/v1/sys/health", params={"sealedcode": "200"},
                                timeout=10).status_code == 200
            assert requests.get(f"{bridge.vault}/v1/sys/seal-status", timeout=10).json()["sealed"] is True
            assert db.alive(), f"mariadbd died:\n{db.tail()}"
            assert "Assertion failure" not in db.tail(200)
            assert "dropped a connection" in bridge.server.log_tail(400)
            assert " 500 " not in bridge.server.log_tail(400)
        finally:
            _restart_postgres(pg, base / "pg-logs")
        deadline = time.monotonic() + 20
        while True:
            try:
                r = requests.get(f"{bridge.vault}/v1/{MOUNT}/data/2", headers={"X-Vault-Token": token}, timeout=10)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert r.status_code == 200
        health = requests.get(f"{bridge.vault}/v1/sys/health", timeout=10)
        assert (health.status_code, health.json()["sealed"]) == (200, False)
        assert db.query("SELECT COUNT(*) FROM s.t") == [(4,)]
        db.restart()
        assert db.query("SELECT v FROM s.t WHERE id = 1") == [("before the outage",)]
    finally:
        if db is not None:
            db.stop()
        if bridge is not None:
            bridge.stop()
        pg.stop()
