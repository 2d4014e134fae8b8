"""Who a console session is: the one place the console turns credentials into a Principal.

A session stands for a broker token, known by its accessor. Each request re-derives the Principal from that
accessor, so revoking the token (API, CLI, another console) or its expiry ends the session at once, and policy
changes attached to the token apply on the next page. Authentication is the front door's job (as for the API's
token header); authorization and audit happen in the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from broker.auth import Principal
from broker.errors import NotFound, Unauthenticated, ValidationError


@dataclass(frozen=True)
class LoggedIn:
    principal: Principal
    expires: float | None      # epoch seconds of the token's expiry (None: never)


def _tokens():
    return current_app.extensions["kms_tokens"]


def token_login(token: str) -> LoggedIn:
    """A broker token typed into the login form; refused exactly as the API refuses it."""
    principal = _tokens().authenticate(token.strip())
    return LoggedIn(principal, _expiry(principal.accessor))


def principal_for(accessor: str) -> Principal | None:
    """The session's principal now, or None when its token was revoked or expired."""
    try:
        info = _tokens().valid_by_accessor(accessor)
    except (NotFound, ValidationError, Unauthenticated):
        return None
    return Principal(name=info.display_name, auth_method=info.auth_method, policies=tuple(info.policies),
                     accessor=info.accessor, attributes=dict(info.meta))


def _expiry(accessor: str) -> float | None:
    if not accessor:
        return None
    info = _tokens().valid_by_accessor(accessor)
    return info.expires_at.timestamp() if info.expires_at else None
