"""The keyring bridge's SQL, and nothing else: mounts, entries, sealed versions, AppRoles.

Only the keyring services use it. Every store failure leaves here as `DependencyTimeout`, so an operation's audit
record says what happened and the bridge drops the connection instead of answering. The hot read path (an entry
row, a version row) uses the store's per-thread autocommit reader with prebuilt statements, and a key read may use
a row this process read moments ago (`read(max_age=...)`): only the sealed material and version metadata are kept,
and only while no process of this host wrote a keyring entry since (broker/store/kept.py). Every method that writes
entries or versions moves the host's keyring-write counter after it ran.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from broker import errors
from broker.store import Store
from broker.store.kept import KeptRows
from broker.store.tables import KeyringAppRoleRow, KeyringEntryRow, KeyringMountRow, KeyringVersionRow

_E, _V, _A = KeyringEntryRow.__table__, KeyringVersionRow.__table__, KeyringAppRoleRow.__table__
_ENTRY = select(_E).where(_E.c.mount == bindparam("mount"), _E.c.entry_id == bindparam("entry_id"))
_VERSION = select(_V.c.sealed, _V.c.created_at, _V.c.deleted_at, _V.c.destroyed).where(
    _V.c.mount == bindparam("mount"), _V.c.entry_id == bindparam("entry_id"), _V.c.version == bindparam("version"))
_APPROLE = select(_A).where(_A.c.role_id == bindparam("role_id"))


def _read(version_of: Any) -> Any:
    """A key read in one round trip: the entry's row joined to one of its versions (none: NULL version columns)."""
    joined = _E.outerjoin(_V, and_(_V.c.mount == _E.c.mount, _V.c.entry_id == _E.c.entry_id,
                                   _V.c.version == version_of))
    return select(_E.c.latest_version, _E.c.custom_metadata, _V.c.version, _V.c.sealed, _V.c.created_at,
                  _V.c.deleted_at, _V.c.destroyed).select_from(joined).where(
        _E.c.mount == bindparam("mount"), _E.c.entry_id == bindparam("entry_id"))


_READ_LATEST, _READ_VERSION = _read(_E.c.latest_version), _read(bindparam("version"))
WRITES = "keyring-writes"  # the host counter every keyring entry write moves
KEPT_ROWS = 4096  # key reads kept per process (each at most KEPT_CHARS): at most ~16 MiB
KEPT_CHARS = 4096  # a row whose sealed secret and custom metadata are longer than this is read each time

