"""Policy administration: named identity policies, key policies, grants and the simulator, as declared operations.

Every method is an operation of the gate (authorized, audited). What a principal writes here for others is bounded
by what it holds itself (broker.policy.escalation, decided through `Call.holds` / `Call.covers`):

* a **grant** passes on only operations its creator may perform on the key, under the grant's own encryption-context
  constraint; its grantee (and retiring principal) is one exact principal name, never a pattern;
* a **key policy**'s Allow statements name only actions the writer may perform on that key;
* an **identity policy**'s Allow statements name only actions the writer holds on every resource they can name.

Root writes anything. Each write drops this process's cached copy of what it changed (others within cache_seconds).
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker import errors
from broker.auth import Principal, hash_token
from broker.gate import (
    Call,
    Need,
    Service,
    Target,
    check_context,
    fixed,
    internal,
    key_arg,
    operation,
    resource,
    valid_text,
    with_facts,
)
from broker.model import Key
from broker.policy.builtin import BUILTIN_DOCUMENTS, RESERVED, builtin
from broker.policy.document import ACTION_ALIASES, ALL_ACTIONS, GRANT_OPERATIONS, parse_document
from broker.policy.escalation import identity_policy_excess
from broker.policy.evaluate import DEFAULT_KEY_POLICY_TEXT, ContextAtLeast, parse_time_value
from broker.policy.key_policies import check_writer, read_key_policy
from broker.service import KeyService
from broker.store.policies import PolicyRepository
from broker.store.tables import GrantRow

__all__ = ["GRANT_OPERATIONS", "GrantSpec", "PolicyAdmin"]

_POLICY_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_GRANT_NAME = re.compile(r"^[a-zA-Z0-9:/_-]{1,256}$")
_PATTERN_CHARS = frozenset("*?[")
MAX_GRANTS_PER_KEY = 1000
_CONSTRAINTS = ("EncryptionContextSubset", "EncryptionContextEquals")
# A grant's RetireGrant lets its grantee retire that grant and nothing else: passing it on reaches no key.
_NOT_A_RIGHT_ON_THE_KEY = frozenset({"RetireGrant"})


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------------- request values


def _principal_name(value: Any, field_name: str, *, required: bool) -> str:
    """A principal named by a grant: one exact name (a pattern would name many)."""
    if value in (None, "") and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise errors.ValidationError(f"{field_name} must be a principal name of 1 to 256 characters")
    valid_text(value, field_name)
    if _PATTERN_CHARS & set(value):
        raise errors.ValidationError(f"{field_name} must name one principal: '*', '?' and '[' are not allowed")
    return value


@dataclass(frozen=True)
class GrantSpec:
    """A validated CreateGrant request."""

    grantee: str
    operations: tuple[str, ...]
    retiring: str = ""
    constraints: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    name: str = ""

    @property
    def context(self) -> dict[str, str]:
        """The encryption context every use of the grant carries (at least): its constraint's pairs."""
        for kind in _CONSTRAINTS:
            if kind in self.constraints:
                return dict(self.constraints[kind])
        return {}

    @property
    def uses(self) -> dict[str, str]:
        """The encryption context of the grant's uses, for decisions: exactly its Equals constraint, or any context
        containing its Subset constraint (every context if it has none)."""
        if "EncryptionContextEquals" in self.constraints:
            return dict(self.constraints["EncryptionContextEquals"])
        return ContextAtLeast(self.constraints.get("EncryptionContextSubset", {}))

    @property
    def conditions(self) -> dict[str, tuple[str, ...]]:
        """What CreateGrant's policy conditions see besides the encryption context (the grant's constraint):
        kms:GrantOperations, kms:GranteePrincipal, kms:RetiringPrincipal."""
        out: dict[str, tuple[str, ...]] = {"kms:GrantOperations": self.operations,
                                           "kms:GranteePrincipal": (self.grantee,)}
        if self.retiring:
            out["kms:RetiringPrincipal"] = (self.retiring,)
        if self.constraints:
            out["kms:GrantConstraintType"] = tuple(self.constraints)
        return out

    @classmethod
    def parse(cls, grantee: Any, operations: Any, retiring: Any = "", constraints: Any = None,
              name: Any = "") -> GrantSpec:
        grantee = _principal_name(grantee, "GranteePrincipal", required=True)
        retiring = _principal_name(retiring, "RetiringPrincipal", required=False)
        if not isinstance(operations, list) or not operations or not all(isinstance(o, str) for o in operations) \
                or set(operations) - GRANT_OPERATIONS:
            raise errors.ValidationError(
                f"Operations must be a non-empty list of grant operations: {', '.join(sorted(GRANT_OPERATIONS))}")
        if constraints is None:
            constraints = {}
        if not isinstance(constraints, Mapping) or set(constraints) - set(_CONSTRAINTS):
            raise errors.ValidationError("Constraints takes EncryptionContextSubset or EncryptionContextEquals")
        if len(constraints) > 1:
            raise errors.ValidationError("Constraints: give one of EncryptionContextSubset or EncryptionContextEquals")
        checked = {kind: check_context(value) for kind, value in constraints.items()}
        if name in (None, ""):
            name = ""
        elif not isinstance(name, str) or not _GRANT_NAME.match(name):
            raise errors.ValidationError("Name must be 1 to 256 characters of a-z, A-Z, 0-9, ':', '/', '_', '-'")
        return cls(grantee, tuple(sorted(set(operations))), retiring, checked, name)


