"""`kms-broker keyring …`: keyring entries, rotation, tokens, import/export of database key files.

Talks to the broker's native API (KMSB_ADDR, KMSB_TOKEN); key files are parsed and written here, on the operator's
machine. The database's vault URL is `http://HOST:PORT/v1/<mount>` of `kms-broker serve --keyring-bind HOST:PORT`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from broker.client import BrokerClient
from keyring_bridge import formats

OUTPUT = click.option("--output", "output", type=click.Choice(["text", "json"]), default="text",
                      help="text for people, json for scripts")
MOUNT = click.option("--mount", required=True, help="the database's mount, e.g. kv/mdb (vault URL …/v1/<mount>)")
_PERIOD = re.compile(r"^(\d{1,9})([smhd]?)$")


def _emit(output: str, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if output == "json" else text)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _client() -> BrokerClient:
    return BrokerClient()


def _seconds(value: str) -> int:
    m = _PERIOD.match(value.strip())
    if not m:
        raise click.BadParameter(f"{value!r}: use e.g. 3600, 90m, 12h or 30d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _password(password_file: Path | None, password_env: str | None) -> bytes | None:
    if password_file and password_env:
        _fail("give --password-file or --password-env, not both")
    if password_file:
        value = password_file.read_bytes()
        return value.rstrip(b"\r\n")  # what file_key_management_filekey=FILE:<path> reads: the first line
    if password_env:
        if password_env not in os.environ:
            _fail(f"environment variable {password_env} is not set")
        return os.environ[password_env].encode()
    return None


PASSWORD_FILE = click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                             default=None, help="file holding the key file's password (Salted__ form)")
PASSWORD_ENV = click.option("--password-env", default=None, help="environment variable holding the password")


@click.group("keyring")
def keyring() -> None:
    """MySQL/MariaDB keyring bridge: entries (mount + id) with versions, born in the HSM."""


@keyring.command("create")
@MOUNT
@click.option("--id", "ids", required=True, multiple=True, help="entry id (MariaDB: the key id, e.g. 1); repeatable")
@click.option("--key-bytes", type=click.Choice(["16", "24", "32"]), default="32", show_default=True)
@click.option("--rotation-period", default=None, help="rotate automatically, e.g. 30d (at least 60s)")
@OUTPUT
def create(mount: str, ids: tuple[str, ...], key_bytes: str, rotation_period: str | None, output: str) -> None:
    """Create entries whose version 1 is generated in the HSM."""
    period = _seconds(rotation_period) if rotation_period else None
    out = [_client().call("POST", "/keyring/entries", {"Mount": mount, "Id": i, "KeyBytes": int(key_bytes),
                                                       "RotationPeriodSeconds": period}) for i in ids]
    _emit(output, out, "\n".join(f"created {o['Mount']}/{o['Id']} version {o['Version']}" for o in out))


@keyring.command("rotate")
@MOUNT
@click.option("--id", "entry_id", required=True)
@OUTPUT
def rotate(mount: str, entry_id: str, output: str) -> None:
    """Add version N+1 (born in the HSM); older versions stay readable for the database's re-encryption."""
    out = _client().call("POST", "/keyring/entries/rotate", {"Mount": mount, "Id": entry_id})
    _emit(output, out, f"rotated {out['Mount']}/{out['Id']}: version {out['Version']} is now the latest")


@keyring.command("schedule")
@MOUNT
@click.option("--id", "entry_id", required=True)
@click.option("--period", required=True, help="e.g. 90d, or 'off' to stop scheduled rotation")
@OUTPUT
def schedule(mount: str, entry_id: str, period: str, output: str) -> None:
    """Rotate an entry every PERIOD (the bridge's job loop and `keyring rotate-due` apply it)."""
    seconds = None if period == "off" else _seconds(period)
    out = _client().call("POST", "/keyring/entries/rotation", {"Mount": mount, "Id": entry_id,
                                                               "PeriodSeconds": seconds})
    _emit(output, out, f"{mount}/{entry_id}: " + (f"rotates every {seconds}s" if seconds else "no scheduled rotation"))


@keyring.command("rotate-due")
@OUTPUT
def rotate_due(output: str) -> None:
    """Rotate now every entry whose rotation period has passed (for cron, besides the bridge's own loop)."""
    out = _client().call("POST", "/keyring/rotate-due")
    _emit(output, out, "\n".join(f"rotated {r}" for r in out["Rotated"]) or "nothing due")


@keyring.command("list")
@click.option("--mount", default=None, help="only this mount")
@OUTPUT
def list_(mount: str | None, output: str) -> None:
    """Entries and their versions."""
    out = _client().call("GET", "/keyring/entries", params={"mount": mount} if mount else None)["Entries"]
    lines = []
    for e in out:
        versions = ", ".join(f"v{v['Version']} {v['Origin']} {v['CreatedAt']}" for v in e["Versions"])
        lines.append(f"{e['Mount']}/{e['Id']}  latest v{e['LatestVersion']}  [{versions}]")
    _emit(output, out, "\n".join(lines) or "no entries")


