"""`kms-broker audit`: verify the tamper-evident audit log, and compute the HMAC an auditor searches for.

These commands read the data folder directly (they are for the operator on the broker's host). `verify --data-dir`
asks the HSM for what it trusts (the signing key and the high-water mark), never a file an attacker could delete;
`hash` asks the HSM (it holds the audit HMAC key).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from broker.audit.chain import key_fingerprint, load_public_key, public_key_pem, spki_of
from broker.audit.log import PUBLIC_KEY_NAME
from broker.audit.mark import Mark, RootMarks
from broker.audit.sinks import chain_id
from broker.audit.verify import Report, verify_lines, verify_sources


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


def _public_key(path: Path | None):
    if path is None or not path.is_file():
        return None
    return load_public_key(path.read_bytes())


def _verify_file(path: Path, public_key: Path | None, key_id: str | None) -> Report:
    """A copy of the file alone: the chain and the checkpoints, against a key the operator names (a key file that
    travels with the log proves nothing against whoever could replace both: pin it with --key-id)."""
    if not path.is_file():
        return Report().fail(None, f"{path}: no such audit file", kind="unverifiable")
    beside = path.parent / PUBLIC_KEY_NAME
    key = _public_key(public_key or beside)
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
    settings = _settings(data_dir)
    notes: list[str] = []
    trust = _trust(settings, public_key, notes)
    if isinstance(trust, Report):
        return trust
    key, mark = trust  # the mark first: it only ever names records already durable in both copies
    data, rows = _snapshot(settings)
    report = verify_sources(data, rows, key, mark, every_records=settings.audit_checkpoint_records,
                            every_seconds=settings.audit_checkpoint_seconds)
    report.notes[:0] = notes
    return report


def _trust(settings: Any, public_key: Path | None, notes: list[str]) -> tuple[Any, Mark | None] | Report:
    """What verify trusts, from the HSM: the signing key and the high-water mark. Files in the data folder (the PEM
    beside the log) are never the authority: an attacker with the folder could delete or replace them."""
    beside = settings.audit_file.parent / PUBLIC_KEY_NAME
    given = _public_key(public_key)
    try:
        root = _root_of_trust(settings)
        hsm_spki = root.audit_public_key()
        mark = RootMarks(root).read(chain_id(settings.audit_file))
    except Exception as exc:  # noqa: BLE001 - no HSM: verifiable only against a key the operator names
        if given is None:
            return Report().fail(None, f"cannot verify: the HSM is not reachable ({type(exc).__name__}) and no "
                                       "--public-key was given", kind="unverifiable")
        notes.append(f"HSM not reachable ({type(exc).__name__}): signatures checked against {public_key}; the "
                     "HSM's mark was not asked, so a cut tail or a deleted chain is not detected")
        return given, None
    if given is not None and spki_of(given) != hsm_spki:
        return Report().fail(None, f"{public_key} is not the HSM's audit signing key")
    report_problem = None
    if beside.is_file():
        try:
            if spki_of(load_public_key(beside.read_bytes())) != hsm_spki:
                report_problem = f"{beside} is not the HSM's audit signing key (replaced)"
        except ValueError:
            report_problem = f"{beside} is not a public key (replaced)"
    if report_problem:
        return Report().fail(None, report_problem)
    notes.append(f"signing key {key_fingerprint(hsm_spki)} and high-water mark "
                 f"{'seq ' + str(mark.seq) if mark else '(none yet: no signed checkpoint)'} from the HSM")
    return load_public_key(public_key_pem(hsm_spki)), mark


def _snapshot(settings: Any) -> tuple[bytes | None, list[tuple[int, str, str]] | None]:
    """One consistent view of a chain a running broker may be appending to: under the writers' lock (shared, for a
    moment) the file's size and the store's last seq; then each copy is read up to there (both only grow)."""
    from sqlalchemy import create_engine, func, select

    from broker.store.tables import AuditEventRow

    table = AuditEventRow.__table__
    chain = table.c.chain == chain_id(settings.audit_file)
    path = settings.audit_file
    engine = create_engine(settings.store_url) if "store" in settings.audit_sinks else None
    try:
        with _chain_lock(path):
            size = path.stat().st_size if path.is_file() else 0
            last = None
            if engine is not None:
                with engine.connect() as conn:
                    last = conn.execute(select(func.max(table.c.seq)).where(chain)).scalar() or 0
        data = None
        if "file" in settings.audit_sinks:
            with open(path, "rb") if path.is_file() else contextlib.nullcontext(None) as f:
                data = f.read(size) if f is not None else b""
        rows = None
        if engine is not None:
            with engine.connect() as conn:
                rows = [(r.seq, r.hash, r.record) for r in
                        conn.execute(select(table.c.seq, table.c.hash, table.c.record)
                                     .where(chain, table.c.seq <= last).order_by(table.c.seq))]
        return data, rows
    finally:
        if engine is not None:
            engine.dispose()


@contextlib.contextmanager
def _chain_lock(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # no writer ever ran here (or the folder is read-only): nothing to wait for
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


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
