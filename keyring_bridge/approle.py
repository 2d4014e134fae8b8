"""A minimal AppRole for database keyrings (MySQL keyring_hashicorp logs in with role_id + secret_id).

A role binds policies (normally `keyring:<mount>`); login mints an ordinary broker token with those policies, so
every later request goes through TokenAuth and the one policy engine. secret_id is stored only as its SHA-256.
The identity work (issue 3) may absorb this module later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from broker import errors
from broker.auth import TokenAuth
from broker.service import KeyService, RequestContext
from broker.store.tables import KeyringAppRoleRow

_ROLE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _hash(secret_id: str) -> str:
    return hashlib.sha256(secret_id.encode()).hexdigest()


@dataclass(frozen=True)
class Login:
    token: str
    accessor: str
    policies: list[str]
    ttl_seconds: int
    role_name: str


class AppRoles:
    def __init__(self, service: KeyService, tokens: TokenAuth) -> None:
        self.service = service
        self.tokens = tokens

    def create(self, ctx: RequestContext, role_name: str, mount: str, *,
               token_ttl_seconds: int | None = None) -> tuple[str, str]:
        """Create (or replace the secret of) a role bound to `keyring:<mount>`; returns (role_id, secret_id)."""
        if not _ROLE_RE.match(role_name or ""):
            raise errors.ValidationError("role name: 1-128 letters, digits, '_', '.', '-'")
        with self.service.operation(ctx, "keyring:CreateAppRole") as entry:
            self.service.authorize(ctx, entry, "keyring:CreateAppRole", None, resource=f"keyring-admin/{mount}")
            entry.extra["role_name"] = role_name
            secret_id = str(uuid.uuid4())
            try:
                with self.service.store.session() as s:
                    row = s.get(KeyringAppRoleRow, role_name)
                    if row is None:
                        row = KeyringAppRoleRow(role_name=role_name, role_id=str(uuid.uuid4()),
                                                created_at=datetime.now(UTC))
                        s.add(row)
                    row.secret_id_hash = _hash(secret_id)
                    row.policies = json.dumps([f"keyring:{mount}"])
                    row.token_ttl_seconds = token_ttl_seconds
                    role_id = row.role_id
            except SQLAlchemyError:
                raise errors.DependencyTimeout("keyring store unavailable") from None
            return role_id, secret_id

    def login(self, ctx: RequestContext, role_id: str, secret_id: str) -> Login:
        """Authentication, not authorization: audited as keyring:AppRoleLogin; a bad pair is Unauthenticated."""
        with self.service.operation(ctx, "keyring:AppRoleLogin") as entry:
            if not isinstance(role_id, str) or not isinstance(secret_id, str) or not role_id or not secret_id:
                raise errors.ValidationError("missing role_id or secret_id")
            try:
                with self.service.store.session() as s:
                    row = s.scalars(select(KeyringAppRoleRow).where(KeyringAppRoleRow.role_id == role_id)).first()
                    found = None if row is None else (row.role_name, row.secret_id_hash, json.loads(row.policies),
                                                      row.token_ttl_seconds)
            except SQLAlchemyError:
                raise errors.DependencyTimeout("keyring store unavailable") from None
            # Compare even when the role is unknown, so timing does not tell which half was wrong.
            expected = found[1] if found else _hash(secrets.token_hex(16))
            if not hmac.compare_digest(expected, _hash(secret_id)) or found is None:
                raise errors.Unauthenticated("invalid role or secret ID")
            role_name, _, policies, ttl = found
            entry.extra["role_name"] = role_name
            token, accessor = self.tokens.create(f"approle:{role_name}", policies, ttl_seconds=ttl)
            entry.extra["token_accessor"] = self.service.audit.hmac_value(accessor)
            return Login(token, accessor, policies, ttl or 0, role_name)
