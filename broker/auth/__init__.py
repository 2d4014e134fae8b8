"""Authentication: who is calling. Every front door turns its credential into a Principal here."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from broker.errors import Unauthenticated
from broker.store import Store
from broker.store.tables import AuthTokenRow

TOKEN_PREFIX = "kmsb."


@dataclass(frozen=True)
class Principal:
    name: str
    auth_method: str
    policies: tuple[str, ...]
    accessor: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def is_root(self) -> bool:
        return "root" in self.policies


def hash_token(token: str) -> str:
    """Tokens are high-entropy random strings: SHA-256 is the right hash for storing them (no stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenAuth:
    def __init__(self, store: Store) -> None:
        self._store = store

    def create(self, display_name: str, policies: list[str], *, ttl_seconds: int | None = None,
               parent_accessor: str | None = None) -> tuple[str, str]:
        """Create a token; returns (token, accessor). Only the hash of the token is stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        accessor = secrets.token_hex(12)
        now = datetime.now(UTC)
        expires = None
        if ttl_seconds:
            from datetime import timedelta
            expires = now + timedelta(seconds=ttl_seconds)
        self._store.add_auth_token(AuthTokenRow(
            token_hash=hash_token(token), accessor=accessor, display_name=display_name,
            policies=json.dumps(policies), created_at=now, expires_at=expires, parent_accessor=parent_accessor,
            revoked=False,
        ))
        return token, accessor

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing token")
        row = self._store.get_auth_token(hash_token(token))
        if row is None or row.revoked:
            raise Unauthenticated("invalid token")
        expires = row.expires_at
        if expires is not None:
            expires = expires.replace(tzinfo=UTC) if expires.tzinfo is None else expires
            if expires <= datetime.now(UTC):
                raise Unauthenticated("token expired")
        return Principal(name=row.display_name, auth_method="token", policies=tuple(json.loads(row.policies)),
                         accessor=row.accessor)
