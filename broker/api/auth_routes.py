"""Identity routes under /v1/auth: tokens, JWT/OIDC roles and login, LDAP login, AppRole.

Thin: parse, call one declared operation of the identity service, render Vault's shapes. The gate authorizes
(`broker:*` actions on `auth/...` resources), audits and decides no-escalation inside the service. Login routes are
public (no token); a login body that does not even parse is audited here, through `Services.refused`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import current_app, g
from pydantic import BaseModel, Field

from broker.api.native import ROUTES, Ctx, Svc, op, parse
from broker.api.schemas import Body
from broker.auth.approle import AppRoleConfig
from broker.auth.config import JwtRole
from broker.auth.issue import auth_response
from broker.errors import BrokerError
from broker.identity import IdentityService, IssuedToken
from broker.services import Services

Duration = str | int | None


class TokenCreate(Body):
    policies: list[str] | None = None
    ttl: Duration = None
    explicit_max_ttl: Duration = None
    renewable: bool = True
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    meta: dict[str, str] = Field(default_factory=dict)
    no_parent: bool = False


class TokenRenew(Body):
    increment: Duration = None


class TokenRevoke(Body):
    token: str | None = None
    accessor: str | None = None

    def __repr__(self) -> str:
        return f"TokenRevoke(accessor={self.accessor!r})"


class AccessorBody(Body):
    accessor: str


class JwtLogin(Body):
    role: str
    jwt: str

    def __repr__(self) -> str:
        return f"JwtLogin(role={self.role!r})"


class LdapLogin(Body):
    username: str
    password: str

    def __repr__(self) -> str:
        return f"LdapLogin(username={self.username!r})"


class AppRoleLogin(Body):
    role_id: str
    secret_id: str = ""

    def __repr__(self) -> str:
        return "AppRoleLogin()"


class SecretIdCreate(Body):
    metadata: dict[str, str] = Field(default_factory=dict)
    cidr_list: list[str] = Field(default_factory=list)
    ttl: Duration = None
    num_uses: int | None = None


# ------------------------------------------------------------------------------------------------- plumbing


def _services() -> Services:
    return current_app.extensions["kms"]


def _identity() -> IdentityService:
    return _services().identity


def _login_body(model: type[BaseModel]) -> Any:
    """Login bodies are parsed here; one that does not parse is still audited (as a refused login)."""
    try:
        return parse(model)
    except BrokerError as exc:
        _services().refused(g.ctx, "broker:Login", exc.code, False)
        raise


def _document_body(operation: str, model: type[Body]) -> None:
    """Login routes parse their own body (to audit failures); the OpenAPI document still shows the schema."""
    for i, route in enumerate(ROUTES):
        if route.operation == operation:
            ROUTES[i] = dataclasses.replace(route, body=model)


def _auth(issued: IssuedToken) -> dict:
    return auth_response(issued.token, issued.accessor, list(issued.policies), issued.metadata, issued.ttl,
                         issued.renewable, orphan=issued.orphan)


# ------------------------------------------------------------------------------------------------- tokens


@op("/auth/token/create", "POST", "CreateToken",
    "Create a child token (policies a subset of the caller's, unless root; it dies with the caller's token); "
    "TTL, max TTL, renewable, metadata", TokenCreate)
def token_create(svc: Svc, ctx: Ctx, b: TokenCreate):
    return _auth(_identity().create_token(ctx, policies=b.policies, ttl=b.ttl, explicit_max_ttl=b.explicit_max_ttl,
                                          renewable=b.renewable, display_name=b.display_name, meta=b.meta,
                                          no_parent=b.no_parent)), 200


@op("/auth/token/lookup-self", "GET", "LookupSelfToken", "What the caller's token is (never the token itself)")
def token_lookup_self(svc: Svc, ctx: Ctx):
    return {"data": _identity().lookup_self(ctx).to_dict()}


@op("/auth/token/lookup-accessor", "POST", "LookupToken", "Look a token up by its accessor", AccessorBody)
def token_lookup_accessor(svc: Svc, ctx: Ctx, b: AccessorBody):
    return {"data": _identity().lookup_accessor(ctx, b.accessor).to_dict()}


@op("/auth/token/renew-self", "POST", "RenewSelfToken", "Renew the caller's token (bounded by its max TTL)",
    TokenRenew)
def token_renew_self(svc: Svc, ctx: Ctx, b: TokenRenew):
    info = _identity().renew_self(ctx, b.increment)
    return {"auth": {"accessor": info.accessor, "policies": list(info.policies),
                     "lease_duration": max(0, int(info.seconds_left())) if info.expires_at else 0,
                     "renewable": info.renewable}}


@op("/auth/token/revoke", "POST", "RevokeToken", "Revoke a token (by token or accessor) and all its descendants",
    TokenRevoke)
def token_revoke(svc: Svc, ctx: Ctx, b: TokenRevoke):
    return {"revoked": _identity().revoke_token(ctx, token=b.token, accessor=b.accessor)}


@op("/auth/token/revoke-self", "POST", "RevokeSelfToken", "Revoke the caller's token and all its descendants")
def token_revoke_self(svc: Svc, ctx: Ctx):
    return {"revoked": _identity().revoke_self(ctx)}


# ------------------------------------------------------------------------------------------------- JWT / OIDC


@op("/auth/jwt/role/<name>", "POST", "WriteJwtRole",
    "Create or replace a JWT/OIDC login role (only policies the writer holds)", JwtRole, 204)
def jwt_role_write(svc: Svc, ctx: Ctx, b: JwtRole, name: str):
    _identity().write_jwt_role(ctx, name, b)
    return "", 204


@op("/auth/jwt/role/<name>", "GET", "ReadJwtRole", "Read a JWT/OIDC login role")
def jwt_role_read(svc: Svc, ctx: Ctx, name: str):
    return {"data": _identity().read_jwt_role(ctx, name).model_dump()}


@op("/auth/jwt/role/<name>", "DELETE", "DeleteJwtRole", "Delete a JWT/OIDC login role written through the API",
    status=204)
def jwt_role_delete(svc: Svc, ctx: Ctx, name: str):
    _identity().delete_jwt_role(ctx, name)
    return "", 204


@op("/auth/jwt/login", "POST", "JwtLogin", "Exchange a signed JWT for a broker token (body: role, jwt)",
    authenticated=False)
def jwt_login():
    b = _login_body(JwtLogin)
    return _auth(_identity().login_jwt(g.ctx, b.role, b.jwt))


# ------------------------------------------------------------------------------------------------- LDAP


@op("/auth/ldap/login", "POST", "LdapLogin", "Bind to LDAP as the user; groups map to policies (body: username, "
    "password)", authenticated=False)
def ldap_login():
    b = _login_body(LdapLogin)
    return _auth(_identity().login_ldap(g.ctx, b.username, b.password))


# ------------------------------------------------------------------------------------------------- AppRole


@op("/auth/approle/role/<name>", "POST", "WriteAppRole",
    "Create or replace an AppRole role (only policies the writer holds)", AppRoleConfig, 204)
def approle_write(svc: Svc, ctx: Ctx, b: AppRoleConfig, name: str):
    _identity().write_approle(ctx, name, b)
    return "", 204


@op("/auth/approle/role/<name>/role-id", "GET", "ReadAppRoleId", "Read an AppRole role's role_id")
def approle_role_id(svc: Svc, ctx: Ctx, name: str):
    return {"data": {"role_id": _identity().read_approle_id(ctx, name)}}


@op("/auth/approle/role/<name>/secret-id", "POST", "CreateAppRoleSecretId",
    "Generate a secret_id for an AppRole role (shown once; only for callers holding the role's policies)",
    SecretIdCreate)
def approle_secret_id(svc: Svc, ctx: Ctx, b: SecretIdCreate, name: str):
    issued = _identity().create_secret_id(ctx, name, metadata=b.metadata, cidr_list=b.cidr_list, ttl=b.ttl,
                                          num_uses=b.num_uses)
    return {"data": {"secret_id": issued.secret_id, "secret_id_accessor": issued.accessor,
                     "secret_id_ttl": issued.ttl, "secret_id_num_uses": issued.num_uses}}


@op("/auth/approle/login", "POST", "AppRoleLogin", "Exchange role_id + secret_id for a broker token",
    authenticated=False)
def approle_login():
    b = _login_body(AppRoleLogin)
    return _auth(_identity().login_approle(g.ctx, b.role_id, b.secret_id))


_document_body("JwtLogin", JwtLogin)
_document_body("LdapLogin", LdapLogin)
_document_body("AppRoleLogin", AppRoleLogin)
