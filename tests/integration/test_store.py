"""The store suite, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from broker.model import Key, KeySpec, KeyState, KeyUsage, KeyVersion, Origin
from broker.store import MIGRATIONS, Conflict, Store
from broker.store.tables import AuthTokenRow

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
TABLES = {"keys", "key_versions", "aliases", "key_tags", "import_tokens", "auth_tokens", "alembic_version"}


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    yield s
    s.dispose()


def make_key(key_id: str, *, state: KeyState = KeyState.ENABLED, tags: dict[str, str] | None = None,
             spec: KeySpec = KeySpec.SYMMETRIC_DEFAULT) -> Key:
    return Key(key_id=key_id, provider="hsm", spec=spec, usage=KeyUsage.ENCRYPT_DECRYPT, state=state,
               origin=Origin.BROKER, description=f"key {key_id}", created_at=T0, tags=dict(tags or {}))


def version(n: int, marker: str = "") -> KeyVersion:
    return KeyVersion(n, {"key_id": "label", "material": f"{n:02x}{marker}", "extra": {"kind": "aes"}}, T0)


# ------------------------------------------------------------------------------------------------ schema


def test_migrate_twice_is_idempotent(store: Store, store_url: str) -> None:
    store.add_key(make_key("k1"), version(1))
    store.migrate()
    again = Store(store_url)
    again.migrate()
    try:
        assert TABLES <= set(inspect(again.engine).get_table_names())
        with again.engine.connect() as conn:
            applied = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert sorted(applied) == sorted(_heads()) and len(applied) == len(set(applied))
        assert again.get_key("k1") is not None
        assert [v.version for v in again.list_versions("k1")] == [1]
    finally:
        again.dispose()


def _heads() -> list[str]:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert "0001" in {r.revision for r in ScriptDirectory.from_config(config).walk_revisions()}
    return heads


def test_dispose_returns_every_connection(store: Store, store_url: str) -> None:
    store.add_key(make_key("k1"), version(1))
    assert store.get_key("k1") is not None and store.get_version("k1", 1) is not None  # the hot read path
    store.dispose()
    if store_url.startswith("sqlite"):
        # the last connection to close checkpoints the WAL and removes it
        assert not Path(store_url.removeprefix("sqlite:///") + "-wal").exists()
    else:
        engine = create_engine(store_url)
        with engine.connect() as conn:
            others = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND pid <> pg_backend_pid()")).scalar()
        engine.dispose()
        assert others == 0
    assert store.get_key("k1") is not None  # and the store still works after dispose


def test_the_backend_is_the_one_asked_for(store: Store, store_url: str) -> None:
    assert store.engine.dialect.name == ("sqlite" if store_url.startswith("sqlite") else "postgresql")


# ------------------------------------------------------------------------------------------------ keys


def test_add_and_get_key_round_trip(store: Store) -> None:
    key = make_key("k1", tags={"team": "a", "env": "prod"})
    store.add_key(key, version(1))
    got = store.get_key("k1")
    assert got == key
    assert got.created_at == T0 and got.created_at.tzinfo is not None
    assert store.get_key("nope") is None
    assert store.get_version("k1", 1) == version(1)
    assert store.get_version("k1", 2) is None


def test_add_key_without_material_pending_import(store: Store) -> None:
    store.add_key(make_key("ext", state=KeyState.PENDING_IMPORT), None)
    assert store.get_key("ext").state is KeyState.PENDING_IMPORT
    assert store.list_versions("ext") == []


def test_duplicate_key_id_is_refused(store: Store) -> None:
    store.add_key(make_key("k1"), version(1))
    with pytest.raises(IntegrityError):
        store.add_key(make_key("k1"), version(1))
    assert store.get_key("k1").description == "key k1"


def test_list_keys_paginates_in_key_id_order(store: Store) -> None:
    ids = [f"key-{i:02d}" for i in (5, 1, 9, 3, 7, 2, 8)]
    for key_id in ids:
        store.add_key(make_key(key_id), version(1))
    seen, after, pages = [], None, 0
    while True:
        page = store.list_keys(3, after)
        pages += 1
        if not page:
            break
        assert len(page) <= 3
        seen += [k.key_id for k in page]
        after = page[-1].key_id
    assert seen == sorted(ids) and pages == 4
    assert [k.key_id for k in store.list_keys(100, None)] == sorted(ids)
    assert [k.key_id for k in store.list_keys(2, "key-05")] == ["key-07", "key-08"]
    assert store.list_keys(5, "key-09") == []


def test_update_key_fields_and_state(store: Store) -> None:
    store.add_key(make_key("k1"), version(1))
    when = T0 + timedelta(days=7)
    store.update_key("k1", state=KeyState.PENDING_DELETION, deletion_date=when, description="bye")
    got = store.get_key("k1")
    assert (got.state, got.deletion_date, got.description) == (KeyState.PENDING_DELETION, when, "bye")
    store.update_key("k1", state=KeyState.DISABLED, deletion_date=None)
    got = store.get_key("k1")
    assert got.state is KeyState.DISABLED and got.deletion_date is None


# ------------------------------------------------------------------------------------------------ versions


def test_versions_add_list_and_primary(store: Store) -> None:
    store.add_key(make_key("k1"), version(1))
    assert store.add_version("k1", version(2), expected_primary=1) is True
    assert store.get_key("k1").primary_version == 2
    assert store.add_version("k1", version(3), make_primary=False) is True
    assert store.get_key("k1").primary_version == 2
    assert [v.version for v in store.list_versions("k1")] == [1, 2, 3]
    assert store.get_version("k1", 2).provider_ref == version(2).provider_ref


def test_versions_of_many_keys_in_one_read_per_500(store: Store) -> None:
    """A sync plan tells a key's own cloud keys from strays with every version of its keys: one read per 500."""
    ids = [f"k{i:04d}" for i in range(0, 1200)]
    for key_id in ids:
        store.add_key(make_key(key_id), version(1))
    store.add_version("k0007", version(2))
    found = store.versions_of([*ids, "not-a-key", "'; drop table keys; --"])
    assert sorted(found) == ids
    assert found["k0007"][0] == "hsm" and [v.version for v in found["k0007"][1]] == [1, 2]
    assert found["k1199"][1][0].provider_ref == version(1).provider_ref
    assert store.versions_of([]) == {}


