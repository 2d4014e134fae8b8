"""Identity routes under /v1/auth: tokens, JWT/OIDC roles and login, LDAP login, AppRole.

Every route goes through KeyService.operation (one audit record each); admin routes also through
KeyService.authorize with `broker:*` actions on `auth/...` resources. Login routes are public (no token), but are
still audited: their bodies are parsed inside the operation so even malformed logins leave a record.
Self-service token routes (lookup-self, renew-self, revoke-self) need no policy: they only touch the caller's token.
"""

from __future__ import annotations

import dataclasses

from flask import current_app, g, request
from pydantic import Field

from broker.api.native import ROUTES, Ctx, Svc, op, parse
from broker.api.schemas import Body
from broker.auth import Principal
from broker.auth.approle import AppRoleAuth, AppRoleConfig
from broker.auth.config import AuthSettings, JwtRole, parse_duration
from broker.auth.issue import auth_response, issue_login_token, token_bounds
from broker.auth.jwt_auth import JwtAuth, check_role_name
from broker.auth.ldap_auth import LdapAuth
from broker.auth.tokens import TokenAuth
from broker.errors import AccessDenied, NotFound, Unauthenticated, ValidationError

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


def _tokens() -> TokenAuth:
    return current_app.extensions["kms_tokens"]


def _settings() -> AuthSettings:
    return current_app.extensions["kms_settings"].auth


def _jwt() -> JwtAuth:
    ext = current_app.extensions
    if "kms_jwt" not in ext:
        ext["kms_jwt"] = JwtAuth(ext["kms_service"].store, _settings().jwt.roles)
    return ext["kms_jwt"]


def _ldap() -> LdapAuth:
    ext = current_app.extensions
    if "kms_ldap" not in ext:
        cfg = _settings().ldap
        if cfg is None:
            raise Unauthenticated("ldap login is not configured")
        ext["kms_ldap"] = LdapAuth(cfg)
    return ext["kms_ldap"]


def _approle() -> AppRoleAuth:
    ext = current_app.extensions
    if "kms_approle" not in ext:
        ext["kms_approle"] = AppRoleAuth(ext["kms_service"].store)
    return ext["kms_approle"]


def _caller_token() -> str:
    header = request.headers.get("Authorization", "")
    return request.headers.get("X-KMSB-Token") or (header[7:] if header.startswith("Bearer ") else "")


def _self_accessor(ctx: Ctx) -> str:
    if ctx.principal.auth_method not in ("token", "jwt", "ldap", "approle") or not ctx.principal.accessor:
        raise ValidationError("the caller is not authenticated with a broker token")
    return ctx.principal.accessor


def _duration(value: Duration, name: str) -> int | None:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValidationError(f"{name}: {exc}") from None


def _document_body(operation: str, model: type[Body]) -> None:
    """Login routes parse their body inside the audited operation; the OpenAPI document still shows the schema."""
    for i, route in enumerate(ROUTES):
        if route.operation == operation:
            ROUTES[i] = dataclasses.replace(route, body=model)


def _logged_in(ctx: Ctx, name: str, method: str, policies: list[str], accessor: str, meta: dict) -> None:
    """From here on the request's audit record names who logged in."""
    ctx.principal = Principal(name=name, auth_method=method, policies=tuple(policies), accessor=accessor,
                              attributes=dict(meta))


# ------------------------------------------------------------------------------------------------- tokens


@op("/auth/token/create", "POST", "CreateToken",
     "Create a child token (policies a subset of the caller's, unless root); TTL, max TTL, renewable, metadata",
     TokenCreate)
def token_create(svc: Svc, ctx: Ctx, b: TokenCreate):
    with svc.operation(ctx, "broker:CreateToken") as entry:
        svc.authorize(ctx, entry, "broker:CreateToken", None, resource="auth/token")
        parent = ctx.principal
        policies = list(parent.policies) if b.policies is None else list(b.policies)
        name, meta = b.display_name or "token", dict(b.meta)
        if not parent.is_root:
            # Names and attributes are identity: key policies and grants match principal names, and policy
            # conditions read broker:PrincipalTag/<k>. A non-root child inherits both and can only narrow policies.
            extra = sorted(set(policies) - set(parent.policies))
            if extra:
                raise AccessDenied(f"a child token's policies must be a subset of the parent's (not: {extra})")
            if b.no_parent:
                raise AccessDenied("only a root token can create an orphan token")
            if b.display_name is not None and b.display_name != parent.name:
                raise AccessDenied("only a root token can name a token (a child keeps its parent's name)")
            if any(parent.attributes.get(k) != v for k, v in meta.items()):
                raise AccessDenied("a child token's metadata can only repeat the parent's (it inherits them)")
            name, meta = parent.name, {**parent.attributes}
        ttl, max_ttl = token_bounds(_settings(), _duration(b.ttl, "ttl"), _duration(b.explicit_max_ttl,
                                                                                   "explicit_max_ttl"))
        parent_accessor = None if b.no_parent or not parent.accessor else parent.accessor
        token, accessor = _tokens().create(name, policies, ttl_seconds=ttl, max_ttl_seconds=max_ttl,
                                           renewable=b.renewable, meta=meta, parent_accessor=parent_accessor,
                                           auth_method=parent.auth_method if not parent.is_root else "token")
        entry.extra["token_accessor"] = svc.audit.hmac_value(accessor)
        info = _tokens().by_accessor(accessor)
        left = int(info.seconds_left()) if info.expires_at else 0
        return auth_response(token, accessor, policies, meta, left, b.renewable,
                             orphan=parent_accessor is None), 200


