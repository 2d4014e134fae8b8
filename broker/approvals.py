"""Quorum-approved operations: a request needs M of N designated approvers and a cooling-off before it executes.

Operation kinds (escrow release, immediate key destruction, root-token generation, node join, …) each name the
policy action the requester, every approver and the executor must hold on the request's target: an approval is a
co-signature and carries nothing beyond what its approver holds. The rules, in the order `execute` checks them:

* the request record and every vote carry an HMAC by the HSM's audit key over what they bind (operation, params,
  requester, times, approver, digest): a row edited in the store (a recipient key swapped after approval, a
  forged vote) no longer counts;
* the requester cannot approve; one vote per approver (name); any designated approver can veto, and a veto ends it;
* a request expires (`ttl`); M valid approvals of the request's own digest open a cooling-off period (default 72 h,
  per kind) that must pass before execution; execution happens at most once (a compare-and-set claim).

Every step is a declared operation of the gate (audited; the clock is injectable so tests drive it).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from broker import errors
from broker.gate import Call, Need, Service, Target, fixed, internal, operation, resource
from broker.service import KeyService
from broker.store import Conflict
from broker.store.trust import TrustRepository
from providers.base import RootOfTrust

DEFAULT_COOLING_OFF = 72 * 3600
DEFAULT_EXTRA_TTL = 7 * 86400
MAX_SECONDS = 366 * 86400
_ID_RE = re.compile(r"^apr-[0-9a-f]{24}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@:/+=-]{1,256}$")

# The actions a kind may require (the gate's `dynamic` declarations); the policy language lists them too.
KIND_ACTIONS = frozenset({"broker:EscrowRelease", "broker:DestroyKeyNow", "broker:GenerateRootToken",
                          "broker:JoinNode", "keyring:Destroy"})

Executor = Callable[[KeyService, Call, dict[str, Any], Target], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """One kind of quorum-approved operation."""

    name: str
    action: str                                           # held by requester, approvers and executor on the target
    check: Callable[[KeyService, Mapping[str, Any]], dict[str, Any]]  # validated, canonical (never secret)
    target: Callable[[KeyService, dict[str, Any]], Target]
    execute: Executor
    cooling_off_seconds: int = DEFAULT_COOLING_OFF


@dataclass(frozen=True)
class ApprovalView:
    """What `show`/`list` return: the request, its votes, and what it still waits for."""

    request_id: str
    operation: str
    params: dict[str, Any]
    digest: str
    requester: str
    reason: str
    state: str  # pending | vetoed | executed | expired
    required: int
    approvers: list[str]
    approvals: list[str]
    vetoes: list[str]
    created_at: datetime
    expires_at: datetime
    executable_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"RequestId": self.request_id, "Operation": self.operation, "Params": self.params,
                "Digest": self.digest, "Requester": self.requester, "Reason": self.reason, "State": self.state,
                "Required": self.required, "Approvers": self.approvers, "Approvals": self.approvals,
                "Vetoes": self.vetoes, "CreatedAt": self.created_at.isoformat(),
                "ExpiresAt": self.expires_at.isoformat(),
                "ExecutableAt": self.executable_at.isoformat() if self.executable_at else None}


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def params_digest(operation_name: str, params: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({"operation": operation_name, "params": dict(params)})).hexdigest()


def _request_resource(host: ApprovalService, args: Mapping[str, Any]) -> Target:
    request_id = args.get("request_id")
    if not isinstance(request_id, str) or not _ID_RE.match(request_id):
        raise errors.ValidationError("RequestId must look like apr-<24 hex digits>")
    if host.repo.get_request(request_id) is None:
        raise errors.NotFound(f"approval request {request_id} not found")
    return Target(resource=f"approval/{request_id}")


def _kind_resource(args: Mapping[str, Any]) -> str:
    name = args.get("operation_name")
    if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9-]{0,63}$", name):
        raise errors.ValidationError("Operation must be a lower-case kind name such as escrow-release")
    return f"approval/{name}"


class ApprovalService(Service):
    """Requests, votes and execution of quorum-approved operations."""

    def __init__(self, keys: KeyService, repo: TrustRepository, root: RootOfTrust,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.keys = keys
        self.repo = repo
        self.root = root
        self.gate = keys.gate
        self.clock = clock or (lambda: datetime.now(UTC))
        self.kinds: dict[str, Kind] = {}

    @internal
    def register(self, kind: Kind) -> None:
        """Add an operation kind (called by the composition root; kinds live beside what they execute)."""
        if kind.action not in KIND_ACTIONS:
            raise ValueError(f"{kind.action} is not declared as a kind action of the approval operations")
        self.kinds[kind.name] = kind

    # ------------------------------------------------------------------------------------------ helpers

    def _kind(self, name: str) -> Kind:
        kind = self.kinds.get(name)
        if kind is None:
            raise errors.ValidationError(f"unknown operation {name!r}; known: {', '.join(sorted(self.kinds))}")
        return kind

    def _mac(self, value: Any) -> str:
        return self.root.audit_hmac(b"kms-broker approval v1\n" + canonical(value)).hex()

    def _request_mac(self, row: Mapping[str, Any]) -> str:
        return self._mac({k: row[k] for k in ("request_id", "operation", "params", "digest", "requester",
                                               "required", "approvers", "cooling_off_seconds", "created_at",
                                               "expires_at")})

    def _vote_mac(self, request_id: str, approver: str, vote: str, digest: str, at: datetime) -> str:
        return self._mac({"request_id": request_id, "approver": approver, "vote": vote, "digest": digest, "at": at})

    def _load(self, request_id: str) -> dict[str, Any]:
        row = self.repo.get_request(request_id)
        if row is None:
            raise errors.NotFound(f"approval request {request_id} not found")
        row = {**row, "created_at": row["created_at"].isoformat(), "expires_at": row["expires_at"].isoformat()}
        if not secrets.compare_digest(self._request_mac(row), row["mac"]):
            raise errors.InvalidState(f"approval request {request_id} fails its integrity check (edited in the "
                                      "store); it cannot be approved or executed")
        row["created_at"], row["expires_at"] = (datetime.fromisoformat(row["created_at"]),
                                                datetime.fromisoformat(row["expires_at"]))
        row["params"] = json.loads(row["params"])
        row["approvers"] = json.loads(row["approvers"])
        return row

    def _valid_votes(self, row: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
        """(approvals, vetoes) whose HSM MAC holds, by designated approvers other than the requester, of this
        request's digest; anything else (a forged row, an approval of other params) does not count."""
        approvals, vetoes = [], []
        for vote in self.repo.votes(row["request_id"]):
            mac = self._vote_mac(row["request_id"], vote["approver"], vote["vote"], vote["digest"],
                                 vote["at"].isoformat())
            if not secrets.compare_digest(mac, vote["mac"]) or vote["approver"] not in row["approvers"]:
                continue
            if vote["vote"] == "veto":
                vetoes.append(vote)
            elif vote["digest"] == row["digest"] and vote["approver"] != row["requester"]:
                approvals.append(vote)
        return approvals, vetoes

    def _view(self, row: Mapping[str, Any]) -> ApprovalView:
        approvals, vetoes = self._valid_votes(row)
        state = row["state"]
        if state == "pending" and self.clock() >= row["expires_at"]:
            state = "expired"
        executable = None
        if len(approvals) >= row["required"]:
            executable = approvals[row["required"] - 1]["at"] + timedelta(seconds=row["cooling_off_seconds"])
        return ApprovalView(row["request_id"], row["operation"], row["params"], row["digest"], row["requester"],
                            row["reason"], state, row["required"], row["approvers"],
                            [v["approver"] for v in approvals], [v["approver"] for v in vetoes], row["created_at"],
                            row["expires_at"], executable)

    def _target(self, call: Call, kind: Kind, params: dict[str, Any]) -> Target:
        """Resolve the kind's target and require the kind's action on it for this caller (no escalation)."""
        target = kind.target(self.keys, params)
        call.require(kind.action, target.key, resource=target.resource)
        return target

    # ------------------------------------------------------------------------------------------ rules

    @operation("broker:ConfigureApprovals",
               Need("broker:ConfigureApprovals", resource(lambda a: f"approval-rule/{a['operation_name']}")),
               mutates=True)
    def configure(self, call: Call, operation_name: str, approvers: list[str], required: int, *,
                  cooling_off_seconds: int | None = None, ttl_seconds: int | None = None) -> dict[str, Any]:
        kind = self._kind(operation_name)
        if not isinstance(approvers, list) or not 1 <= len(approvers) <= 32 or not all(
                isinstance(a, str) and _NAME_RE.match(a) for a in approvers) or len(set(approvers)) != len(approvers):
            raise errors.ValidationError("Approvers must be 1 to 32 distinct principal names")
        if not isinstance(required, int) or isinstance(required, bool) or not 1 <= required <= len(approvers):
            raise errors.ValidationError("Required must be 1 to the number of approvers")
        cooling = kind.cooling_off_seconds if cooling_off_seconds is None else cooling_off_seconds
        if not isinstance(cooling, int) or isinstance(cooling, bool) or not 0 <= cooling <= MAX_SECONDS:
            raise errors.ValidationError("CoolingOffSeconds must be 0 to 366 days")
        ttl = cooling + DEFAULT_EXTRA_TTL if ttl_seconds is None else ttl_seconds
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not cooling < ttl <= 2 * MAX_SECONDS:
            raise errors.ValidationError("TtlSeconds must be longer than the cooling-off (and at most 732 days)")
        self.repo.put_rule(operation=operation_name, approvers=json.dumps(approvers), required=required,
                           cooling_off_seconds=cooling, ttl_seconds=ttl, updated_at=self.clock())
        call.entry.extra.update(operation=operation_name, approvers=approvers, required=required)
        return {"Operation": operation_name, "Approvers": approvers, "Required": required,
                "CoolingOffSeconds": cooling, "TtlSeconds": ttl}

    @operation("broker:ListApprovalRules", Need("broker:ListApprovalRules", fixed("approval-rule/*")))
    def rules(self, call: Call) -> list[dict[str, Any]]:
        return [{"Operation": r["operation"], "Approvers": json.loads(r["approvers"]), "Required": r["required"],
                 "CoolingOffSeconds": r["cooling_off_seconds"], "TtlSeconds": r["ttl_seconds"]}
                for r in self.repo.list_rules()]

    # ------------------------------------------------------------------------------------------ requests

    @operation("broker:RequestApproval", Need("broker:RequestApproval", resource(_kind_resource)),
               dynamic=KIND_ACTIONS, mutates=True)
    def request(self, call: Call, operation_name: str, params: Mapping[str, Any], reason: str = "") -> ApprovalView:
        kind = self._kind(operation_name)
        if not isinstance(params, Mapping):
            raise errors.ValidationError("Params must be an object")
        if not isinstance(reason, str) or len(reason) > 1024:
            raise errors.ValidationError("Reason is at most 1024 characters")
        params = kind.check(self.keys, params)
        self._target(call, kind, params)
        rule = self.repo.get_rule(operation_name)
        if rule is None:
            raise errors.InvalidState(f"no approvers are designated for {operation_name} "
                                      "(kms-broker approval configure)")
        now = self.clock()
        row = {"request_id": "apr-" + secrets.token_hex(12), "operation": operation_name,
               "params": canonical(params).decode(), "digest": params_digest(operation_name, params),
               "requester": call.principal.name, "required": rule["required"], "approvers": rule["approvers"],
               "cooling_off_seconds": rule["cooling_off_seconds"], "created_at": now.isoformat(),
               "expires_at": (now + timedelta(seconds=rule["ttl_seconds"])).isoformat()}
        mac = self._request_mac(row)
        self.repo.add_request(**{**row, "created_at": now, "expires_at": now + timedelta(seconds=rule["ttl_seconds"]),
                                 "reason": reason, "state": "pending", "mac": mac})
        call.entry.extra.update(request=row["request_id"], operation=operation_name, digest=row["digest"])
        return self._view(self._load(row["request_id"]))

    @operation("broker:ListApprovals", Need("broker:ListApprovals", fixed("approval/*")))
    def list_requests(self, call: Call, state: str | None = None) -> list[ApprovalView]:
        if state not in (None, "pending", "vetoed", "executed", "expired"):
            raise errors.ValidationError("State must be pending, vetoed, executed or expired")
        out = []
        for row in self.repo.list_requests("pending" if state == "expired" else state):
            try:
                view = self._view(self._load(row["request_id"]))
            except errors.InvalidState:
                continue  # a tampered request is shown by `show`, with its error
            if state is None or view.state == state:
                out.append(view)
        return out

    @operation("broker:GetApproval", Need("broker:GetApproval", _request_resource))
    def show(self, call: Call, request_id: str) -> ApprovalView:
        return self._view(self._load(request_id))

    # ------------------------------------------------------------------------------------------ votes

    def _vote(self, call: Call, request_id: str, vote: str, digest: str | None) -> dict[str, Any]:
        row = self._load(request_id)
        view = self._view(row)
        if view.state != "pending":
            raise errors.InvalidState(f"approval request {request_id} is {view.state}")
        me = call.principal.name
        if me not in row["approvers"]:
            raise errors.AccessDenied(f"{me} is not a designated approver of {row['operation']}")
        if me == row["requester"]:
            raise errors.AccessDenied("the requester cannot approve or veto their own request")
        if digest is not None and digest != row["digest"]:
            raise errors.ValidationError("the request is not the one you reviewed (digest differs)")
        kind = self._kind(row["operation"])
        self._target(call, kind, row["params"])
        now = self.clock()
        try:
            self.repo.add_vote(request_id=request_id, approver=me, vote=vote, digest=row["digest"], at=now,
                               mac=self._vote_mac(request_id, me, vote, row["digest"], now.isoformat()))
        except Conflict:
            raise errors.AlreadyExists(f"{me} has already voted on {request_id}") from None
        call.entry.extra.update(request=request_id, operation=row["operation"], digest=row["digest"])
        return row

    @operation("broker:Approve", Need("broker:Approve", _request_resource), dynamic=KIND_ACTIONS,
               mutates=True)
    def approve(self, call: Call, request_id: str, digest: str | None = None) -> ApprovalView:
        row = self._vote(call, request_id, "approve", digest)
        view = self._view(row)
        if view.executable_at is not None:
            self.repo.set_quorum(request_id, self.clock())
        return view

    @operation("broker:Veto", Need("broker:Veto", _request_resource), dynamic=KIND_ACTIONS, mutates=True)
    def veto(self, call: Call, request_id: str, reason: str = "") -> ApprovalView:
        row = self._vote(call, request_id, "veto", None)
        self.repo.close_request(request_id, "vetoed", call.principal.name, self.clock())
        call.entry.extra["reason"] = str(reason)[:256]
        return self._view(self._load(row["request_id"]))

    # ------------------------------------------------------------------------------------------ execution

    @operation("broker:ExecuteApproval", Need("broker:ExecuteApproval", _request_resource),
               dynamic=KIND_ACTIONS, mutates=True)
    def execute(self, call: Call, request_id: str) -> dict[str, Any]:
        row = self._load(request_id)
        view = self._view(row)
        call.entry.extra.update(request=request_id, operation=row["operation"], digest=row["digest"])
        if view.state != "pending":
            raise errors.InvalidState(f"approval request {request_id} is {view.state}")
        if view.vetoes:
            raise errors.InvalidState(f"approval request {request_id} was vetoed")
        if view.executable_at is None:
            raise errors.InvalidState(f"approval request {request_id} has {len(view.approvals)} of "
                                      f"{row['required']} approvals")
        now = self.clock()
        if now < view.executable_at:
            raise errors.InvalidState(f"approval request {request_id} is cooling off until "
                                      f"{view.executable_at.isoformat()}")
        kind = self._kind(row["operation"])
        target = self._target(call, kind, row["params"])
        if not self.repo.close_request(request_id, "executing", call.principal.name, now):
            raise errors.InvalidState(f"approval request {request_id} is being or has been executed")
        try:
            result = kind.execute(self.keys, call, row["params"], target)
        except BaseException:
            self.repo.reopen(request_id)
            raise
        self.repo.finish(request_id)
        return {"RequestId": request_id, "Operation": row["operation"], "Result": result}