def test_second_writer_with_a_stale_primary_gets_false(store: Store, store_url: str) -> None:
    """Two broker processes (two engines) rotate the same key; the one that read primary=1 late loses."""
    store.add_key(make_key("k1"), version(1))
    other = Store(store_url)
    try:
        seen_by_a = store.get_key("k1").primary_version
        seen_by_b = other.get_key("k1").primary_version
        assert other.add_version("k1", version(seen_by_b + 1, "b"), expected_primary=seen_by_b) is True
        assert store.add_version("k1", version(seen_by_a + 1, "a"), expected_primary=seen_by_a) is False
        assert store.get_version("k1", 2).provider_ref == version(2, "b").provider_ref
        assert [v.version for v in store.list_versions("k1")] == [1, 2]
        assert store.get_key("k1").primary_version == 2
    finally:
        other.dispose()


def test_existing_version_number_is_a_conflict(store: Store) -> None:
    store.add_key(make_key("k1"), version(1))
    with pytest.raises(Conflict):
        store.add_version("k1", version(1, "x"))
    assert store.get_version("k1", 1) == version(1)
    assert store.get_key("k1").primary_version == 1


def test_concurrent_rotations_exactly_one_wins(store: Store, store_url: str) -> None:
    """Threads each with their own engine race to add version 2 with expected_primary=1."""
    store.add_key(make_key("k1"), version(1))
    stores = [Store(store_url) for _ in range(4)]
    results: list[object] = []
    barrier = threading.Barrier(len(stores))

    def rotate(s: Store, i: int) -> None:
        barrier.wait()
        try:
            results.append(s.add_version("k1", version(2, f"{i}"), expected_primary=1))
        except Conflict:
            results.append("conflict")
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=rotate, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.dispose()
    assert results.count(True) == 1, results
    assert all(r in (False, "conflict") for r in results if r is not True), results
    assert [v.version for v in store.list_versions("k1")] == [1, 2]
    assert store.get_key("k1").primary_version == 2


def test_set_version_ref(store: Store) -> None:
    store.add_key(make_key("k1"), version(1))
    store.set_version_ref("k1", 1, {"key_id": "label"}, "Destroyed")
    got = store.get_version("k1", 1)
    assert got.provider_ref == {"key_id": "label"} and got.state == "Destroyed"


# ------------------------------------------------------------------------------------------------ aliases


def test_aliases_create_conflict_update_delete_resolve(store: Store) -> None:
    store.add_key(make_key("k1"), version(1))
    store.add_key(make_key("k2"), version(1))
    store.create_alias("alias/b", "k1", T0)
    store.create_alias("alias/a", "k1", T0)
    assert store.resolve_alias("alias/a") == "k1"
    assert store.resolve_alias("alias/none") is None
    with pytest.raises(Conflict):
        store.create_alias("alias/a", "k2", T0)
    assert store.resolve_alias("alias/a") == "k1"
    assert store.list_aliases() == [("alias/a", "k1", T0), ("alias/b", "k1", T0)]
    assert store.get_key("k1").aliases == ["alias/a", "alias/b"]

    assert store.update_alias("alias/a", "k2", T0 + timedelta(hours=1)) is True
    assert store.update_alias("alias/none", "k2", T0) is False
    assert store.resolve_alias("alias/a") == "k2"
    assert store.list_aliases("k2") == [("alias/a", "k2", T0)]
    assert store.list_aliases("k1") == [("alias/b", "k1", T0)]

    assert store.delete_alias("alias/a") is True
    assert store.delete_alias("alias/a") is False
    assert store.resolve_alias("alias/a") is None
    assert store.get_key("k2").aliases == []