@op("/auth/token/lookup-self", "GET", "LookupSelfToken", "What the caller's token is (never the token itself)")
def token_lookup_self(svc: Svc, ctx: Ctx):
    with svc.operation(ctx, "broker:LookupSelfToken"):
        return {"data": _tokens().valid_by_accessor(_self_accessor(ctx)).to_dict()}


@op("/auth/token/lookup-accessor", "POST", "LookupToken", "Look a token up by its accessor", AccessorBody)
def token_lookup_accessor(svc: Svc, ctx: Ctx, b: AccessorBody):
    with svc.operation(ctx, "broker:LookupToken") as entry:
        svc.authorize(ctx, entry, "broker:LookupToken", None, resource="auth/token")
        entry.extra["token_accessor"] = svc.audit.hmac_value(b.accessor)
        return {"data": _tokens().valid_by_accessor(b.accessor).to_dict()}


@op("/auth/token/renew-self", "POST", "RenewSelfToken", "Renew the caller's token (bounded by its max TTL)",
    TokenRenew)
def token_renew_self(svc: Svc, ctx: Ctx, b: TokenRenew):
    with svc.operation(ctx, "broker:RenewSelfToken"):
        info = _tokens().renew(_self_accessor(ctx), _duration(b.increment, "increment"))
        return {"auth": {"accessor": info.accessor, "policies": list(info.policies),
                         "lease_duration": max(0, int(info.seconds_left())) if info.expires_at else 0,
                         "renewable": info.renewable}}


@op("/auth/token/revoke", "POST", "RevokeToken", "Revoke a token (by token or accessor) and all its descendants",
    TokenRevoke)
def token_revoke(svc: Svc, ctx: Ctx, b: TokenRevoke):
    with svc.operation(ctx, "broker:RevokeToken") as entry:
        if bool(b.token) == bool(b.accessor):
            raise ValidationError("give exactly one of token or accessor")
        svc.authorize(ctx, entry, "broker:RevokeToken", None, resource="auth/token")
        tokens = _tokens()
        try:
            accessor = b.accessor or tokens.lookup_any(b.token or "").accessor
        except NotFound:
            raise NotFound("no such token") from None
        entry.extra["token_accessor"] = svc.audit.hmac_value(accessor)
        return {"revoked": tokens.revoke_accessor(accessor)}


@op("/auth/token/revoke-self", "POST", "RevokeSelfToken", "Revoke the caller's token and all its descendants")
def token_revoke_self(svc: Svc, ctx: Ctx):
    with svc.operation(ctx, "broker:RevokeSelfToken"):
        return {"revoked": _tokens().revoke_accessor(_self_accessor(ctx))}


# ------------------------------------------------------------------------------------------------- JWT / OIDC


@op("/auth/jwt/role/<name>", "POST", "WriteJwtRole", "Create or replace a JWT/OIDC login role", JwtRole, 204)
def jwt_role_write(svc: Svc, ctx: Ctx, b: JwtRole, name: str):
    with svc.operation(ctx, "broker:ManageAuth") as entry:
        svc.authorize(ctx, entry, "broker:ManageAuth", None, resource=f"auth/jwt/role/{check_role_name(name)}")
        _jwt().put_role(name, b)
        return "", 204


@op("/auth/jwt/role/<name>", "GET", "ReadJwtRole", "Read a JWT/OIDC login role")
def jwt_role_read(svc: Svc, ctx: Ctx, name: str):
    with svc.operation(ctx, "broker:ManageAuth") as entry:
        svc.authorize(ctx, entry, "broker:ManageAuth", None, resource=f"auth/jwt/role/{check_role_name(name)}")
        return {"data": _jwt().role(name).model_dump()}


@op("/auth/jwt/role/<name>", "DELETE", "DeleteJwtRole", "Delete a JWT/OIDC login role written through the API",
    status=204)
def jwt_role_delete(svc: Svc, ctx: Ctx, name: str):
    with svc.operation(ctx, "broker:ManageAuth") as entry:
        svc.authorize(ctx, entry, "broker:ManageAuth", None, resource=f"auth/jwt/role/{check_role_name(name)}")
        _jwt().delete_role(name)
        return "", 204


@op("/auth/jwt/login", "POST", "JwtLogin", "Exchange a signed JWT for a broker token (body: role, jwt)",
    authenticated=False)
