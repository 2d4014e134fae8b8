"""The console's plumbing: the /ui blueprint, sessions on every request, CSRF, security headers, error pages.

Every page handler gets the logged-in principal's `RequestContext` (front door "console") from `g.ctx` and calls
services through `Services`; nothing here authorizes or audits by itself — the gate does, as for the API.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Request, current_app, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from broker import errors
from broker.auth import ANONYMOUS, Principal
from broker.console import i18n, identity
from broker.console.config import ConsoleSettings
from broker.console.sessions import Session, SessionStore
from broker.services import Services

log = logging.getLogger("kms_broker.console")
bp = Blueprint("console", __name__, url_prefix="/ui", template_folder="templates", static_folder="static",
               static_url_path="/static")
COOKIE = "kmsb_console"
LOGIN_COOKIE = "kmsb_login"
PUBLIC = {"console.login", "console.login_token", "console.login_ldap", "console.login_approle",
          "console.oidc_start", "console.oidc_callback", "console.static"}
NAV: list[tuple[str, str]] = []  # (endpoint, string key) of each section; page modules add theirs
NAV_ORDER = ("console.keys", "console.policies", "console.simulator", "console.audit", "console.activity",
             "console.keyring", "console.crosscloud", "console.approvals")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def init_app(app: Flask, settings: ConsoleSettings, data_dir: Path) -> None:
    """Mount the console under /ui (same process and port as the API)."""
    path = settings.session_db or data_dir / "console" / "sessions.db"
    app.extensions["kms_console"] = settings
    app.extensions["kms_console_sessions"] = SessionStore(path, idle_seconds=settings.idle_seconds,
                                                          max_seconds=settings.max_seconds)
    app.extensions.setdefault("kms_authenticators", {})["console"] = _authenticate
    from broker.console import (  # noqa: F401 - their routes
        pages_approvals,
        pages_audit,
        pages_auth,
        pages_crosscloud,
        pages_keyring,
        pages_keys,
        pages_policies,
    )

    app.register_blueprint(bp)


# ================================================================================================ per request


def services() -> Services:
    return current_app.extensions["kms"]


def sessions() -> SessionStore:
    return current_app.extensions["kms_console_sessions"]


def console_settings() -> ConsoleSettings:
    return current_app.extensions["kms_console"]


def _authenticate(req: Request) -> Principal:
    """The app's authenticator for blueprint "console": the session cookie's principal, or anonymous."""
    g.console_session = None
    session = sessions().get(req.cookies.get(COOKIE))
    if session is None:
        return ANONYMOUS
    principal = identity.principal_for(session.token)
    if principal is None:  # the token was revoked or expired: the session ends with it
        sessions().delete(session.sid)
        return ANONYMOUS
    g.console_session = session
    return principal


def current() -> Session | None:
    return getattr(g, "console_session", None)


@bp.before_request
def _guard() -> Response | None:
    g.ctx.front_door = "console"
    g.lang = i18n.pick(current().lang if current() else None, request.headers.get("Accept-Language"))
    if request.endpoint in PUBLIC:
        return None
    if current() is None:
        if request.method == "GET":
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        raise errors.Unauthenticated(tr("error.session_ended"))
    if request.method not in ("GET", "HEAD"):
        check_csrf(current().csrf)
    return None


def check_csrf(expected: str) -> None:
    """Every state change carries the session's CSRF value and, when the browser says, comes from this origin."""
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        raise errors.AccessDenied(tr("error.cross_origin"))
    sent = request.form.get("csrf", "")
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        g.operation = "broker:ConsoleCsrf"
        raise errors.AccessDenied(tr("error.csrf"))


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


@bp.route("/<path:anything>", methods=["GET", "POST"])
def unknown(anything: str) -> Response:
    """Any other path under /ui: a 404 page (after login), not the API's JSON."""
    raise errors.NotFound(tr("error.not_found"))


