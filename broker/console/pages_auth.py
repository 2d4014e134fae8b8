"""Logging in and out. Each login starts from a fresh session id (no fixation) and keeps only the token's accessor.

The login form has its own CSRF value, bound to a short-lived login-flow cookie (SameSite=Strict), so another site
cannot log a browser in as someone else.
"""

from __future__ import annotations

from flask import g, redirect, request, url_for
from werkzeug.wrappers import Response

from broker import errors
from broker.console import i18n, identity
from broker.console.sessions import FLOW_SECONDS
from broker.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    bp,
    check_csrf,
    clear_cookie,
    console_settings,
    current,
    page,
    safe_next,
    sessions,
    set_cookie,
)
from broker.console.web import form_error as on_error

MAX_SECRET = 512


def _login_page(status: int = 200, error: str = "", method: str = "token") -> tuple[str, int]:
    """The login form with a new login flow (its CSRF value) each time it is shown."""
    csrf_value = _flow_csrf() or ""
    return page("login.html", status, csrf=csrf_value, error=error, method=method,
                next=safe_next(request.values.get("next")), oidc=console_settings().oidc,
                ldap=_ldap_configured(), title=i18n.translator(g.lang)("login.title"))


def _ldap_configured() -> bool:
    from flask import current_app
    return current_app.extensions["kms_settings"].auth.ldap is not None


def _flow_csrf() -> str | None:
    flow = sessions().peek_flow(request.cookies.get(LOGIN_COOKIE), "login")
    return flow["csrf"] if flow else None


@bp.get("/login")
def login():
    if current() is not None:
        return redirect(safe_next(request.args.get("next")))
    import secrets
    csrf_value = secrets.token_urlsafe(32)
    fid = sessions().start_flow("login", {"csrf": csrf_value})
    body, status = page("login.html", csrf=csrf_value, error="", method=request.args.get("method", "token"),
                        next=safe_next(request.args.get("next")), oidc=console_settings().oidc,
                        ldap=_ldap_configured(), title=i18n.translator(g.lang)("login.title"))
    response = Response(body, status, mimetype="text/html")
    set_cookie(response, LOGIN_COOKIE, fid, FLOW_SECONDS)
    return response


def _check_login_form() -> None:
    g.operation = "broker:Login"
    check_csrf(_flow_csrf() or "")


def start_session(logged_in: identity.LoggedIn, *, method: str, revoke_on_logout: bool) -> Response:
    """Drop whatever session the browser had, create a new one, send the browser where it was going."""
    old = request.cookies.get(COOKIE)
    if old:
        sessions().delete(old)
    flow = request.cookies.get(LOGIN_COOKIE)
    if flow:
        sessions().take_flow(flow, "login")
    p = logged_in.principal
    session = sessions().create(accessor=p.accessor, principal=p.name, method=method,
                                token_expires=logged_in.expires, revoke_on_logout=revoke_on_logout, lang=g.lang)
    response = redirect(safe_next(request.form.get("next")))
    set_cookie(response, COOKIE, session.sid, console_settings().max_seconds)
    clear_cookie(response, LOGIN_COOKIE)
    return response


@bp.post("/login/token")
def login_token():
    on_error(lambda exc: _login_page(exc.status, exc.message, "token"))
    _check_login_form()
    token = request.form.get("token", "")
    if not token or len(token) > MAX_SECRET:
        raise errors.Unauthenticated(i18n.translator(g.lang)("login.bad_token"))
    try:
        logged_in = identity.token_login(token)
    except errors.Unauthenticated:
        raise errors.Unauthenticated(i18n.translator(g.lang)("login.bad_token")) from None
    if not logged_in.principal.accessor:
        raise errors.Unauthenticated(i18n.translator(g.lang)("login.bad_token"))
    g.ctx.principal = logged_in.principal
    return start_session(logged_in, method="token", revoke_on_logout=False)


@bp.post("/logout")
def logout():
    session = current()
    response = redirect(url_for("console.login"))
    if session is not None:
        sessions().delete(session.sid)
    clear_cookie(response, COOKIE)
    return response


@bp.post("/language")
def language():
    session = current()
    lang = request.form.get("lang", "")
    if session is not None and lang in i18n.languages():
        sessions().set(session, lang=lang)
    return redirect(safe_next(request.form.get("next")))


@bp.post("/login/ldap")
def login_ldap():
    on_error(lambda exc: _login_page(exc.status, exc.message, "ldap"))
    _check_login_form()
    raise errors.Unauthenticated(i18n.translator(g.lang)("login.unavailable"))


@bp.post("/login/approle")
def login_approle():
    on_error(lambda exc: _login_page(exc.status, exc.message, "approle"))
    _check_login_form()
    raise errors.Unauthenticated(i18n.translator(g.lang)("login.unavailable"))


@bp.get("/login/oidc")
def oidc_start():
    raise errors.Unauthenticated(i18n.translator(g.lang)("login.unavailable"))


@bp.get("/login/oidc/callback")
def oidc_callback():
    raise errors.Unauthenticated(i18n.translator(g.lang)("login.unavailable"))