def jwt_login():
    svc, ctx = current_app.extensions["kms_service"], g.ctx
    with svc.operation(ctx, "broker:Login") as entry:
        entry.extra["login_method"] = "jwt"
        b = parse(JwtLogin)
        entry.extra["login_role"] = b.role[:128]
        ident = _jwt().login(b.role, b.jwt)
        role = _jwt().role(b.role)
        meta = dict(ident.attributes)
        resp, accessor = issue_login_token(_tokens(), _settings(), display_name=f"jwt/{ident.role}/{ident.subject}",
                                           policies=ident.policies, auth_method="jwt", meta=meta,
                                           ttl=role.token_ttl, max_ttl=role.token_max_ttl)
        entry.extra["token_accessor"] = svc.audit.hmac_value(accessor)
        _logged_in(ctx, f"jwt/{ident.role}/{ident.subject}", "jwt", ident.policies, accessor, meta)
        return resp


# ------------------------------------------------------------------------------------------------- LDAP


@op("/auth/ldap/login", "POST", "LdapLogin", "Bind to LDAP as the user; groups map to policies (body: username, "
    "password)", authenticated=False)
def ldap_login():
    svc, ctx = current_app.extensions["kms_service"], g.ctx
    with svc.operation(ctx, "broker:Login") as entry:
        entry.extra["login_method"] = "ldap"
        b = parse(LdapLogin)
        entry.extra["login_user"] = b.username[:128]
        ldap = _ldap()
        ident = ldap.login(b.username, b.password)
        meta = dict(ident.attributes)
        resp, accessor = issue_login_token(_tokens(), _settings(), display_name=f"ldap/{ident.username}",
                                           policies=ident.policies, auth_method="ldap", meta=meta,
                                           ttl=_settings().ldap.token_ttl)
        entry.extra["token_accessor"] = svc.audit.hmac_value(accessor)
        _logged_in(ctx, f"ldap/{ident.username}", "ldap", ident.policies, accessor, meta)
        return resp


# ------------------------------------------------------------------------------------------------- AppRole


@op("/auth/approle/role/<name>", "POST", "WriteAppRole", "Create or replace an AppRole role", AppRoleConfig, 204)
def approle_write(svc: Svc, ctx: Ctx, b: AppRoleConfig, name: str):
    with svc.operation(ctx, "broker:ManageAuth") as entry:
        svc.authorize(ctx, entry, "broker:ManageAuth", None, resource=f"auth/approle/role/{check_role_name(name)}")
        _approle().put_role(name, b)
        return "", 204


@op("/auth/approle/role/<name>/role-id", "GET", "ReadAppRoleId", "Read an AppRole role's role_id")
def approle_role_id(svc: Svc, ctx: Ctx, name: str):
    with svc.operation(ctx, "broker:ManageAuth") as entry:
        svc.authorize(ctx, entry, "broker:ManageAuth", None, resource=f"auth/approle/role/{check_role_name(name)}")
        return {"data": {"role_id": _approle().role_id(name)}}


@op("/auth/approle/role/<name>/secret-id", "POST", "CreateAppRoleSecretId",
    "Generate a secret_id for an AppRole role (shown once)", SecretIdCreate)
def approle_secret_id(svc: Svc, ctx: Ctx, b: SecretIdCreate, name: str):
    with svc.operation(ctx, "broker:ManageAuth") as entry:
        svc.authorize(ctx, entry, "broker:ManageAuth", None,
                      resource=f"auth/approle/role/{check_role_name(name)}")
        secret_id, accessor, ttl = _approle().create_secret_id(
            name, metadata=b.metadata, cidrs=b.cidr_list, ttl=_duration(b.ttl, "ttl"), num_uses=b.num_uses)
        entry.extra["secret_id_accessor"] = svc.audit.hmac_value(accessor)
        return {"data": {"secret_id": secret_id, "secret_id_accessor": accessor, "secret_id_ttl": ttl,
                         "secret_id_num_uses": b.num_uses or 0}}


@op("/auth/approle/login", "POST", "AppRoleLogin", "Exchange role_id + secret_id for a broker token",
    authenticated=False)
def approle_login():
    svc, ctx = current_app.extensions["kms_service"], g.ctx
    with svc.operation(ctx, "broker:Login") as entry:
        entry.extra["login_method"] = "approle"
        b = parse(AppRoleLogin)
        ident = _approle().login(b.role_id, b.secret_id, ctx.source_ip)
        entry.extra["login_role"] = ident.role
        meta = dict(ident.attributes)
        resp, accessor = issue_login_token(_tokens(), _settings(), display_name=f"approle/{ident.role}",
                                           policies=ident.policies, auth_method="approle", meta=meta,
                                           ttl=ident.token_ttl, max_ttl=ident.token_max_ttl)
        entry.extra["token_accessor"] = svc.audit.hmac_value(accessor)
        _logged_in(ctx, f"approle/{ident.role}", "approle", ident.policies, accessor, meta)
        return resp


_document_body("JwtLogin", JwtLogin)
_document_body("LdapLogin", LdapLogin)
_document_body("AppRoleLogin", AppRoleLogin)
