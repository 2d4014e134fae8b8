"""The keyring bridge's read hot path: one store round trip per key read, on SQLite and PostgreSQL, answering exactly
what the two-read path answered (latest, version N, no such version, no such entry, soft-deleted, destroyed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from broker import errors
from broker.app import SYSTEM
from broker.auth.tokens import TokenAuth
from broker.service import KeyService, RequestContext
from broker.store import Store
from keyring_bridge.keyring import DeletedVersion, KeyringService, secret_material
from keyring_bridge.repository import KeyringRepository

MOUNT = "kv/read-path"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keyring.db'}"
    return request.getfixturevalue("postgres_url")


def _append(repo: KeyringRepository, entry_id: str, current: int, sealed: str) -> None:
    repo.append(MOUNT, entry_id, current=current, sealed=sealed, origin="written", now=datetime.now(UTC),
                custom_metadata={"owner": "db1"} if current == 0 else None)


def test_one_statement_reads_entry_and_version_on_both_stores(store_url: str) -> None:
    store = Store(store_url)
    store.migrate()
    try:
        repo = KeyringRepository(store)
        entry_id = f"e-{store_url[:6]}"
        for current, sealed in enumerate(("s1", "s2", "s3")):
            _append(repo, entry_id, current, sealed)
        repo.set_deleted(MOUNT, entry_id, [2], datetime.now(UTC))

        latest = repo.read(MOUNT, entry_id, None)
        assert latest is not None and (latest.latest_version, latest.wanted) == (3, 3)
        assert latest.version is not None and latest.version.sealed == "s3"
        assert latest.custom_metadata == {"owner": "db1"}

        first = repo.read(MOUNT, entry_id, 1)
        assert first is not None and first.wanted == 1 and first.version is not None
        assert first.version.sealed == "s1" and first.version.deleted_at is None and not first.version.destroyed

        deleted = repo.read(MOUNT, entry_id, 2)
        assert deleted is not None and deleted.version is not None and deleted.version.deleted_at is not None

        beyond = repo.read(MOUNT, entry_id, 4)
        assert beyond is not None and beyond.wanted == 4 and beyond.version is None
        assert repo.read(MOUNT, "no-such-entry", None) is None
        assert repo.read(MOUNT, "no-such-entry", 1) is None
        assert repo.read("kv", f"read-path/{entry_id}", None) is None  # a nesting name is another entry

        repo.destroy(MOUNT, entry_id, [1], datetime.now(UTC))
        gone = repo.read(MOUNT, entry_id, 1)
        assert gone is not None and gone.version is not None and gone.version.destroyed
        assert gone.version.sealed == ""
    finally:
        store.dispose()


@pytest.fixture
def keyring(key_service: KeyService) -> Iterator[KeyringService]:
    yield KeyringService(key_service, key_service.root, TokenAuth(key_service.store))


def test_service_read_answers_as_before(keyring: KeyringService) -> None:
    ctx = RequestContext(SYSTEM)
    keyring.create(ctx, MOUNT, "1")
    keyring.rotate(ctx, MOUNT, "1")
    v1, v2 = keyring.read(ctx, MOUNT, "1", 1), keyring.read(ctx, MOUNT, "1")
    assert (v1.version, v2.version) == (1, 2)
    assert len(secret_material(v1.data) or b"") == 32 and v1.data != v2.data
    with pytest.raises(errors.NotFound, match="has no version 3"):
        keyring.read(ctx, MOUNT, "1", 3)
    with pytest.raises(errors.NotFound, match="not found"):
        keyring.read(ctx, MOUNT, "2")
    keyring.delete_versions(ctx, MOUNT, "1", [1])
    with pytest.raises(DeletedVersion) as gone:
        keyring.read(ctx, MOUNT, "1", 1)
    assert gone.value.version == 1 and gone.value.deleted_at is not None and not gone.value.destroyed
    assert keyring.read(ctx, MOUNT, "1").version == 2
