"""Cross-cloud: providers with their health, multi-keys with each member's health (the circuit breaker's view of
its provider), a replicated key's copies and their versions, and a sync manifest's plan as a readable diff (planning
changes nothing; applying stays with `kms-broker sync apply`)."""

from __future__ import annotations

from typing import Any

from flask import g, request

from broker import errors
from broker.console.web import NAV, bp, form_error, page, services, tr
from broker.replication.manifest import ManifestError, parse_manifest

NAV.extend([("console.crosscloud", "nav.crosscloud")])
MAX_MANIFEST = 256 * 1024
SIGNS = {"create": "+", "update": "~", "delete": "-", "fix-drift": "!"}


def _multikeys() -> tuple[list[dict[str, Any]] | None, str]:
    try:
        listed = services().multikeys.list_multikeys(g.ctx)["MultiKeys"]
    except errors.AccessDenied:
        return None, ""
    out = []
    for mk in listed:
        try:
            out.append(services().multikeys.describe(g.ctx, mk["MultiKeyId"])["MultiKey"])
        except errors.AccessDenied:
            out.append({**mk, "Members": None})
    return out, ""


def _replicated(ref: str) -> tuple[dict[str, Any] | None, str]:
    if not ref:
        return None, ""
    try:
        return services().replicated.describe(g.ctx, ref), ""
    except (errors.NotFound, errors.ValidationError, errors.AccessDenied) as exc:
        return None, exc.message


def _page(status: int = 200, *, manifest: str = "", plan: Any = None, plan_error: str = ""):
    multikeys, _ = _multikeys()
    ref = request.values.get("replicated", "").strip()[:256]
    replicated, replicated_error = _replicated(ref)
    return page("crosscloud.html", status, title=tr("cloud.title"), providers=sorted(
        services().keys.readiness().items()), multikeys=multikeys, replicated=replicated, replicated_ref=ref,
        replicated_error=replicated_error, manifest=manifest, plan=plan, plan_error=plan_error, signs=SIGNS)


@bp.get("/cross-cloud")
def crosscloud():
    return _page()


@bp.post("/cross-cloud/plan")
def crosscloud_plan():
    """Plan a pasted manifest; a manifest the parser refuses is shown again with the reason (400)."""
    g.operation = "broker:Sync"
    text = request.form.get("manifest", "")
    form_error(lambda exc: _page(exc.status, manifest=text[:MAX_MANIFEST], plan_error=exc.message))
    if len(text) > MAX_MANIFEST:
        raise errors.ValidationError(tr("cloud.too_large"))
    try:
        manifest = parse_manifest(text)
    except ManifestError as exc:
        raise errors.ValidationError(str(exc)[:1000]) from None
    return _page(manifest=text, plan=services().sync.plan(g.ctx, manifest))
