"""--state-file: keys survive a restart of the emulator process, material included."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.api_core.exceptions import NotFound

from .conftest import launch, make_client
from .helpers import PROJECT_LOCATION, make_key, uid


def test_state_survives_restart(tmp_path: Path, transport: str) -> None:
    state = tmp_path / "state.json"
    server, ready = launch(f"gcp-persist-{transport}", tmp_path, "--state-file", str(state))
    try:
        client = make_client(ready, transport)
        ring = client.create_key_ring(request={"parent": PROJECT_LOCATION, "key_ring_id": uid("p")}).name
        key = make_key(client, ring, "ENCRYPT_DECRYPT")
        ct = client.encrypt(request={"name": key.name, "plaintext": b"durable",
                                     "additional_authenticated_data": b"a"}).ciphertext
    finally:
        server.stop()
    assert state.exists() and oct(state.stat().st_mode & 0o777) == "0o600"

    server, ready = launch(f"gcp-persist-{transport}-2", tmp_path, "--state-file", str(state))
    try:
        client = make_client(ready, transport)
        assert client.get_crypto_key(name=key.name).primary.name == key.primary.name
        assert client.decrypt(request={"name": key.name, "ciphertext": ct,
                                       "additional_authenticated_data": b"a"}).plaintext == b"durable"
    finally:
        server.stop()


def test_without_state_file_nothing_survives(tmp_path: Path) -> None:
    server, ready = launch("gcp-ephemeral", tmp_path)
    try:
        client = make_client(ready, "grpc")
        name = client.create_key_ring(request={"parent": PROJECT_LOCATION, "key_ring_id": uid("e")}).name
    finally:
        server.stop()
    server, ready = launch("gcp-ephemeral-2", tmp_path)
    try:
        with pytest.raises(NotFound):
            make_client(ready, "grpc").get_key_ring(name=name)
    finally:
        server.stop()