def secure_cookies() -> bool:
    mode = console_settings().secure_cookies
    return mode == "always" or (mode == "auto" and request.is_secure)


def set_cookie(response: Response, name: str, value: str, max_age: int, *, lax: bool = False) -> None:
    """HttpOnly, path /ui, Secure with TLS, SameSite=Strict — Lax only for the OIDC flow cookie, which must come back
    on the issuer's redirect and grants nothing by itself (single use, bound to the state)."""
    response.set_cookie(name, value, max_age=max_age, path="/ui", secure=secure_cookies(), httponly=True,
                        samesite="Lax" if lax else "Strict")


def clear_cookie(response: Response, name: str, *, lax: bool = False) -> None:
    response.delete_cookie(name, path="/ui", secure=secure_cookies(), httponly=True,
                           samesite="Lax" if lax else "Strict")


# ================================================================================================ rendering


def page(template: str, status: int = 200, **values: Any) -> tuple[str, int]:
    session = current()
    notice = ""
    if session is not None and session.notice:
        notice = session.notice
        sessions().set(session, notice="")
    t = i18n.translator(g.lang)
    form_csrf = values.pop("csrf", None)  # the login form's own value, when no session exists yet
    return render_template(f"console/{template}", t=t, lang=g.lang, languages=i18n.languages(), session=session,
                           principal=g.ctx.principal, csrf=session.csrf if session else form_csrf or "",
                           notice=notice, request_id=g.request_id, nav=sorted(NAV, key=lambda e: NAV_ORDER.index(e[0]) if e[0] in NAV_ORDER else 99),
                           **values), status


def fragment(template: str, **values: Any) -> str:
    """A piece of a page (e.g. table rows the live view swaps in): no layout, no notice consumed."""
    return render_template(f"console/{template}", t=i18n.translator(g.lang), lang=g.lang, **values)


def notify(string_key: str, /, **values: object) -> None:
    """A one-shot notice for the next page (after a redirect), in the session's language."""
    session = current()
    if session is not None:
        sessions().set(session, notice=i18n.translator(g.lang)(string_key, **values))


def tr(string_key: str, /, **values: object) -> str:
    return i18n.translator(g.lang)(string_key, **values)


def safe_next(target: str | None) -> str:
    """Only a path inside the console: never another host (open redirect), never a scheme."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target \
            and not urlsplit(target).netloc:
        return target
    return url_for("console.keys")


# ================================================================================================ errors


def _error_page(exc: errors.BrokerError) -> tuple[str, int]:
    from broker.app import audit_refusal

    exc = audit_refusal(exc) if hasattr(g, "ctx") else exc
    if exc.status == 401 and request.method == "GET":
        return redirect(url_for("console.login")), 302  # type: ignore[return-value]
    return page("error.html", exc.status, error=exc, title=tr("error.title"))


@bp.errorhandler(errors.BrokerError)
def _broker_error(exc: errors.BrokerError):
    handler: Callable | None = getattr(g, "on_error", None)
    if handler is not None:
        g.on_error = None
        try:
            from broker.app import audit_refusal
            exc = audit_refusal(exc)
            return handler(exc)
        except errors.BrokerError:
            pass  # the form's page itself is refused (e.g. the key is gone): the error page says why
        except Exception:  # noqa: BLE001 - a failing form re-render falls back to the error page
            log.exception("console form re-render failed")
    return _error_page(exc)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    status = exc.code or 400
    err = type("HttpError", (errors.BrokerError,), {"code": "ValidationException", "status": status})(
        tr("error.http", status=status))
    return _error_page(err)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception):
    log.error("console error in request %s: %s", getattr(g, "request_id", "?"), type(exc).__name__, exc_info=exc)
    return _error_page(errors.BrokerError(tr("error.internal")))


def form_error(render: Callable[[errors.BrokerError], tuple[str, int]]) -> None:
    """Re-render this request's form with the error in it (a 4xx, nothing changed) instead of an error page."""
    g.on_error = render
