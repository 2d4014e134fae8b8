"""Migration in and out: a mariadbd on file_key_management (encrypted Salted__ key file) moves to the bridge without
losing a key, then leaves again with an exported key file — the same rows readable at every step."""

from __future__ import annotations

import json
import os

import pytest

from keyring_bridge.formats import mariadb_file
from tests.integration.keyring_bridge.support import Bridge, MariaDB, hashicorp_options, have_mariadb

pytestmark = pytest.mark.skipif(not have_mariadb(), reason="mariadb-server + mariadb-plugin-hashicorp-key-"
                                "management are not installed (scripts/bootstrap.sh --test)")

MOUNT = "kv/migrated"


def _file_options(key_file, password_file) -> dict[str, str]:
    return {"plugin_load_add": "file_key_management", "file_key_management_filename": str(key_file),
            "file_key_management_filekey": f"FILE:{password_file}",
            "file_key_management_encryption_algorithm": "AES_CBC",
            "innodb_encrypt_tables": "ON", "innodb_encrypt_log": "ON"}


def test_file_key_management_to_bridge_and_back(bridge: Bridge, tmp_path_factory):
    base = tmp_path_factory.mktemp("migration")
    password_file = base / "filekey"
    password_file.write_bytes(os.urandom(24).hex().encode())
    os.chmod(password_file, 0o600)
    keys = {1: os.urandom(32), 5: os.urandom(32)}
    plain = "".join(f"{i};{k.hex()}\n" for i, k in keys.items()).encode()
    key_file = base / "keys.enc"
    key_file.write_bytes(mariadb_file.encrypt(plain, password_file.read_bytes()))

    db = MariaDB(base / "server")
    db.install()
    db.options = _file_options(key_file, password_file)
    db.start()
    try:
        db.query("CREATE DATABASE app")
        db.query("CREATE TABLE app.orders (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB ENCRYPTED=YES "
                 "ENCRYPTION_KEY_ID=5")
        db.query("INSERT INTO app.orders VALUES (1, 'first'), (2, 'second'), (3, 'third')")
        before = db.query("SELECT * FROM app.orders ORDER BY id")
        db.stop()

        # In: import the key file (its password from a file), mint the database's token, switch plugins.
        out = bridge.cli("keyring", "import", "--mount", MOUNT, "--format", "mariadb-file", "--file", str(key_file),
                         "--password-file", str(password_file), "--output", "json")
        assert sorted(json.loads(out.stdout)["Imported"]) == ["1", "5"]
        again = bridge.cli("keyring", "import", "--mount", MOUNT, "--format", "mariadb-file", "--file",
                           str(key_file), "--password-file", str(password_file), "--output", "json")
        assert sorted(json.loads(again.stdout)["Unchanged"]) == ["1", "5"], "a second import changes nothing"
        token, _ = bridge.db_token(MOUNT)
        db.options = hashicorp_options(bridge, MOUNT, token)
        db.start()
        assert db.query("SELECT * FROM app.orders ORDER BY id") == before
        assert db.query("CHECK TABLE app.orders")[-1][-1] == "OK"
        db.query("INSERT INTO app.orders VALUES (4, 'written under the bridge')")
        after = db.query("SELECT * FROM app.orders ORDER BY id")
        db.stop()

        # Out: export (encrypted with a new password) and go back to file_key_management.
        out_file, out_password = base / "exported.enc", base / "exported.pw"
        out_password.write_text("correct horse battery staple")
        refused = bridge.cli("keyring", "export", "--mount", MOUNT, "--format", "mariadb-file", "--out",
                             str(key_file), "--password-file", str(out_password), "--yes", check=False)
        assert refused.returncode != 0 and "refusing to overwrite" in refused.stderr
        exported = bridge.cli("keyring", "export", "--mount", MOUNT, "--format", "mariadb-file", "--out",
                              str(out_file), "--password-file", str(out_password), "--yes")
        assert "WARNING" in exported.stderr
        assert oct(out_file.stat().st_mode & 0o777) == "0o600"
        parsed = mariadb_file.parse(out_file.read_bytes(), password=out_password.read_bytes())
        assert {int(k.entry_id): k.versions[0] for k in parsed} == keys
        db.options = _file_options(out_file, out_password)
        db.start()
        assert db.query("SELECT * FROM app.orders ORDER BY id") == after
    finally:
        db.stop()
