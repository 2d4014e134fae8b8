"""--token: a bearer token is required in gRPC metadata / the HTTP Authorization header."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.api_core.exceptions import GoogleAPICallError, Unauthenticated, Unauthorized

from .conftest import launch, make_client
from .helpers import PROJECT_LOCATION, status, uid

TOKEN = "emulator-test-token"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    server, ready = launch("gcp-kms-emulator-token", tmp_path_factory.mktemp("gcp-token"), "--token", TOKEN)
    yield ready
    server.stop()


def test_correct_token_is_accepted(guarded: dict, transport: str) -> None:
    client = make_client(guarded, transport, TOKEN)
    ring = client.create_key_ring(request={"parent": PROJECT_LOCATION, "key_ring_id": uid("auth")})
    assert ring.name.startswith(PROJECT_LOCATION)
    assert client.get_key_ring(name=ring.name).name == ring.name


@pytest.mark.parametrize("token", ["", "wrong", TOKEN + "x"])
def test_missing_or_wrong_token_is_unauthenticated(guarded: dict, transport: str, token: str) -> None:
    client = make_client(guarded, transport, token)
    with pytest.raises(GoogleAPICallError) as exc:
        client.list_key_rings(request={"parent": PROJECT_LOCATION})
    assert isinstance(exc.value, Unauthenticated if transport == "grpc" else Unauthorized)
    assert status(exc.value) == "UNAUTHENTICATED"
    if transport == "rest":
        assert exc.value.response.status_code == 401


def test_anonymous_emulator_needs_no_token(emulator: dict, transport: str) -> None:
    assert make_client(emulator, transport).list_key_rings(request={"parent": PROJECT_LOCATION}) is not None
