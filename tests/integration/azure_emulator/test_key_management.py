"""Create, import, get, update and list keys."""

from __future__ import annotations

import time

import pytest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyCurveName, KeyOperation, KeyType

from .helpers import expect_error


@pytest.mark.parametrize("size", [2048, 3072, 4096])
def test_create_rsa_sizes(client: KeyClient, name: str, size: int) -> None:
    key = client.create_rsa_key(name, size=size)
    assert key.key_type == KeyType.rsa
    assert len(key.key.n) * 8 == size
    assert key.key.e == b"\x01\x00\x01"
    assert key.key.d is None, "private material must never leave the vault"
    assert key.properties.enabled is True
    assert key.properties.recovery_level == "Recoverable+Purgeable"


def test_create_rsa_hsm(client: KeyClient, name: str) -> None:
    assert client.create_rsa_key(name, hardware_protected=True).key_type == KeyType.rsa_hsm


@pytest.mark.parametrize("curve,coord", [("P-256", 32), ("P-384", 48), ("P-521", 66)])
def test_create_ec_curves(client: KeyClient, name: str, curve: str, coord: int) -> None:
    key = client.create_ec_key(name, curve=curve)
    assert key.key_type == KeyType.ec
    assert key.key.crv == curve
    assert len(key.key.x) == coord and len(key.key.y) == coord
    assert sorted(key.key_operations) == ["sign", "verify"]


@pytest.mark.parametrize("size", [128, 192, 256])
def test_create_oct_hsm(client: KeyClient, name: str, size: int) -> None:
    key = client.create_oct_key(name, size=size, hardware_protected=True)
    assert key.key_type == KeyType.oct_hsm
    assert key.key.k is None


@pytest.mark.parametrize("kwargs", [
    {"key_type": KeyType.rsa, "size": 1024},
    {"key_type": KeyType.oct_hsm, "size": 512},
    {"key_type": KeyType.ec, "curve": "P-999"},
    {"key_type": KeyType.oct},
])
def test_create_rejects_bad_parameters(client: KeyClient, name: str, kwargs: dict) -> None:
    expect_error(400, "BadParameter", client.create_key, name, **kwargs)


def test_create_rejects_bad_name(client: KeyClient) -> None:
    expect_error(400, "BadParameter", client.create_rsa_key, "bad_name_with_underscores")


def test_create_with_attributes_tags_and_ops(client: KeyClient, name: str) -> None:
    exp = int(time.time()) + 3600
    key = client.create_rsa_key(name, tags={"team": "kms"}, key_operations=[KeyOperation.sign],
                                expires_on=_dt(exp), enabled=True)
    assert key.properties.tags == {"team": "kms"}
    assert key.key_operations == ["sign"]
    assert int(key.properties.expires_on.timestamp()) == exp


def test_get_latest_and_by_version(client: KeyClient, name: str) -> None:
    v1 = client.create_ec_key(name)
    v2 = client.create_ec_key(name)
    assert v1.properties.version != v2.properties.version
    assert client.get_key(name).id == v2.id
    old = client.get_key(name, v1.properties.version)
    assert old.id == v1.id and old.key.x == v1.key.x


def test_get_missing_key_and_version(client: KeyClient, name: str) -> None:
    expect_error(404, "KeyNotFound", client.get_key, name)
    client.create_ec_key(name)
    expect_error(404, "KeyNotFound", client.get_key, name, "0" * 32)


def _dt(ts: int):
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC)


def test_update_attributes(client: KeyClient, name: str) -> None:
    key = client.create_rsa_key(name)
    nbf, exp = int(time.time()) - 60, int(time.time()) + 7200
    updated = client.update_key_properties(name, enabled=False, not_before=_dt(nbf), expires_on=_dt(exp),
                                           tags={"a": "1"}, key_operations=[KeyOperation.encrypt])
    assert updated.properties.enabled is False
    assert int(updated.properties.not_before.timestamp()) == nbf
    assert int(updated.properties.expires_on.timestamp()) == exp
    assert updated.properties.tags == {"a": "1"}
    assert updated.key_operations == ["encrypt"]
    assert updated.id == key.id
    again = client.get_key(name)
    assert again.properties.enabled is False and again.properties.tags == {"a": "1"}


def test_update_one_version_only(client: KeyClient, name: str) -> None:
    v1 = client.create_ec_key(name)
    v2 = client.create_ec_key(name)
    client.update_key_properties(name, v1.properties.version, enabled=False)
    assert client.get_key(name, v1.properties.version).properties.enabled is False
    assert client.get_key(name, v2.properties.version).properties.enabled is True


