"""Build the AuditLog from settings: sinks, group commit, and the HSM's checkpoint signing key."""

from __future__ import annotations

import logging
from typing import Any

from broker.audit.log import PUBLIC_KEY_NAME, AuditLog
from broker.audit.mark import RootMarks
from providers.base import RootOfTrust

log = logging.getLogger("kms_broker.audit")


def signing_public_key(root: RootOfTrust, audit_dir) -> bytes | None:
    """SPKI DER of the HSM's audit signing key; the published PEM if the HSM cannot be asked now; None if neither."""
    from providers.base import ProviderError

    try:
        return root.audit_public_key()
    except ProviderError as exc:
        pem = audit_dir / PUBLIC_KEY_NAME
        if pem.is_file():
            from broker.audit.chain import load_public_key, spki_of

            return spki_of(load_public_key(pem.read_bytes()))
        log.error("audit checkpoints are OFF: the HSM's audit signing key is not available (%s)", exc)
        return None


def build_audit_log(settings: Any, root: RootOfTrust, engine: Any) -> AuditLog:
    """The audit log of this node: HMAC and checkpoint signatures by the root of trust's audit keys, its high-water
    mark kept there too. Reconciled with the log on start (a crash of any process sharing the chain leaves a torn
    write, intents without an outcome, or a store copy behind the file: all are settled before the first request)."""
    public_key = signing_public_key(root, settings.audit_file.parent)
    audit = AuditLog(
        settings.audit_file, hmac=root.audit_hmac, fsync=settings.audit_fsync, sinks=settings.audit_sinks,
        engine=engine, signer=root.audit_sign if public_key else None, public_key=public_key,
        checkpoint_records=settings.audit_checkpoint_records, checkpoint_seconds=settings.audit_checkpoint_seconds,
        batch_ms=settings.audit_batch_ms, marks=RootMarks(root), mirror_seconds=settings.audit_mirror_seconds,
    )
    try:
        done = audit.reconcile()
    except Exception as exc:  # noqa: BLE001 - a store not reachable at start: the first batch recovers instead
        log.error("audit reconciliation at start failed (%s); the first write retries it", type(exc).__name__)
    else:
        if done.get("interrupted") or done.get("torn_bytes"):
            log.warning("audit reconciled at start: %s", {k: v for k, v in done.items() if v})
    return audit
