"""The `[console]` settings table: session lifetimes, cookie security, the OIDC client. Validated; no I/O.

    [console]
    idle_timeout = "15m"          # a session unused this long ends
    max_session = "12h"           # and none lives longer than this (nor beyond its broker token)
    secure_cookies = "auto"       # "auto": Secure when the request came over TLS; "always" behind a TLS proxy
    session_db = "./var/console/sessions.db"   # default: <data_dir>/console/sessions.db

    [console.oidc]                # authorization-code flow with PKCE; the ID token logs in through a JWT role
    issuer = "https://sso.example.org/realms/ops"
    client_id = "kms-console"
    client_secret_file = "/etc/kmsb/console-oidc.secret"   # or client_secret_env; none for a public client
    jwt_role = "console"          # a role under [auth.jwt.roles] bound to this issuer and audience
    scopes = ["openid", "profile", "email"]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from broker.auth.config import Duration, parse_duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OidcSettings(_Strict):
    issuer: str
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: SecretStr | None = None
    client_secret_file: str | None = None
    client_secret_env: str | None = None
    jwt_role: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    redirect_uri: str | None = None        # default: <this broker>/ui/login/oidc/callback
    label: str = "Single sign-on"
    timeout: float = Field(default=5.0, gt=0, le=60)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if not v.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ValueError("issuer must be https (plain http only for loopback)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _scopes(self) -> OidcSettings:
        if "openid" not in self.scopes:
            raise ValueError("scopes must include openid")
        if sum(x is not None for x in (self.client_secret, self.client_secret_file, self.client_secret_env)) > 1:
            raise ValueError("give at most one of client_secret, client_secret_file, client_secret_env")
        return self

    def secret(self) -> str | None:
        """The client secret, read where it is kept (never stored on the settings object in clear)."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file:
            return Path(self.client_secret_file).read_text().strip()
        if self.client_secret_env:
            return os.environ.get(self.client_secret_env)
        return None


class ConsoleSettings(_Strict):
    enabled: bool = True
    idle_timeout: Duration = "15m"
    max_session: Duration = "12h"
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    session_db: Path | None = None
    oidc: OidcSettings | None = None

    @field_validator("idle_timeout", "max_session")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if not parse_duration(v):
            raise ValueError("must be a positive duration")
        return v

    @property
    def idle_seconds(self) -> int:
        return parse_duration(self.idle_timeout) or 900

    @property
    def max_seconds(self) -> int:
        return parse_duration(self.max_session) or 43200
