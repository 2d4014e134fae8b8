"""Key file formats: round trips, the OpenSSL Salted__ layout (checked against the openssl binary), damage."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from keyring_bridge import formats
from keyring_bridge.formats import FileKey, FormatError, mariadb_file, mysql_keyring_file


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_round_trip(fmt: str):
    keys = [FileKey("1", [os.urandom(32)]), FileKey("17", [os.urandom(16)])]
    back = formats.parse(fmt, formats.dump(fmt, keys))
    assert [(k.versions[-1]) for k in back] == [k.versions[-1] for k in keys]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")
def test_salted_form_matches_openssl_enc(tmp_path):
    plain = b"1;" + os.urandom(32).hex().encode() + b"\n2;" + os.urandom(16).hex().encode() + b"\n"
    (tmp_path / "k.txt").write_bytes(plain)
    subprocess.run(["openssl", "enc", "-aes-256-cbc", "-md", "sha1", "-pass", "pass:s3cret", "-in",
                    str(tmp_path / "k.txt"), "-out", str(tmp_path / "k.enc")], check=True, capture_output=True)
    parsed = mariadb_file.parse((tmp_path / "k.enc").read_bytes(), password=b"s3cret")
    assert [k.entry_id for k in parsed] == ["1", "2"]
    (tmp_path / "ours.enc").write_bytes(mariadb_file.encrypt(plain, b"s3cret"))
    out = subprocess.run(["openssl", "enc", "-d", "-aes-256-cbc", "-md", "sha1", "-pass", "pass:s3cret", "-in",
                          str(tmp_path / "ours.enc")], check=True, capture_output=True)
    assert out.stdout == plain


def test_mariadb_file_rules():
    with pytest.raises(FormatError):
        mariadb_file.parse(b"Salted__12345678" + b"\0" * 16)  # encrypted, no password
    with pytest.raises(FormatError):
        mariadb_file.parse(b"1;abcd\n")  # key too short
    with pytest.raises(FormatError):
        mariadb_file.dump([FileKey("1", [os.urandom(32), os.urandom(32)])])  # two versions: cannot be a key file
    assert [k.entry_id for k in mariadb_file.parse(b"# comment\n\n 3 ; " + b"ab" * 16 + b"\n")] == ["3"]


def test_mysql_ids_keep_user_and_type():
    doc = (b'{"version":"1.0","elements":[{"user":"root@localhost","data_id":"k1","data_type":"AES",'
           b'"data":"' + b"00" * 32 + b'","extension":[]}]}')
    (key,) = formats.parse("mysql-component-json", doc)
    assert key.entry_id == "root@localhost/k1" and key.custom_metadata["data_type"] == "AES"
    (again,) = formats.parse("mysql-keyring-file", formats.dump("mysql-keyring-file", [key]))
    assert again.entry_id == key.entry_id and again.versions == key.versions


def test_keyring_file_damage_is_detected():
    data = bytearray(mysql_keyring_file.dump([FileKey("a", [os.urandom(32)])]))
    data[40] ^= 1
    with pytest.raises(FormatError):
        mysql_keyring_file.parse(bytes(data))
