"""The composition root of one broker process: every service, built once over one store, one set of providers and
one gate. Front doors reach services only through `Services` (never the store, a provider or the gate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.approval_kinds import builtin_kinds
from broker.approvals import ApprovalService
from broker.audit_service import AuditService
from broker.auth.config import AuthSettings
from broker.backup.service import BackupService
from broker.gate import RequestContext
from broker.identity import IdentityService
from broker.nodes import NodeService
from broker.policy_admin import PolicyAdmin
from broker.replication.keyrings import MultiKeys
from broker.replication.replicated import ReplicatedKeys
from broker.replication.repo import ReplicationRepo
from broker.replication.sync import Sync
from broker.service import KeyService
from broker.store.trust import TrustRepository

if TYPE_CHECKING:
    from broker.settings import Settings
    from keyring_bridge.approle import KeyringAppRoles
    from keyring_bridge.keyring import KeyringService


@dataclass
class Services:
    keys: KeyService
    policies: PolicyAdmin
    approvals: ApprovalService
    multikeys: MultiKeys
    replicated: ReplicatedKeys
    sync: Sync
    identity: IdentityService
    backups: BackupService
    nodes: NodeService
    audit_reader: AuditService
    keyring: KeyringService | None = None  # the MySQL keyring bridge (None only when built without settings)
    keyring_approles: KeyringAppRoles | None = None

    @classmethod
    def over(cls, keys: KeyService, settings: Settings | None = None) -> Services:
        """Every other service, built around a KeyService (which owns the store, the providers and the gate).
        Without settings (tests): default [auth] settings and no keyring bridge."""
        trust = TrustRepository(keys.store)
        approvals = ApprovalService(keys, trust, keys.root)
        nodes = NodeService(keys, trust, keys.root)
        for kind in [*builtin_kinds(), nodes.join_kind()]:
            approvals.register(kind)
        replication = ReplicationRepo(keys.store)
        replicated = ReplicatedKeys(keys, replication)
        keys.rotated_by = replicated.rotated_by
        identity = IdentityService(keys.gate, keys.store, settings.auth if settings is not None else AuthSettings(),
                                   sealer=keys.root,
                                   cache_seconds=settings.auth_cache_seconds if settings is not None else 1.0)
        services = cls(keys=keys, policies=PolicyAdmin(keys, keys.policy.repository), approvals=approvals,
                       multikeys=MultiKeys(keys, replication), replicated=replicated,
                       sync=Sync(keys, replication, replicated), identity=identity,
                       backups=BackupService(keys, trust, keys.root), nodes=nodes,
                       audit_reader=AuditService(keys.gate, settings, keys.root))
        if settings is not None:
            from keyring_bridge.approle import KeyringAppRoles
            from keyring_bridge.keyring import KeyringService, destroy_kind

            tokens = identity.token_store  # one token store (and cache) for the process
            services.keyring = KeyringService(keys, keys.root, tokens)  # the root of trust seals every entry
            services.keyring_approles = KeyringAppRoles(keys, tokens)
            approvals.register(destroy_kind(services.keyring))  # keyring versions are destroyed only by a quorum
        return services

    def refused(self, ctx: RequestContext, action: str, code: str, denied: bool) -> None:
        """Audit a request a front door refused before it reached an operation (bad credentials, bad body, …)."""
        self.keys.gate.audit_rejected(ctx, action, code, denied)
