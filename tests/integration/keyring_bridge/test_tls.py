"""The bridge's own TLS listener (--keyring-cert/--keyring-key) with a real mariadbd trusting it via vault-ca."""

from __future__ import annotations

import pytest
import requests

from tests.integration.keyring_bridge.support import (
    MariaDB,
    hashicorp_options,
    have_mariadb,
    make_tls,
    start_bridge,
)


def test_mariadb_reads_keys_over_tls_and_failures_still_drop(tmp_path_factory):
    base = tmp_path_factory.mktemp("keyring-tls")
    cert, key, ca = make_tls(base / "tls")
    bridge = start_bridge(base / "broker", tls=(cert, key, ca))
    try:
        assert bridge.vault.startswith("https://")
        bridge.cli("keyring", "create", "--mount", "tls/mdb", "--id", "1")
        token = bridge.db_token("tls/mdb")[0]
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{bridge.vault}/v1/sys/health", timeout=5)  # not trusted without the CA
        r = requests.get(f"{bridge.vault}/v1/tls/mdb/data/1", headers={"X-Vault-Token": token}, verify=str(ca))
        assert r.status_code == 200 and r.json()["data"]["metadata"]["version"] == 1

        audit = bridge.data_dir / "audit" / "audit.jsonl"
        audit.rename(audit.with_name("audit.saved"))
        audit.mkdir()
        try:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{bridge.vault}/v1/tls/mdb/data/1", headers={"X-Vault-Token": token},
                             verify=str(ca), timeout=5)
        finally:
            audit.rmdir()
            audit.with_name("audit.saved").rename(audit)

        if not have_mariadb():
            pytest.skip("mariadb-server + hashicorp plugin not installed: HTTP-level TLS checks only")
        db = MariaDB(base / "mariadb")
        db.install()
        db.options = hashicorp_options(bridge, "tls/mdb", token, **{"hashicorp-key-management-vault-ca": str(ca)})
        db.start()
        try:
            db.query("CREATE DATABASE t")
            db.query("CREATE TABLE t.x (id INT) ENGINE=InnoDB ENCRYPTED=YES ENCRYPTION_KEY_ID=1")
            db.query("INSERT INTO t.x VALUES (1), (2)")
            assert db.query("SELECT COUNT(*) FROM t.x") == [(2,)]
        finally:
            db.stop()
    finally:
        bridge.stop()
