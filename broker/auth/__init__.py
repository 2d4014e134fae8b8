"""Authentication: who is calling. Every front door turns its credential into a Principal here."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
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
    """Token authentication. `cache_seconds` bounds how long a revocation may take to reach every process."""

    def __init__(self, store: Store, cache_seconds: float = 1.0) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

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
        token_hash = hash_token(token)
        cached = self._cache.get(token_hash)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        principal, seconds_left = self._lookup(token_hash)
        ttl = min(self._cache_seconds, seconds_left)
        if ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token_hash] = (time.monotonic() + ttl, principal)
        return principal

    def forget(self, token_hash: str) -> None:
        self._cache.pop(token_hash, None)

    def _lookup(self, token_hash: str) -> tuple[Principal, float]:
        row = self._store.get_auth_token(token_hash)
        if row is None or row.revoked:
            raise Unauthenticated("invalid token")
        seconds_left = float("inf")
        if row.expires_at is not None:
            expires = row.expires_at.replace(tzinfo=UTC) if row.expires_at.tzinfo is None else row.expires_at
            seconds_left = (expires - datetime.now(UTC)).total_seconds()
            if seconds_left <= 0:
                raise Unauthenticated("token expired")
        principal = Principal(name=row.display_name, auth_method="token", policies=tuple(json.loads(row.policies)),
                              accessor=row.accessor)
        return principal, seconds_left