@keyring.command("mount")
@MOUNT
@click.option("--kv-version", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="KV layout the database's plugin uses (MariaDB: 2)")
@OUTPUT
def mount_(mount: str, kv_version: str, output: str) -> None:
    """Register a mount's KV version (unregistered mounts answer as KV v2)."""
    out = _client().call("POST", "/keyring/mounts", {"Mount": mount, "KvVersion": int(kv_version)})
    _emit(output, out, f"{mount}: KV version {kv_version}")


@keyring.command("import")
@MOUNT
@click.option("--format", "fmt", type=click.Choice(formats.FORMATS), required=True)
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@PASSWORD_FILE
@PASSWORD_ENV
@OUTPUT
def import_(mount: str, fmt: str, path: Path, password_file: Path | None, password_env: str | None,
            output: str) -> None:
    """Import a database key file: each key keeps its material as version 1 (what the data on disk needs)."""
    try:
        keys = formats.parse(fmt, path.read_bytes(), password=_password(password_file, password_env))
    except formats.FormatError as exc:
        _fail(f"{path}: {exc}")
    entries = [{"Id": k.entry_id, "Versions": [base64.b64encode(v).decode() for v in k.versions],
                "CustomMetadata": k.custom_metadata} for k in keys]
    out = _client().call("POST", "/keyring/import", {"Mount": mount, "Entries": entries})
    _emit(output, out, f"imported {len(out['Imported'])} entries into {mount}"
                       + (f"; {len(out['Unchanged'])} already present with the same material" if out["Unchanged"]
                          else ""))


@keyring.command("export")
@MOUNT
@click.option("--format", "fmt", type=click.Choice(formats.FORMATS), required=True)
@click.option("--out", "path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="file to create (never overwritten; mode 0600)")
@PASSWORD_FILE
@PASSWORD_ENV
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def export(mount: str, fmt: str, path: Path, password_file: Path | None, password_env: str | None,
           yes: bool) -> None:
    """Write the mount's keys to a database key file, IN PLAINTEXT unless the format is encrypted with a password."""
    password = _password(password_file, password_env)
    if password and fmt != "mariadb-file":
        _fail("only mariadb-file supports a password (the Salted__ aes-256-cbc form)")
    click.echo("WARNING: this writes the database's encryption keys OUT of the HSM-backed broker"
               + ("" if password else " IN PLAINTEXT") + f" to {path}.\n"
               "Anyone who reads that file can decrypt the database's data. Keep it on an encrypted volume, "
               "restrict access, and destroy it when the migration is done.", err=True)
    if not yes and not click.confirm("Export the keys?", err=True):
        _fail("nothing exported")
    if path.exists():
        _fail(f"{path} exists; refusing to overwrite it")
    out = _client().call("POST", "/keyring/export", {"Mount": mount})
    keys = []
    for e in out["Entries"]:
        versions = []
        for v in e["Versions"]:
            value = v["Secret"].get("data") if isinstance(v["Secret"], dict) else None
            try:
                versions.append(bytes.fromhex(value))
            except (TypeError, ValueError):
                _fail(f"entry {e['Id']} version {v['Version']} does not hold a hex key; it cannot go to {fmt}")
        keys.append(formats.FileKey(e["Id"], versions, e.get("CustomMetadata") or {}))
    try:
        data = formats.dump(fmt, keys, password=password)
    except formats.FormatError as exc:
        _fail(str(exc))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    click.echo(f"exported {len(keys)} entries of {mount} to {path}", err=True)


@keyring.group("token")
def token() -> None:
    """Broker tokens for databases."""


@token.command("create")
@MOUNT
@click.option("--ttl", default=None, help="expiry, e.g. 30d (default: none; an expired token stops the database)")
@OUTPUT
def token_create(mount: str, ttl: str | None, output: str) -> None:
    """A token with policy keyring:<mount> (reads and writes that mount only), for the database's plugin config."""
    out = _client().call("POST", "/keyring/tokens", {"Mount": mount, "TtlSeconds": _seconds(ttl) if ttl else None})
    _emit(output, {"token": out["token"], "accessor": out["accessor"], "policies": out["policies"]}, out["token"])


@keyring.group("approle")
def approle() -> None:
    """AppRoles (role_id + secret_id) for keyrings that log in (MySQL keyring_hashicorp)."""


@approle.command("create")
@MOUNT
@click.option("--role", "role_name", required=True)
@click.option("--token-ttl", default=None, help="TTL of tokens issued at login, e.g. 12h (default 24h, at most 31d)")
@click.option("--secret-id-ttl", default=None, help="how long the secret_id works, e.g. 90d (default 30d, at most 365d)")
@OUTPUT
def approle_create(mount: str, role_name: str, token_ttl: str | None, secret_id_ttl: str | None,
                   output: str) -> None:
    """Create a role bound to keyring:<mount> (or issue it a new secret_id, which replaces the old one); prints
    role_id and secret_id once."""
    out = _client().call("POST", "/keyring/approles", {
        "Mount": mount, "RoleName": role_name, "TokenTtlSeconds": _seconds(token_ttl) if token_ttl else None,
        "SecretIdTtlSeconds": _seconds(secret_id_ttl) if secret_id_ttl else None})
    _emit(output, out, f"role_id: {out['role_id']}\nsecret_id: {out['secret_id']}\n"
                       f"secret_id expires: {out['secret_id_expires_at']}")
