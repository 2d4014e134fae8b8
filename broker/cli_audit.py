"""`kms-broker audit`: verify the tamper-evident audit log, and compute the HMAC an auditor searches for.

These commands read the data folder directly (they are for the operator on the broker's host). `verify --data-dir`
asks the HSM for what it trusts (the signing key and the high-water mark), never a file an attacker could delete;
`hash` asks the HSM (it holds the audit HMAC key).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from broker.audit.chain import PUBLIC_KEY_NAME, key_fingerprint, spki_of
from broker.audit.verify import Report, verify_lines


def _data_dir(value: Path | None) -> Path:
    return Path(value or os.environ.get("KMSB_DATA_DIR") or "./var")


def _settings(data_dir: Path | None) -> Any:
    from broker.settings import SettingsError, load_settings

    try:
        return load_settings(_data_dir(data_dir))
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _root_of_trust(settings: Any) -> Any:
    from providers.registry import build_provider, root_of_trust

    return root_of_trust(build_provider(settings.root_of_trust, settings.providers[settings.root_of_trust]))


@click.group()
def audit() -> None:
    """The tamper-evident audit log: verify it, look values up."""


@audit.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="broker data folder: its audit file, compared with the store's copy, pinned by the HSM (default)")
@click.option("--file", "file_", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="a JSON-lines audit file on its own (e.g. a copy shipped elsewhere)")
@click.option("--public-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help=f"PEM of the audit signing key (--file: default {PUBLIC_KEY_NAME} beside the log; --data-dir: "
                   "must be the HSM's key, or stands in for it when the HSM cannot be asked)")
@click.option("--key-id", default=None, help="with --file: the fingerprint (sha256:…) the signing key must have")
@click.option("--output", type=click.Choice(["text", "json"]), default="text")
def verify(data_dir: Path | None, file_: Path | None, public_key: Path | None, key_id: str | None,
           output: str) -> None:
    """Check the hash chain, the signed checkpoints, the intents and (with --data-dir) the store copy and the HSM's
    high-water mark. Exit 0 if it holds, 1 listing EVERY problem found, 2 if it could not be checked."""
    if data_dir is not None and file_ is not None:
        click.echo("error: give --data-dir or --file, not both", err=True)
        sys.exit(2)
    if file_ is not None:
        report = _verify_file(file_, public_key, key_id)
    else:
        report = _verify_data_dir(data_dir, public_key)
    if output == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif report.ok:
        click.echo(f"audit chain OK: {report.records} records ({report.events} events, {report.checkpoints} "
                   "signed checkpoints)")
    else:
        click.echo(f"audit chain BROKEN: {len(report.problems) + report.omitted} problem(s), {report.records} "
                   "records checked")
        for problem in report.problems:
            click.echo(f"  - {problem.message}")
        if report.omitted:
            click.echo(f"  - … and {report.omitted} more")
    if output == "text":
        for crash in report.crash:
            click.echo(f"  crash: {crash}")
        for note in report.notes:
            click.echo(f"  note: {note}")
    if report.ok:
        sys.exit(0)
    sys.exit(2 if any(p.kind == "unverifiable" for p in report.problems) else 1)


def _verify_file(path: Path, public_key: Path | None, key_id: str | None) -> Report:
    """A copy of the file alone: the chain and the checkpoints, against a key the operator names (a key file that
    travels with the log proves nothing against whoever could replace both: pin it with --key-id)."""
    if not path.is_file():
        return Report().fail(None, f"{path}: no such audit file", kind="unverifiable")
    from broker.audit.host_verify import public_key_at  # with the store: not at import, for client commands

    beside = path.parent / PUBLIC_KEY_NAME
    key = public_key_at(public_key or beside)
    if key is None:
        return Report().fail(None, f"no public key: give --public-key (or put {PUBLIC_KEY_NAME} beside the log); "
                                   "without it the checkpoints prove nothing", kind="unverifiable")
    fingerprint = key_fingerprint(spki_of(key))
    if key_id is not None and key_id != fingerprint:
        return Report().fail(None, f"the public key is {fingerprint}, not the pinned {key_id} (replaced?)")
    report = verify_lines(path.read_bytes(), key)
    if key_id is None:
        report.notes.append(f"signing key {fingerprint} taken from {public_key or beside}, not pinned (--key-id)")
    report.notes.append("--file checks the chain and checkpoints only: a cut tail needs the store and the HSM "
                        "(--data-dir)")
    return report


def _verify_data_dir(data_dir: Path | None, public_key: Path | None) -> Report:
    from broker.audit.host_verify import verify_host

    settings = _settings(data_dir)
    return verify_host(settings, lambda: _root_of_trust(settings), public_key)


@audit.command("hash")
@click.argument("value")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="data folder (default: $KMSB_DATA_DIR or ./var)")
def hash_value(value: str, data_dir: Path | None) -> None:
    """Print the HMAC the audit log records for VALUE ("-" reads it from stdin, keeping it out of argv)."""
    if value == "-":
        value = sys.stdin.read().rstrip("\n")
    settings = _settings(data_dir)
    digest = _root_of_trust(settings).audit_hmac(value.encode())
    click.echo("hmac-sha256:" + digest.hex())
