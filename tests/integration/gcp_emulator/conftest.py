"""Start the GCP KMS emulator as a real process once per session; clients are the official google-cloud-kms only."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport

from tests.support.procs import Server, free_port, start_server

from .helpers import PROJECT_LOCATION, uid

ROOT = Path(__file__).resolve().parents[3]
TRANSPORTS = ["grpc", "rest"]


def _ready(server_log: Path) -> Callable[[], dict]:
    def probe() -> dict:
        for line in server_log.read_text().splitlines():
            if line.startswith("READY "):
                return json.loads(line[len("READY "):])
        return {}
    return probe


def launch(name: str, log_dir: Path, *extra: str) -> tuple[Server, dict]:
    """Run `python -m gcp_kms_emulator` on two free loopback ports and return it with its READY document."""
    grpc_port, rest_port = free_port(), free_port()
    while rest_port == grpc_port:
        rest_port = free_port()
    cmd = [sys.executable, "-m", "gcp_kms_emulator", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
           "--rest-port", str(rest_port), *extra]
    probe = _ready(log_dir / f"{name}.log")
    server = start_server(name, cmd, log_dir=log_dir, ready=lambda: bool(probe()), cwd=ROOT,
                          env={"PYTHONPATH": f"{ROOT / 'localstack'}:{ROOT}"})
    return server, probe()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    log_dir = tmp_path_factory.mktemp("gcp-emulator")
    server, ready = launch("gcp-kms-emulator", log_dir, "--min-destroy-seconds", "0")
    yield ready
    server.stop()


class StaticToken(Credentials):
    """A fixed bearer token (or none). Unlike AnonymousCredentials it survives the REST session's refresh-on-401."""

    def __init__(self, value: str | None) -> None:
        super().__init__()
        self.token = value

    def refresh(self, request: object) -> None:
        return None

    @property
    def expired(self) -> bool:
        return False

    @property
    def valid(self) -> bool:
        return True

    def apply(self, headers: dict, token: str | None = None) -> None:
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"


class _BearerMetadata(grpc.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer T` to every call on an insecure channel (call credentials need TLS)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201 - grpc API
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.value}")]
        return continuation(details._replace(metadata=metadata), request)


def make_client(ready: dict, transport: str, token: str | None = None) -> kms_v1.KeyManagementServiceClient:
    """The two documented ways to point the official client at a local endpoint (facts §B)."""
    if transport == "grpc":
        channel = grpc.insecure_channel(ready["grpc_target"])
        if token is not None:
            channel = grpc.intercept_channel(channel, _BearerMetadata(token))
        return kms_v1.KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(channel=channel))
    credentials = AnonymousCredentials() if token is None else StaticToken(token)
    return kms_v1.KeyManagementServiceClient(credentials=credentials, transport="rest",
                                             client_options={"api_endpoint": ready["rest_endpoint"]})


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(emulator: dict, transport: str) -> kms_v1.KeyManagementServiceClient:
    return make_client(emulator, transport)


@pytest.fixture
def ring(client: kms_v1.KeyManagementServiceClient) -> str:
    """A fresh key ring per test: the emulator's state is shared by every test in the session."""
    return client.create_key_ring(request={"parent": PROJECT_LOCATION, "key_ring_id": uid("ring")}).name
