"""--state-file keeps keys, versions, aliases and tags across a restart of the process."""

from __future__ import annotations

import json
import stat

from .conftest import launch, make_client
from .helpers import call, new_key


def test_state_survives_restart(tmp_path):
    state = tmp_path / "state.json"
    args = ("--access-key", "AK:persist", "--state-file", str(state))
    server, port = launch(tmp_path, "aliyun-kms-persist-1", *args)
    try:
        client = make_client(f"127.0.0.1:{port}", "AK", "persist")
        key_id = new_key(client)["KeyId"]
        call(client, "create_key_version", key_id=key_id)
        call(client, "create_alias", alias_name="alias/persisted", key_id=key_id)
        call(client, "tag_resource", key_id=key_id, tags=json.dumps([{"TagKey": "k", "TagValue": "v"}]))
        blob = call(client, "encrypt", key_id=key_id, plaintext="durable", encryption_context={"a": "b"})["CiphertextBlob"]
    finally:
        server.stop()
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0
    server, port = launch(tmp_path, "aliyun-kms-persist-2", *args)
    try:
        client = make_client(f"127.0.0.1:{port}", "AK", "persist")
        assert call(client, "decrypt", ciphertext_blob=blob, encryption_context={"a": "b"})["Plaintext"] == "durable"
        assert call(client, "describe_key", key_id="alias/persisted")["KeyMetadata"]["KeyId"] == key_id
        assert call(client, "list_key_versions", key_id=key_id)["TotalCount"] == 2
        assert call(client, "list_resource_tags", key_id=key_id)["Tags"]["Tag"][0]["TagValue"] == "v"
    finally:
        server.stop()
