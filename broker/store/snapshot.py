"""A consistent snapshot of the whole store while it serves, and loading one into an empty store.

SQLite: the online backup API copies the database as of one instant into a private file, which is then read.
PostgreSQL: one REPEATABLE READ, READ ONLY transaction reads every table (a single snapshot). Tables are found by
reflection, so tables other features add are included without this module knowing them. Values are tagged so
they survive JSON: datetimes as ISO strings, bytes as hex.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from broker.store import MIGRATIONS

VERSION_TABLE = "alembic_version"


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$hex": bytes(value).hex()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        if "$dt" in value:
            return datetime.fromisoformat(value["$dt"])
        if "$hex" in value:
            return bytes.fromhex(value["$hex"])
    return value


@contextmanager
def _consistent(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        with tempfile.TemporaryDirectory(prefix="kmsb-snapshot-") as folder:
            copy = Path(folder) / "snapshot.db"
            source = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
            snapshot = create_engine(f"sqlite:///{copy}")
            try:
                with snapshot.connect() as conn:
                    yield conn
            finally:
                snapshot.dispose()
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def dump(engine: Engine) -> dict[str, Any]:
    """{"revisions": [...], "tables": {name: {"columns": [...], "rows": [[...], ...]}}} as of one instant."""
    out: dict[str, Any] = {"tables": {}}
    with _consistent(engine) as conn:
        meta = MetaData()
        meta.reflect(conn)
        for table in meta.sorted_tables:
            rows = conn.execute(table.select()).all()
            if table.name == VERSION_TABLE:
                out["revisions"] = sorted(r[0] for r in rows)
                continue
            columns = [c.name for c in table.columns]
            out["tables"][table.name] = {"columns": columns, "rows": [[_encode(v) for v in r] for r in rows]}
    out.setdefault("revisions", [])
    return out


def is_empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


def load(engine: Engine, snapshot: Mapping[str, Any],
         rewrite: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, int]:
    """Create the schema at the snapshot's revisions, insert every row (optionally rewritten), then upgrade to the
    latest schema. The target must be empty. Returns rows per table."""
    if not is_empty(engine):
        raise ValueError("the target store is not empty")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        for revision in snapshot.get("revisions") or ["heads"]:
            command.upgrade(cfg, revision)
        meta = MetaData()
        meta.reflect(conn)
        for table in meta.sorted_tables:
            data = snapshot["tables"].get(table.name)
            if table.name == VERSION_TABLE or not data:
                continue
            rows = [dict(zip(data["columns"], (_decode(v) for v in r), strict=True)) for r in data["rows"]]
            if rewrite is not None:
                rows = [rewrite(table.name, row) for row in rows]
            if rows:
                conn.execute(table.insert(), rows)
            counts[table.name] = len(rows)
        if conn.dialect.name == "postgresql":  # serial columns continue after the restored ids
            for table in meta.sorted_tables:
                for column in table.primary_key.columns:
                    if _has_sequence(conn, table.name, column.name):
                        conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                                          f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 1))"))
        command.upgrade(cfg, "heads")
    return counts


def _has_sequence(conn: Connection, table: str, column: str) -> bool:
    return conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": column}).scalar() \
        is not None
