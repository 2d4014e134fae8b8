"""TokenAuth on a real SQLite store: the identity branch migration, tokens from before it, revocation fan-out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.config import Config

from broker.auth import TokenAuth, hash_token
from broker.errors import NotFound, Unauthenticated
from broker.store import MIGRATIONS, Store
from broker.store.tables import AuthTokenRow


def _store_at(tmp_path, revision: str) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return store


def test_tokens_made_before_the_identity_migration_keep_working(tmp_path):
    store = _store_at(tmp_path, "0001")
    store.add_auth_token(AuthTokenRow(token_hash=hash_token("kmsb.legacy"), accessor="legacy", display_name="old",
                                      policies='["root"]', created_at=datetime.now(UTC), expires_at=None,
                                      parent_accessor=None, revoked=False))
    principal = TokenAuth(store).authenticate("kmsb.legacy")
    assert principal.policies == ("root",) and principal.auth_method == "token"
    store.migrate()
    tokens = TokenAuth(store)
    assert tokens.authenticate("kmsb.legacy").name == "old"
    child, accessor = tokens.create("child", ["x"], ttl_seconds=60, parent_accessor="legacy", meta={"a": "b"})
    assert tokens.authenticate(child).attributes == {"a": "b"}
    assert tokens.revoke_accessor("legacy") == 2
    for t in ("kmsb.legacy", child):
        with pytest.raises(Unauthenticated):
            tokens.authenticate(t)
    store.dispose()


def test_identity_branch_is_a_head_off_0001(tmp_path):
    store = _store_at(tmp_path, "identity@head")
    with store.engine.connect() as conn:
        names = set(conn.exec_driver_sql("select name from sqlite_master where type='table'").scalars())
    assert {"identity_tokens", "auth_jwt_roles", "auth_approle_roles", "auth_approle_secret_ids"} <= names
    store.dispose()


def test_wide_tree_revocation_and_immediate_in_process_effect(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    store.migrate()
    tokens = TokenAuth(store, cache_seconds=60)  # a long cache: in-process revocation must not wait for it
    root, root_acc = tokens.create("root", ["root"])
    level, made = [root_acc], [root]
    for _ in range(3):
        nxt = []
        for parent in level:
            for _ in range(3):
                t, acc = tokens.create("t", ["x"], ttl_seconds=600, parent_accessor=parent)
                made.append(t)
                nxt.append(acc)
        level = nxt
    for t in made:
        tokens.authenticate(t)
    assert tokens.revoke_accessor(root_acc) == 1 + 3 + 9 + 27
    for t in made:
        with pytest.raises(Unauthenticated):
            tokens.authenticate(t)
    with pytest.raises(NotFound):
        tokens.valid_by_accessor(root_acc)
    assert tokens.revoke_accessor(root_acc) == 0
    store.dispose()
