"""Soft-delete: deleted keys list/get, name conflict, recover, purge."""

from __future__ import annotations

from azure.keyvault.keys import JsonWebKey, KeyClient, KeyType

from .helpers import expect_error


def test_delete_then_recover(client: KeyClient, name: str) -> None:
    key = client.create_rsa_key(name)
    deleted = client.begin_delete_key(name).result()
    assert deleted.name == name
    assert deleted.recovery_id.endswith(f"/deletedkeys/{name}")
    assert deleted.deleted_date is not None and deleted.scheduled_purge_date > deleted.deleted_date
    expect_error(404, "KeyNotFound", client.get_key, name)
    assert all(p.name != name for p in client.list_properties_of_keys())
    assert client.get_deleted_key(name).id == key.id
    assert name in {d.name for d in client.list_deleted_keys()}
    recovered = client.begin_recover_deleted_key(name).result()
    assert recovered.id == key.id
    assert client.get_key(name).key.n == key.key.n
    expect_error(404, "KeyNotFound", client.get_deleted_key, name)


def test_deleted_name_cannot_be_reused(client: KeyClient, name: str) -> None:
    client.create_ec_key(name)
    client.begin_delete_key(name).result()
    err = expect_error(409, "Conflict", client.create_ec_key, name)
    assert "deleted" in err.message
    expect_error(409, "Conflict", client.import_key, name, JsonWebKey(kty=KeyType.oct_hsm, k=bytes(32)))


def test_purge_frees_the_name(client: KeyClient, name: str) -> None:
    first = client.create_ec_key(name)
    client.begin_delete_key(name).result()
    client.purge_deleted_key(name)
    expect_error(404, "KeyNotFound", client.get_deleted_key, name)
    second = client.create_ec_key(name)
    assert second.properties.version != first.properties.version
    assert [v.version for v in client.list_properties_of_key_versions(name)] == [second.properties.version]


def test_purge_and_recover_need_a_deleted_key(client: KeyClient, name: str) -> None:
    client.create_ec_key(name)
    expect_error(404, "KeyNotFound", client.purge_deleted_key, name)
    expect_error(404, "KeyNotFound", lambda: client.begin_recover_deleted_key(name).result())


def test_delete_missing_key(client: KeyClient, name: str) -> None:
    expect_error(404, "KeyNotFound", lambda: client.begin_delete_key(name).result())


def test_deleted_keys_list_pages(client: KeyClient, name: str) -> None:
    for i in range(3):
        client.create_ec_key(f"{name}-{i}")
        client.begin_delete_key(f"{name}-{i}").result()
    pages = [list(p) for p in client.list_deleted_keys(max_page_size=1).by_page()]
    assert all(len(p) == 1 for p in pages)
    assert {f"{name}-{i}" for i in range(3)} <= {d.name for page in pages for d in page}
