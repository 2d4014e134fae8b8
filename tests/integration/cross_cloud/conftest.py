"""The real local stack (LocalStack + our Azure, GCP and Aliyun emulators + SoftHSM), started once per session,
and a real broker (gunicorn) that has every cloud as a provider next to its pkcs11 root of trust."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from kms_stack.stack import Stack

from tests.support.broker import RunningBroker, start_broker

pytestmark = pytest.mark.integration

CLOUDS = ["aws", "azure", "gcp", "aliyun"]
# The five providers of the matrix: the HSM root of trust and one instance per cloud. "azure-mhsm" is the same
# emulator seen as a Managed HSM (symmetric keys natively, and symmetric BYOK, which a standard vault lacks).
PROVIDERS = ["hsm", "aws", "azure", "gcp", "aliyun"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def providers_json(env: dict[str, dict]) -> dict[str, dict]:
    out = {name: dict(cfg) for name, cfg in env.items()}
    if "azure" in out:
        out["azure"]["retries"] = 0
        out["azure-mhsm"] = {**out["azure"], "managed_hsm": True}
    if "gcp" in out:
        out["gcp"].setdefault("transport", "grpc")
    return out


@dataclass
class World:
    stack: Stack
    env: dict[str, dict]
    broker: RunningBroker
    api: requests.Session

    def key(self, provider: str, **body: object) -> str:
        r = self.api.post(self.broker.url("/keys"), json={"Provider": provider, **body})
        assert r.status_code == 201, r.text
        return r.json()["KeyMetadata"]["KeyId"]


def start_world(base: Path, name: str, clouds: list[str] = CLOUDS) -> World:
    stack = Stack(base / "stack")
    env = stack.up(only=clouds)
    try:
        broker = start_broker(base / "data", base / "logs", name=name, workers=1,
                              env={"KMSB_PROVIDERS_JSON": json.dumps(providers_json(env)),
                                   "KMSB_AUTH_CACHE_SECONDS": "0"})
    except BaseException:
        stack.down()
        raise
    return World(stack, env, broker, broker.session())


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(tmp_path_factory.mktemp("cross-cloud"), "broker-cross-cloud")
    try:
        yield w
    finally:
        w.broker.server.stop()
        w.stack.down()


def audit_records(broker: RunningBroker) -> list[dict]:
    path = broker.data_dir / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
