"""The broker store: SQLite by default, PostgreSQL by URL. All state lives here, not in processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import bindparam, create_engine, delete, event, insert, literal, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from broker.model import Key, KeySpec, KeyState, KeyUsage, KeyVersion, Origin
from broker.store.generation import HostGeneration, open_host_generation, sqlite_file
from broker.store.kept import KeptRows
from broker.store.tables import (
    AliasRow,
    AuthTokenRow,
    ImportTokenRow,
    KeyPolicyRow,
    KeyRow,
    KeyVersionRow,
    TagRow,
)

MIGRATIONS = Path(__file__).parent / "migrations"
# The WAL of a busy SQLite store: every audited request appends a few pages (the audit row and its indexes), and
# SQLite checkpoints from inside the commit that crosses WAL_PAGES pages (the audit writer's, under the audit lock):
# it copies the pages back and fsyncs the database there. SQLite's default, 1000 pages (~4 MiB), copies each page
# that consecutive batches rewrite once instead of four times: for 4,000 audit batches, 206 fdatasyncs instead of
# 764 and 12 % fewer syscalls than at 256 pages (`strace -c` of `python bench/wal_bench.py`; its CPU figures move
# with the machine's load more than between the two). The file is cut back to WAL_LIMIT after each checkpoint;
# `Store.bound_wal` (the job loop) truncates it when readers kept a checkpoint from resetting it.
WAL_PAGES = 1000
WAL_LIMIT = 1 << 20
KEY_CACHE_ENTRIES = 10_000  # keys kept by `get_key(max_age=...)`; the map starts over when full


_KEYS, _VERSIONS, _TOKENS = KeyRow.__table__, KeyVersionRow.__table__, AuthTokenRow.__table__
_TAGS, _POLICIES = TagRow.__table__, KeyPolicyRow.__table__
# Prebuilt inserts (executed with parameter dicts): building a statement with .values() cost more than running it
_INSERT_KEY, _INSERT_TAG = insert(_KEYS), insert(_TAGS)
_INSERT_POLICY, _INSERT_VERSION = insert(_POLICIES), insert(_VERSIONS)
_KEY_BY_ID = select(_KEYS).where(_KEYS.c.key_id == bindparam("key_id"))
_VERSION_BY_ID = select(_VERSIONS).where(_VERSIONS.c.key_id == bindparam("key_id"),
                                         _VERSIONS.c.version == bindparam("version"))
_PING = select(literal(1))
_TOKEN_BY_HASH = select(_TOKENS).where(_TOKENS.c.token_hash == bindparam("token_hash"))


class _Reader:
    """The hot read path: one autocommit connection per thread, prebuilt statements.

    Checking a connection out of the pool and building a statement cost ~10x the query itself; autocommit makes
    every read see the latest committed state (a held connection inside a transaction would read a stale snapshot).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._local = threading.local()
        self._open: list = []  # every thread's connection, so close() can return them all
        self._lock = threading.Lock()

    def first(self, statement, params: dict):
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            if conn is None or conn.closed:
                conn = self._local.conn = self._engine.connect()
                with self._lock:
                    self._open = [c for c in self._open if not c.closed] + [conn]
            try:
                return conn.execute(statement, params).first()
            except DBAPIError:
                self._local.conn = None
                conn.invalidate()
                if attempt:
                    raise
        return None

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing at shutdown: nothing useful to do with a failure
                pass


def unavailable(exc: BaseException) -> bool:
    """Is `exc` the store being out of reach (server down or restarting, connection lost, pool exhausted, disk
    full or locked for SQLite) rather than a bug? Such failures answer 503 and heal by themselves once the store is
    back: the pool re-connects (pre-ping) and the hot-path readers drop a broken connection."""
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


class Conflict(Exception):
    """A uniqueness rule of the store was hit (e.g. an alias name that exists)."""


