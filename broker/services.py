"""The composition root of one broker process: every service, built once over one store, one set of providers and
one gate. Front doors reach services only through `Services` (never the store, a provider or the gate)."""

from __future__ import annotations

from dataclasses import dataclass

from broker.gate import RequestContext
from broker.policy_admin import PolicyAdmin
from broker.service import KeyService


@dataclass
class Services:
    keys: KeyService
    policies: PolicyAdmin

    @classmethod
    def over(cls, keys: KeyService) -> Services:
        """Every other service, built around a KeyService (which owns the store, the providers and the gate)."""
        return cls(keys=keys, policies=PolicyAdmin(keys, keys.policy.repository))

    def refused(self, ctx: RequestContext, action: str, code: str, denied: bool) -> None:
        """Audit a request a front door refused before it reached an operation (bad credentials, bad body, …)."""
        self.keys.gate.audit_rejected(ctx, action, code, denied)
