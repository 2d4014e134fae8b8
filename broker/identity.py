"""IdentityService: tokens, logins (JWT/OIDC, LDAP, AppRole) and the AWS door's SigV4 credentials, on the gate.

Every public method is a declared operation (`broker.gate`): admin operations need a `broker:*` action on an
`auth/...` or `aws-credentials/...` resource; logins are public (no principal yet) but audited, and their record
names who logged in; lookup/renew/revoke-self are self-service (the caller's own token only).

No escalation, one rule for everything identity creates for someone else — an AppRole or JWT role, a secret id, a
child token, SigV4 credentials: it carries only policies the creator holds (`Call.policies_beyond`) and, from a
non-root creator, only the creator's own name and attributes (names are matched by key policies and grants,
attributes by `broker:PrincipalTag/*` conditions). Derived credentials die with their parent: child tokens and SigV4
credentials stop working when the token that made them is revoked or expires, and their own TTL never reaches past
the parent's.

`authenticate_token` and `verify_sigv4` turn a presented credential into a Principal for the front doors; they
grant nothing by themselves (every operation still passes the gate).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from broker import errors
from broker.auth import Principal, text
from broker.auth.approle import IDENTITY_FIELDS, AppRoleAuth, AppRoleConfig
from broker.auth.config import AuthSettings, JwtRole, parse_duration
from broker.auth.issue import token_bounds
from broker.auth.jwt_auth import JwtAuth, check_role_name
from broker.auth.ldap_auth import LdapAuth
from broker.auth.sigv4 import AwsCredentials, CredentialInfo, SigV4Verifier, Verified
from broker.auth.tokens import TokenAuth, TokenInfo
from broker.gate import Call, Gate, Need, Service, fixed, internal, operation, resource
from broker.store import Store

__all__ = ["IdentityService", "IssuedAwsCredentials", "IssuedSecretId", "IssuedToken", "Sealer"]

TOKEN_METHODS = ("token", "jwt", "ldap", "approle")
MAX_CREDENTIAL_TTL = 10 * 365 * 86400
_ACCESS_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class Sealer(Protocol):
    """The root of trust as identity needs it: AES-GCM under the root KEK, inside the HSM."""

    def seal(self, data: bytes, aad: bytes = b"") -> bytes: ...

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes: ...


class _NoRoot:
    def seal(self, data: bytes, aad: bytes = b"") -> bytes:
        raise errors.Unsupported("no root of trust is configured: SigV4 credentials cannot be sealed")

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        raise errors.Unsupported("no root of trust is configured")


# ================================================================================================ typed results


@dataclass(frozen=True)
class IssuedToken:
    """A token just created (login or child): the token itself is shown once and never in a repr."""

    token: str = field(repr=False)
    accessor: str
    policies: tuple[str, ...]
    metadata: dict[str, str]
    ttl: int
    renewable: bool
    orphan: bool


@dataclass(frozen=True)
class IssuedSecretId:
    secret_id: str = field(repr=False)
    accessor: str
    ttl: int
    num_uses: int


@dataclass(frozen=True)
class IssuedAwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    name: str
    policies: tuple[str, ...]
    expires_at: datetime | None


# ================================================================================================ resolvers


def _approle(args: Mapping[str, Any]) -> str:
    return f"auth/approle/role/{check_role_name(args['name'])}"


def _jwt_role(args: Mapping[str, Any]) -> str:
    return f"auth/jwt/role/{check_role_name(args['name'])}"


def check_access_key_id(value: Any) -> str:
    if not isinstance(value, str) or not 16 <= len(value) <= 32 or not set(value) <= _ACCESS_KEY_CHARS:
        raise errors.ValidationError("AccessKeyId must be 16 to 32 upper-case letters and digits")
    return value


def _credential(args: Mapping[str, Any]) -> str:
    return f"aws-credentials/{check_access_key_id(args['access_key_id'])}"


def _duration(value: Any, name: str) -> int | None:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise errors.ValidationError(f"{name}: {exc}") from None


# ================================================================================================ the service


class IdentityService(Service):
    def __init__(self, gate: Gate, store: Store, auth: AuthSettings, sealer: Sealer | None, *,
                 cache_seconds: float = 1.0) -> None:
        """`sealer`: the root of trust (None only where no HSM is configured: SigV4 credentials are then refused)."""
        sealer = sealer if sealer is not None else _NoRoot()
        self.gate = gate
        self._auth = auth
        self._tokens = TokenAuth(store, cache_seconds=cache_seconds)
        self._approles = AppRoleAuth(store)
        self._jwt = JwtAuth(store, auth.jwt.roles)
        self._ldap: LdapAuth | None = None
        self._ldap_lock = threading.Lock()
        self._credentials = AwsCredentials(store, sealer.seal, sealer.unseal, cache_seconds=cache_seconds,
                                           parents=self._tokens)
        self._sigv4 = SigV4Verifier(self._credentials)

    def __repr__(self) -> str:
        return "IdentityService()"

    # =========================================================================================== authentication

    @internal
    def authenticate_token(self, token: str | None) -> Principal:
        """The principal a presented broker token stands for (Unauthenticated if none). Grants nothing itself:
        every operation the principal then asks for passes the gate."""
        return self._tokens.authenticate(token)

    @internal
    def verify_sigv4(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Verified:
        """The principal a SigV4-signed request runs as (AWS's error codes otherwise). Grants nothing itself."""
        return self._sigv4.verify(method, path, query, headers, body)

    @property
    def token_store(self) -> TokenAuth:
        """The process's one token store, for the composition root to hand to the keyring services (their declared
        operations mint database tokens and decide no-escalation themselves, with `Call.covers`)."""
        return self._tokens

    # =========================================================================================== tokens

    @operation("broker:CreateToken", Need("broker:CreateToken", fixed("auth/token")), mutates=True)
    def create_token(self, call: Call, *, policies: Any = None, ttl: Any = None, explicit_max_ttl: Any = None,
                     renewable: bool = True, display_name: Any = None, meta: Any = None,
                     no_parent: bool = False) -> IssuedToken:
        """A child token: policies a subset of the caller's; a non-root child keeps the caller's name and
        attributes; its life never exceeds the caller's, and it is revoked with it."""
        parent = call.principal
        chosen = list(parent.policies) if policies is None else text.policy_names(policies)
        default_name = "token" if parent.is_root else parent.name
        name = default_name if display_name is None else text.text(display_name, "display_name", high=200)
        attributes = text.metadata(meta)
        ttl_s, max_s = token_bounds(self._auth, _duration(ttl, "ttl"), _duration(explicit_max_ttl,
                                                                                 "explicit_max_ttl"))
        beyond = call.policies_beyond(chosen)
        if beyond:
            raise errors.AccessDenied(f"a child token's policies must be a subset of the parent's (not: {beyond})")
        if not parent.is_root:
            if no_parent:
                raise errors.AccessDenied("only a root token can create an orphan token")
            if name != parent.name:
                raise errors.AccessDenied("only a root token can name a token (a child keeps its parent's name)")
            if any(parent.attributes.get(k) != v for k, v in attributes.items()):
                raise errors.AccessDenied("a child token's metadata can only repeat the parent's (it inherits them)")
            attributes = dict(parent.attributes)
        parent_accessor = None if no_parent or not parent.accessor or parent.auth_method not in TOKEN_METHODS \
            else parent.accessor
        if parent_accessor is None and not parent.is_root:
            raise errors.AccessDenied("a child token needs a parent token to live and die with")
        token, accessor = self._tokens.create(
            name, chosen, ttl_seconds=ttl_s, max_ttl_seconds=max_s, renewable=bool(renewable), meta=attributes,
            parent_accessor=parent_accessor, auth_method=parent.auth_method if not parent.is_root else "token")
        call.entry.extra["token_accessor"] = accessor
        info = self._tokens.by_accessor(accessor)
        left = int(info.seconds_left()) if info.expires_at else 0
        return IssuedToken(token, accessor, tuple(chosen), attributes, left, bool(renewable),
                           orphan=parent_accessor is None)

    @operation("broker:LookupSelfToken", self_service=True)
    def lookup_self(self, call: Call) -> TokenInfo:
        return self._tokens.valid_by_accessor(self._own_accessor(call))

    @operation("broker:LookupToken", Need("broker:LookupToken", fixed("auth/token")))
    def lookup_accessor(self, call: Call, accessor: Any) -> TokenInfo:
        accessor = text.text(accessor, "accessor", high=64)
        call.entry.extra["token_accessor"] = accessor
        return self._tokens.valid_by_accessor(accessor)

    @operation("broker:RenewSelfToken", self_service=True, mutates=True)
    def renew_self(self, call: Call, increment: Any = None) -> TokenInfo:
        """Extend the caller's token by `increment` (default: its TTL), never past its max TTL or its parent."""
        seconds = _duration(increment, "increment")
        return self._tokens.renew(self._own_accessor(call), seconds)

    @operation("broker:RevokeToken", Need("broker:RevokeToken", fixed("auth/token")), mutates=True)
    def revoke_token(self, call: Call, *, token: Any = None, accessor: Any = None) -> int:
        """Revoke a token (by the token or its accessor) and every descendant; how many were revoked."""
        if bool(token) == bool(accessor):
            raise errors.ValidationError("give exactly one of token or accessor")
        if accessor:
            accessor = text.text(accessor, "accessor", high=64)
        else:
            token = text.text(token, "token", high=512)
            try:
                accessor = self._tokens.lookup_any(token).accessor
            except errors.NotFound:
                raise errors.NotFound("no such token") from None
        call.entry.extra["token_accessor"] = accessor
        return self._tokens.revoke_accessor(accessor)

    @operation("broker:RevokeSelfToken", self_service=True, mutates=True)
    def revoke_self(self, call: Call) -> int:
        """Revoke the caller's token and every descendant (and so every credential derived from them)."""
        return self._tokens.revoke_accessor(self._own_accessor(call))

    @staticmethod
    def _own_accessor(call: Call) -> str:
        if call.principal.auth_method not in TOKEN_METHODS or not call.principal.accessor:
            raise errors.ValidationError("the caller is not authenticated with a broker token")
        return call.principal.accessor

    # =========================================================================================== JWT / OIDC

    @operation("broker:ManageAuth", Need("broker:ManageAuth", resource(_jwt_role)), mutates=True)
    def write_jwt_role(self, call: Call, name: str, role: JwtRole) -> None:
        """Create or replace a JWT role: every policy it can hand out (its own and every claim mapping's) must be
        one the writer holds; mapping claims to attributes and reading a server-side JWKS file are root's."""
        beyond = call.policies_beyond(role.granted_policies())
        if beyond:
            raise errors.AccessDenied(f"{call.principal.name} may not hand on policies it does not hold: {beyond}")
        if not call.principal.is_root:
            if role.claim_attributes:
                raise errors.AccessDenied("only root may map claims to principal attributes (they feed "
                                          "broker:PrincipalTag conditions)")
            if role.jwks_file:
                raise errors.AccessDenied("only root may point a role at a file on the broker host (jwks_file)")
        self._jwt.put_role(name, role)

    @operation("broker:ManageAuth", Need("broker:ManageAuth", resource(_jwt_role)))
    def read_jwt_role(self, call: Call, name: str) -> JwtRole:
        return self._jwt.role(name)

    @operation("broker:ManageAuth", Need("broker:ManageAuth", resource(_jwt_role)), mutates=True)
    def delete_jwt_role(self, call: Call, name: str) -> None:
        self._jwt.delete_role(name)

    @operation("broker:Login", public=True, mutates=True)
    def login_jwt(self, call: Call, role: Any, jwt: Any) -> IssuedToken:
        call.entry.extra["login_method"] = "jwt"
        role = text.text(role, "role", high=128)
        call.entry.extra["login_role"] = role
        ident = self._jwt.login(role, jwt)
        config = self._jwt.role(role)
        return self._logged_in(call, f"jwt/{ident.role}/{ident.subject}", "jwt", ident.policies, ident.attributes,
                               config.token_ttl, config.token_max_ttl)

    # =========================================================================================== LDAP

    @operation("broker:Login", public=True, mutates=True)
    def login_ldap(self, call: Call, username: Any, password: Any) -> IssuedToken:
        """Group→policy mappings come from settings only: nothing writable through the API can widen them."""
        call.entry.extra["login_method"] = "ldap"
        username = text.text(username, "username", high=256)
        call.entry.extra["login_user"] = username[:128]
        ldap = self._ldap_auth()
        ident = ldap.login(username, password)
        return self._logged_in(call, f"ldap/{ident.username}", "ldap", ident.policies, ident.attributes,
                               ldap.token_ttl, None)

    def _ldap_auth(self) -> LdapAuth:
        if self._auth.ldap is None:
            raise errors.Unauthenticated("ldap login is not configured")
        with self._ldap_lock:
            if self._ldap is None:
                self._ldap = LdapAuth(self._auth.ldap)
            return self._ldap

    # =========================================================================================== AppRole

    @operation("broker:ManageAuth", Need("broker:ManageAuth", resource(_approle)), mutates=True)
    def write_approle(self, call: Call, name: str, config: AppRoleConfig) -> None:
        """Create or replace an AppRole role carrying only policies the writer holds."""
        beyond = call.policies_beyond(config.policies)
        if beyond:
            raise errors.AccessDenied(f"{call.principal.name} may not hand on policies it does not hold: {beyond}")
        self._approles.put_role(name, config)

    @operation("broker:ManageAuth", Need("broker:ManageAuth", resource(_approle)))
    def read_approle_id(self, call: Call, name: str) -> str:
        """The role_id; for a role without secret ids it is the credential, so it is handed only to callers who
        hold every policy the role carries."""
        config = self._approles.config(name)
        if not config.bind_secret_id:
            self._within_caller(call, config.policies)
        return self._approles.role_id(name)

    @operation("broker:ManageAuth", Need("broker:ManageAuth", resource(_approle)), mutates=True)
    def create_secret_id(self, call: Call, name: str, *, metadata: Any = None, cidr_list: Any = None,
                         ttl: Any = None, num_uses: Any = None) -> IssuedSecretId:
        """A secret id is a login to the role: only for callers holding every policy the role carries. Its
        metadata becomes token attributes, so a non-root caller may attach only attributes it carries itself."""
        attributes = text.metadata(metadata, "metadata", reserved=IDENTITY_FIELDS)
        if cidr_list is not None and not (isinstance(cidr_list, list) and all(text.is_text(c) for c in cidr_list)):
            raise errors.ValidationError("cidr_list must be a list of CIDR blocks")
        if num_uses is not None and (not isinstance(num_uses, int) or isinstance(num_uses, bool)):
            raise errors.ValidationError("num_uses must be a whole number")
        seconds = _duration(ttl, "ttl")
        config = self._approles.config(name)
        self._within_caller(call, config.policies)
        if not call.principal.is_root and any(call.principal.attributes.get(k) != v for k, v in attributes.items()):
            raise errors.AccessDenied("secret-id metadata from a non-root caller can only repeat its own attributes")
        secret_id, accessor, ttl_s = self._approles.create_secret_id(
            name, metadata=attributes, cidrs=cidr_list or [], ttl=seconds, num_uses=num_uses)
        call.entry.extra["secret_id_accessor"] = accessor
        return IssuedSecretId(secret_id, accessor, ttl_s, num_uses or 0)

    @operation("broker:Login", public=True, mutates=True)
    def login_approle(self, call: Call, role_id: Any, secret_id: Any = "") -> IssuedToken:
        call.entry.extra["login_method"] = "approle"
        ident = self._approles.login(role_id, secret_id, call.ctx.source_ip)
        call.entry.extra["login_role"] = ident.role
        return self._logged_in(call, f"approle/{ident.role}", "approle", ident.policies, ident.attributes,
                               ident.token_ttl, ident.token_max_ttl)

    # =========================================================================================== SigV4 credentials

    @operation("broker:CreateAwsCredentials", Need("broker:CreateAwsCredentials", fixed("aws-credentials/*")),
               mutates=True)
    def create_aws_credentials(self, call: Call, *, policies: Any = (), name: Any = "",
                               ttl_seconds: Any = None) -> IssuedAwsCredentials:
        """SigV4 credentials for the AWS door: policies the caller holds, the caller's own name and attributes
        (unless root), living no longer than the caller's token (or `ttl_seconds`, whichever ends first)."""
        chosen = text.policy_names(policies, "Policies")
        name = text.text(name, "Name", high=256, low=0).strip() if name is not None else ""
        if ttl_seconds is not None and (not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool)
                                        or not 1 <= ttl_seconds <= MAX_CREDENTIAL_TTL):
            raise errors.ValidationError(f"TtlSeconds must be 1 to {MAX_CREDENTIAL_TTL}")
        caller = call.principal
        beyond = call.policies_beyond(chosen)
        if beyond:
            raise errors.AccessDenied(f"{caller.name} may bind only policies it holds; not {beyond}")
        attributes: dict[str, str] = {}
        if not caller.is_root:
            if name and name != caller.name:
                raise errors.AccessDenied(f"{caller.name} may issue credentials only under its own name")
            name, attributes = caller.name, dict(caller.attributes)
        parent = caller.accessor if caller.auth_method in TOKEN_METHODS and caller.accessor else None
        if parent is None and not caller.is_root:
            raise errors.AccessDenied("credentials are issued by a token, and live no longer than it")
        expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds) if ttl_seconds else None
        issued = self._credentials.issue(name, chosen, created_by=caller.name, parent_accessor=parent,
                                         expires_at=expires, attributes=attributes)
        call.entry.extra["access_key_id"] = issued.access_key_id
        call.entry.extra["policies"] = list(issued.policies)
        return IssuedAwsCredentials(issued.access_key_id, issued.secret_access_key, issued.name, issued.policies,
                                    issued.expires_at)

    @operation("broker:ListAwsCredentials", Need("broker:ListAwsCredentials", fixed("aws-credentials/*")))
    def list_aws_credentials(self, call: Call) -> list[CredentialInfo]:
        return self._credentials.list()

    @operation("broker:RevokeAwsCredentials", Need("broker:RevokeAwsCredentials", resource(_credential)),
               mutates=True)
    def revoke_aws_credentials(self, call: Call, access_key_id: str) -> None:
        call.entry.extra["access_key_id"] = access_key_id
        if not self._credentials.revoke(access_key_id):
            raise errors.NotFound(f"active AWS credentials {access_key_id} not found")

    # =========================================================================================== shared

    def _within_caller(self, call: Call, policies: list[str]) -> None:
        beyond = call.policies_beyond(policies)
        if beyond:
            raise errors.AccessDenied(f"{call.principal.name} may not hand out a login carrying policies it does "
                                      f"not hold: {beyond}")

    def _logged_in(self, call: Call, name: str, method: str, policies: list[str], meta: Mapping[str, str],
                   ttl: Any, max_ttl: Any) -> IssuedToken:
        """Create the (orphan) token a login hands out; from here on the audit record names who logged in."""
        ttl_s, max_s = token_bounds(self._auth, ttl, max_ttl)
        token, accessor = self._tokens.create(name, policies, ttl_seconds=ttl_s, max_ttl_seconds=max_s,
                                              renewable=True, meta=dict(meta), auth_method=method)
        call.entry.extra["token_accessor"] = accessor
        call.ctx.principal = Principal(name=name, auth_method=method, policies=tuple(policies), accessor=accessor,
                                       attributes=dict(meta))
        return IssuedToken(token, accessor, tuple(policies), dict(meta), ttl_s, True, orphan=True)
