"""Restore a backup onto a fresh data folder: a new HSM token, an empty store, M custodian shares.

Everything that can be checked is checked before anything is written (the archive's signature and digests, the
shares, the payload); then the folder is built, and removed again if any later step fails. The root keys are
unwrapped inside the new HSM with the backup private key, which exists only in this process's memory while the
shares are combined. The source node's audit chain is carried over and continued with a restore record that names
the backup, so `audit verify` holds across the restore.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.backup import custodians as cu
from broker.backup.archive import Archive, ArchiveError, open_payload
from providers.base import ProviderError, RootPackage, key_fingerprint

LOCAL_OPERATOR = "local-operator"


class RestoreError(ValueError):
    """A restore that cannot happen; nothing was written."""


@dataclass(frozen=True)
class RestoreReport:
    backup_id: str
    data_dir: Path
    rows: int
    audit_head: int
    root_fingerprint: str


def _prepared(data: bytes, shares: list[str], pinned_spki: bytes | None) -> tuple[Archive, bytes, dict[str, Any]]:
    """Every check that needs no writing: (archive, backup private key, store snapshot)."""
    try:
        archive = Archive.decode(data)
        archive.check(pinned_spki)
    except ArchiveError as exc:
        raise RestoreError(str(exc)) from None
    custodian_set = archive.manifest.get("custodian_set") or {}
    try:
        secret = cu.combine(shares)
        private = cu.open_private(secret, str(custodian_set.get("set_id")),
                                  bytes.fromhex(str(custodian_set.get("sealed_private_key"))))
        store_snapshot = open_payload(archive, private)
    except (cu.CustodianError, ArchiveError) as exc:
        raise RestoreError(str(exc)) from None
    except ValueError:
        raise RestoreError("the archive's custodian set is damaged") from None
    package = RootPackage.from_dict(archive.manifest.get("root_package") or {})
    if package.recipient != key_fingerprint(bytes.fromhex(custodian_set["public_key"])):
        raise RestoreError("the root package was not made for this backup's custodian set")
    return archive, private, store_snapshot


def restore(data: bytes, shares: list[str], data_dir: Path, *, store_url: str | None = None,
            pinned_spki: bytes | None = None) -> RestoreReport:
    """Restore `data` (an archive) into `data_dir`, which must not exist or be empty."""
    from broker.settings import CONFIG_NAME, Settings, embedded_defaults, write_settings
    from broker.store import Store
    from broker.store.snapshot import is_empty

    archive, private, store_snapshot = _prepared(data, shares, pinned_spki)
    folder = data_dir.resolve()
    if folder.exists() and any(folder.iterdir()):
        raise RestoreError(f"{folder} is not empty: restore builds a data folder from nothing")
    raw = embedded_defaults(folder)
    if store_url:
        raw["store_url"] = store_url
        probe = Store(store_url)
        try:
            if not is_empty(probe.engine):
                raise RestoreError("the target store is not empty: restore loads into an empty database")
        finally:
            probe.dispose()
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    store = None
    try:
        report, store = _build(archive, private, store_snapshot, folder, raw)
        write_settings(folder / CONFIG_NAME, raw)
        Settings(**raw)  # the folder serves as written
        return report
    except BaseException:
        if store is not None and store_url:
            _wipe(store)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for child in folder.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    finally:
        if store is not None:
            store.dispose()


def _build(archive: Archive, private: bytes, store_snapshot: dict[str, Any], folder: Path, raw: dict[str, Any]
           ) -> tuple[RestoreReport, Any]:
    from broker.audit.setup import build_audit_log
    from broker.audit.sinks import chain_id
    from broker.settings import Settings
    from broker.store import Store
    from broker.store.snapshot import load
    from providers.registry import build_provider, root_of_trust
    from providers.softhsm_token import create_token

    manifest = archive.manifest
    create_token(folder / "hsm", root_keys=False)
    settings = Settings(**raw)
    provider = build_provider(settings.root_of_trust, settings.providers[settings.root_of_trust])
    root = root_of_trust(provider)
    try:
        root.restore_root(RootPackage.from_dict(manifest["root_package"]), private)
    except ProviderError as exc:
        raise RestoreError(f"the root keys could not be restored into the new HSM: {exc}") from None
    if root.fingerprint() != manifest.get("root_fingerprint") or \
            root.audit_public_key().hex() != manifest.get("signing_public_key"):
        raise RestoreError("the restored root keys are not the ones the archive names")
    fingerprint = root.fingerprint()

    source, target = manifest["source_chain"], chain_id(settings.audit_file)
    carried: list[tuple[int, str]] = []

    def relabel(table: str, row: dict[str, Any]) -> dict[str, Any]:
        if table == "audit_events" and row.get("chain") == source:
            carried.append((row["seq"], row["record"]))
            return {**row, "chain": target}
        return row

    store = Store(settings.store_url)
    counts = load(store.engine, store_snapshot, rewrite=relabel)
    head = manifest["audit_head"]["seq"]
    lines = [record for seq, record in sorted(carried) if seq <= head]
    settings.audit_file.parent.mkdir(parents=True, exist_ok=True)
    settings.audit_file.write_text("".join(line + "\n" for line in lines))
    audit = build_audit_log(settings, root, store.engine)
    try:
        audit.write({
            "time": datetime.now(UTC).isoformat(timespec="microseconds"), "request_id": str(uuid.uuid4()),
            "principal": LOCAL_OPERATOR, "auth_method": "local", "source_ip": "", "front_door": "cli",
            "action": "broker:RestoreBackup", "key_id": None, "key_version": None, "provider": None,
            "encryption_context": {}, "outcome": "allowed", "error_code": None, "latency_ms": 0.0,
            "backup": manifest["backup_id"], "source_chain": source, "source_head_seq": head,
            "source_head_hash": manifest["audit_head"]["hash"],
            "custodian_set": manifest["custodian_set"]["set_id"],
        })
        audit.checkpoint_now()
    finally:
        audit.close()
        provider.close()
    return RestoreReport(manifest["backup_id"], folder, sum(counts.values()), head + 1, fingerprint), store


def _wipe(store: Any) -> None:
    """Undo a load into a PostgreSQL store that was empty before (best effort; it held nothing of ours)."""
    from sqlalchemy import MetaData

    try:
        meta = MetaData()
        meta.reflect(store.engine)
        meta.drop_all(store.engine)
    except Exception:  # noqa: BLE001 - nothing else to do; the error that got us here is raised
        pass
