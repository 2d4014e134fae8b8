"""Keyring (the MySQL/MariaDB keyring bridge): mounts, entries and their versions (never the material), rotation
schedules, and database tokens (shown once, on the page that created them, never stored by the console)."""

from __future__ import annotations

from typing import Any

from flask import g, redirect, request, url_for

from broker import errors
from broker.console.web import NAV, bp, form_error, notify, page, services, tr

NAV.extend([("console.keyring", "nav.keyring")])
KEY_BYTES = (16, 24, 32)


def _keyring() -> Any:
    keyring = services().keyring
    if keyring is None:
        raise errors.Unsupported(tr("keyring.unavailable"))
    return keyring


def _entries() -> tuple[dict[str, int], list[Any], list[str]]:
    """Every entry the caller may list: all mounts at once when it may, else mount by mount."""
    keyring = _keyring()
    mounts = keyring.mounts()
    try:
        return mounts, keyring.list_all(g.ctx), []
    except errors.AccessDenied:
        pass
    # Mount by mount: the registered ones and those the caller's keyring:<mount> policies name.
    own = keyring.mounts_named_by(g.ctx.principal)  # an invalid name (e.g. "keyring:*") names none: never a 400
    entries, hidden = [], []
    for mount in sorted(set(mounts) | own):
        try:
            entries += keyring.list_entries(g.ctx, mount)
        except errors.AccessDenied:
            hidden.append(mount)
    if hidden and len(hidden) == len(set(mounts) | own):
        raise errors.AccessDenied(tr("keyring.no_mount"))
    return mounts, entries, hidden


def _page(status: int = 200, error: str = "", issued: Any = None, values: dict | None = None):
    mounts, entries, hidden = _entries()
    return page("keyring.html", status, title=tr("keyring.title"), mounts=mounts, entries=entries, hidden=hidden,
                error=error, issued=issued, values=values or {})


@bp.get("/keyring")
def keyring():
    return _page()


def _int(name: str, *, optional: bool = False, scale: int = 1) -> int | None:
    value = request.form.get(name, "").strip()
    if not value and optional:
        return None
    try:
        return int(value) * scale
    except ValueError:
        raise errors.ValidationError(tr("form.not_a_number", field=tr(f"keyring.{name}"))) from None


def _text(name: str) -> str:
    value = request.form.get(name, "").strip()
    if not value or len(value) > 512:
        raise errors.ValidationError(tr("keyring.required", field=tr(f"keyring.{name}")))
    return value


@bp.post("/keyring/entries")
def keyring_create():
    values = {k: request.form.get(k, "") for k in ("mount", "entry", "key_bytes", "period_days")}
    form_error(lambda exc: _page(exc.status, exc.message, values=values))
    g.operation = "keyring:Create"
    key_bytes = _int("key_bytes", optional=True) or 32
    if key_bytes not in KEY_BYTES:
        raise errors.ValidationError(tr("keyring.bad_size"))
    mount, entry = _text("mount"), _text("entry")
    _keyring().create(g.ctx, mount, entry, key_bytes=key_bytes,
                      rotation_period_seconds=_int("period_days", optional=True, scale=86400))
    notify("keyring.created", entry=f"{mount}/{entry}")
    return redirect(url_for("console.keyring"))


@bp.post("/keyring/rotate")
def keyring_rotate():
    form_error(lambda exc: _page(exc.status, exc.message))
    g.operation = "keyring:Rotate"
    mount, entry = _text("mount"), _text("entry")
    version = _keyring().rotate(g.ctx, mount, entry)
    notify("keyring.rotated", entry=f"{mount}/{entry}", version=version)
    return redirect(url_for("console.keyring"))


@bp.post("/keyring/rotation")
def keyring_rotation():
    form_error(lambda exc: _page(exc.status, exc.message))
    g.operation = "keyring:SetRotation"
    mount, entry = _text("mount"), _text("entry")
    _keyring().set_rotation(g.ctx, mount, entry, _int("period_days", optional=True, scale=86400))
    notify("keyring.rotation_saved", entry=f"{mount}/{entry}")
    return redirect(url_for("console.keyring"))


@bp.post("/keyring/tokens")
def keyring_token():
    """The token appears in this response only: no redirect, no notice, nothing kept."""
    values = {k: request.form.get(k, "") for k in ("token_mount", "ttl_days")}
    form_error(lambda exc: _page(exc.status, exc.message, values=values))
    g.operation = "keyring:CreateToken"
    mount = request.form.get("token_mount", "").strip()
    if not mount:
        raise errors.ValidationError(tr("keyring.required", field=tr("keyring.mount")))
    issued = _keyring().create_token(g.ctx, mount, _int("ttl_days", optional=True, scale=86400))
    return _page(issued=issued)
