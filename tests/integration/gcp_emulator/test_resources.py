"""Key rings, crypto keys and versions: create/get/list/update and the documented errors, on both transports."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import kms_v1
from google.protobuf import field_mask_pb2

from .helpers import PROJECT_LOCATION, first_version, make_key, status, uid

State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState


def test_key_ring_create_get_and_list_with_pages(client: kms_v1.KeyManagementServiceClient) -> None:
    ids = [uid("page") for _ in range(3)]
    for i in ids:
        created = client.create_key_ring(request={"parent": PROJECT_LOCATION, "key_ring_id": i})
        assert created.name == f"{PROJECT_LOCATION}/keyRings/{i}"
        assert created.create_time is not None
    assert client.get_key_ring(name=f"{PROJECT_LOCATION}/keyRings/{ids[0]}").name.endswith(ids[0])

    first = client.list_key_rings(request={"parent": PROJECT_LOCATION, "page_size": 2})
    page = next(iter(first.pages))
    assert len(page.key_rings) == 2 and page.next_page_token
    everything = [r.name for r in client.list_key_rings(request={"parent": PROJECT_LOCATION, "page_size": 2})]
    assert len(everything) == len(set(everything))
    assert all(f"{PROJECT_LOCATION}/keyRings/{i}" in everything for i in ids)


def test_key_ring_already_exists_and_not_found(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    ring_id = ring.rsplit("/", 1)[1]
    with pytest.raises(GoogleAPICallError) as exc:
        client.create_key_ring(request={"parent": PROJECT_LOCATION, "key_ring_id": ring_id})
    assert status(exc.value) == "ALREADY_EXISTS"
    with pytest.raises(GoogleAPICallError) as exc:
        client.get_key_ring(name=f"{PROJECT_LOCATION}/keyRings/{uid('missing')}")
    assert status(exc.value) == "NOT_FOUND"
    assert "not found" in exc.value.message


def test_invalid_ids_and_names(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    with pytest.raises(GoogleAPICallError) as exc:
        client.create_key_ring(request={"parent": PROJECT_LOCATION, "key_ring_id": "bad id!"})
    assert status(exc.value) == "INVALID_ARGUMENT"
    with pytest.raises(GoogleAPICallError) as exc:
        client.create_crypto_key(request={"parent": ring, "crypto_key_id": uid("k"), "crypto_key": {}})
    assert status(exc.value) == "INVALID_ARGUMENT"  # purpose is required
    with pytest.raises(GoogleAPICallError) as exc:
        make_key(client, ring, "ASYMMETRIC_SIGN")  # algorithm is required outside ENCRYPT_DECRYPT
    assert status(exc.value) == "INVALID_ARGUMENT"
    with pytest.raises(GoogleAPICallError) as exc:
        make_key(client, ring, "MAC", "EC_SIGN_P256_SHA256")  # algorithm does not fit the purpose
    assert status(exc.value) == "INVALID_ARGUMENT"


def test_crypto_key_defaults_primary_and_list(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT", labels={"team": "kms"})
    assert key.purpose == kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT
    assert key.version_template.algorithm == kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION
    assert key.version_template.protection_level == kms_v1.ProtectionLevel.SOFTWARE
    assert key.primary.name == first_version(key) and key.primary.state == State.ENABLED
    assert key.destroy_scheduled_duration == dt.timedelta(days=30)
    assert dict(key.labels) == {"team": "kms"}
    got = client.get_crypto_key(name=key.name)
    assert got.name == key.name and got.primary.name == key.primary.name

    sign = make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256")
    assert not sign.primary.name  # only ENCRYPT_DECRYPT keys have a primary
    listed = [k.name for k in client.list_crypto_keys(request={"parent": ring, "page_size": 1})]
    assert listed == [key.name, sign.name]

    with pytest.raises(GoogleAPICallError) as exc:
        client.create_crypto_key(request={"parent": ring, "crypto_key_id": key.name.rsplit("/", 1)[1],
                                          "crypto_key": {"purpose": "ENCRYPT_DECRYPT"}})
    assert status(exc.value) == "ALREADY_EXISTS"
    with pytest.raises(GoogleAPICallError) as exc:
        client.list_crypto_keys(request={"parent": f"{PROJECT_LOCATION}/keyRings/{uid('nope')}"})
    assert status(exc.value) == "NOT_FOUND"
    with pytest.raises(GoogleAPICallError) as exc:
        client.get_crypto_key(name=f"{ring}/cryptoKeys/{uid('nope')}")
    assert status(exc.value) == "NOT_FOUND"


def test_skip_initial_version_then_create_versions_and_page(client: kms_v1.KeyManagementServiceClient,
                                                            ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT", skip_initial_version_creation=True)
    assert not key.primary.name
    assert list(client.list_crypto_key_versions(parent=key.name)) == []
    made = [client.create_crypto_key_version(parent=key.name, crypto_key_version={}) for _ in range(3)]
    assert [v.name.rsplit("/", 1)[1] for v in made] == ["1", "2", "3"]
    assert all(v.state == State.ENABLED for v in made)

    pager = client.list_crypto_key_versions(request={"parent": key.name, "page_size": 2})
    pages = list(pager.pages)
    assert [len(p.crypto_key_versions) for p in pages] == [2, 1]
    assert pages[0].total_size == 3
    assert client.get_crypto_key_version(name=made[1].name).name == made[1].name
    with pytest.raises(GoogleAPICallError) as exc:
        client.get_crypto_key_version(name=f"{key.name}/cryptoKeyVersions/99")
    assert status(exc.value) == "NOT_FOUND"
    with pytest.raises(GoogleAPICallError) as exc:
        client.list_crypto_key_versions(request={"parent": key.name, "page_token": "not-a-token!"})
    assert status(exc.value) == "INVALID_ARGUMENT"


def test_update_crypto_key_with_update_mask(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT", labels={"a": "1"})
    nxt = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    updated = client.update_crypto_key(
        crypto_key={"name": key.name, "labels": {"b": "2"}, "rotation_period": dt.timedelta(days=30),
                    "next_rotation_time": nxt},
        update_mask=field_mask_pb2.FieldMask(paths=["labels", "rotation_period", "next_rotation_time"]))
    assert dict(updated.labels) == {"b": "2"}
    assert updated.rotation_period == dt.timedelta(days=30)
    assert abs((updated.next_rotation_time - nxt).total_seconds()) < 1
    # a field outside the mask is left alone
    again = client.update_crypto_key(crypto_key={"name": key.name, "labels": {"c": "3"}},
                                     update_mask=field_mask_pb2.FieldMask(paths=["rotation_period"]))
    assert dict(again.labels) == {"b": "2"} and "rotation_period" not in again

    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key(crypto_key={"name": key.name, "purpose": "MAC"},
                                 update_mask=field_mask_pb2.FieldMask(paths=["purpose"]))
    assert status(exc.value) == "INVALID_ARGUMENT"
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key(crypto_key={"name": key.name, "rotation_period": dt.timedelta(hours=1),
                                             "next_rotation_time": nxt},
                                 update_mask=field_mask_pb2.FieldMask(paths=["rotation_period", "next_rotation_time"]))
    assert status(exc.value) == "INVALID_ARGUMENT"  # rotation period below 24 hours
    sign = make_key(client, ring, "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256")
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key(crypto_key={"name": sign.name, "rotation_period": dt.timedelta(days=2),
                                             "next_rotation_time": nxt},
                                 update_mask=field_mask_pb2.FieldMask(paths=["rotation_period", "next_rotation_time"]))
    assert status(exc.value) == "INVALID_ARGUMENT"  # automatic rotation is for symmetric keys only


def test_update_primary_version(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT")
    v2 = client.create_crypto_key_version(parent=key.name, crypto_key_version={})
    assert client.get_crypto_key(name=key.name).primary.name == first_version(key)  # new versions are not primary
    updated = client.update_crypto_key_primary_version(name=key.name, crypto_key_version_id="2")
    assert updated.primary.name == v2.name
    enc = client.encrypt(name=key.name, plaintext=b"x")
    assert enc.name == v2.name

    client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.DISABLED},
                                     update_mask=field_mask_pb2.FieldMask(paths=["state"]))
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key_primary_version(name=key.name, crypto_key_version_id="1")
    assert status(exc.value) == "FAILED_PRECONDITION"
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key_primary_version(name=key.name, crypto_key_version_id="42")
    assert status(exc.value) == "NOT_FOUND"


def test_disable_enable_via_state(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT")
    mask = field_mask_pb2.FieldMask(paths=["state"])
    ct = client.encrypt(name=key.name, plaintext=b"payload").ciphertext
    off = client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.DISABLED},
                                           update_mask=mask)
    assert off.state == State.DISABLED
    for call in (lambda: client.encrypt(name=key.name, plaintext=b"x"),
                 lambda: client.decrypt(name=key.name, ciphertext=ct)):
        with pytest.raises(GoogleAPICallError) as exc:
            call()
        assert status(exc.value) == "FAILED_PRECONDITION"
    on = client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.ENABLED},
                                          update_mask=mask)
    assert on.state == State.ENABLED
    assert client.decrypt(name=key.name, ciphertext=ct).plaintext == b"payload"
    with pytest.raises(GoogleAPICallError) as exc:
        client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.DESTROYED},
                                         update_mask=mask)
    assert status(exc.value) == "INVALID_ARGUMENT"


def test_destroy_schedule_and_restore(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT", destroy_scheduled_duration=dt.timedelta(days=2))
    ct = client.encrypt(name=key.name, plaintext=b"keep me").ciphertext
    before = dt.datetime.now(dt.UTC)
    sched = client.destroy_crypto_key_version(name=first_version(key))
    assert sched.state == State.DESTROY_SCHEDULED
    delta = sched.destroy_time - before
    assert dt.timedelta(days=2) - dt.timedelta(seconds=5) < delta < dt.timedelta(days=2, seconds=5)
    with pytest.raises(GoogleAPICallError) as exc:
        client.decrypt(name=key.name, ciphertext=ct)
    assert status(exc.value) == "FAILED_PRECONDITION"
    with pytest.raises(GoogleAPICallError) as exc:
        client.destroy_crypto_key_version(name=first_version(key))
    assert status(exc.value) == "FAILED_PRECONDITION"

    restored = client.restore_crypto_key_version(name=first_version(key))
    assert restored.state == State.DISABLED and "destroy_time" not in restored
    with pytest.raises(GoogleAPICallError) as exc:
        client.restore_crypto_key_version(name=first_version(key))
    assert status(exc.value) == "FAILED_PRECONDITION"
    client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.ENABLED},
                                     update_mask=field_mask_pb2.FieldMask(paths=["state"]))
    assert client.decrypt(name=key.name, ciphertext=ct).plaintext == b"keep me"


def test_destroy_scheduled_duration_elapses_to_destroyed(client: kms_v1.KeyManagementServiceClient,
                                                         ring: str) -> None:
    """The session emulator runs with --min-destroy-seconds 0 so the DESTROYED transition is observable."""
    key = make_key(client, ring, "ENCRYPT_DECRYPT", destroy_scheduled_duration=dt.timedelta(seconds=0))
    ct = client.encrypt(name=key.name, plaintext=b"gone").ciphertext
    gone = client.destroy_crypto_key_version(name=first_version(key))
    assert gone.state == State.DESTROYED
    assert client.get_crypto_key_version(name=first_version(key)).destroy_event_time is not None
    with pytest.raises(GoogleAPICallError) as exc:
        client.decrypt(name=key.name, ciphertext=ct)
    assert status(exc.value) == "FAILED_PRECONDITION"
    with pytest.raises(GoogleAPICallError) as exc:
        client.restore_crypto_key_version(name=first_version(key))
    assert status(exc.value) == "FAILED_PRECONDITION"


def test_destroy_scheduled_duration_above_maximum_is_rejected(client: kms_v1.KeyManagementServiceClient,
                                                              ring: str) -> None:
    with pytest.raises(GoogleAPICallError) as exc:
        make_key(client, ring, "ENCRYPT_DECRYPT", destroy_scheduled_duration=dt.timedelta(days=121))
    assert status(exc.value) == "INVALID_ARGUMENT"


def test_rotation_creates_a_new_primary_when_next_rotation_time_passes(
        client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    key = make_key(client, ring, "ENCRYPT_DECRYPT", rotation_period=dt.timedelta(days=1), next_rotation_time=soon)
    old_ct = client.encrypt(name=key.name, plaintext=b"before").ciphertext
    time.sleep(1.5)
    rotated = client.get_crypto_key(name=key.name)
    assert rotated.primary.name == f"{key.name}/cryptoKeyVersions/2"
    assert rotated.next_rotation_time > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    assert client.encrypt(name=key.name, plaintext=b"after").name == rotated.primary.name
    assert client.decrypt(name=key.name, ciphertext=old_ct).plaintext == b"before"


def test_rotation_period_requires_next_rotation_time(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    with pytest.raises(GoogleAPICallError) as exc:
        make_key(client, ring, "ENCRYPT_DECRYPT", rotation_period=dt.timedelta(days=1))
    assert status(exc.value) == "INVALID_ARGUMENT"


def test_list_versions_filter_by_state(client: kms_v1.KeyManagementServiceClient, ring: str) -> None:
    key = make_key(client, ring, "ENCRYPT_DECRYPT")
    client.create_crypto_key_version(parent=key.name, crypto_key_version={})
    client.update_crypto_key_version(crypto_key_version={"name": first_version(key), "state": State.DISABLED},
                                     update_mask=field_mask_pb2.FieldMask(paths=["state"]))
    enabled = [v.name for v in client.list_crypto_key_versions(request={"parent": key.name, "filter": "state=ENABLED"})]
    assert enabled == [f"{key.name}/cryptoKeyVersions/2"]
