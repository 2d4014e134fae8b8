"""`kms-broker backup`: custodians, create (once or `--every`), verify, restore.

These run on a node's host against its data folder (the operator there holds the HSM PINs): custodians and create
run as declared operations of the gate under the local operator, and are audited in the node's chain; restore
builds a new data folder from nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from broker.jobs import leased_round, schedule_tick

OUTPUT = click.option("--output", type=click.Choice(["text", "json"]), default="text")
DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="data folder (default: $KMSB_DATA_DIR or ./var)")
SHARES = click.option("--share", "shares", multiple=True, help="a custodian's share (repeatable; M of them)")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _data_dir(value: Path | None) -> Path:
    return Path(value or os.environ.get("KMSB_DATA_DIR") or "./var")


@contextmanager
def local_services(data_dir: Path | None) -> Iterator[Any]:
    """This node's services in-process, and the local operator's request context."""
    from broker.app import build_service
    from broker.auth import Principal
    from broker.errors import BrokerError
    from broker.gate import RequestContext
    from broker.services import Services
    from broker.settings import SettingsError, load_settings
    from broker.store import Store

    try:
        settings = load_settings(_data_dir(data_dir))
    except SettingsError as exc:
        _fail(str(exc), 2)
    store = Store(settings.store_url)
    try:
        store.migrate()
    finally:
        store.dispose()
    keys = build_service(settings)
    ctx = RequestContext(Principal("local-operator", "local", ("root",)), front_door="cli")
    try:
        yield Services.over(keys, settings), ctx
    except BrokerError as exc:
        _fail(f"{exc.code}: {exc.message}")
    finally:
        keys.audit.close()
        keys.store.dispose()


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@click.group()
def backup() -> None:
    """Backups of the store and the root of trust, opened only by M of N custodians."""


@backup.command("custodians")
@click.option("--shares", "count", type=int, required=True, help="N: how many custodians get a share")
@click.option("--threshold", type=int, required=True, help="M: how many shares a restore needs")
@SHARES
@DATA_DIR
@OUTPUT
def custodians(count: int, threshold: int, shares: tuple[str, ...], data_dir: Path | None, output: str) -> None:
    """Make a new backup key and split it; shown ONCE. Replacing a set needs M of its current shares (--share)."""
    with local_services(data_dir) as (services, ctx):
        out = services.backups.custodians(ctx, count, threshold, list(shares))
    if output == "json":
        click.echo(json.dumps({"set_id": out["SetId"], "threshold": out["Threshold"], "shares": out["Shares"]}))
        return
    click.echo(f"Custodian set {out['SetId']}: any {out['Threshold']} of these {len(out['Shares'])} shares restore a "
               "backup. Each is shown once: give one to each custodian.")
    for n, share in enumerate(out["Shares"], 1):
        click.echo(f"share {n}: {share}")


def _create_one(data_dir: Path | None, out: Path) -> str:
    with local_services(data_dir) as (services, ctx):
        backup_id, data = services.backups.create(ctx)
    _write_new(out, data)
    return backup_id


@backup.command("create")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="the archive to write")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="with --every: a folder of archives named by time")
@click.option("--every", default=None, help="make a backup every DURATION (e.g. 6h), keeping --keep of them; run "
              "on several nodes, one of them makes each period's backup")
@click.option("--keep", type=click.IntRange(1, 10000), default=7, show_default=True)
@click.option("--count", type=click.IntRange(1), default=None, help="with --every: stop after this many")
@DATA_DIR
@OUTPUT
def create(out: Path | None, out_dir: Path | None, every: str | None, keep: int, count: int | None,
           data_dir: Path | None, output: str) -> None:
    """One consistent archive while the broker serves (no key material in clear in it)."""
    from broker.cli_approval import duration

    if every is None:
        if out is None:
            _fail("give --out FILE (or --every with --out-dir)", 2)
        if out.exists():
            _fail(f"{out} exists; nothing was written", 2)
        backup_id = _create_one(data_dir, out)
        click.echo(json.dumps({"backup_id": backup_id, "file": str(out)}) if output == "json"
                   else f"backup {backup_id} written to {out}")
        return
    if out_dir is None:
        _fail("--every writes into --out-dir", 2)
    seconds = duration(every)
    if not seconds:
        _fail("--every must be longer than 0s", 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = 0
    while True:
        # Leased (broker/jobs.py): the same schedule on every node makes one backup per period for the cluster.
        path = out_dir / f"kmsb-backup-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{made:06d}.kmsb"
        written: list[str] = []
        outcome = leased_round(data_dir, "scheduled-backup", timedelta(seconds=seconds),
                               lambda out=path, into=written: into.append(_create_one(data_dir, out)))
        if outcome == "ran":
            made += 1
            for old in sorted(out_dir.glob("kmsb-backup-*.kmsb"))[:-keep]:
                old.unlink()
            click.echo(f"backup {written[0]} written to {path}", err=True)
        else:
            click.echo(f"no backup made here: {outcome}", err=True)
        if count is not None and made >= count:
            return
        time.sleep(schedule_tick(seconds))


def _pinned(public_key: Path | None) -> bytes | None:
    if public_key is None:
        return None
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(public_key.read_bytes())
    except ValueError:
        _fail(f"{public_key} is not a PEM public key", 2)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@backup.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM of the audit signing key the archive must be signed by (audit-signing.pub.pem)")
@SHARES
@OUTPUT
def verify(file: Path, public_key: Path | None, shares: tuple[str, ...], output: str) -> None:
    """Check an archive's signature and digests; with M shares, also that it opens. Exit 1 if it does not hold."""
    from broker.backup.archive import Archive, ArchiveError, open_payload
    from broker.backup.custodians import CustodianError, combine, open_private
    from broker.backup.service import summary

    try:
        archive = Archive.decode(file.read_bytes())
        archive.check(_pinned(public_key))
        report = summary(archive)
        if shares:
            cs = archive.manifest["custodian_set"]
            private = open_private(combine(list(shares)), cs["set_id"], bytes.fromhex(cs["sealed_private_key"]))
            opened = open_payload(archive, private)
            report["Opened"] = sum(len(t["rows"]) for t in opened["tables"].values()) == report["Rows"]
    except (ArchiveError, CustodianError) as exc:
        _fail(f"backup does not verify: {exc}")
    if output == "json":
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(f"backup {report['BackupId']} OK: {report['Rows']} rows, audit head seq "
                   f"{report['AuditHead']['seq']}, signed by {report['SigningKey']}"
                   + (", opens with the given shares" if shares else ""))


@backup.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="the new data folder (must not exist)")
@click.option("--store-url", default=None, help="an empty database to restore into (default: SQLite in the folder)")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM of the audit signing key the archive must be signed by")
@SHARES
@OUTPUT
def restore(file: Path, data_dir: Path, store_url: str | None, public_key: Path | None, shares: tuple[str, ...],
            output: str) -> None:
    """Build a data folder (new HSM token included) from an archive and M shares; nothing is written on error."""
    from broker.backup.restore import RestoreError
    from broker.backup.restore import restore as run

    try:
        report = run(file.read_bytes(), list(shares), data_dir, store_url=store_url, pinned_spki=_pinned(public_key))
    except RestoreError as exc:
        _fail(f"restore refused: {exc}; nothing was written")
    data = {"backup_id": report.backup_id, "data_dir": str(report.data_dir), "rows": report.rows,
            "audit_seq": report.audit_head, "root_fingerprint": report.root_fingerprint}
    click.echo(json.dumps(data) if output == "json" else
               f"restored {report.backup_id} into {report.data_dir} ({report.rows} rows); "
               f"serve it with: kms-broker serve --data-dir {report.data_dir}")


__all__ = ["backup"]
