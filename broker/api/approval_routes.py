"""Native routes of quorum-approved operations (/v1/approvals): parse, call ApprovalService, render.

Importing this module registers the routes on the native blueprint (and so in the OpenAPI document).
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from pydantic import Field

from broker.api import schemas as s
from broker.api.native import op, parse_query
from broker.service import KeyService, RequestContext

Svc = KeyService
Ctx = RequestContext


class ConfigureApprovals(s.Body):
    Approvers: list[str]
    Required: int
    CoolingOffSeconds: int | None = None
    TtlSeconds: int | None = None


class RequestApproval(s.Body):
    Operation: str
    Params: dict[str, Any] = Field(default_factory=dict)
    Reason: str = ""


class Approve(s.Body):
    Digest: str | None = None


class Veto(s.Body):
    Reason: str = ""


class ListQuery(s.Body):
    model_config = {"extra": "forbid", "strict": False}
    State: str | None = None


def approvals() -> Any:
    return current_app.extensions["kms"].approvals


@op("/approvals/rules/<operation>", "PUT", "ConfigureApprovals",
    "Designate the approvers of an operation kind, how many must approve, the cooling-off and the request TTL",
    ConfigureApprovals)
def configure(svc: Svc, ctx: Ctx, b: ConfigureApprovals, operation: str):
    return approvals().configure(ctx, operation, b.Approvers, b.Required, cooling_off_seconds=b.CoolingOffSeconds,
                                 ttl_seconds=b.TtlSeconds)


@op("/approvals/rules", "GET", "ListApprovalRules", "The approval rule of every operation kind")
def rules(svc: Svc, ctx: Ctx):
    return {"Rules": approvals().rules(ctx)}


@op("/approvals", "POST", "RequestApproval",
    "Request a quorum-approved operation (escrow-release, key-destroy, root-token, node-join)", RequestApproval, 201)
def request_approval(svc: Svc, ctx: Ctx, b: RequestApproval):
    return approvals().request(ctx, b.Operation, b.Params, b.Reason).to_dict()


@op("/approvals", "GET", "ListApprovals", "Approval requests (?State=pending|vetoed|executed|expired)",
    query=ListQuery)
def list_approvals(svc: Svc, ctx: Ctx):
    state = parse_query().State
    return {"Requests": [v.to_dict() for v in approvals().list_requests(ctx, state)]}


@op("/approvals/<request_id>", "GET", "GetApproval", "One approval request, its votes and when it can execute")
def show(svc: Svc, ctx: Ctx, request_id: str):
    return approvals().show(ctx, request_id).to_dict()


@op("/approvals/<request_id>/approve", "POST", "Approve",
    "Approve a request (a designated approver other than the requester; Digest pins what was reviewed)", Approve)
def approve(svc: Svc, ctx: Ctx, b: Approve, request_id: str):
    return approvals().approve(ctx, request_id, b.Digest).to_dict()


@op("/approvals/<request_id>/veto", "POST", "Veto", "Veto a request (any designated approver): it can never run", Veto)
def veto(svc: Svc, ctx: Ctx, b: Veto, request_id: str):
    return approvals().veto(ctx, request_id, b.Reason).to_dict()


@op("/approvals/<request_id>/execute", "POST", "ExecuteApproval",
    "Execute an approved request once its cooling-off has passed (at most once)")
def execute(svc: Svc, ctx: Ctx, request_id: str):
    return approvals().execute(ctx, request_id)
