"""The `[auth]` settings table: token defaults, JWT/OIDC roles, LDAP. Validated on load; no I/O here.

    [auth.token]
    default_ttl = "24h"            # TTL of a token created without one
    max_ttl = "768h"               # ceiling on any token's lifetime (renewals included)

    [auth.jwt.roles.ci]
    jwks_file = "/etc/kmsb/jwks.json"      # or jwks_url = "https://issuer/.well-known/jwks.json", or public_keys = ["-----BEGIN PUBLIC KEY-----…"]
    allowed_algorithms = ["RS256", "ES256"]
    bound_issuer = "https://issuer.example"
    bound_audiences = ["kms-broker"]
    bound_claims = { repository = "org/*" }   # bound_claims_type = "glob" (or "string": exact)
    claim_policies = { groups = { admins = ["key-admin"], "dev-*" = ["key-user"] } }
    claim_attributes = { repository = "repo" }   # claim -> Principal.attributes key (broker:PrincipalTag/repo)
    policies = ["default"]
    token_ttl = "1h"

    [auth.ldap]
    url = "ldap://127.0.0.1:389"
    userdn_template = "uid={username},ou=people,dc=example,dc=org"   # or bind_dn/bind_password + user_search_base
    group_search_base = "ou=groups,dc=example,dc=org"
    group_policies = { admins = ["key-admin"] }

Passwords in settings may be given indirectly (`bind_password_file`, `bind_password_env`) so they never sit in the TOML.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from broker.auth.text import MAX_POLICIES, MAX_POLICY_NAME, check_strings

_DURATION = re.compile(r"^\s*(\d{1,12})\s*([smhd]?)\s*$")
MAX_DURATION = 10 * 365 * 86400  # ten years: any longer lifetime is a mistake (and past it, dates overflow)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Only asymmetric algorithms: a JWT role verifies with public keys, so HMAC (and `none`) can never be accepted.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def parse_duration(value: str | int | None) -> int | None:
    """'90s', '15m', '1h', '7d' or a number of seconds → seconds. None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '1h'")
    if isinstance(value, int):
        seconds = value
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("invalid duration (use e.g. 90s, 15m, 1h, 7d)")
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError("a duration is at most ten years")
    return seconds


Duration = str | int | None


def _policy_list(names: list[str]) -> list[str]:
    if len(names) > MAX_POLICIES:
        raise ValueError(f"at most {MAX_POLICIES} policies")
    if any(not n or len(n) > MAX_POLICY_NAME or n != n.strip() for n in names):
        raise ValueError(f"policy names are 1 to {MAX_POLICY_NAME} characters without surrounding spaces")
    return names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenSettings(_Strict):
    default_ttl: Duration = "24h"
    max_ttl: Duration = "768h"

    @field_validator("default_ttl", "max_ttl")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        parse_duration(v)
        return v


class JwtRole(_Strict):
    jwks_file: str | None = None
    jwks_url: str | None = None
    public_keys: list[str] = Field(default_factory=list)
    allowed_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    bound_issuer: str | None = None
    bound_audiences: list[str] = Field(default_factory=list)
    leeway: int = Field(default=0, ge=0, le=300)
    bound_claims: dict[str, str | list[str]] = Field(default_factory=dict)
    bound_claims_type: Literal["string", "glob"] = "string"
    user_claim: str = "sub"
    claim_policies: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    claim_attributes: dict[str, str] = Field(default_factory=dict)
    policies: list[str] = Field(default_factory=list)
    token_ttl: Duration = "1h"
    token_max_ttl: Duration = None

    @field_validator("allowed_algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one algorithm is required")
        bad = [a for a in v if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed (allowed: {', '.join(ASYMMETRIC_ALGORITHMS)})")
        return v

    @field_validator("token_ttl", "token_max_ttl")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        parse_duration(v)
        return v

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        return _policy_list(v)

    @field_validator("claim_policies")
    @classmethod
    def _claim_policies(cls, v: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        for mapping in v.values():
            for names in mapping.values():
                _policy_list(names)
        return v

    def granted_policies(self) -> list[str]:
        """Every policy a login through this role can carry (its own and every claim mapping's)."""
        out = list(self.policies)
        for mapping in self.claim_policies.values():
            for names in mapping.values():
                out.extend(n for n in names if n not in out)
        return out

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: object) -> object:
        check_strings(data, "the role")
        return data

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtRole:
        sources = [bool(self.jwks_file), bool(self.jwks_url), bool(self.public_keys)]
        if sum(sources) != 1:
            raise ValueError("exactly one of jwks_file, jwks_url, public_keys is required")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ValueError("jwks_url must be https (plain http only for loopback)")
        return self


class JwtSettings(_Strict):
    roles: dict[str, JwtRole] = Field(default_factory=dict)

    @field_validator("roles")
    @classmethod
    def _role_names(cls, v: dict[str, JwtRole]) -> dict[str, JwtRole]:
        for name in v:  # role names are part of principal names (jwt/<role>/<sub>): no '/' or odd characters
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", name):
                raise ValueError(f"role name {name!r}: 1-128 letters, digits, '.', '_', '-'")
        return v


class LdapSettings(_Strict):
    url: str
    starttls: bool = False
    ca_file: str | None = None
    tls_verify: bool = True
    timeout: float = Field(default=5.0, gt=0, le=60)
    userdn_template: str | None = None      # e.g. "uid={username},ou=people,dc=example,dc=org"
    bind_dn: str | None = None              # search-then-bind: the service account
    bind_password: SecretStr | None = None
    bind_password_file: str | None = None
    bind_password_env: str | None = None
    user_search_base: str | None = None
    user_attr: str = "uid"
    user_filter: str = "(objectClass=*)"
    group_search_base: str | None = None
    group_filter: str = "(&(objectClass=groupOfNames)(member={userdn}))"
    group_attr: str = "cn"
    use_member_of: bool = False             # read the user's memberOf values instead of searching groups
    group_policies: dict[str, list[str]] = Field(default_factory=dict)
    policies: list[str] = Field(default_factory=list)
    user_attributes: dict[str, str] = Field(default_factory=dict)  # LDAP attribute -> Principal.attributes key
    token_ttl: Duration = "1h"

    @model_validator(mode="after")
    def _mode(self) -> LdapSettings:
        if not self.url.startswith(("ldap://", "ldaps://")):
            raise ValueError("url must start with ldap:// or ldaps://")
        if bool(self.userdn_template) == bool(self.user_search_base):
            raise ValueError("set exactly one of userdn_template or user_search_base")
        if self.userdn_template and "{username}" not in self.userdn_template:
            raise ValueError("userdn_template must contain {username}")
        if self.starttls and self.url.startswith("ldaps://"):
            raise ValueError("starttls is for ldap:// URLs; ldaps:// is already TLS")
        parse_duration(self.token_ttl)
        return self


class AuthSettings(_Strict):
    token: TokenSettings = Field(default_factory=TokenSettings)
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    ldap: LdapSettings | None = None
