"""Token authentication: create, authenticate, renew, revoke (with every descendant), look up.

Only SHA-256 hashes of tokens are stored. `auth_tokens` (the core table) holds hash, accessor, policies, expiry,
parent and the revoked flag; `identity_tokens` (branch migration 0005) adds the auth method, renewal bounds and
metadata, which become `Principal.attributes`.

Revocation: in this process it is immediate (`forget`); other processes see it within `cache_seconds`, because
cached principals live no longer than that. A child never outlives its parent: its expiry is capped by the
parent's at creation and at every renewal, and revoking a parent revokes its descendants in the same transaction.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, inspect, null, select, update
from sqlalchemy.exc import DBAPIError

from broker.auth import text
from broker.errors import NotFound, Unauthenticated, ValidationError
from broker.store import Store
from broker.store.tables import AuthTokenRow, IdentityTokenRow

TOKEN_PREFIX = "kmsb."
_T = AuthTokenRow.__table__
_I = IdentityTokenRow.__table__
_LOOKUP = (
    select(_T.c.token_hash, _T.c.accessor, _T.c.display_name, _T.c.policies, _T.c.created_at, _T.c.expires_at,
           _T.c.parent_accessor, _T.c.revoked, _I.c.auth_method, _I.c.renewable, _I.c.ttl_seconds,
           _I.c.max_expires_at, _I.c.meta)
    .select_from(_T.outerjoin(_I, _I.c.accessor == _T.c.accessor))
)
_BY_HASH = _LOOKUP.where(_T.c.token_hash == bindparam("token_hash"))
_BY_ACCESSOR = _LOOKUP.where(_T.c.accessor == bindparam("accessor"))
# A store not yet migrated to the identity branch (serve does not migrate): core columns only, so tokens keep
# working until `migrate()` adds identity_tokens.
_CORE = select(_T, null().label("auth_method"), null().label("renewable"), null().label("ttl_seconds"),
               null().label("max_expires_at"), null().label("meta"))
_CORE_BY_HASH = _CORE.where(_T.c.token_hash == bindparam("token_hash"))
_CORE_BY_ACCESSOR = _CORE.where(_T.c.accessor == bindparam("accessor"))


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _min(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


@dataclass(frozen=True)
class TokenInfo:
    """What lookup answers: never the token itself."""

    accessor: str
    display_name: str
    policies: tuple[str, ...]
    auth_method: str
    created_at: datetime
    expires_at: datetime | None
    max_expires_at: datetime | None
    renewable: bool
    ttl_seconds: int | None
    parent_accessor: str | None
    meta: dict[str, str]
    revoked: bool
    token_hash: str

    def __repr__(self) -> str:
        return f"TokenInfo(accessor={self.accessor!r}, display_name={self.display_name!r})"

    def seconds_left(self, now: datetime | None = None) -> float:
        if self.expires_at is None:
            return float("inf")
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds()

    def to_dict(self) -> dict:
        now = datetime.now(UTC)
        left = self.seconds_left(now)
        return {
            "accessor": self.accessor, "display_name": self.display_name, "policies": list(self.policies),
            "auth_method": self.auth_method, "creation_time": self.created_at.isoformat(),
            "expire_time": self.expires_at.isoformat() if self.expires_at else None,
            "explicit_max_expire_time": self.max_expires_at.isoformat() if self.max_expires_at else None,
            "ttl": max(0, int(left)) if left != float("inf") else 0,
            "renewable": self.renewable, "parent_accessor": self.parent_accessor, "meta": dict(self.meta),
        }


def _info(row) -> TokenInfo:
    return TokenInfo(
        accessor=row.accessor, display_name=row.display_name, policies=tuple(json.loads(row.policies)),
        auth_method=row.auth_method or "token", created_at=_utc(row.created_at), expires_at=_utc(row.expires_at),
        max_expires_at=_utc(row.max_expires_at), renewable=bool(row.renewable) if row.auth_method else False,
        ttl_seconds=row.ttl_seconds, parent_accessor=row.parent_accessor,
        meta=json.loads(row.meta) if row.meta else {}, revoked=bool(row.revoked), token_hash=row.token_hash,
    )


class TokenAuth:
    """Token authentication. `cache_seconds` bounds how long a revocation may take to reach every process."""

    def __init__(self, store: Store, cache_seconds: float = 1.0) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()
        self._identity_missing = False

    def __repr__(self) -> str:
        return f"TokenAuth(cache_seconds={self._cache_seconds})"

    # ------------------------------------------------------------------------------------------- create

    def create(self, display_name: str, policies: list[str], *, ttl_seconds: int | None = None,
               parent_accessor: str | None = None, max_ttl_seconds: int | None = None, renewable: bool = True,
               meta: dict[str, str] | None = None, auth_method: str = "token") -> tuple[str, str]:
        """Create a token; returns (token, accessor). Only the hash of the token is stored.

        `ttl_seconds` None or 0 means no expiry (root bootstrap). `max_ttl_seconds` bounds renewals. A child of
        `parent_accessor` is capped by its parent's current expiry; the caller checks the policy subset rule.
        """
        from broker.auth import hash_token

        policies = text.policy_names(policies)
        meta = text.metadata(meta)
        display_name = text.text(display_name, "display_name", high=256)
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=ttl_seconds) if ttl_seconds else None
        max_expires = now + timedelta(seconds=max_ttl_seconds) if max_ttl_seconds else None
        if parent_accessor is not None:
            parent = self.by_accessor(parent_accessor)
            if parent.revoked or parent.seconds_left(now) <= 0:
                raise Unauthenticated("parent token is not valid")
            expires = _min(expires, parent.expires_at) if expires or parent.expires_at else None
            max_expires = _min(max_expires, parent.max_expires_at, parent.expires_at if not parent.renewable
                               else None)
        if max_expires is not None:
            expires = _min(expires, max_expires)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        accessor = secrets.token_hex(12)
        with self._store.session() as s:
            s.add(AuthTokenRow(
                token_hash=hash_token(token), accessor=accessor, display_name=display_name,
                policies=json.dumps(policies), created_at=now, expires_at=expires,
                parent_accessor=parent_accessor, revoked=False,
            ))
            s.flush()
            s.add(IdentityTokenRow(accessor=accessor, auth_method=auth_method, renewable=renewable,
                                   ttl_seconds=ttl_seconds or None, max_expires_at=max_expires,
                                   meta=json.dumps(meta, sort_keys=True)))
        return token, accessor

    # ------------------------------------------------------------------------------------------- authenticate

    def authenticate(self, token: str | None):
        from broker.auth import hash_token

        if not token:
            raise Unauthenticated("missing token")
        if not isinstance(token, str) or len(token) > 512 or not text.is_text(token):
            raise Unauthenticated("invalid token")
        token_hash = hash_token(token)
        cached = self._cache.get(token_hash)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        principal, seconds_left = self._lookup(token_hash)
        ttl = min(self._cache_seconds, seconds_left)
        if ttl > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[token_hash] = (time.monotonic() + ttl, principal)
        return principal

    def _first(self, statement, core_statement, params: dict):
        if not self._identity_missing:
            try:
                return self._store.first(statement, params)
            except DBAPIError:
                if inspect(self._store.engine).has_table(_I.name):
                    raise
                self._identity_missing = True
        return self._store.first(core_statement, params)

    def forget(self, token_hash: str) -> None:
        with self._lock:
            self._cache.pop(token_hash, None)

    def _lookup(self, token_hash: str):
        from broker.auth import Principal

        row = self._first(_BY_HASH, _CORE_BY_HASH, {"token_hash": token_hash})
        if row is None or row.revoked:
            raise Unauthenticated("invalid token")
        info = _info(row)
        seconds_left = info.seconds_left()
        if seconds_left <= 0:
            raise Unauthenticated("token expired")
        principal = Principal(name=info.display_name, auth_method=info.auth_method, policies=info.policies,
                              accessor=info.accessor, attributes=dict(info.meta))
        return principal, seconds_left

    # ------------------------------------------------------------------------------------------- lookup

    def lookup(self, token: str) -> TokenInfo:
        from broker.auth import hash_token

        row = self._first(_BY_HASH, _CORE_BY_HASH, {"token_hash": hash_token(token)})
        if row is None or row.revoked or _info(row).seconds_left() <= 0:
            raise NotFound("no such token")
        return _info(row)

    def by_accessor(self, accessor: str) -> TokenInfo:
        if not isinstance(accessor, str) or not accessor or len(accessor) > 64 or not text.is_text(accessor):
            raise ValidationError("accessor must be 1 to 64 characters")
        row = self._first(_BY_ACCESSOR, _CORE_BY_ACCESSOR, {"accessor": accessor})
        if row is None:
            raise NotFound("no token with that accessor")
        return _info(row)

    def valid_by_accessor(self, accessor: str) -> TokenInfo:
        info = self.by_accessor(accessor)
        if info.revoked or info.seconds_left() <= 0:
            raise NotFound("no token with that accessor")
        return info

    def seconds_left(self, accessor: str) -> float:
        """How long the token with this accessor stays valid: 0 if revoked, expired or unknown, inf if it never
        expires. What credentials derived from a token ask before they are honoured."""
        try:
            info = self.by_accessor(accessor)
        except (NotFound, ValidationError):
            return 0.0
        return 0.0 if info.revoked else max(0.0, info.seconds_left())

    # ------------------------------------------------------------------------------------------- renew

    def renew(self, accessor: str, increment_seconds: int | None = None) -> TokenInfo:
        """Extend the token's expiry by `increment` (default: its own TTL), never past its max TTL or its parent."""
        info = self.valid_by_accessor(accessor)
        if info.expires_at is None:
            return info
        if not info.renewable:
            raise ValidationError("token is not renewable")
        increment = increment_seconds or info.ttl_seconds
        if not increment or increment <= 0:
            raise ValidationError("increment must be positive")
        now = datetime.now(UTC)
        new_expiry = _min(now + timedelta(seconds=increment), info.max_expires_at)
        if info.parent_accessor:
            parent = self.by_accessor(info.parent_accessor)
            new_expiry = _min(new_expiry, parent.expires_at)
        with self._store.session() as s:
            s.execute(update(_T).where(_T.c.accessor == accessor, _T.c.revoked.is_(False))
                      .values(expires_at=new_expiry))
        self.forget(info.token_hash)
        return self.by_accessor(accessor)

    # ------------------------------------------------------------------------------------------- revoke

    def revoke_accessor(self, accessor: str) -> int:
        """Revoke the token and every descendant, in one transaction. Returns how many tokens were revoked."""
        self.by_accessor(accessor)
        revoked_hashes: list[str] = []
        with self._store.session() as s:
            frontier = [accessor]
            seen: set[str] = set()
            while frontier:
                rows = s.execute(select(_T.c.accessor, _T.c.token_hash, _T.c.revoked)
                                 .where(_T.c.accessor.in_(frontier))).all()
                for row in rows:
                    seen.add(row.accessor)
                    if not row.revoked:
                        revoked_hashes.append(row.token_hash)
                children = s.execute(select(_T.c.accessor).where(_T.c.parent_accessor.in_(frontier))).scalars()
                frontier = [c for c in children if c not in seen]
            s.execute(update(_T).where(_T.c.accessor.in_(seen)).values(revoked=True))
        for token_hash in revoked_hashes:
            self.forget(token_hash)
        return len(revoked_hashes)

    def lookup_any(self, token: str) -> TokenInfo:
        """The token's record even if revoked or expired (revoking twice answers 0, not an error)."""
        from broker.auth import hash_token

        if not isinstance(token, str) or not token or len(token) > 512 or not text.is_text(token):
            raise NotFound("no such token")
        row = self._first(_BY_HASH, _CORE_BY_HASH, {"token_hash": hash_token(token)})
        if row is None:
            raise NotFound("no such token")
        return _info(row)
