"""Policy administration: named identity policies, key policies, grants and the simulator.

Each operation runs through the KeyService choke point (authorized and audited like every other), and invalidates
this process's policy cache for what it changed.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from broker import errors
from broker.auth import Principal, hash_token
from broker.policy import PolicyEngine
from broker.policy.builtin import BUILTIN_DOCUMENTS, RESERVED, builtin
from broker.policy.document import KMS_ACTIONS, parse_document
from broker.service import KeyService, RequestContext
from broker.store.policies import PolicyRepository
from broker.store.tables import GrantRow

_POLICY_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
GRANT_OPERATIONS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo",
    "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
})


def _now() -> datetime:
    return datetime.now(UTC)


class PolicyAdmin:
    def __init__(self, service: KeyService, engine: PolicyEngine, repository: PolicyRepository) -> None:
        self.service = service
        self.engine = engine
        self.repo = repository

    # ---------------------------------------------------------------------------------- named policies

    def put_policy(self, ctx: RequestContext, name: str, document: Any) -> dict:
        with self.service.operation(ctx, "broker:PutPolicy") as entry:
            entry.extra["policy"] = name
            self.service.authorize(ctx, entry, "broker:PutPolicy", None, resource=f"policy/{name}")
            if not isinstance(name, str) or not _POLICY_NAME.match(name) or name in RESERVED \
                    or name.startswith("keyring:"):
                raise errors.ValidationError(f"policy name {name!r} is reserved or invalid")
            parse_document(document)
            self.repo.put_policy(name, document, _now())
            self.engine.forget(("policy", name))
            return {"Name": name}

    def get_policy(self, ctx: RequestContext, name: str) -> dict:
        with self.service.operation(ctx, "broker:GetPolicy") as entry:
            self.service.authorize(ctx, entry, "broker:GetPolicy", None, resource=f"policy/{name}")
            if name in BUILTIN_DOCUMENTS:
                return {"Name": name, "Document": BUILTIN_DOCUMENTS[name], "BuiltIn": True}
            doc = self.repo.get_policy(name)
            if doc is None:
                raise errors.NotFound(f"policy {name} not found")
            return {"Name": name, "Document": doc, "BuiltIn": False}

    def list_policies(self, ctx: RequestContext) -> dict:
        with self.service.operation(ctx, "broker:ListPolicies") as entry:
            self.service.authorize(ctx, entry, "broker:ListPolicies", None, resource="policy/*")
            return {"Policies": sorted(BUILTIN_DOCUMENTS) + ["root"] + self.repo.list_policies()}

    def delete_policy(self, ctx: RequestContext, name: str) -> None:
        with self.service.operation(ctx, "broker:DeletePolicy") as entry:
            self.service.authorize(ctx, entry, "broker:DeletePolicy", None, resource=f"policy/{name}")
            if name in RESERVED:
                raise errors.ValidationError(f"policy {name} is built in")
            if not self.repo.delete_policy(name):
                raise errors.NotFound(f"policy {name} not found")
            self.engine.forget(("policy", name))

    # ---------------------------------------------------------------------------------- key policies

    def put_key_policy(self, ctx: RequestContext, key_ref: str, document: Any, policy_name: str = "default") -> None:
        with self.service.operation(ctx, "kms:PutKeyPolicy") as entry:
            key = self.service.resolve_key(key_ref)
            self.service.authorize(ctx, entry, "kms:PutKeyPolicy", key)
            if policy_name != "default":
                raise errors.ValidationError("PolicyName must be default")
            parse_document(document, key_policy=True)
            self.repo.put_key_policy(key.key_id, document, _now())
            self.engine.forget(("key-policy", key.key_id))

    def get_key_policy(self, ctx: RequestContext, key_ref: str, policy_name: str = "default") -> dict:
        with self.service.operation(ctx, "kms:GetKeyPolicy") as entry:
            key = self.service.resolve_key(key_ref)
            self.service.authorize(ctx, entry, "kms:GetKeyPolicy", key)
            if policy_name != "default":
                raise errors.NotFound(f"key policy {policy_name} not found")
            from broker.policy.evaluate import DEFAULT_KEY_POLICY
            document = self.repo.get_key_policy(key.key_id) or DEFAULT_KEY_POLICY.raw
            return {"Policy": document, "PolicyName": "default"}

    def list_key_policies(self, ctx: RequestContext, key_ref: str) -> dict:
        with self.service.operation(ctx, "kms:ListKeyPolicies") as entry:
            key = self.service.resolve_key(key_ref)
            self.service.authorize(ctx, entry, "kms:ListKeyPolicies", key)
            return {"PolicyNames": ["default"], "Truncated": False}

    # ---------------------------------------------------------------------------------- grants

    def create_grant(self, ctx: RequestContext, key_ref: str, grantee: str, operations: list[str], *,
                     retiring: str = "", constraints: dict | None = None, name: str = "") -> dict:
        with self.service.operation(ctx, "kms:CreateGrant") as entry:
            key = self.service.resolve_key(key_ref)
            self.service.authorize(ctx, entry, "kms:CreateGrant", key)
            if not isinstance(grantee, str) or not grantee:
                raise errors.ValidationError("GranteePrincipal is required")
            if not isinstance(operations, list) or not operations or set(operations) - GRANT_OPERATIONS:
                raise errors.ValidationError(f"Operations must be a non-empty subset of {sorted(GRANT_OPERATIONS)}")
            constraints = constraints or {}
            if set(constraints) - {"EncryptionContextSubset", "EncryptionContextEquals"} or not all(
                    isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in constraints.values()):
                raise errors.ValidationError("Constraints: EncryptionContextSubset / EncryptionContextEquals objects")
            if len(constraints) > 1:
                raise errors.ValidationError("Constraints: give one of EncryptionContextSubset or EncryptionContextEquals")
            grant_id = uuid.uuid4().hex
            token = secrets.token_urlsafe(32)
            self.repo.add_grant(GrantRow(
                grant_id=grant_id, key_id=key.key_id, name=name or "", grantee=grantee, retiring=retiring or "",
                operations=_json(sorted(set(operations))), constraints=_json(constraints), token_hash=hash_token(token),
                created_at=_now()))
            self.engine.forget(("grants", key.key_id))
            entry.extra["grant_id"] = grant_id
            return {"GrantId": grant_id, "GrantToken": token}

    def list_grants(self, ctx: RequestContext, key_ref: str) -> dict:
        with self.service.operation(ctx, "kms:ListGrants") as entry:
            key = self.service.resolve_key(key_ref)
            self.service.authorize(ctx, entry, "kms:ListGrants", key)
            return {"Grants": self.repo.grants_for_key(key.key_id), "Truncated": False}

    def list_retirable_grants(self, ctx: RequestContext, retiring: str) -> dict:
        with self.service.operation(ctx, "kms:ListRetirableGrants") as entry:
            self.service.authorize(ctx, entry, "kms:ListRetirableGrants", None, resource=f"principal/{retiring}")
            return {"Grants": self.repo.grants_retirable_by(retiring), "Truncated": False}

    def retire_grant(self, ctx: RequestContext, *, grant_token: str | None = None, key_ref: str | None = None,
                     grant_id: str | None = None) -> None:
        """The grant's retiring principal (or its grantee, with RetireGrant among its operations) may retire it."""
        with self.service.operation(ctx, "kms:RetireGrant") as entry:
            if grant_token:
                grant = self.repo.find_grant(token_hash=hash_token(grant_token))
            elif key_ref and grant_id:
                grant = self.repo.find_grant(grant_id=grant_id)
                if grant and grant["KeyId"] != self.service.resolve_key(key_ref).key_id:
                    grant = None
            else:
                raise errors.ValidationError("give GrantToken, or KeyId and GrantId")
            if grant is None:
                raise errors.NotFound("grant not found")
            entry.key_id, entry.extra["grant_id"] = grant["KeyId"], grant["GrantId"]
            p = ctx.principal
            may = p.is_root or p.name == grant["RetiringPrincipal"] or (
                p.name == grant["GranteePrincipal"] and "RetireGrant" in grant["Operations"])
            if not may:
                raise errors.AccessDenied(f"{p.name} may not retire this grant")
            self.repo.delete_grant(grant["GrantId"])
            self.engine.forget(("grants", grant["KeyId"]))

    def revoke_grant(self, ctx: RequestContext, key_ref: str, grant_id: str) -> None:
        with self.service.operation(ctx, "kms:RevokeGrant") as entry:
            key = self.service.resolve_key(key_ref)
            self.service.authorize(ctx, entry, "kms:RevokeGrant", key)
            grant = self.repo.find_grant(grant_id=grant_id)
            if grant is None or grant["KeyId"] != key.key_id:
                raise errors.NotFound("grant not found")
            self.repo.delete_grant(grant_id)
            self.engine.forget(("grants", key.key_id))

    # ---------------------------------------------------------------------------------- simulator

    def simulate(self, ctx: RequestContext, *, principal: dict, action: str, key_ref: str | None = None,
                 resource: str | None = None, context: dict | None = None, source_ip: str = "",
                 time: str | None = None) -> dict:
        """Answer allow/deny for a hypothetical request, and which statement decided. Changes nothing."""
        with self.service.operation(ctx, "broker:SimulatePolicy") as entry:
            self.service.authorize(ctx, entry, "broker:SimulatePolicy", None, resource="policy/*")
            if not isinstance(principal, dict) or not isinstance(principal.get("Name"), str):
                raise errors.ValidationError("Principal.Name is required")
            policies = principal.get("Policies", [])
            if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
                raise errors.ValidationError("Principal.Policies must be a list of policy names")
            unknown = [p for p in policies if p != "root" and builtin(p) is None and self.repo.get_policy(p) is None]
            if unknown:
                raise errors.ValidationError(f"Principal.Policies: unknown policy {unknown[0]!r}")
            if action not in KMS_ACTIONS and not action.startswith(("broker:", "keyring:")):
                raise errors.ValidationError(f"Action {action!r} is not known")
            when = None
            if time is not None:
                from broker.policy.evaluate import parse_time_value
                when = parse_time_value(time)
                if not isinstance(when, datetime):
                    raise errors.ValidationError("Time must be an ISO 8601 date-time")
            who = Principal(name=principal["Name"], auth_method=str(principal.get("AuthMethod", "token")),
                            policies=tuple(policies), attributes=dict(principal.get("Attributes") or {}))
            key = self.service.resolve_key(key_ref) if key_ref else None
            decision = self.engine.decide(who, action, key, self.service.check_context(context),
                                          resource=resource, source_ip=source_ip, now=when)
            return decision.to_dict()


def _json(value: Any) -> str:
    import json
    return json.dumps(value, sort_keys=True)
