"""Keys: the filtered list, a key's detail, create, and the lifecycle actions. Parse the form, call KeyService (or
the policy service for the key policy and grants), render; the gate decides and audits every call."""

from __future__ import annotations

from typing import Any

from flask import g, redirect, request, url_for

from broker import errors
from broker.console.web import NAV, bp, form_error, notify, page, services, tr
from broker.key_views import KeyQuery
from broker.replication.replicated import PRIMARY_TAG, REPLICA_TAG

FILTERS = ("text", "provider", "state", "spec", "tag", "alias")
STATES = ("Enabled", "Disabled", "PendingDeletion", "PendingImport")

NAV.extend([("console.keys", "nav.keys")])


def _field(name: str, limit: int = 256) -> str:
    value = request.values.get(name, "")
    if len(value) > limit:
        raise errors.ValidationError(tr("form.too_long", field=tr(f"field.{name}")))
    return value.strip()


@bp.get("/")
def home():
    return redirect(url_for("console.keys"))


@bp.get("/keys")
def keys():
    query = KeyQuery(**{f: _field(f) for f in FILTERS})
    marker = request.args.get("marker") or None
    result = services().keys.find_keys(g.ctx, query, limit=50, marker=marker)
    try:
        stores = services().keys.describe_key_stores(g.ctx)
    except errors.AccessDenied:
        stores = []
    return page("keys.html", title=tr("keys.title"), result=result, query=query, states=STATES, stores=stores,
                may_create=any(s.may_create for s in stores))


@bp.get("/keys/new")
def new_key():
    return _create_form()


def _create_form(status: int = 200, error: str = "", values: dict | None = None):
    stores = services().keys.describe_key_stores(g.ctx)
    creatable = {st.provider: st.specs for st in stores if st.may_create}
    return page("key_new.html", status, title=tr("keys.create"), stores=stores, error=error, values=values or {},
                specs=sorted({s for specs in creatable.values() for s in specs}), specs_json=_json(creatable))


@bp.post("/keys")
def create_key():
    values = {k: request.form.get(k, "") for k in ("provider", "spec", "usage", "description", "tags", "alias")}
    form_error(lambda exc: _create_form(exc.status, exc.message, values))
    tags = _parse_tags(values["tags"])
    meta = services().keys.create_key(g.ctx, key_spec=values["spec"] or "SYMMETRIC_DEFAULT",
                                      key_usage=values["usage"] or None, description=values["description"],
                                      tags=tags, provider=values["provider"] or None)
    key_id = meta["KeyId"]
    if values["alias"].strip():
        alias = values["alias"].strip()
        alias = alias if alias.startswith("alias/") else f"alias/{alias}"
        try:
            services().keys.create_alias(g.ctx, alias, key_id)
        except errors.BrokerError as exc:
            notify("keys.created_alias_failed", key=key_id, error=exc.message)
            return redirect(url_for("console.key", key_id=key_id))
    notify("keys.created", key=key_id)
    return redirect(url_for("console.key", key_id=key_id))


def _parse_tags(text: str) -> dict[str, str]:
    """`name=value` pairs, one per line or comma-separated."""
    tags: dict[str, str] = {}
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise errors.ValidationError(tr("keys.bad_tag", tag=part[:64]))
        tags[name.strip()] = value.strip()
    return tags


@bp.get("/keys/<key_id>")
def key(key_id: str):
    return _detail(key_id)


def _detail(key_id: str, status: int = 200, error: str = "", action: str = ""):
    svc = services()
    detail = svc.keys.key_detail(g.ctx, key_id)
    key_policy, grants = None, None
    if detail.allowed.get("kms:GetKeyPolicy"):
        key_policy = _json(svc.policies.get_key_policy(g.ctx, detail.summary.key_id).get("Policy"))
    if detail.allowed.get("kms:ListGrants"):
        grants = svc.policies.list_grants(g.ctx, detail.summary.key_id).get("Grants", [])
    from broker.console.pages_audit import recent_for_key
    return page("key.html", status, title=detail.summary.key_id, detail=detail, key_policy=key_policy,
                grants=grants, error=error, failed_action=action,
                used_by=_used_by(detail.summary.key_id, detail.summary.tags),
                events=recent_for_key(detail.summary.key_id))


