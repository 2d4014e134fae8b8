"""AppRole: machine login with a role_id (not secret, like a username) and a secret_id (secret, shown once).

Roles carry policies and token TTLs; secret ids carry their own TTL, a use count and optional CIDR bindings (the
role's `secret_id_bound_cidrs` apply to all of them). Only SHA-256 hashes of secret ids are stored; a use is
consumed atomically, so two concurrent logins cannot both spend the last use. A role without secret ids
(`bind_secret_id = false`) must be bound to CIDRs: its role_id alone is then the credential. Secret-id metadata
becomes token metadata but never an identity field (`role` is always the role's own name).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticError
from sqlalchemy import delete, select, update

from broker.auth import text
from broker.auth.config import Duration, parse_duration
from broker.errors import NotFound, Unauthenticated, ValidationError
from broker.store import Store
from broker.store.tables import AppRoleRow, AppRoleSecretRow

_S = AppRoleSecretRow.__table__
IDENTITY_FIELDS = ("role",)  # set by the login itself: secret-id metadata can never supply them
MAX_ROLE_ID = 128
MAX_SECRET_ID = 256
MAX_USES = 1_000_000_000
MAX_CIDRS = 64


def _cidrs(values: list[str]) -> list[str]:
    if len(values) > MAX_CIDRS:
        raise ValueError(f"at most {MAX_CIDRS} CIDR blocks")
    out = []
    for v in values:
        if not text.is_text(v) or len(v) > 64:
            raise ValueError("a CIDR block is a short string like 10.0.0.0/8")
        try:
            out.append(str(ipaddress.ip_network(v, strict=False)))
        except ValueError:
            raise ValueError(f"{v!r} is not a CIDR block") from None
    return out


class AppRoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policies: list[str] = Field(default_factory=list)
    token_ttl: Duration = "1h"
    token_max_ttl: Duration = None
    secret_id_ttl: Duration = None
    secret_id_num_uses: int = Field(default=0, ge=0, le=MAX_USES)       # 0: unlimited
    secret_id_bound_cidrs: list[str] = Field(default_factory=list)
    bind_secret_id: bool = True

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: object) -> object:
        text.check_strings(data, "the role")
        return data

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        try:
            return text.policy_names(v)
        except ValidationError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _credential(self) -> AppRoleConfig:
        if not self.bind_secret_id and not self.secret_id_bound_cidrs:
            raise ValueError("a role without secret ids (bind_secret_id = false) needs secret_id_bound_cidrs: "
                             "its role_id alone would otherwise log in from anywhere")
        return self

    @field_validator("secret_id_bound_cidrs")
    @classmethod
    def _check_cidrs(cls, v: list[str]) -> list[str]:
        return _cidrs(v)

    @field_validator("token_ttl", "token_max_ttl", "secret_id_ttl")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        parse_duration(v)
        return v


@dataclass(frozen=True)
class AppRoleIdentity:
    role: str
    policies: list[str]
    token_ttl: Duration
    token_max_ttl: Duration
    attributes: dict[str, str] = field(default_factory=dict)


def _hash(secret_id: str) -> str:
    return hashlib.sha256(secret_id.encode()).hexdigest()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in_cidrs(source_ip: str, cidrs: list[str]) -> bool:
    if not cidrs:
        return True
    try:
        addr = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(c) for c in cidrs)


MAX_TTL = 10 * 365 * 86400


def _stored_config(raw: str) -> AppRoleConfig:
    """A stored role configuration; one that today's rules refuse (e.g. written before them) is no role at all."""
    try:
        return AppRoleConfig.model_validate(json.loads(raw))
    except (PydanticError, ValueError):
        raise NotFound("no such AppRole role (its stored configuration is no longer valid)") from None


def _refused() -> Unauthenticated:
    return Unauthenticated("approle login refused: invalid role_id or secret_id")


