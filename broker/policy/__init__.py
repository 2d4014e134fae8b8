"""Authorization: one engine decides every key operation. Default deny.

The foundation ships the minimal rule set (the `root` policy allows everything, nothing else is allowed); the
policy documents, key policies and grants plug in behind `PolicyEngine.authorize` without changing callers.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.auth import Principal
from broker.errors import AccessDenied
from broker.model import Key


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


class PolicyEngine:
    def decide(self, principal: Principal, action: str, key: Key | None, context: dict | None = None, *,
               resource: str | None = None, source_ip: str = "") -> Decision:
        if principal.is_root:
            return Decision(True, "policy root")
        for name in principal.policies:
            # Built-in family "keyring:<mount>": a database's token reads and writes its own keyring mount only.
            if name.startswith("keyring:") and action.startswith("keyring:") and resource is not None:
                if resource.startswith(f"keyring/{name[len('keyring:'):]}/"):
                    return Decision(True, f"policy {name}")
        return Decision(False, "default deny")

    def authorize(self, principal: Principal, action: str, key: Key | None, context: dict | None = None, *,
                  resource: str | None = None, source_ip: str = "") -> Decision:
        decision = self.decide(principal, action, key, context, resource=resource, source_ip=source_ip)
        if not decision.allowed:
            target = f" on {key.key_id}" if key else (f" on {resource}" if resource else "")
            raise AccessDenied(f"{principal.name} is not allowed to perform {action}{target}")
        return decision