def _used_by(key_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """Which multi-keys list this key as a member, and — for a replicated key, as its tags say — its copies or its
    primary (each only as far as the caller may see)."""
    svc = services()
    out: dict[str, Any] = {"multikeys": None, "replicas": None, "replica_of": tags.get(REPLICA_TAG)}
    try:
        out["multikeys"] = [mk["Name"] for mk in svc.multikeys.list_multikeys(g.ctx)["MultiKeys"]
                            if key_id in mk.get("Members", [])]
    except errors.AccessDenied:
        pass
    if PRIMARY_TAG in tags:
        try:
            out["replicas"] = svc.replicated.describe(g.ctx, key_id)["Replicas"]
        except (errors.NotFound, errors.AccessDenied):
            pass
    return out


def _json(value: object) -> str:
    import json
    return json.dumps(value, indent=2, sort_keys=False)


ACTIONS = {
    "enable": ("kms:EnableKey", lambda ctx, k: services().keys.enable_key(ctx, k), "keys.enabled"),
    "disable": ("kms:DisableKey", lambda ctx, k: services().keys.disable_key(ctx, k), "keys.disabled"),
    "rotate": ("kms:RotateKeyOnDemand", lambda ctx, k: services().keys.rotate_key_on_demand(ctx, k), "keys.rotated"),
    "cancel-deletion": ("kms:CancelKeyDeletion", lambda ctx, k: services().keys.cancel_key_deletion(ctx, k),
                        "keys.deletion_cancelled"),
    "disable-rotation": ("kms:DisableKeyRotation", lambda ctx, k: services().keys.disable_key_rotation(ctx, k),
                         "keys.rotation_disabled"),
}


@bp.post("/keys/<key_id>/<action>")
def key_action(key_id: str, action: str):
    form_error(lambda exc: _detail(key_id, exc.status, exc.message, action))
    if action in ACTIONS:
        g.operation, call, done = ACTIONS[action]
        call(g.ctx, key_id)
    elif action == "schedule-deletion":
        g.operation, done = "kms:ScheduleKeyDeletion", "keys.deletion_scheduled"
        days = _int(request.form.get("days", "30"), "days")
        if request.form.get("confirm", "").strip() != key_id:
            raise errors.ValidationError(tr("keys.confirm_mismatch", key=key_id))
        services().keys.schedule_key_deletion(g.ctx, key_id, days)
    elif action == "enable-rotation":
        g.operation, done = "kms:EnableKeyRotation", "keys.rotation_enabled"
        services().keys.enable_key_rotation(g.ctx, key_id, _int(request.form.get("period", "365"), "period"))
    elif action == "description":
        g.operation, done = "kms:UpdateKeyDescription", "keys.description_saved"
        services().keys.update_key_description(g.ctx, key_id, request.form.get("description", ""))
    elif action == "tags":
        g.operation, done = "kms:TagResource", "keys.tags_saved"
        services().keys.tag_resource(g.ctx, key_id, _parse_tags(request.form.get("tags", "")))
    elif action == "untag":
        g.operation, done = "kms:UntagResource", "keys.tags_saved"
        services().keys.untag_resource(g.ctx, key_id, [request.form.get("tag", "")])
    elif action == "alias":
        g.operation, done = "kms:CreateAlias", "keys.alias_created"
        alias = request.form.get("alias", "").strip()
        services().keys.create_alias(g.ctx, alias if alias.startswith("alias/") else f"alias/{alias}", key_id)
    else:
        raise errors.NotFound(tr("error.no_action"))
    notify(done, key=key_id)
    return redirect(url_for("console.key", key_id=key_id))


def _int(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise errors.ValidationError(tr("form.not_a_number", field=tr(f"field.{name}"))) from None
