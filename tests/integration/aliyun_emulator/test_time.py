"""Time-driven rules, with the emulator's lifecycle clock moved forward (--clock-offset-file): keys are purged
when their deletion window ends, automatic rotation adds versions, imported material expires."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from .conftest import launch, make_client
from .helpers import aliyun_error, b64, call, new_key

DAY = 86400


class Clock:
    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self.path.write_text(str(self.offset))


@pytest.fixture(scope="module")
def timed(tmp_path_factory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("aliyun-time")
    clock = Clock(tmp / "offset")
    server, port = launch(tmp, "aliyun-kms-time", "--access-key", "AK:time", "--clock-offset-file", str(clock.path))
    try:
        yield make_client(f"127.0.0.1:{port}", "AK", "time"), clock
    finally:
        server.stop()


def test_key_is_purged_when_its_deletion_window_ends(timed):
    client, clock = timed
    key_id = new_key(client)["KeyId"]
    call(client, "create_alias", alias_name="alias/doomed", key_id=key_id)
    call(client, "schedule_key_deletion", key_id=key_id, pending_window_in_days=7)
    clock.advance(6 * DAY)
    assert call(client, "describe_key", key_id=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    clock.advance(1 * DAY + 60)
    with aliyun_error("Forbidden.KeyNotFound", 404):
        call(client, "describe_key", key_id=key_id)
    with aliyun_error("Forbidden.AliasNotFound", 404):
        call(client, "describe_key", key_id="alias/doomed")


def test_automatic_rotation_adds_a_version_when_due(timed):
    client, clock = timed
    meta = new_key(client, enable_automatic_rotation=True, rotation_interval="7d")
    old = call(client, "encrypt", key_id=meta["KeyId"], plaintext="before")
    clock.advance(7 * DAY + 60)
    described = call(client, "describe_key", key_id=meta["KeyId"])["KeyMetadata"]
    assert described["PrimaryKeyVersion"] != meta["PrimaryKeyVersion"] and described["LastRotationDate"]
    assert call(client, "list_key_versions", key_id=meta["KeyId"])["TotalCount"] == 2
    assert call(client, "decrypt", ciphertext_blob=old["CiphertextBlob"])["Plaintext"] == "before"


def test_disabled_rotation_adds_nothing(timed):
    client, clock = timed
    meta = new_key(client)
    clock.advance(400 * DAY)
    assert call(client, "list_key_versions", key_id=meta["KeyId"])["TotalCount"] == 1


def test_imported_material_expires(timed):
    client, clock = timed
    key_id = new_key(client, origin="EXTERNAL")["KeyId"]
    params = call(client, "get_parameters_for_import", key_id=key_id, wrapping_algorithm="RSAES_OAEP_SHA_1",
                  wrapping_key_spec="RSA_2048")
    public = serialization.load_der_public_key(base64.b64decode(params["PublicKey"]))
    wrapped = public.encrypt(os.urandom(32), padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),
                                                          label=None))
    now = int(time.time() + clock.offset)
    call(client, "import_key_material", key_id=key_id, import_token=params["ImportToken"],
         encrypted_key_material=b64(wrapped), key_material_expire_unix=now + DAY)
    assert call(client, "encrypt", key_id=key_id, plaintext="x")["KeyId"] == key_id
    clock.advance(DAY + 60)
    with aliyun_error("Rejected.ResourceExpired", 400):
        call(client, "encrypt", key_id=key_id, plaintext="x")
    assert call(client, "describe_key", key_id=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
