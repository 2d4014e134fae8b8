"""Logging in and out: token, LDAP, AppRole, and OIDC single sign-on (authorization code + PKCE).

Each login goes through the identity service's own (audited) login operation, starts a fresh session id (a cookie
set before login is never adopted) and keeps the token server-side. The login forms have their own CSRF value bound
to a short-lived login-flow cookie, so another site cannot log a browser in as someone else.
"""

from __future__ import annotations

import secrets

from flask import g, redirect, request, url_for
from werkzeug.wrappers import Response

from broker import errors
from broker.console import i18n, identity, oidc
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
    tr,
)
from broker.console.web import form_error as on_error

OIDC_COOKIE = "kmsb_oidc"
MAX_SECRET = 512
METHODS = ("token", "ldap", "approle")


def _login_page(status: int = 200, error: str = "", method: str = "token", csrf_value: str | None = None):
    method = method if method in METHODS else "token"
    if csrf_value is None:
        flow = sessions().peek_flow(request.cookies.get(LOGIN_COOKIE), "login")
        csrf_value = flow["csrf"] if flow else ""
    return page("login.html", status, csrf=csrf_value, error=error, method=method,
                next=safe_next(request.values.get("next")), oidc=console_settings().oidc,
                ldap=identity.ldap_configured(), title=tr("login.title"))


@bp.get("/login")
def login():
    if current() is not None:
        return redirect(safe_next(request.args.get("next")))
    csrf_value = secrets.token_urlsafe(32)
    fid = sessions().start_flow("login", {"csrf": csrf_value})
    body, status = _login_page(method=request.args.get("method", "token"), csrf_value=csrf_value)
    response = Response(body, status, mimetype="text/html")
    set_cookie(response, LOGIN_COOKIE, fid, FLOW_SECONDS)
    return response


def _form_login(method: str) -> None:
    """Common to the login forms: the error comes back in the form; the login form's own CSRF value is checked."""
    on_error(lambda exc: _login_page(exc.status, tr("login.failed", reason=exc.message), method))
    g.operation = "broker:Login"
    flow = sessions().peek_flow(request.cookies.get(LOGIN_COOKIE), "login")
    check_csrf(flow["csrf"] if flow else "")


def _field(name: str) -> str:
    value = request.form.get(name, "")
    if len(value) > MAX_SECRET:
        raise errors.ValidationError(tr("form.too_long", field=name))
    return value


def start_session(logged_in: identity.LoggedIn, *, method: str, revoke_on_logout: bool,
                  target: str | None = None, via_page: bool = False) -> Response:
    """Drop whatever session the browser had, create a new one, send the browser where it was going."""
    old = request.cookies.get(COOKIE)
    if old:
        sessions().delete(old)
    for cookie, kind in ((LOGIN_COOKIE, "login"), (OIDC_COOKIE, "oidc")):
        if request.cookies.get(cookie):
            sessions().take_flow(request.cookies.get(cookie), kind)
    session = sessions().create(token=logged_in.token, principal=logged_in.principal.name, method=method,
                                token_expires=logged_in.expires, revoke_on_logout=revoke_on_logout, lang=g.lang)
    destination = safe_next(target if target is not None else request.form.get("next"))
    if via_page:  # back from another site: a same-site hop first, or the browser withholds SameSite=Strict cookies
        body, status = page("continue.html", destination=destination, title=tr("login.title"))
        response = Response(body, status, mimetype="text/html")
    else:
        response = redirect(destination)
    set_cookie(response, COOKIE, session.sid, console_settings().max_seconds)
    clear_cookie(response, LOGIN_COOKIE)
    clear_cookie(response, OIDC_COOKIE, lax=True)
    return response


@bp.post("/login/token")
def login_token():
    _form_login("token")
    token = _field("token").strip()
    if not token:
        raise errors.Unauthenticated(tr("login.bad_token"))
    try:
        logged_in = identity.token_login(g.ctx, token)
    except errors.Unauthenticated:
        raise errors.Unauthenticated(tr("login.bad_token")) from None
    return start_session(logged_in, method="token", revoke_on_logout=False)


@bp.post("/login/ldap")
def login_ldap():
    _form_login("ldap")
    logged_in = identity.ldap_login(g.ctx, _field("username"), _field("password"))
    return start_session(logged_in, method="ldap", revoke_on_logout=True)


@bp.post("/login/approle")
def login_approle():
    _form_login("approle")
    logged_in = identity.approle_login(g.ctx, _field("role_id"), _field("secret_id"))
    return start_session(logged_in, method="approle", revoke_on_logout=True)


# ================================================================================================ OIDC


def _oidc_settings():
    cfg = console_settings().oidc
    if cfg is None:
        raise errors.NotFound(tr("login.unavailable"))
    return cfg


def _redirect_uri() -> str:
    return _oidc_settings().redirect_uri or url_for("console.oidc_callback", _external=True)


@bp.get("/login/oidc")
def oidc_start():
    cfg = _oidc_settings()
    g.operation = "broker:Login"
    on_error(lambda exc: _login_page(exc.status, tr("login.oidc_failed", reason=exc.message)))
    flow = oidc.Flow.new()
    target = oidc.authorization_url(cfg, flow, _redirect_uri())
    fid = sessions().start_flow("oidc", {"state": flow.state, "nonce": flow.nonce, "verifier": flow.verifier,
                                         "next": safe_next(request.args.get("next"))})
    response = redirect(target)
    set_cookie(response, OIDC_COOKIE, fid, FLOW_SECONDS, lax=True)
    return response


@bp.get("/login/oidc/callback")
def oidc_callback():
    cfg = _oidc_settings()
    g.operation = "broker:Login"
    on_error(lambda exc: _login_page(exc.status, tr("login.oidc_failed", reason=exc.message)))
    data = sessions().take_flow(request.cookies.get(OIDC_COOKIE), "oidc")
    if data is None:
        raise errors.Unauthenticated(tr("login.oidc_state"))
    flow = oidc.Flow(data["state"], data["nonce"], data["verifier"])
    if not oidc.state_matches(flow, request.args.get("state")):
        raise errors.Unauthenticated(tr("login.oidc_state"))
    if request.args.get("error"):
        raise errors.Unauthenticated(request.args.get("error", "")[:64])
    id_token = oidc.exchange(cfg, flow, request.args.get("code", ""), _redirect_uri())
    logged_in = identity.jwt_login(g.ctx, cfg.jwt_role, id_token)
    return start_session(logged_in, method="oidc", revoke_on_logout=True, target=data.get("next"), via_page=True)


# ================================================================================================ out


@bp.post("/logout")
def logout():
    session = current()
    response = redirect(url_for("console.login"))
    if session is not None:
        if session.revoke_on_logout:
            try:
                identity.logout(g.ctx)
            except errors.BrokerError:
                pass  # the token may be gone already; the session ends regardless
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