def test_update_rejects_nbf_after_exp(client: KeyClient, name: str) -> None:
    client.create_ec_key(name)
    now = int(time.time())
    expect_error(400, "BadParameter", client.update_key_properties, name, not_before=_dt(now + 100),
                 expires_on=_dt(now + 10))


def test_update_missing_key(client: KeyClient, name: str) -> None:
    expect_error(404, "KeyNotFound", client.update_key_properties, name, enabled=False)


def test_import_rsa_ec_and_oct(client: KeyClient, name: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    priv = rsa.generate_private_key(65537, 2048)
    n = priv.private_numbers()

    def b(i: int) -> bytes:
        return i.to_bytes((i.bit_length() + 7) // 8, "big")

    jwk = JsonWebKey(kty=KeyType.rsa, n=b(n.public_numbers.n), e=b(n.public_numbers.e), d=b(n.d), p=b(n.p),
                     q=b(n.q), dp=b(n.dmp1), dq=b(n.dmq1), qi=b(n.iqmp))
    imported = client.import_key(name, jwk, hardware_protected=True, tags={"src": "byok"})
    assert imported.key_type == KeyType.rsa_hsm
    assert imported.key.n == b(n.public_numbers.n)
    assert imported.properties.tags == {"src": "byok"}

    ec_priv = ec.generate_private_key(ec.SECP384R1())
    pub = ec_priv.public_key().public_numbers()
    ec_jwk = JsonWebKey(kty=KeyType.ec, crv=KeyCurveName.p_384, x=pub.x.to_bytes(48, "big"),
                        y=pub.y.to_bytes(48, "big"), d=ec_priv.private_numbers().private_value.to_bytes(48, "big"))
    assert client.import_key(name + "-ec", ec_jwk).key.x == pub.x.to_bytes(48, "big")

    oct_jwk = JsonWebKey(kty=KeyType.oct_hsm, k=bytes(range(32)))
    oct_key = client.import_key(name + "-oct", oct_jwk)
    assert oct_key.key_type == KeyType.oct_hsm and oct_key.key.k is None


def test_import_rejects_public_only_and_bad_oct(client: KeyClient, name: str) -> None:
    expect_error(400, "BadParameter", client.import_key, name, JsonWebKey(kty=KeyType.rsa, n=b"\x01" * 256, e=b"\x01\x00\x01"))
    expect_error(400, "BadParameter", client.import_key, name, JsonWebKey(kty=KeyType.oct_hsm, k=b"short"))


def test_list_keys_pages_with_next_link(client: KeyClient, name: str) -> None:
    names = {f"{name}-{i}" for i in range(7)}
    for n in names:
        client.create_ec_key(n)
    pages = list(client.list_properties_of_keys(max_page_size=3).by_page())
    page_lists = [list(p) for p in pages]
    assert all(len(p) <= 3 for p in page_lists)
    assert len(page_lists) >= 3
    listed = [p.name for page in page_lists for p in page]
    assert names <= set(listed)
    assert len(listed) == len(set(listed)), "paging must not repeat keys"
    item = next(p for page in page_lists for p in page if p.name in names)
    assert item.version is None, "the keys list names keys, not versions"


def test_list_versions_pages(client: KeyClient, name: str) -> None:
    ids = {client.create_ec_key(name).properties.version for _ in range(5)}
    pages = [list(p) for p in client.list_properties_of_key_versions(name, max_page_size=2).by_page()]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert {p.version for page in pages for p in page} == ids


def test_list_rejects_bad_maxresults(client: KeyClient) -> None:
    expect_error(400, "BadParameter", lambda: list(client.list_properties_of_keys(max_page_size=26)))


def test_list_versions_of_missing_key(client: KeyClient, name: str) -> None:
    expect_error(404, "KeyNotFound", lambda: list(client.list_properties_of_key_versions(name)))


def test_get_omits_key_ops_unless_asked(client: KeyClient, name: str, work) -> None:
    """Default: GET leaves key_ops out (the SDK then sends crypto to the service); --key-ops-on-get restores them."""
    from .emulator import start_emulator

    client.create_rsa_key(name, key_operations=["sign", "verify"])
    assert client.get_key(name).key_operations in (None, [])
    faithful = start_emulator(work, name="kv-faithful", extra_args=("--key-ops-on-get",))
    try:
        fc = faithful.key_client()
        fc.create_rsa_key(name, key_operations=["sign", "verify"])
        assert sorted(fc.get_key(name).key_operations) == ["sign", "verify"]
    finally:
        faithful.server.stop()
