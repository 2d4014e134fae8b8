"""Start the emulator as a real process once per session; talk to it only through the official SDK."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_util.models import RuntimeOptions

from tests.support.procs import Server, free_port, port_open, start_server

REPO = Path(__file__).resolve().parents[3]
EMULATOR_DIR = REPO / "localstack"


@dataclass
class Emulator:
    server: Server
    endpoint: str
    access_key_id: str
    access_key_secret: str
    ready: dict


def read_ready(server: Server) -> dict:
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("READY "):
            return json.loads(line[len("READY "):])
    raise AssertionError("no READY line")


def launch(tmp: Path, name: str, *extra: str) -> tuple[Server, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "aliyun_kms_emulator", "--host", "127.0.0.1", "--port", str(port), *extra]
    server = start_server(name, cmd, log_dir=tmp, cwd=EMULATOR_DIR, timeout=30,
                          ready=lambda: port_open(port) and "READY " in (tmp / f"{name}.log").read_text())
    return server, port


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    key_id, secret = f"LTAI{secrets.token_hex(6)}", secrets.token_urlsafe(18) + "/+="
    tmp = tmp_path_factory.mktemp("aliyun-emulator")
    server, port = launch(tmp, "aliyun-kms", "--access-key", f"{key_id}:{secret}",
                          "--access-key", "LTAIsecond:second-secret")
    try:
        yield Emulator(server, f"127.0.0.1:{port}", key_id, secret, read_ready(server))
    finally:
        server.stop()


RUNTIME = RuntimeOptions(autoretry=False, max_attempts=0, read_timeout=20000, connect_timeout=5000)


def make_client(endpoint: str, key_id: str, secret: str, signature_algorithm: str | None = None) -> Client:
    config = Config(access_key_id=key_id, access_key_secret=secret, endpoint=endpoint, protocol="http",
                    region_id="cn-hangzhou")
    if signature_algorithm:
        config.signature_algorithm = signature_algorithm
    return Client(config)


@pytest.fixture(scope="session", params=["acs3", "v2"])
def kms(request: pytest.FixtureRequest, emulator: Emulator) -> Client:
    """Both signing schemes: the SDK default (ACS3-HMAC-SHA256) and signature_algorithm='v2' (HMAC-SHA1)."""
    algorithm = None if request.param == "acs3" else "v2"
    return make_client(emulator.endpoint, emulator.access_key_id, emulator.access_key_secret, algorithm)


@pytest.fixture(scope="session")
def client_factory(emulator: Emulator) -> Callable[..., Client]:
    def factory(key_id: str | None = None, secret: str | None = None, algorithm: str | None = None) -> Client:
        return make_client(emulator.endpoint, key_id or emulator.access_key_id,
                           secret or emulator.access_key_secret, algorithm)

    return factory
