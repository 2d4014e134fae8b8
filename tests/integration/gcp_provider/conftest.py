"""The gcp provider against a real emulator process, on both transports."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.cloud import kms_v1

from providers.gcp import GcpProvider, build_client
from tests.integration.gcp_emulator.conftest import launch

TOKEN = "gcp-provider-token"


@pytest.fixture(scope="session")
def gcp_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    server, ready = launch("gcp-kms-provider-emulator", tmp_path_factory.mktemp("gcp-provider"),
                           "--token", TOKEN, "--min-destroy-seconds", "0")
    yield ready
    server.stop()


def config(ready: dict, transport: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "gcp", "transport": transport, "grpc_target": ready["grpc_target"],
            "rest_endpoint": ready["rest_endpoint"], "token": TOKEN, "project": ready["project"],
            "location": ready["location"], "key_ring": f"ring-{uuid.uuid4().hex[:8]}", "retries": 0,
            "timeout": 10, **extra}


@pytest.fixture(params=["grpc", "rest"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_provider(gcp_emulator: dict, transport: str) -> Iterator[Callable[..., GcpProvider]]:
    made: list[GcpProvider] = []

    def make(**extra: Any) -> GcpProvider:
        provider = GcpProvider.from_config(f"gcp-{transport}", config(gcp_emulator, transport, **extra))
        made.append(provider)
        return provider
    yield make
    for p in made:
        p.close()


@pytest.fixture
def provider(make_provider: Callable[..., GcpProvider]) -> GcpProvider:
    return make_provider()


@pytest.fixture
def kms(gcp_emulator: dict, transport: str) -> kms_v1.KeyManagementServiceClient:
    """An independent official client, to look at what the provider did."""
    return build_client(transport, grpc_target=gcp_emulator["grpc_target"],
                        rest_endpoint=gcp_emulator["rest_endpoint"], token=TOKEN)
