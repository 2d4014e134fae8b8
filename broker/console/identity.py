"""Who a console session is: the one place the console turns credentials into a Principal, through the identity
service — the same authentication the API's token header gets, and the same audited login operations.

A session stands for one broker token (kept server-side, see sessions.py). Each request authenticates that token
again, so revoking it (API, CLI, another console) or its expiry ends the session at once, and policy changes
attached to the token apply on the next page. Authorization and audit happen in the gate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from broker.auth import Principal
from broker.errors import Unauthenticated
from broker.gate import RequestContext


@dataclass(frozen=True)
class LoggedIn:
    principal: Principal
    token: str = field(repr=False)
    expires: float | None      # epoch seconds of the token's expiry (None: never)


def _identity() -> Any:
    return current_app.extensions["kms"].identity


def authenticate(token: str) -> Principal:
    """The principal a broker token stands for (Unauthenticated when unknown, revoked or expired)."""
    return _identity().authenticate_token(token)


def principal_for(token: str) -> Principal | None:
    try:
        return authenticate(token)
    except Unauthenticated:
        return None


def token_login(ctx: RequestContext, token: str) -> LoggedIn:
    """A broker token typed into the login form; refused exactly as the API refuses it. Looking the token up is
    the audited operation that records the console login."""
    principal = authenticate(token.strip())
    ctx.principal = principal
    info = _identity().lookup_self(ctx)
    return LoggedIn(principal, token.strip(), info.expires_at.timestamp() if info.expires_at else None)


def _issued(ctx: RequestContext, issued: Any) -> LoggedIn:
    principal = authenticate(issued.token)
    ctx.principal = principal
    return LoggedIn(principal, issued.token, time.time() + issued.ttl if issued.ttl else None)


def ldap_login(ctx: RequestContext, username: str, password: str) -> LoggedIn:
    return _issued(ctx, _identity().login_ldap(ctx, username, password))


def approle_login(ctx: RequestContext, role_id: str, secret_id: str) -> LoggedIn:
    return _issued(ctx, _identity().login_approle(ctx, role_id, secret_id))


def jwt_login(ctx: RequestContext, role: str, jwt: str) -> LoggedIn:
    return _issued(ctx, _identity().login_jwt(ctx, role, jwt))


def logout(ctx: RequestContext) -> None:
    """Revoke a token the console itself obtained at login (LDAP, OIDC, AppRole): it dies with the session."""
    _identity().revoke_self(ctx)


def ldap_configured() -> bool:
    return current_app.extensions["kms_settings"].auth.ldap is not None
