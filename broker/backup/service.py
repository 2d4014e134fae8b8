"""BackupService: custodian sets and backup archives, as declared operations of the gate.

`create` runs while the broker serves: the store is read as one snapshot, the root keys are wrapped inside the HSM
for the custodians' backup key (which this HSM's security officer trusts), and the manifest — with the head of this
node's audit chain as of the snapshot — is signed by the HSM's audit signing key.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from broker import errors
from broker.audit.chain import GENESIS
from broker.audit.sinks import chain_id
from broker.backup import custodians as cu
from broker.backup.archive import Archive, canonical, manifest_message, seal_payload
from broker.gate import Call, Need, Service, fixed, internal, operation
from broker.service import KeyService
from broker.store import snapshot
from broker.store.trust import TrustRepository
from providers.base import RootOfTrust, key_fingerprint


class BackupService(Service):
    def __init__(self, keys: KeyService, repo: TrustRepository, root: RootOfTrust) -> None:
        self.keys = keys
        self.repo = repo
        self.root = root
        self.gate = keys.gate

    # ------------------------------------------------------------------------------------------ custodians

    def _set_mac(self, row: dict[str, Any]) -> str:
        body = {k: row[k] for k in ("set_id", "public_key", "sealed_private_key", "threshold", "shares")}
        return self.root.audit_hmac(b"kms-broker custodian set v1\n" + canonical(body)).hex()

    @internal
    def active_set(self) -> dict[str, Any] | None:
        """The current custodian set, if its HSM MAC holds (a set swapped in the store is refused, not used)."""
        row = self.repo.active_custodian_set()
        if row is None:
            return None
        if not secrets.compare_digest(self._set_mac(row), row.get("mac") or ""):
            raise errors.InvalidState("the custodian set in the store fails its integrity check; refusing to use it")
        return row

    @operation("broker:ManageCustodians", Need("broker:ManageCustodians", fixed("backup/custodians")), mutates=True)
    def custodians(self, call: Call, shares: int, threshold: int, current_shares: list[str] | None = None
                   ) -> dict[str, Any]:
        """A new backup key split among `shares` custodians, any `threshold` of whom can restore. Replacing a set
        takes `threshold` shares of the current one. The shares are returned once and stored nowhere."""
        try:
            cu.check_counts(shares, threshold)
        except cu.CustodianError as exc:
            raise errors.ValidationError(str(exc)) from None
        current = self.active_set()
        if current is not None:
            if not current_shares:
                raise errors.AccessDenied(f"a custodian set exists ({current['set_id']}): give "
                                          f"{current['threshold']} of its shares to replace it")
            try:
                cu.open_private(cu.combine(current_shares), current["set_id"],
                                bytes.fromhex(current["sealed_private_key"]))
            except cu.CustodianError as exc:
                raise errors.AccessDenied(str(exc)) from None
        secret = cu.new_secret()
        public, pkcs8 = cu.new_backup_key()
        set_id = "cs-" + secrets.token_hex(8)
        row = {"set_id": set_id, "public_key": public.hex(),
               "sealed_private_key": cu.seal_private(secret, set_id, pkcs8).hex(), "threshold": threshold,
               "shares": shares}
        mnemonics = cu.split(secret, threshold, shares)
        self.root.trust(public)
        if current is not None:
            self.root.forget(key_fingerprint(bytes.fromhex(current["public_key"])))
        self.repo.add_custodian_set(**row, created_at=datetime.now(UTC), mac=self._set_mac(row))
        call.entry.extra.update(custodian_set=set_id, threshold=threshold, share_count=shares)
        return {"SetId": set_id, "Threshold": threshold, "Shares": mnemonics}

    # ------------------------------------------------------------------------------------------ archives

    @operation("broker:CreateBackup", Need("broker:CreateBackup", fixed("backup/*")))
    def create(self, call: Call) -> tuple[str, bytes]:
        """(backup id, archive bytes): one consistent archive of everything, made while serving."""
        current = self.active_set()
        if current is None:
            raise errors.InvalidState("no custodian set: run `kms-broker backup custodians` first")
        public = bytes.fromhex(current["public_key"])
        self.root.trust(public)  # idempotent; a node that joined after the set was made trusts it here
        package = self.root.export_root(public)
        self.keys.audit.catch_up()  # the archive's audit head is the chain's head, not the mirror's lag behind it
        store_snapshot = snapshot.dump(self.keys.store.engine)
        chain = chain_id(self.keys.audit.path)
        head_seq, head_hash = 0, GENESIS
        audit = store_snapshot["tables"].get("audit_events")
        if audit:
            idx = {c: i for i, c in enumerate(audit["columns"])}
            mine = [r for r in audit["rows"] if r[idx["chain"]] == chain]
            if mine:
                last = max(mine, key=lambda r: r[idx["seq"]])
                head_seq, head_hash = last[idx["seq"]], last[idx["hash"]]
        backup_id = "bk-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
        payload, payload_key = seal_payload(store_snapshot, public, backup_id)
        manifest = {
            "backup_id": backup_id, "created_at": datetime.now(UTC).isoformat(),
            "source_chain": chain, "audit_head": {"seq": head_seq, "hash": head_hash},
            "custodian_set": {k: current[k] for k in ("set_id", "public_key", "sealed_private_key", "threshold",
                                                      "shares")},
            "root_package": package.to_dict(), "root_fingerprint": self.root.fingerprint(),
            "signing_public_key": self.root.audit_public_key().hex(),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_key": base64.b64encode(payload_key).decode(),
            "revisions": store_snapshot["revisions"],
            "tables": {name: len(t["rows"]) for name, t in sorted(store_snapshot["tables"].items())},
        }
        signature = self.root.audit_sign(manifest_message(manifest))
        call.entry.extra.update(backup=backup_id, audit_head_seq=head_seq, custodian_set=current["set_id"])
        return backup_id, Archive(manifest, signature, payload).encode()


def summary(archive: Archive) -> dict[str, Any]:
    """What `backup verify` prints: no secrets, only names and counts."""
    m = archive.manifest
    return {"BackupId": m.get("backup_id"), "CreatedAt": m.get("created_at"), "AuditHead": m.get("audit_head"),
            "SourceChain": m.get("source_chain"), "CustodianSet": (m.get("custodian_set") or {}).get("set_id"),
            "Threshold": (m.get("custodian_set") or {}).get("threshold"), "RootFingerprint": m.get("root_fingerprint"),
            "SigningKey": key_fingerprint(bytes.fromhex(m["signing_public_key"]))
            if m.get("signing_public_key") else None,
            "Tables": m.get("tables"), "Rows": sum((m.get("tables") or {}).values())}


__all__ = ["BackupService", "summary"]
