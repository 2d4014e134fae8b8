"""The bridge's AppRoles (MySQL keyring_hashicorp logs in with role_id + secret_id), as declared gate operations.

A role binds the policy `keyring:<mount>`; login mints an ordinary broker token with it, so every later request goes
through token authentication and the one policy engine. The secret_id is stored only as its SHA-256.

Both halves are bounded in time: a secret_id stops working `secret_id_ttl_seconds` after it was issued (default 30
days, at most a year, and never after the creator's own token expires) and a login's token lives `token_ttl_seconds`
(default 24 hours, at most 31 days, never beyond its secret_id) and cannot be renewed. Issuing a new secret_id for a
role replaces the old one. Creating a role follows the no-escalation rule of `keyring.check_hand_on`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from broker import errors
from broker.auth import Principal, TokenAuth
from broker.gate import Call, Need, Service, operation, valid_text
from broker.service import KeyService
from keyring_bridge.keyring import admin_target, check_hand_on, within_caller
from keyring_bridge.repository import KeyringRepository, guarded

DEFAULT_SECRET_ID_TTL = 30 * 86400
MAX_SECRET_ID_TTL = 365 * 86400
DEFAULT_TOKEN_TTL = 86400
MAX_TOKEN_TTL = 31 * 86400
MAX_CREDENTIAL = 128
_ROLE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _hash(secret_id: str) -> str:
    return hashlib.sha256(secret_id.encode()).hexdigest()


def _ttl(value: Any, name: str, default: int, high: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise errors.ValidationError(f"{name} must be 1 to {high} seconds")
    return value


def _credential(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise errors.ValidationError(f"missing {name}")
    if len(value) > MAX_CREDENTIAL:
        raise errors.ValidationError(f"{name} is longer than {MAX_CREDENTIAL} characters")
    return valid_text(value, name)


@dataclass(frozen=True)
class AppRoleSecret:
    """What creating a role answers once: the secret_id is never stored or shown again."""

    role_name: str
    role_id: str
    secret_id: str = field(repr=False)
    policies: list[str]
    secret_id_expires_at: datetime
    token_ttl_seconds: int


@dataclass(frozen=True)
class Login:
    token: str = field(repr=False)
    accessor: str
    policies: list[str]
    ttl_seconds: int
    role_name: str


class KeyringAppRoles(Service):
    def __init__(self, keys: KeyService, tokens: TokenAuth) -> None:
        self.gate = keys.gate
        self.repo = KeyringRepository(keys.store)
        self._tokens = tokens

    @operation("keyring:CreateAppRole", Need("keyring:CreateAppRole", admin_target), mutates=True)
    def create(self, call: Call, role_name: str, mount: str, *, token_ttl_seconds: int | None = None,
               secret_id_ttl_seconds: int | None = None) -> AppRoleSecret:
        """Create a role bound to `keyring:<mount>` (or issue it a new secret_id, which replaces the old one)."""
        if not isinstance(role_name, str) or not _ROLE_RE.match(role_name):
            raise errors.ValidationError("role name: 1-128 letters, digits, '_', '.', '-'")
        token_ttl = _ttl(token_ttl_seconds, "the token TTL", DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL)
        secret_ttl = _ttl(secret_id_ttl_seconds, "the secret_id TTL", DEFAULT_SECRET_ID_TTL, MAX_SECRET_ID_TTL)
        policy = check_hand_on(call, mount)
        secret_ttl = within_caller(self._tokens, call, secret_ttl)
        call.entry.extra["role_name"] = role_name
        secret_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=secret_ttl)
        role_id = self.repo.put_approle(role_name, str(uuid.uuid4()), _hash(secret_id), [policy], token_ttl, expires,
                                        now)
        return AppRoleSecret(role_name, role_id, secret_id, [policy], expires, token_ttl)

    @operation("keyring:AppRoleLogin", public=True, mutates=True)
    def login(self, call: Call, role_id: Any, secret_id: Any) -> Login:
        """Authentication, not authorization: a bad, unknown or expired pair is Unauthenticated (one answer for
        all, so a caller learns nothing about which half was wrong); malformed input is a ValidationError."""
        role_id = _credential(role_id, "role_id")
        secret_id = _credential(secret_id, "secret_id")
        row = self.repo.approle(role_id)
        # Compare even when the role is unknown, so timing does not tell which half was wrong.
        expected = row.secret_id_hash if row is not None else _hash(secrets.token_hex(16))
        if not hmac.compare_digest(expected, _hash(secret_id)) or row is None:
            raise errors.Unauthenticated("invalid role or secret ID")
        call.entry.extra["role_name"] = row.role_name
        if row.secret_id_expires_at is None or row.secret_id_expires_at <= datetime.now(UTC):
            call.entry.extra["reason"] = "secret_id expired"
            raise errors.Unauthenticated("invalid role or secret ID")
        # A login's token lives its TTL, and never beyond the secret_id that gave it.
        left = int((row.secret_id_expires_at - datetime.now(UTC)).total_seconds())
        ttl = max(1, min(row.token_ttl_seconds or DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, left))
        policies = list(row.policies)
        with guarded():
            token, accessor = self._tokens.create(f"approle:{row.role_name}", policies, ttl_seconds=ttl,
                                                  max_ttl_seconds=ttl, renewable=False, auth_method="approle",
                                                  meta={"role_name": row.role_name})
        call.entry.extra["token_accessor"] = accessor  # the gate HMACs extras named like a token
        # From here on the audit record names who logged in.
        call.ctx.principal = Principal(f"approle:{row.role_name}", "approle", tuple(policies), accessor)
        return Login(token, accessor, policies, ttl, row.role_name)