class AppRoleAuth:
    def __init__(self, store: Store) -> None:
        self._store = store

    def __repr__(self) -> str:
        return "AppRoleAuth()"

    def put_role(self, name: str, cfg: AppRoleConfig) -> None:
        now = datetime.now(UTC)
        with self._store.session() as s:
            row = s.get(AppRoleRow, name)
            if row is None:
                s.add(AppRoleRow(name=name, role_id=str(uuid.uuid4()), config=cfg.model_dump_json(), updated_at=now))
            else:
                row.config, row.updated_at = cfg.model_dump_json(), now

    def _role(self, name: str) -> tuple[AppRoleRow, AppRoleConfig]:
        with self._store.session() as s:
            row = s.get(AppRoleRow, name)
            if row is None:
                raise NotFound("no such AppRole role")
            return row, _stored_config(row.config)

    def role_id(self, name: str) -> str:
        return self._role(name)[0].role_id

    def config(self, name: str) -> AppRoleConfig:
        """The role's configuration (NotFound if there is none, or if a stored one is no longer valid)."""
        return self._role(name)[1]

    def create_secret_id(self, name: str, *, metadata: dict[str, str] | None = None, cidrs: list[str] | None = None,
                         ttl: int | None = None, num_uses: int | None = None) -> tuple[str, str, int]:
        _, cfg = self._role(name)
        metadata = text.metadata(metadata, "metadata", reserved=IDENTITY_FIELDS)
        try:
            bound = _cidrs(cidrs or [])
        except ValueError as exc:
            raise ValidationError(f"cidr_list: {exc}") from None
        if num_uses is not None and not 0 <= num_uses <= MAX_USES:
            raise ValidationError(f"num_uses must be 0 to {MAX_USES}")
        if ttl is not None and not 0 <= ttl <= MAX_TTL:
            raise ValidationError("ttl is at most ten years")
        role_ttl = parse_duration(cfg.secret_id_ttl) or 0
        ttl_s = min(x for x in (ttl or 0, role_ttl) if x) if (ttl or role_ttl) else 0
        uses = num_uses if num_uses else cfg.secret_id_num_uses
        secret_id = str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
        accessor = secrets.token_hex(12)
        now = datetime.now(UTC)
        with self._store.session() as s:
            s.add(AppRoleSecretRow(
                secret_hash=_hash(secret_id), accessor=accessor, role_name=name, created_at=now,
                expires_at=now + timedelta(seconds=ttl_s) if ttl_s else None, uses_left=uses or None,
                cidrs=json.dumps(bound), meta=json.dumps(metadata or {}, sort_keys=True)))
        return secret_id, accessor, ttl_s

    def login(self, role_id: str, secret_id: str, source_ip: str) -> AppRoleIdentity:
        """Hostile input (not a string, not valid Unicode, oversize) is a ValidationError; a wrong id, an unknown
        one and a spent or expired secret id all answer the same Unauthenticated."""
        role_id = text.text(role_id, "role_id", high=MAX_ROLE_ID)
        if secret_id is None:
            secret_id = ""
        secret_id = text.text(secret_id, "secret_id", high=MAX_SECRET_ID, low=0)
        with self._store.session() as s:
            row = s.execute(select(AppRoleRow).where(AppRoleRow.role_id == role_id)).scalar_one_or_none()
            if row is None:
                raise _refused()
            name, stored = row.name, row.config
        try:
            cfg = _stored_config(stored)
        except NotFound:
            raise _refused() from None
        if not _in_cidrs(source_ip, cfg.secret_id_bound_cidrs):
            raise Unauthenticated("approle login refused: source address not allowed")
        meta: dict[str, str] = {}
        if cfg.bind_secret_id:
            if not secret_id:
                raise _refused()
            meta.update(self._spend(name, _hash(secret_id), source_ip))
        meta["role"] = name  # set last: secret-id metadata never poses as another role
        return AppRoleIdentity(name, list(cfg.policies), cfg.token_ttl, cfg.token_max_ttl, meta)

    def _spend(self, role_name: str, secret_hash: str, source_ip: str) -> dict[str, str]:
        now = datetime.now(UTC)
        with self._store.session() as s:
            sec = s.execute(select(_S).where(_S.c.secret_hash == secret_hash, _S.c.role_name == role_name)).first()
            if sec is None:
                raise _refused()
            expires = _utc(sec.expires_at)
            if expires is not None and expires <= now:
                raise _refused()
            if not _in_cidrs(source_ip, json.loads(sec.cidrs)):
                raise Unauthenticated("approle login refused: source address not allowed")
            if sec.uses_left is not None:
                spent = s.execute(update(_S).where(_S.c.secret_hash == secret_hash, _S.c.uses_left > 0)
                                  .values(uses_left=_S.c.uses_left - 1))
                if spent.rowcount != 1:
                    raise _refused()
                s.execute(delete(_S).where(_S.c.secret_hash == secret_hash, _S.c.uses_left <= 0))
            return dict(json.loads(sec.meta))