def _new_grant(host: PolicyAdmin, args: Mapping[str, Any]) -> Target:
    """CreateGrant is checked on the key as AWS does: the new grant's constraint is the encryption context (so a
    grantee's CreateGrant, itself constrained, can only create grants at least as constrained) and its operations
    and principals are condition values (kms:GrantOperations, …)."""
    spec = GrantSpec.parse(args["grantee"], args["operations"], args["retiring"], args["constraints"],
                           args["name"])
    return Target(key=host.resolve_key(args["key_ref"]), conditions=spec.conditions, context=spec.uses)


_new_grant.arg = "key_ref"  # type: ignore[attr-defined]


def _grant_to_retire(host: PolicyAdmin, args: Mapping[str, Any]) -> Target:
    """RetireGrant is checked on the grant's key, with the grant's principals and operations as condition values: the
    policy engine lets its retiring principal, or its grantee when it carries RetireGrant, retire it."""
    token, key_ref, grant_id = args["grant_token"], args["key_ref"], args["grant_id"]
    if token:
        if not isinstance(token, str) or len(token) > 8192:
            raise errors.ValidationError("GrantToken is not valid")
        grant = host.repo.find_grant(token_hash=hash_token(valid_text(token, "GrantToken")))
        key = host.resolve_key(grant["KeyId"]) if grant else None
    elif key_ref and grant_id:
        key = host.resolve_key(key_ref)
        grant = host.repo.find_grant(grant_id=_grant_id(grant_id))
        if grant and grant["KeyId"] != key.key_id:
            grant = None
    else:
        raise errors.ValidationError("give GrantToken, or KeyId and GrantId")
    if grant is None or key is None:
        raise errors.NotFound("grant not found")
    conditions = {"kms:GranteePrincipal": (grant["GranteePrincipal"],),
                  "kms:GrantOperations": tuple(grant["Operations"])}
    if grant["RetiringPrincipal"]:
        conditions["kms:RetiringPrincipal"] = (grant["RetiringPrincipal"],)
    if grant.get("Constraints"):
        conditions["kms:GrantConstraintType"] = tuple(grant["Constraints"])
    return Target(key=key, resource=f"grant/{grant['GrantId']}", conditions=conditions)


_grant_to_retire.arg = "grant_id"  # type: ignore[attr-defined]


def _grant_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise errors.ValidationError("GrantId must be 1 to 128 characters")
    return valid_text(value, "GrantId")


def _policy_name(args: Mapping[str, Any]) -> str:
    name = args["name"]
    if not isinstance(name, str) or not 1 <= len(name) <= 256:
        raise errors.ValidationError("a policy name is 1 to 256 characters")
    return f"policy/{valid_text(name, 'policy name')}"


def _retiring_principal(args: Mapping[str, Any]) -> str:
    return f"principal/{_principal_name(args['retiring'], 'RetiringPrincipal', required=True)}"


# ================================================================================================== the service