P = ParamSpec("P")
R = TypeVar("R")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Store failures become DependencyTimeout (never the driver's message: it can quote parameters)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SQLAlchemyError:
            raise errors.DependencyTimeout("keyring store unavailable") from None
    return wrapper


def _keep(read: tuple[ReadRow | None, bool]) -> bool:
    return read[1]


def _writes(fn: Callable[P, R]) -> Callable[P, R]:
    """A write of entries or versions: afterwards (done or failed: a commit's outcome may be unknown) every process
    of this host stops using the key reads it kept."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            args[0]._kept.wrote()  # type: ignore[attr-defined]
    return wrapper


class Raced(Exception):
    """Another writer changed the entry between our read and our write: re-read and retry."""


@dataclass(frozen=True, slots=True)
class EntryRow:
    latest_version: int
    created_at: datetime
    updated_at: datetime
    custom_metadata: dict[str, str]
    rotation_period_seconds: int | None
    next_rotation_at: datetime | None


@dataclass(frozen=True, slots=True)
class VersionRow:
    sealed: str  # base64 of the root-of-trust seal; never the material ("" once destroyed)
    created_at: datetime
    deleted_at: datetime | None = None  # soft-deleted (Vault KV v2): the material is kept, reads answer 404
    destroyed: bool = False  # destroyed through an approved request: the material is gone


@dataclass(frozen=True, slots=True)
class ReadRow:
    """What a key read needs of an entry and one version: `version` is None when the entry has no such version."""

    latest_version: int
    custom_metadata: dict[str, str]
    wanted: int
    version: VersionRow | None


@dataclass(frozen=True)
class EntryInfo:
    """An entry's metadata (never its material)."""

    mount: str
    entry_id: str
    latest_version: int
    created_at: datetime
    updated_at: datetime
    custom_metadata: dict[str, str]
    rotation_period_seconds: int | None
    next_rotation_at: datetime | None
    versions: list[tuple[int, str, datetime]]  # (version, origin, created_at)
    deleted: dict[int, datetime] = field(default_factory=dict)  # version -> when it was soft-deleted
    destroyed: frozenset[int] = frozenset()  # versions whose material is gone


@dataclass(frozen=True)
class AppRoleRow:
    role_name: str
    secret_id_hash: str = ""
    policies: tuple[str, ...] = ()
    token_ttl_seconds: int | None = None
    secret_id_expires_at: datetime | None = None

    def __repr__(self) -> str:
        return f"AppRoleRow({self.role_name!r})"


class KeyringRepository:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._kept: KeptRows[tuple[str, str, int | None], tuple[Any, bool]] = KeptRows(
            store.host_counter(WRITES), entries=KEPT_ROWS)

    # ------------------------------------------------------------------------------------------ entries

    @_guarded
    def entry(self, mount: str, entry_id: str) -> EntryRow | None:
        row = self._store.first(_ENTRY, {"mount": mount, "entry_id": entry_id})
        if row is None:
            return None
        return EntryRow(row.latest_version, _utc(row.created_at), _utc(row.updated_at),
                        json.loads(row.custom_metadata), row.rotation_period_seconds, _utc(row.next_rotation_at))

    @_guarded
    def version(self, mount: str, entry_id: str, version: int) -> VersionRow | None:
        row = self._store.first(_VERSION, {"mount": mount, "entry_id": entry_id, "version": version})
        return None if row is None else VersionRow(row.sealed, _utc(row.created_at), _utc(row.deleted_at),
                                                   bool(row.destroyed))

    @_guarded
    def read(self, mount: str, entry_id: str, version: int | None, *, max_age: float = 0.0) -> ReadRow | None:
        """The entry and version `version` (None: its latest) in one statement; None when there is no entry. With
        `max_age` > 0 the row may be one this process read at most that long ago, while no process of this host
        wrote a keyring entry since (a change made elsewhere on this host is seen at once)."""
        row = self._kept.read((mount, entry_id, version), lambda: self._read(mount, entry_id, version), max_age,
                              _keep)[0]
        # a kept row is shared by the readers of this process: each gets its own metadata dict
        return None if row is None else ReadRow(row.latest_version, dict(row.custom_metadata), row.wanted,
                                                row.version)

    def _read(self, mount: str, entry_id: str, version: int | None) -> tuple[ReadRow | None, bool]:
        """(the entry joined to the version, or None; whether it may be kept): no entry is never kept (there is
        nothing to read again), nor a row whose sealed secret and metadata are longer than KEPT_CHARS."""
        if version is None:
            row = self._store.first(_READ_LATEST, {"mount": mount, "entry_id": entry_id})
        else:
            row = self._store.first(_READ_VERSION, {"mount": mount, "entry_id": entry_id, "version": version})
        if row is None:
            return None, False
        found = None if row.version is None else VersionRow(row.sealed, _utc(row.created_at), _utc(row.deleted_at),
                                                            bool(row.destroyed))
        return ReadRow(row.latest_version, json.loads(row.custom_metadata),
                       row.latest_version if version is None else version, found), \
            len(row.sealed or "") + len(row.custom_metadata) <= KEPT_CHARS

    @_guarded
    @_writes
    def set_deleted(self, mount: str, entry_id: str, versions: list[int], at: datetime | None) -> list[int]:
        """Soft-delete (`at`) or undelete (None) these versions; destroyed ones stay as they are. -> changed."""
        with self._store.session() as s:
            rows = s.scalars(select(KeyringVersionRow).where(
                KeyringVersionRow.mount == mount, KeyringVersionRow.entry_id == entry_id,
                KeyringVersionRow.version.in_(versions), KeyringVersionRow.destroyed.is_(False))).all()
            changed = []
            for row in rows:
                if (row.deleted_at is None) != (at is None):
                    row.deleted_at = at
                    changed.append(row.version)
            return sorted(changed)

    @_guarded
    @_writes
    def destroy(self, mount: str, entry_id: str, versions: list[int], at: datetime) -> list[int]:
        """Empty these versions' sealed material for good (the rows stay, marked destroyed). -> destroyed now."""
        with self._store.session() as s:
            rows = s.scalars(select(KeyringVersionRow).where(
                KeyringVersionRow.mount == mount, KeyringVersionRow.entry_id == entry_id,
                KeyringVersionRow.version.in_(versions), KeyringVersionRow.destroyed.is_(False))).all()
            for row in rows:
                row.sealed, row.destroyed = "", True
                row.deleted_at = row.deleted_at or at
            return sorted(r.version for r in rows)

    @_guarded
    @_writes
    def append(self, mount: str, entry_id: str, *, current: int, sealed: str, origin: str, now: datetime,
               custom_metadata: Mapping[str, str] | None = None, rotation_period_seconds: int | None = None,
               next_rotation_at: datetime | None = None, period_of_existing: int | None = None) -> None:
        """Add version current+1 (creating the entry at version 1). Raises Raced if the latest version moved."""
        version = current + 1
        try:
            with self._store.session() as s:
                if current == 0:
                    s.add(KeyringEntryRow(
                        mount=mount, entry_id=entry_id, latest_version=1, created_at=now, updated_at=now,
                        custom_metadata=json.dumps(dict(custom_metadata or {})),
                        rotation_period_seconds=rotation_period_seconds, next_rotation_at=next_rotation_at))
                    s.flush()
                else:
                    values: dict[str, Any] = {"latest_version": version, "updated_at": now}
                    if period_of_existing:
                        values["next_rotation_at"] = next_rotation_at
                    done = s.execute(update(KeyringEntryRow).where(
                        KeyringEntryRow.mount == mount, KeyringEntryRow.entry_id == entry_id,
                        KeyringEntryRow.latest_version == current).values(**values)).rowcount
                    if done != 1:
                        raise Raced()
                s.add(KeyringVersionRow(mount=mount, entry_id=entry_id, version=version, sealed=sealed,
                                        origin=origin, created_at=now))
        except IntegrityError:
            raise Raced() from None

    @_guarded
    @_writes
    def set_rotation(self, mount: str, entry_id: str, period_seconds: int | None,
                     next_rotation_at: datetime | None) -> bool:
        with self._store.session() as s:
            row = s.get(KeyringEntryRow, (mount, entry_id))
            if row is None:
                return False
            row.rotation_period_seconds = period_seconds
            row.next_rotation_at = next_rotation_at
            return True

    @_guarded
    def due(self, now: datetime) -> list[tuple[str, str, int]]:
        """(mount, id, latest version) of every entry whose scheduled rotation is due."""
        with self._store.session() as s:
            return [(r.mount, r.entry_id, r.latest_version) for r in s.scalars(
                select(KeyringEntryRow).where(KeyringEntryRow.next_rotation_at <= now))]

    @_guarded
    def infos(self, mount: str | None, entry_id: str | None = None, prefix: str = "") -> list[EntryInfo]:
        with self._store.session() as s:
            q = select(KeyringEntryRow).order_by(KeyringEntryRow.mount, KeyringEntryRow.entry_id)
            vq = select(KeyringVersionRow.mount, KeyringVersionRow.entry_id, KeyringVersionRow.version,
                        KeyringVersionRow.origin, KeyringVersionRow.created_at, KeyringVersionRow.deleted_at,
                        KeyringVersionRow.destroyed).order_by(KeyringVersionRow.version)
            if mount is not None:
                q, vq = q.where(KeyringEntryRow.mount == mount), vq.where(KeyringVersionRow.mount == mount)
            if entry_id is not None:
                q = q.where(KeyringEntryRow.entry_id == entry_id)
                vq = vq.where(KeyringVersionRow.entry_id == entry_id)
            versions: dict[tuple[str, str], list[tuple[int, str, datetime]]] = {}
            deleted: dict[tuple[str, str], dict[int, datetime]] = {}
            destroyed: dict[tuple[str, str], set[int]] = {}
            for m, e, v, o, c, d, x in s.execute(vq):
                versions.setdefault((m, e), []).append((v, o, _utc(c)))
                if d is not None:
                    deleted.setdefault((m, e), {})[v] = _utc(d)
                if x:
                    destroyed.setdefault((m, e), set()).add(v)
            return [EntryInfo(r.mount, r.entry_id, r.latest_version, _utc(r.created_at), _utc(r.updated_at),
                              json.loads(r.custom_metadata), r.rotation_period_seconds, _utc(r.next_rotation_at),
                              versions.get((r.mount, r.entry_id), []), deleted.get((r.mount, r.entry_id), {}),
                              frozenset(destroyed.get((r.mount, r.entry_id), ())))
                    for r in s.scalars(q) if r.entry_id.startswith(prefix)]

    @_guarded
    @_writes
    def set_custom_metadata(self, mount: str, entry_id: str, custom_metadata: Mapping[str, str],
                            now: datetime) -> bool:
        with self._store.session() as s:
            row = s.get(KeyringEntryRow, (mount, entry_id))
            if row is None:
                return False
            row.custom_metadata = json.dumps(dict(custom_metadata))
            row.updated_at = now
            return True

    # ------------------------------------------------------------------------------------------ mounts

    @_guarded
    def mounts(self) -> dict[str, int]:
        """Registered mounts and their KV version."""
        with self._store.session() as s:
            return {r.mount: r.kv_version for r in s.scalars(select(KeyringMountRow))}

    @_guarded
    def mounts_with_entries(self) -> set[str]:
        with self._store.session() as s:
            return set(s.scalars(select(KeyringEntryRow.mount).distinct()))

    @_guarded
    def put_mount(self, mount: str, kv_version: int, now: datetime) -> None:
        with self._store.session() as s:
            row = s.get(KeyringMountRow, mount)
            if row is None:
                s.add(KeyringMountRow(mount=mount, kv_version=kv_version, created_at=now))
            else:
                row.kv_version = kv_version

    # ------------------------------------------------------------------------------------------ AppRoles

    @_guarded
    def put_approle(self, role_name: str, new_role_id: str, secret_id_hash: str, policies: list[str],
                    token_ttl_seconds: int, secret_id_expires_at: datetime, now: datetime) -> str:
        """Create the role (or give it a new secret id, replacing the old one); returns its role_id."""
        with self._store.session() as s:
            row = s.get(KeyringAppRoleRow, role_name)
            if row is None:
                row = KeyringAppRoleRow(role_name=role_name, role_id=new_role_id, created_at=now)
                s.add(row)
            row.secret_id_hash = secret_id_hash
            row.policies = json.dumps(policies)
            row.token_ttl_seconds = token_ttl_seconds
            row.secret_id_expires_at = secret_id_expires_at
            return row.role_id

    @_guarded
    def approle(self, role_id: str) -> AppRoleRow | None:
        row = self._store.first(_APPROLE, {"role_id": role_id})
        if row is None:
            return None
        return AppRoleRow(row.role_name, row.secret_id_hash, tuple(json.loads(row.policies)), row.token_ttl_seconds,
                          _utc(row.secret_id_expires_at))


@contextmanager
def guarded() -> Iterator[None]:
    """For the few store calls made outside this module (token minting): the same mapping."""
    try:
        yield
    except SQLAlchemyError:
        raise errors.DependencyTimeout("keyring store unavailable") from None