def _utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything the broker handles is aware UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _to_key(row: KeyRow, tags: dict[str, str], aliases: list[str]) -> Key:
    return Key(
        key_id=row.key_id, provider=row.provider, spec=KeySpec(row.spec), usage=KeyUsage(row.usage),
        state=KeyState(row.state), origin=Origin(row.origin), description=row.description,
        created_at=_utc(row.created_at), primary_version=row.primary_version, deletion_date=_utc(row.deletion_date),
        rotation_period_days=row.rotation_period_days, next_rotation_at=_utc(row.next_rotation_at), tags=tags,
        aliases=aliases,
    )


def _to_version(row: KeyVersionRow) -> KeyVersion:
    return KeyVersion(version=row.version, provider_ref=json.loads(row.provider_ref),
                      created_at=_utc(row.created_at), state=row.state, rotation_type=row.rotation_type)


class Store:
    def __init__(self, url: str, *, host_state: Path | None = None) -> None:
        """`host_state`: the folder of this host's shared state (the data folder) for the key-write counter of
        `get_key(max_age=...)`; a SQLite store keeps it beside its database file without being told."""
        self.url = url
        kwargs: dict = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs.update(pool_size=20, max_overflow=20)
        else:
            kwargs.update(pool_pre_ping=True, pool_size=20, max_overflow=20)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = _Reader(self.engine)
        self._host_state = Path(host_state) if host_state is not None else None
        self._counters: dict[str, HostGeneration | None] = {}
        self._counters_lock = threading.Lock()
        self._kept_keys: KeptRows[str, Key | None] = KeptRows(self.host_counter("key-writes"),
                                                             entries=KEY_CACHE_ENTRIES)

    def host_counter(self, name: str) -> HostGeneration | None:
        """This host's counter of one kind of write (`name`, e.g. "key-writes"), shared by every process of the
        host that uses this store: beside a SQLite database file, else in the `host_state` folder. None when there
        is no place for it (an in-memory database, no folder given, a read-only folder): a per-process copy of
        what that kind of write changes must then not be kept. Opened once per Store; closed by `dispose`."""
        with self._counters_lock:
            if name not in self._counters:
                database = sqlite_file(self.url)
                self._counters[name] = open_host_generation(
                    database.with_name(f"{database.name}.{name}") if database is not None
                    else self._host_state / f"{name}.generation" if self._host_state is not None else None)
            return self._counters[name]

    def first(self, statement, params: dict):
        """The first row of a prebuilt read statement, on the hot read path (autocommit, per-thread connection)."""
        return self._reader.first(statement, params)

    def migrate(self) -> None:
        """Bring the schema to every Alembic head (idempotent). Features add branches off 0001, so work in parallel never has to chain migrations."""
        # imported here, not with the module: Alembic costs ~0.5 s of CPU in every process, most never migrate
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "heads")

    def bound_wal(self, limit: int = WAL_LIMIT) -> int | None:
        """SQLite only: when the WAL file is over `limit` bytes, checkpoint it and truncate it to zero (waiting at
        most a second for readers). Returns the WAL's size afterwards (None for other stores)."""
        if self.engine.dialect.name != "sqlite" or not self.engine.url.database:
            return None
        wal = Path(f"{self.engine.url.database}-wal")
        try:
            if wal.stat().st_size <= limit:
                return wal.stat().st_size
        except FileNotFoundError:
            return 0
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout=1000")
            try:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.exec_driver_sql("PRAGMA busy_timeout=30000")
        try:
            return wal.stat().st_size
        except FileNotFoundError:
            return 0

    def ping(self) -> None:
        """One round trip to the store (readiness); raises what the driver raises."""
        self.first(_PING, {})

    def dispose(self) -> None:
        self._reader.close()
        self.engine.dispose()
        with self._counters_lock:
            counters, self._counters = list(self._counters.values()), {}
        for counter in counters:
            if counter is not None:
                counter.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -------------------------------------------------------------------------------------------- keys

    def add_key(self, key: Key, first_version: KeyVersion | None, *, key_policy: str | None = None,
                policy_time: datetime | None = None) -> None:
        """A new key (and its first version, and a key policy text given at creation), in one transaction (Core
        statements: a sync registers thousands of keys, and the ORM's unit of work cost more than the inserts)."""
        with self.engine.begin() as conn:
            conn.execute(_INSERT_KEY, {
                "key_id": key.key_id, "provider": key.provider, "spec": key.spec.value, "usage": key.usage.value,
                "state": key.state.value, "origin": key.origin.value, "description": key.description,
                "created_at": key.created_at, "primary_version": key.primary_version,
            })
            if key.tags:
                conn.execute(_INSERT_TAG, [{"key_id": key.key_id, "tag_key": k, "tag_value": v}
                                           for k, v in key.tags.items()])
            if key_policy is not None:
                conn.execute(_INSERT_POLICY, {"key_id": key.key_id, "document": key_policy,
                                              "updated_at": policy_time or key.created_at})
            if first_version is not None:
                conn.execute(_INSERT_VERSION, {"key_id": key.key_id, "version": first_version.version,
                                               "provider_ref": json.dumps(first_version.provider_ref),
                                               "created_at": first_version.created_at,
                                               "state": first_version.state})

    def get_key(self, key_id: str, *, details: bool = True, max_age: float = 0.0) -> Key | None:
        """One key; `details=False` skips tags and aliases (the hot path of every crypto call). With `max_age` > 0
        (and no details) the key may be one this process read at most `max_age` seconds ago, and only while no
        process of this host wrote a key since (generation.py): a change made on this host is seen at once, one
        made on another host sharing the database within `max_age`. Without a host counter nothing is kept."""
        if not details:
            return self._kept_keys.read(key_id, lambda: self._key_row(key_id), max_age, _found)
        row = self._reader.first(_KEY_BY_ID, {"key_id": key_id})
        if row is None:
            return None
        tags_t, aliases_t = TagRow.__table__, AliasRow.__table__
        with self.engine.connect() as conn:
            tags = dict(conn.execute(select(tags_t.c.tag_key, tags_t.c.tag_value).where(tags_t.c.key_id == key_id)).all())
            aliases = list(conn.scalars(select(aliases_t.c.name).where(aliases_t.c.key_id == key_id)
                                        .order_by(aliases_t.c.name)))
            return _to_key(row, tags, aliases)

    def _key_row(self, key_id: str) -> Key | None:
        row = self._reader.first(_KEY_BY_ID, {"key_id": key_id})
        return None if row is None else _to_key(row, {}, [])

    def _forget_key(self, key_id: str) -> None:
        """After a key write has committed: no process of this host uses a copy it kept, nor one of a read that
        began before the write (the host counter moves)."""
        self._kept_keys.wrote()

    def list_keys(self, limit: int, after: str | None) -> list[Key]:
        with self.session() as s:
            q = select(KeyRow).order_by(KeyRow.key_id).limit(limit)
            if after:
                q = q.where(KeyRow.key_id > after)
            return [_to_key(r, {}, []) for r in s.scalars(q)]

    def update_key(self, key_id: str, **fields) -> None:
        with self.session() as s:
            row = s.get(KeyRow, key_id)
            for name, value in fields.items():
                if isinstance(value, KeyState):
                    value = value.value
                setattr(row, name, value)
        self._forget_key(key_id)

    def keys_tagged(self, tag_key: str, value_prefix: str) -> list[Key]:
        """Every key with tag `tag_key` whose value starts with `value_prefix`, with tags and aliases, in 3 reads
        per 500 keys (the sync's catalog: one manifest's keys). Core rows, not ORM objects: at 10,000 keys the
        objects' bookkeeping was most of a plan's time."""
        aliases_t = AliasRow.__table__
        with self.engine.connect() as conn:
            ids = list(conn.scalars(select(_TAGS.c.key_id).where(
                _TAGS.c.tag_key == tag_key, _TAGS.c.tag_value.startswith(value_prefix, autoescape=True))))
            rows, tags, aliases = {}, {}, {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for row in conn.execute(select(_KEYS).where(_KEYS.c.key_id.in_(chunk))):
                    rows[row.key_id] = row
                for t in conn.execute(select(_TAGS).where(_TAGS.c.key_id.in_(chunk))):
                    tags.setdefault(t.key_id, {})[t.tag_key] = t.tag_value
                for a in conn.execute(select(aliases_t.c.key_id, aliases_t.c.name)
                                      .where(aliases_t.c.key_id.in_(chunk)).order_by(aliases_t.c.name)):
                    aliases.setdefault(a.key_id, []).append(a.name)
            return [_to_key(rows[k], tags.get(k, {}), aliases.get(k, [])) for k in ids if k in rows]

    def known_key_ids(self, ids: list[str]) -> set[str]:
        """Which of `ids` are keys of the catalog (in any state)."""
        out: set[str] = set()
        with self.session() as s:
            for i in range(0, len(ids), 500):
                out |= set(s.scalars(select(KeyRow.key_id).where(KeyRow.key_id.in_(ids[i:i + 500]))))
        return out

    def keys_due_for_deletion(self, now: datetime) -> list[str]:
        with self.session() as s:
            q = select(KeyRow.key_id).where(KeyRow.state == KeyState.PENDING_DELETION.value,
                                            KeyRow.deletion_date <= now)
            return list(s.scalars(q))

    def keys_due_for_rotation(self, now: datetime) -> list[str]:
        with self.session() as s:
            q = select(KeyRow.key_id).where(KeyRow.state == KeyState.ENABLED.value, KeyRow.next_rotation_at <= now)
            return list(s.scalars(q))

    # -------------------------------------------------------------------------------------------- versions

    def add_version(self, key_id: str, version: KeyVersion, *, make_primary: bool = True,
                    expected_primary: int | None = None) -> bool:
        """Add a version; with expected_primary, only if no other process rotated first (False then)."""
        try:
            return self._add_version(key_id, version, make_primary, expected_primary)
        finally:
            self._forget_key(key_id)

    def _add_version(self, key_id: str, version: KeyVersion, make_primary: bool, expected_primary: int | None) -> bool:
        with self.session() as s:
            row = s.get(KeyRow, key_id, with_for_update=True)
            if expected_primary is not None and row.primary_version != expected_primary:
                return False
            s.add(KeyVersionRow(key_id=key_id, version=version.version, provider_ref=json.dumps(version.provider_ref),
                                created_at=version.created_at, state=version.state,
                                rotation_type=version.rotation_type))
            if make_primary:
                row.primary_version = version.version
            try:
                s.flush()
            except IntegrityError:
                raise Conflict(f"version {version.version} exists") from None
            return True

    def get_version(self, key_id: str, version: int) -> KeyVersion | None:
        row = self._reader.first(_VERSION_BY_ID, {"key_id": key_id, "version": version})
        return _to_version(row) if row else None

    def list_versions(self, key_id: str) -> list[KeyVersion]:
        with self.session() as s:
            q = select(KeyVersionRow).where(KeyVersionRow.key_id == key_id).order_by(KeyVersionRow.version)
            return [_to_version(r) for r in s.scalars(q)]

    def versions_of(self, key_ids: list[str]) -> dict[str, tuple[str, list[KeyVersion]]]:
        """key id -> (its provider, every version), one read per 500 keys (a sync plan asks for a whole
        manifest's); ids the catalog does not hold are left out."""
        out: dict[str, tuple[str, list[KeyVersion]]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(key_ids), 500):
                q = (select(_VERSIONS, _KEYS.c.provider).join(_KEYS, _KEYS.c.key_id == _VERSIONS.c.key_id)
                     .where(_VERSIONS.c.key_id.in_(key_ids[i:i + 500]))
                     .order_by(_VERSIONS.c.key_id, _VERSIONS.c.version))
                for row in conn.execute(q):
                    out.setdefault(row.key_id, (row.provider, []))[1].append(_to_version(row))
        return out

    def set_version_ref(self, key_id: str, version: int, provider_ref: dict, state: str) -> None:
        with self.session() as s:
            row = s.get(KeyVersionRow, (key_id, version))
            row.provider_ref = json.dumps(provider_ref)
            row.state = state

    # -------------------------------------------------------------------------------------------- aliases, tags

    def create_alias(self, name: str, key_id: str, now: datetime) -> None:
        try:
            with self.session() as s:
                s.add(AliasRow(name=name, key_id=key_id, created_at=now, updated_at=now))
        except IntegrityError:
            raise Conflict(f"alias {name} exists") from None

    def update_alias(self, name: str, key_id: str, now: datetime) -> bool:
        with self.session() as s:
            row = s.get(AliasRow, name)
            if row is None:
                return False
            row.key_id, row.updated_at = key_id, now
            return True

    def delete_alias(self, name: str) -> bool:
        with self.session() as s:
            return s.execute(delete(AliasRow).where(AliasRow.name == name)).rowcount > 0

    def resolve_alias(self, name: str) -> str | None:
        with self.session() as s:
            row = s.get(AliasRow, name)
            return row.key_id if row else None

    def list_aliases(self, key_id: str | None = None) -> list[tuple[str, str, datetime]]:
        with self.session() as s:
            q = select(AliasRow).order_by(AliasRow.name)
            if key_id:
                q = q.where(AliasRow.key_id == key_id)
            return [(r.name, r.key_id, _utc(r.created_at)) for r in s.scalars(q)]

    def set_tags(self, key_id: str, tags: dict[str, str]) -> None:
        with self.session() as s:
            for k, v in tags.items():
                s.merge(TagRow(key_id=key_id, tag_key=k, tag_value=v))

    def remove_tags(self, key_id: str, tag_keys: list[str]) -> None:
        with self.session() as s:
            s.execute(delete(TagRow).where(TagRow.key_id == key_id, TagRow.tag_key.in_(tag_keys)))

    # -------------------------------------------------------------------------------------------- import tokens

    def add_import_token(self, token_id: str, key_id: str, handle: dict, algorithm: str, expires_at: datetime) -> None:
        with self.session() as s:
            s.add(ImportTokenRow(token_id=token_id, key_id=key_id, handle=json.dumps(handle),
                                 wrapping_algorithm=algorithm, expires_at=expires_at))

    def get_import_token(self, token_id: str) -> tuple[str, dict, str, datetime] | None:
        with self.session() as s:
            row = s.get(ImportTokenRow, token_id)
            if row is None:
                return None
            return row.key_id, json.loads(row.handle), row.wrapping_algorithm, _utc(row.expires_at)

    def delete_import_tokens(self, key_id: str) -> list[dict]:
        with self.session() as s:
            rows = list(s.scalars(select(ImportTokenRow).where(ImportTokenRow.key_id == key_id)))
            for row in rows:
                s.delete(row)
            return [json.loads(r.handle) for r in rows]

    # -------------------------------------------------------------------------------------------- auth tokens

    def add_auth_token(self, row: AuthTokenRow) -> None:
        with self.session() as s:
            s.add(row)

    def get_auth_token(self, token_hash: str):
        """The token's row (attribute access like AuthTokenRow), or None. Core query: called on every request."""
        return self._reader.first(_TOKEN_BY_HASH, {"token_hash": token_hash})

    # -------------------------------------------------------------------------------------------- AWS credentials
    # (the AWS-compatible front door's SigV4 credentials; secrets arrive already sealed under the root KEK)

    def add_aws_credential(self, row) -> None:
        with self.session() as s:
            s.add(row)

    def get_aws_credential(self, access_key_id: str):
        """The credential's row (AwsCredentialRow, detached), or None."""
        from broker.store.tables import AwsCredentialRow

        with self.session() as s:
            return s.get(AwsCredentialRow, access_key_id)

    def list_aws_credentials(self) -> list:
        from broker.store.tables import AwsCredentialRow

        with self.session() as s:
            return list(s.scalars(select(AwsCredentialRow).order_by(AwsCredentialRow.created_at,
                                                                    AwsCredentialRow.access_key_id)))

    def revoke_aws_credential(self, access_key_id: str, now: datetime) -> bool:
        """Mark revoked and drop the sealed secret; False if unknown or already revoked."""
        from broker.store.tables import AwsCredentialRow

        with self.session() as s:
            row = s.get(AwsCredentialRow, access_key_id, with_for_update=True)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at, row.sealed_secret = now, ""
            return True


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _found(key: Key | None) -> bool:
    """A key read is kept when the key exists (a missing one is read again: it may be created meanwhile)."""
    return key is not None
