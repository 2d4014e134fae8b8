"""Backup/restore, rotate and rotation policies."""

from __future__ import annotations

import time

from azure.keyvault.keys import (
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
)
from azure.keyvault.keys.crypto import KeyWrapAlgorithm

from .emulator import Emulator
from .helpers import expect_error


def test_backup_purge_restore(emulator: Emulator, client: KeyClient, name: str) -> None:
    v1 = client.create_rsa_key(name, tags={"t": "1"})
    v2 = client.create_rsa_key(name)
    wrapped = emulator.crypto_client(v1.id).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32).encrypted_key
    blob = client.backup_key(name)
    assert b"\"d\"" not in blob and v1.key.n not in blob, "a backup must not be plaintext"
    client.begin_delete_key(name).result()
    client.purge_deleted_key(name)
    restored = client.restore_key_backup(blob)
    assert restored.id == v2.id
    assert {v.version for v in client.list_properties_of_key_versions(name)} == {v1.properties.version,
                                                                                 v2.properties.version}
    assert client.get_key(name, v1.properties.version).properties.tags == {"t": "1"}
    unwrapped = emulator.crypto_client(v1.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key
    assert unwrapped == b"k" * 32


def test_restore_over_existing_name_conflicts(client: KeyClient, name: str) -> None:
    client.create_ec_key(name)
    expect_error(409, "Conflict", client.restore_key_backup, client.backup_key(name))


def test_restore_rejects_garbage(client: KeyClient) -> None:
    expect_error(400, "BadParameter", client.restore_key_backup, b"not a backup blob at all, really not")


def test_backup_missing_key(client: KeyClient, name: str) -> None:
    expect_error(404, "KeyNotFound", client.backup_key, name)


def test_rotate_makes_a_new_version_and_old_ones_keep_working(emulator: Emulator, client: KeyClient,
                                                              name: str) -> None:
    v1 = client.create_rsa_key(name, size=3072, key_operations=["wrapKey", "unwrapKey"])
    wrapped = emulator.crypto_client(v1.id).wrap_key(KeyWrapAlgorithm.rsa_oaep, b"d" * 16).encrypted_key
    v2 = client.rotate_key(name)
    assert v2.properties.version != v1.properties.version
    assert len(v2.key.n) * 8 == 3072 and v2.key.n != v1.key.n
    assert sorted(v2.key_operations) == ["unwrapKey", "wrapKey"]
    assert client.get_key(name).id == v2.id
    assert emulator.crypto_client(v1.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped).key == b"d" * 16


def test_rotate_oct_and_ec_keep_type(client: KeyClient, name: str) -> None:
    o = client.create_oct_key(name, size=192, hardware_protected=True)
    assert client.rotate_key(name).key_type == o.key_type
    e = client.create_ec_key(name + "-ec", curve="P-384")
    assert client.rotate_key(name + "-ec").key.crv == e.key.crv


def test_rotate_missing_key(client: KeyClient, name: str) -> None:
    expect_error(404, "KeyNotFound", client.rotate_key, name)


def test_rotation_policy_default_put_get(client: KeyClient, name: str) -> None:
    client.create_rsa_key(name)
    default = client.get_key_rotation_policy(name)
    assert [a.action for a in default.lifetime_actions] == [KeyRotationPolicyAction.notify]
    policy = KeyRotationPolicy(expires_in="P90D", lifetime_actions=[
        KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P30D"),
        KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P10D"),
    ])
    stored = client.update_key_rotation_policy(name, policy)
    assert stored.expires_in == "P90D"
    fetched = client.get_key_rotation_policy(name)
    assert fetched.id.endswith(f"/keys/{name}/rotationpolicy")
    got = {a.action: (a.time_after_create, a.time_before_expiry) for a in fetched.lifetime_actions}
    assert got == {KeyRotationPolicyAction.rotate: ("P30D", None), KeyRotationPolicyAction.notify: (None, "P10D")}
    rotated = client.rotate_key(name)
    expected_exp = time.time() + 90 * 86400
    assert abs(rotated.properties.expires_on.timestamp() - expected_exp) < 60


def test_rotation_policy_validation(client: KeyClient, name: str) -> None:
    client.create_rsa_key(name)
    too_short = KeyRotationPolicy(expires_in="P7D", lifetime_actions=[])
    expect_error(400, "BadParameter", client.update_key_rotation_policy, name, too_short)
    bad_duration = KeyRotationPolicy(lifetime_actions=[
        KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="30 days")])
    expect_error(400, "BadParameter", client.update_key_rotation_policy, name, bad_duration)
    expect_error(404, "KeyNotFound", client.get_key_rotation_policy, name + "-missing")
