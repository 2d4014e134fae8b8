"""Approvals inbox: pending quorum-approved requests, each with what exactly would run (its parameters and their
digest), the votes so far, and approve / veto. Approving pins the digest the approver saw, so a request changed
after the page was shown cannot collect that vote."""

from __future__ import annotations

import json

from flask import g, redirect, request, url_for

from broker import errors
from broker.console.web import NAV, bp, form_error, notify, page, services, tr

NAV.extend([("console.approvals", "nav.approvals")])
STATES = ("pending", "executed", "vetoed", "expired")


@bp.get("/approvals")
def approvals():
    state = request.args.get("state", "pending")
    if state not in STATES:
        raise errors.ValidationError(tr("approvals.bad_state"))
    views = services().approvals.list_requests(g.ctx, state)
    return page("approvals.html", title=tr("approvals.title"), views=views, state=state, states=STATES,
                me=g.ctx.principal.name)


@bp.get("/approvals/<request_id>")
def approval(request_id: str):
    return _detail(request_id)


def _detail(request_id: str, status: int = 200, error: str = ""):
    view = services().approvals.show(g.ctx, request_id)
    return page("approval.html", status, title=tr("approvals.request", id=view.request_id), view=view, error=error,
                params=json.dumps(view.params, indent=2, sort_keys=True), me=g.ctx.principal.name)


@bp.post("/approvals/<request_id>/approve")
def approval_approve(request_id: str):
    form_error(lambda exc: _detail(request_id, exc.status, exc.message))
    g.operation = "broker:Approve"
    digest = request.form.get("digest", "")
    if not digest:
        raise errors.ValidationError(tr("approvals.no_digest"))
    services().approvals.approve(g.ctx, request_id, digest)
    notify("approvals.approved", id=request_id)
    return redirect(url_for("console.approval", request_id=request_id))


@bp.post("/approvals/<request_id>/veto")
def approval_veto(request_id: str):
    form_error(lambda exc: _detail(request_id, exc.status, exc.message))
    g.operation = "broker:Veto"
    services().approvals.veto(g.ctx, request_id, request.form.get("reason", "")[:256])
    notify("approvals.vetoed", id=request_id)
    return redirect(url_for("console.approval", request_id=request_id))
