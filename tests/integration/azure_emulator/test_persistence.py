"""--state-file: a restarted emulator keeps its keys (and its soft-deleted keys)."""

from __future__ import annotations

from pathlib import Path

from azure.keyvault.keys.crypto import KeyWrapAlgorithm

from tests.support.procs import free_port

from .emulator import start_emulator
from .helpers import expect_error


def test_restart_keeps_keys(work: Path) -> None:
    state, port = work / "state.json", free_port()
    first = start_emulator(work, name="kv-persist-1", state_file=state, port=port)
    try:
        client = first.key_client()
        key = client.create_rsa_key("kept")
        client.create_ec_key("gone")
        client.begin_delete_key("gone").result()
        wrapped = first.crypto_client(key.id).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"s" * 32).encrypted_key
    finally:
        first.server.stop()
    assert state.exists()
    second = start_emulator(work, name="kv-persist-2", state_file=state, port=port)
    try:
        client = second.key_client()
        assert client.get_key("kept").id == key.id
        assert second.crypto_client(key.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == b"s" * 32
        assert client.get_deleted_key("gone").name == "gone"
        expect_error(409, "Conflict", client.create_ec_key, "gone")
    finally:
        second.server.stop()


def test_without_state_file_nothing_survives(work: Path) -> None:
    port = free_port()
    first = start_emulator(work, name="kv-mem-1", port=port)
    try:
        first.key_client().create_ec_key("ephemeral")
    finally:
        first.server.stop()
    second = start_emulator(work, name="kv-mem-2", port=port)
    try:
        expect_error(404, "KeyNotFound", second.key_client().get_key, "ephemeral")
    finally:
        second.server.stop()
