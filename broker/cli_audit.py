"""`kms-broker audit`: verify the tamper-evident audit log, and compute the HMAC an auditor searches for.

These commands read the data folder directly (they are for the operator on the broker's host): `verify` needs only
the public half of the HSM's audit signing key; `hash` asks the HSM (it holds the audit HMAC key).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from broker.audit.chain import load_public_key, record_hash, spki_of
from broker.audit.log import PUBLIC_KEY_NAME
from broker.audit.sinks import chain_id
from broker.audit.verify import Report, compare_with_store, verify_lines


def _data_dir(value: Path | None) -> Path:
    return Path(value or os.environ.get("KMSB_DATA_DIR") or "./var")


def _settings(data_dir: Path | None) -> Any:
    from broker.settings import SettingsError, load_settings

    try:
        return load_settings(_data_dir(data_dir))
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _root_provider(settings: Any) -> Any:
    from providers.registry import build_provider

    return build_provider(settings.root_of_trust, settings.providers[settings.root_of_trust])


@click.group()
def audit() -> None:
    """The tamper-evident audit log: verify it, look values up."""


@audit.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="broker data folder: its audit file, compared with the store's copy (default)")
@click.option("--file", "file_", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="a JSON-lines audit file on its own (e.g. a copy shipped elsewhere)")
@click.option("--public-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help=f"PEM of the audit signing key (default: {PUBLIC_KEY_NAME} beside the log)")
@click.option("--output", type=click.Choice(["text", "json"]), default="text")
def verify(data_dir: Path | None, file_: Path | None, public_key: Path | None, output: str) -> None:
    """Check the hash chain and the signed checkpoints; exit 1 naming the FIRST problem, 0 and the count if it holds."""
    if data_dir is not None and file_ is not None:
        click.echo("error: give --data-dir or --file, not both", err=True)
        sys.exit(2)
    if file_ is not None:
        report = _verify_file(file_, public_key)
    else:
        report = _verify_data_dir(data_dir, public_key)
    if output == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif report.ok:
        click.echo(f"audit chain OK: {report.records} records ({report.events} events, {report.checkpoints} "
                   "signed checkpoints)")
        for note in report.notes:
            click.echo(f"  note: {note}")
    else:
        click.echo(f"audit chain BROKEN after {report.records} good records: {report.problem}")
    sys.exit(0 if report.ok else 1)


def _public_key(path: Path | None):
    if path is None or not path.is_file():
        return None
    return load_public_key(path.read_bytes())


def _verify_file(path: Path, public_key: Path | None) -> Report:
    if not path.is_file():
        return Report().fail(None, f"{path}: no such audit file")
    key = _public_key(public_key or path.parent / PUBLIC_KEY_NAME)
    return verify_lines(path.read_bytes(), key)


def _verify_data_dir(data_dir: Path | None, public_key: Path | None) -> Report:
    settings = _settings(data_dir)
    pem = public_key or settings.audit_file.parent / PUBLIC_KEY_NAME
    key = _public_key(pem)
    notes: list[str] = []
    try:  # the HSM is the authority on its key: a replaced PEM file must not make forged checkpoints pass
        hsm_spki = _root_provider(settings).audit_public_key()
        if key is None:
            key = load_public_key(_pem(hsm_spki))
            notes.append("public key taken from the HSM (no PEM file beside the log)")
        elif spki_of(key) != hsm_spki:
            return Report().fail(None, f"{pem} is not the HSM's audit signing key (replaced?)")
    except Exception as exc:  # noqa: BLE001 - verifying without the HSM is allowed, with the PEM file
        notes.append(f"HSM not asked for the signing key ({type(exc).__name__}); using {pem}")
    every = {"every_records": settings.audit_checkpoint_records, "every_seconds": settings.audit_checkpoint_seconds}
    rows = _store_rows(settings) if "store" in settings.audit_sinks else None
    if "file" in settings.audit_sinks:
        path = settings.audit_file
        data = path.read_bytes() if path.is_file() else b""
        report = verify_lines(data, key, expect_checkpoints=key is not None, **every)
        if rows is not None and report.ok:
            report = _check_store_rows(report, rows)
            file_records = [(r["seq"], r["hash"]) for r in _records(data)]
            report = compare_with_store(report, file_records, [(seq, digest) for seq, digest, _ in rows])
    else:
        data = b"".join(text.encode() + b"\n" for _, _, text in rows or [])
        report = verify_lines(data, key, expect_checkpoints=key is not None, **every)
    report.notes[:0] = notes
    return report


def _pem(spki: bytes) -> bytes:
    from broker.audit.chain import public_key_pem

    return public_key_pem(spki)


def _records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _store_rows(settings: Any) -> list[tuple[int, str, str]]:
    from sqlalchemy import create_engine, select

    from broker.store.tables import AuditEventRow

    table = AuditEventRow.__table__
    engine = create_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            return [(r.seq, r.hash, r.record) for r in
                    conn.execute(select(table.c.seq, table.c.hash, table.c.record)
                                 .where(table.c.chain == chain_id(settings.audit_file)).order_by(table.c.seq))]
    finally:
        engine.dispose()


def _check_store_rows(report: Report, rows: list[tuple[int, str, str]]) -> Report:
    """Each store row's JSON must still hash to its hash column (an edited row is as bad as an edited line)."""
    for seq, digest, text in rows:
        try:
            record = json.loads(text)
        except ValueError:
            return report.fail(None, f"store row seq {seq}: not valid JSON (edited)", seq)
        body = {k: v for k, v in record.items() if k != "hash"}
        if record.get("hash") != digest or record_hash(str(record.get("prev_hash")), body) != digest:
            return report.fail(None, f"store row seq {seq}: content does not match its hash (edited)", seq)
    return report


@audit.command("hash")
@click.argument("value")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="data folder (default: $KMSB_DATA_DIR or ./var)")
def hash_value(value: str, data_dir: Path | None) -> None:
    """Print the HMAC the audit log records for VALUE ("-" reads it from stdin, keeping it out of argv)."""
    if value == "-":
        value = sys.stdin.read().rstrip("\n")
    settings = _settings(data_dir)
    digest = _root_provider(settings).audit_hmac(value.encode())
    click.echo("hmac-sha256:" + digest.hex())
