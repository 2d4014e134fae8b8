"""The provider conformance suite's world: the local stack once per session, ONE broker over every provider instance.

`kms_stack.Stack` (the code behind `kms-broker stack up`) starts LocalStack, the Azure, GCP and Aliyun emulators
in one state directory and moto_server in a second one (a state directory holds one AWS backend). A real gunicorn
broker (`tests/support/broker.start_broker`) gets every instance through `KMSB_PROVIDERS_JSON`, each table being
`{"kind": cloud, **stack block}` exactly as `stack env` prints it, plus a few knobs per instance. Everything is
stopped by PID at the end. A stack that cannot start (no pyenv 3.13 for LocalStack, a broken venv, a missing
emulator package) fails the whole suite with the reason; nothing is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from providers.base import Capabilities
from providers.registry import build_provider
from tests.support.broker import RunningBroker, start_broker

STACK_ROOT = Path(__file__).resolve().parents[3] / "localstack"
if importlib.util.find_spec("kms_stack") is None:  # editable installs made before kms_stack existed
    sys.path.insert(0, str(STACK_ROOT))

from kms_stack.stack import Stack, StackError  # noqa: E402

# Every provider instance the suite runs against, in the order the tests are parametrised.
INSTANCES = ("hsm", "aws", "aws-moto", "azure", "azure-hsm", "gcp-grpc", "gcp-rest", "aliyun")
# Which emulator (stack, cloud) serves each remote instance; `hsm` is the in-process PKCS#11 library (SoftHSM).
EMULATOR_OF = {"aws": ("main", "aws"), "aws-moto": ("moto", "aws"), "azure": ("main", "azure"),
               "azure-hsm": ("main", "azure"), "gcp-grpc": ("main", "gcp"), "gcp-rest": ("main", "gcp"),
               "aliyun": ("main", "aliyun")}
REMOTE_INSTANCES = tuple(n for n in INSTANCES if n in EMULATOR_OF)


def provider_tables(main: dict[str, dict], moto: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The broker's provider tables: the stack's blocks as printed, plus short timeouts so an outage is quick."""
    fast_aws = {"max_attempts": 2, "connect_timeout": 2, "read_timeout": 20}
    gcp = {**main["gcp"], "retries": 0, "timeout": 10}
    return {
        "aws": {**main["aws"], **fast_aws},
        "aws-moto": {**moto["aws"], **fast_aws},
        "azure": {**main["azure"], "retries": 1, "timeout": 10},
        "azure-hsm": {**main["azure"], "managed_hsm": True, "retries": 1, "timeout": 10},
        "gcp-grpc": {**gcp, "transport": "grpc", "key_ring": "conformance-grpc"},
        # the REST instance takes the other algorithm choices a GCP key version can have, and HSM protection
        "gcp-rest": {**gcp, "transport": "rest", "key_ring": "conformance-rest", "rsa_sign_padding": "PKCS1",
                     "rsa_decrypt_hash": "SHA1", "protection_level": "HSM"},
        "aliyun": {**main["aliyun"], "timeout": 5},
    }


def declared_capabilities(name: str, table: dict[str, Any]) -> Capabilities:
    """What the provider class declares for this instance's settings (the same object the broker consults).

    Building a provider opens no connection; the pkcs11 one sets SOFTHSM2_CONF, which is put back afterwards."""
    saved = os.environ.get("SOFTHSM2_CONF")
    provider = build_provider(name, table)
    try:
        return provider.capabilities
    finally:
        if name != "hsm":
            provider.close()
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved


@dataclass
class World:
    broker: RunningBroker
    api: requests.Session
    stacks: dict[str, Stack]
    tables: dict[str, dict[str, Any]]
    caps: dict[str, Capabilities]
    keys: dict[tuple, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.broker.url(path)

    def stop_emulator(self, instance: str) -> list[str]:
        """Stop (by PID) the emulator process behind `instance`; idempotent (two instances may share one)."""
        stack, cloud = EMULATOR_OF[instance]
        return self.stacks[stack].down(only=[cloud])

    def emulator_running(self, instance: str) -> bool:
        stack, cloud = EMULATOR_OF[instance]
        return cloud in self.stacks[stack].services()


def _up(stack: Stack, only: list[str], backend: str) -> dict[str, dict]:
    try:
        return stack.up(only=only, aws_backend=backend)
    except StackError as exc:
        stack.down()
        pytest.fail(f"the local stack ({', '.join(only)}, aws backend {backend}) could not start:\n{exc}",
                    pytrace=False)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("conformance")
    stacks = {"main": Stack(base / "stack"), "moto": Stack(base / "stack-moto")}
    broker: RunningBroker | None = None
    try:
        main = _up(stacks["main"], ["aws", "azure", "gcp", "aliyun"], "localstack")
        moto = _up(stacks["moto"], ["aws"], "moto")
        assert main["aws"].get("backend") == "localstack" and moto["aws"].get("backend") == "moto"
        tables = provider_tables(main, moto)
        broker = start_broker(base / "data", base / "logs", name="broker-conformance", workers=2,
                              env={"KMSB_PROVIDERS_JSON": json.dumps(tables)})
        hsm = _hsm_table(base / "data")
        all_tables = {"hsm": hsm, **tables}
        caps = {name: declared_capabilities(name, all_tables[name]) for name in INSTANCES}
        yield World(broker, broker.session(), stacks, all_tables, caps)
    finally:
        if broker is not None:
            broker.server.stop()
        for stack in stacks.values():
            stack.down()


def _hsm_table(data_dir: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads((data_dir / "broker.toml").read_text())["providers"]["hsm"]