class PolicyAdmin(Service):
    def __init__(self, keys: KeyService, repository: PolicyRepository) -> None:
        self.keys = keys
        self.gate = keys.gate
        self.repo = repository

    @internal
    def resolve_key(self, key_ref: Any, *, details: bool = False) -> Key:
        """Key id, ARN or alias → Key, for the gate's resolvers: metadata only, authorizes nothing."""
        return self.keys.resolve_key(key_ref, details=details)

    def _forget(self, *keys: tuple) -> None:
        self.gate.policy.forget(*keys)

    # ---------------------------------------------------------------------------------- named policies

    @operation("broker:PutPolicy", Need("broker:PutPolicy", resource(_policy_name)), mutates=True)
    def put_policy(self, call: Call, name: str, document: Any) -> dict[str, Any]:
        call.entry.extra["policy"] = name
        if not _POLICY_NAME.match(name) or name in RESERVED:
            raise errors.ValidationError(f"policy name {name!r} is reserved or invalid "
                                         "(1-128 of A-Z a-z 0-9 _ . @ -; not a built-in)")
        parsed = parse_document(document)
        excess = identity_policy_excess(parsed, lambda action, scope: call.covers([action], scope))
        if excess:
            raise errors.AccessDenied(f"{call.principal.name} may not write a policy granting what it does not hold "
                                      f"itself: {_few(excess)}")
        self.repo.put_policy(name, document, _now())
        self._forget(("policy", name))
        return {"Name": name}

    @operation("broker:GetPolicy", Need("broker:GetPolicy", resource(_policy_name)))
    def get_policy(self, call: Call, name: str) -> dict[str, Any]:
        built_in = builtin(name) if name != "root" else None
        if built_in is not None:
            return {"Name": name, "Document": built_in.raw, "BuiltIn": True}
        doc = self.repo.get_policy(name)
        if doc is None:
            raise errors.NotFound(f"policy {name} not found")
        return {"Name": name, "Document": doc, "BuiltIn": False}

    @operation("broker:ListPolicies", Need("broker:ListPolicies", fixed("policy/*")))
    def list_policies(self, call: Call) -> dict[str, Any]:
        return {"Policies": sorted(BUILTIN_DOCUMENTS) + ["root"] + self.repo.list_policies()}

    @operation("broker:DeletePolicy", Need("broker:DeletePolicy", resource(_policy_name)), mutates=True)
    def delete_policy(self, call: Call, name: str) -> None:
        if name in RESERVED or name.startswith("keyring:"):
            raise errors.ValidationError(f"policy {name} is built in")
        if not self.repo.delete_policy(name):
            raise errors.NotFound(f"policy {name} not found")
        self._forget(("policy", name))

    # ---------------------------------------------------------------------------------- key policies

    @operation("kms:PutKeyPolicy", Need("kms:PutKeyPolicy", with_facts(
        key_arg("key_ref"), {"kms:BypassPolicyLockoutSafetyCheck": lambda a: a["bypass_lockout"] is True})), mutates=True)
    def put_key_policy(self, call: Call, key_ref: str, document: Any, policy_name: str = "default", *,
                       bypass_lockout: bool = False) -> None:
        """`document`: the policy's JSON text (kept byte for byte) or an object. Refused: a malformed document, one
        that allows what its writer may not do on the key (no escalation), one that would lock its writer out of
        PutKeyPolicy (AWS's safety check; `bypass_lockout` is AWS's BypassPolicyLockoutSafetyCheck)."""
        key = call.key()
        if policy_name != "default":
            raise errors.ValidationError("PolicyName must be default")
        policy = read_key_policy(document)
        check_writer(call, key, policy, bypass_lockout=bypass_lockout is True)
        if bypass_lockout is True:
            call.entry.extra["bypass_policy_lockout_safety_check"] = True
        self.repo.put_key_policy(key.key_id, policy.text, _now())
        self._forget(("key-policy", key.key_id))

    @operation("kms:GetKeyPolicy", Need("kms:GetKeyPolicy", key_arg("key_ref")))
    def get_key_policy(self, call: Call, key_ref: str, policy_name: str = "default") -> dict[str, Any]:
        """The key policy as its writer wrote it ("PolicyText") and as an object ("Policy"); AWS's default key
        policy for a key that has no other."""
        if policy_name != "default":
            raise errors.NotFound(f"key policy {str(policy_name)[:64]} not found")
        text = self.repo.get_key_policy_text(call.key().key_id) or DEFAULT_KEY_POLICY_TEXT
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        return {"Policy": document, "PolicyText": text, "PolicyName": "default"}

    @operation("kms:ListKeyPolicies", Need("kms:ListKeyPolicies", key_arg("key_ref")))
    def list_key_policies(self, call: Call, key_ref: str) -> dict[str, Any]:
        return {"PolicyNames": ["default"], "Truncated": False}

    # ---------------------------------------------------------------------------------- grants

    @operation("kms:CreateGrant", Need("kms:CreateGrant", _new_grant), mutates=True)
    def create_grant(self, call: Call, key_ref: str, grantee: Any, operations: Any, *, retiring: Any = "",
                     constraints: Any = None, name: Any = "") -> dict[str, Any]:
        """A grant passes on only what its creator holds: each operation is checked as the creator's own request on
        the key, for every encryption context the grant can be used with (`GrantSpec.uses`)."""
        spec = GrantSpec.parse(grantee, operations, retiring, constraints, name)
        key = call.key()
        call.entry.context = spec.context or None
        call.entry.extra.update(grantee=spec.grantee, operations=list(spec.operations))
        beyond = [op for op in spec.operations if op not in _NOT_A_RIGHT_ON_THE_KEY
                  and not call.holds(f"kms:{op}", key, context=spec.uses,
                                    conditions=spec.conditions if op == "CreateGrant" else None)]
        if beyond:
            raise errors.AccessDenied(f"{call.principal.name} may not grant {', '.join(beyond)} on {key.key_id}: "
                                      "a grant passes on only operations its creator may perform on the key")
        if len(self.repo.grants_for_key(key.key_id)) >= MAX_GRANTS_PER_KEY:
            raise errors.LimitExceeded(f"a key has at most {MAX_GRANTS_PER_KEY} grants")
        grant_id = uuid.uuid4().hex
        token = secrets.token_urlsafe(32)
        self.repo.add_grant(GrantRow(
            grant_id=grant_id, key_id=key.key_id, name=spec.name, grantee=spec.grantee, retiring=spec.retiring,
            operations=json.dumps(list(spec.operations)), constraints=json.dumps(spec.constraints, sort_keys=True),
            token_hash=hash_token(token), created_at=_now()))
        self._forget(("grants", key.key_id))
        call.entry.extra["grant_id"] = grant_id
        return {"GrantId": grant_id, "GrantToken": token}

    @operation("kms:ListGrants", Need("kms:ListGrants", key_arg("key_ref")))
    def list_grants(self, call: Call, key_ref: str) -> dict[str, Any]:
        return {"Grants": self.repo.grants_for_key(call.key().key_id), "Truncated": False}

    @operation("kms:ListRetirableGrants", Need("kms:ListRetirableGrants", resource(_retiring_principal)))
    def list_retirable_grants(self, call: Call, retiring: str) -> dict[str, Any]:
        return {"Grants": self.repo.grants_retirable_by(retiring), "Truncated": False}

    @operation("kms:RetireGrant", Need("kms:RetireGrant", _grant_to_retire), mutates=True)
    def retire_grant(self, call: Call, *, grant_token: str | None = None, key_ref: str | None = None,
                     grant_id: str | None = None) -> None:
        """By its retiring principal, its grantee (if the grant carries RetireGrant), or whoever a policy allows
        kms:RetireGrant on the key: the policy engine decides, on the grant the resolver found."""
        target = call.target("grant_id")
        retired = (target.resource or "").partition("/")[2]
        call.entry.extra["grant_id"] = retired
        self.repo.delete_grant(retired)
        self._forget(("grants", call.key("grant_id").key_id))

    @operation("kms:RevokeGrant", Need("kms:RevokeGrant", key_arg("key_ref")), mutates=True)
    def revoke_grant(self, call: Call, key_ref: str, grant_id: str) -> None:
        key = call.key()
        grant = self.repo.find_grant(grant_id=_grant_id(grant_id))
        if grant is None or grant["KeyId"] != key.key_id:
            raise errors.NotFound("grant not found")
        call.entry.extra["grant_id"] = grant["GrantId"]
        self.repo.delete_grant(grant["GrantId"])
        self._forget(("grants", key.key_id))

    # ---------------------------------------------------------------------------------- simulator

    @operation("broker:SimulatePolicy", Need("broker:SimulatePolicy", fixed("policy/*")))
    def simulate(self, call: Call, *, principal: Any, action: Any, key_ref: str | None = None,
                 resource: str | None = None, context: Any = None, source_ip: str = "",
                 time: str | None = None) -> dict[str, Any]:
        """Answer allow/deny for a hypothetical request, and which statement decided. Changes nothing."""
        if not isinstance(principal, Mapping) or not isinstance(principal.get("Name"), str):
            raise errors.ValidationError("Principal.Name is required")
        policies = principal.get("Policies", [])
        if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
            raise errors.ValidationError("Principal.Policies must be a list of policy names")
        unknown = [p for p in policies if p != "root" and builtin(p) is None and self.repo.get_policy(p) is None]
        if unknown:
            raise errors.ValidationError(f"Principal.Policies: unknown policy {unknown[0][:128]!r}")
        if not isinstance(action, str) or action not in ALL_ACTIONS:
            raise errors.ValidationError(f"Action {str(action)[:128]!r} is not known")
        if action in ACTION_ALIASES:
            raise errors.ValidationError(f"{action} is decided as {' and '.join(ACTION_ALIASES[action])} "
                                         "(the source and the destination key): simulate each")
        when = None
        if time is not None:
            when = parse_time_value(time) if isinstance(time, str) else None
            if not isinstance(when, datetime):
                raise errors.ValidationError("Time must be an ISO 8601 date-time")
        if resource is not None:
            valid_text(resource, "Resource")
        who = Principal(name=valid_text(principal["Name"], "Principal.Name"),
                        auth_method=str(principal.get("AuthMethod", "token")), policies=tuple(policies),
                        attributes=dict(principal.get("Attributes") or {}))
        key = self.resolve_key(key_ref) if key_ref else None
        decision = self.gate.policy.decide(who, action, key, check_context(context), resource=resource,
                                           source_ip=source_ip, now=when)
        return decision.to_dict()


def _few(items: list[str], limit: int = 5) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