def test_alias_to_a_missing_key_is_refused(store: Store) -> None:
    with pytest.raises(Conflict):
        store.create_alias("alias/dangling", "no-such-key", T0)
    assert store.resolve_alias("alias/dangling") is None


# ------------------------------------------------------------------------------------------------ tags


def test_tags_set_overwrite_remove(store: Store) -> None:
    store.add_key(make_key("k1", tags={"a": "1"}), version(1))
    store.set_tags("k1", {"a": "2", "b": "3"})
    assert store.get_key("k1").tags == {"a": "2", "b": "3"}
    store.remove_tags("k1", ["a", "missing"])
    assert store.get_key("k1").tags == {"b": "3"}
    store.add_key(make_key("k2", tags={"b": "other"}), version(1))
    store.remove_tags("k1", ["b"])
    assert store.get_key("k1").tags == {} and store.get_key("k2").tags == {"b": "other"}


# ------------------------------------------------------------------------------------------------ tokens


def test_import_tokens(store: Store) -> None:
    store.add_key(make_key("k1", state=KeyState.PENDING_IMPORT), None)
    expires = T0 + timedelta(hours=24)
    store.add_import_token("tok-1", "k1", {"key_id": "w", "material": "aa"}, "RSAES_OAEP_SHA_1", expires)
    store.add_import_token("tok-2", "k1", {"key_id": "w2", "material": "bb"}, "RSA_AES_KEY_WRAP_SHA_1", expires)
    assert store.get_import_token("tok-1") == ("k1", {"key_id": "w", "material": "aa"}, "RSAES_OAEP_SHA_1", expires)
    assert store.get_import_token("nope") is None
    handles = store.delete_import_tokens("k1")
    assert sorted(h["key_id"] for h in handles) == ["w", "w2"]
    assert store.get_import_token("tok-1") is None and store.get_import_token("tok-2") is None
    assert store.delete_import_tokens("k1") == []


def _auth_row(token_hash: str, accessor: str, **kw) -> AuthTokenRow:
    return AuthTokenRow(token_hash=token_hash, accessor=accessor, display_name=kw.get("name", "app"),
                        policies='["p1"]', created_at=T0, expires_at=kw.get("expires"), parent_accessor=None,
                        revoked=False)


def test_auth_tokens(store: Store) -> None:
    store.add_auth_token(_auth_row("h" * 64, "acc-1", expires=T0 + timedelta(hours=1)))
    row = store.get_auth_token("h" * 64)
    assert (row.accessor, row.display_name, row.policies, row.revoked) == ("acc-1", "app", '["p1"]', False)
    assert row.expires_at.replace(tzinfo=row.expires_at.tzinfo or UTC) == T0 + timedelta(hours=1)
    assert store.get_auth_token("x" * 64) is None
    with pytest.raises(IntegrityError):  # accessors are unique
        store.add_auth_token(_auth_row("g" * 64, "acc-1"))
    assert store.get_auth_token("g" * 64) is None


# ------------------------------------------------------------------------------------------------ due jobs


def test_keys_due_for_deletion(store: Store) -> None:
    now = T0 + timedelta(days=30)
    store.add_key(make_key("due"), version(1))
    store.add_key(make_key("later"), version(1))
    store.add_key(make_key("cancelled"), version(1))
    store.add_key(make_key("enabled"), version(1))
    store.update_key("due", state=KeyState.PENDING_DELETION, deletion_date=now - timedelta(seconds=1))
    store.update_key("later", state=KeyState.PENDING_DELETION, deletion_date=now + timedelta(seconds=1))
    store.update_key("cancelled", state=KeyState.DISABLED, deletion_date=now - timedelta(days=1))
    assert store.keys_due_for_deletion(now) == ["due"]
    assert sorted(store.keys_due_for_deletion(now + timedelta(days=1))) == ["due", "later"]
    assert store.keys_due_for_deletion(T0) == []


def test_keys_due_for_rotation(store: Store) -> None:
    now = T0 + timedelta(days=365)
    store.add_key(make_key("due"), version(1))
    store.add_key(make_key("later"), version(1))
    store.add_key(make_key("disabled"), version(1))
    store.add_key(make_key("never"), version(1))
    store.update_key("due", rotation_period_days=90, next_rotation_at=now - timedelta(minutes=1))
    store.update_key("later", rotation_period_days=90, next_rotation_at=now + timedelta(minutes=1))
    store.update_key("disabled", state=KeyState.DISABLED, rotation_period_days=90,
                     next_rotation_at=now - timedelta(days=1))
    assert store.keys_due_for_rotation(now) == ["due"]
    assert sorted(store.keys_due_for_rotation(now + timedelta(hours=1))) == ["due", "later"]
    got = store.get_key("due")
    assert got.rotation_period_days == 90 and got.next_rotation_at == now - timedelta(minutes=1)
