"""The provider conformance suite's world: the local stack once per session, ONE broker over every provider instance.

`kms_stack.Stack` (the code behind `kms-broker stack up`) starts LocalStack, moto_server and the Azure, GCP and
Aliyun emulators in three state directories, side by side (a state directory holds one AWS backend). A real gunicorn
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from providers.base import Capabilities
from providers.registry import build_provider
from tests.support.broker import RunningBroker, start_broker
from tests.support.hsm import TestToken

STACK_ROOT = Path(__file__).resolve().parents[3] / "localstack"
if importlib.util.find_spec("kms_stack") is None:  # editable installs made before kms_stack existed
    sys.path.insert(0, str(STACK_ROOT))

from kms_stack import procs  # noqa: E402
from kms_stack.stack import Stack  # noqa: E402

# Every provider instance the suite runs against, in the order the tests are parametrised.
INSTANCES = ("hsm", "aws", "aws-moto", "azure", "azure-hsm", "gcp-grpc", "gcp-rest", "aliyun")
# Which emulator (stack, cloud) serves each remote instance; `hsm` is the in-process PKCS#11 library (SoftHSM).
EMULATOR_OF = {"aws": ("localstack", "aws"), "aws-moto": ("moto", "aws"), "azure": ("clouds", "azure"),
               "azure-hsm": ("clouds", "azure"), "gcp-grpc": ("clouds", "gcp"), "gcp-rest": ("clouds", "gcp"),
               "aliyun": ("clouds", "aliyun")}
# Three state directories started side by side (a state directory holds one AWS backend).
STACKS = {"localstack": (["aws"], "localstack"), "moto": (["aws"], "moto"), "clouds": (["azure", "gcp", "aliyun"],
                                                                                      "localstack")}
REMOTE_INSTANCES = tuple(n for n in INSTANCES if n in EMULATOR_OF)


def provider_tables(up: dict[str, dict[str, dict]]) -> dict[str, dict[str, Any]]:
    """The broker's provider tables: the stack's blocks as printed, plus short timeouts so an outage is quick."""
    main, moto = {**up["localstack"], **up["clouds"]}, up["moto"]
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


def declared_capabilities(name: str, table: dict[str, Any], session_token: dict[str, str]) -> Capabilities:
    """What the provider class declares for this instance's settings (the same object the broker consults).

    The pkcs11 provider probes its token for what it offers; SoftHSM serves one token configuration per process, so
    it is asked over this session's token (the same library, so the same answers), never the broker's own: opening
    that one here would take the library away from every other test of this process. SOFTHSM2_CONF, which building
    it sets, is put back afterwards."""
    saved = os.environ.get("SOFTHSM2_CONF")
    if table.get("kind") == "pkcs11":
        table = {**table, **session_token}
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
    keys: dict[tuple, str] = field(default_factory=dict)  # shared keys; also what was learnt per provider

    def url(self, path: str) -> str:
        return self.broker.url(path)

    def stop_emulator(self, instance: str) -> None:
        """Kill (by PID, 2 s grace: an outage, not a shutdown) the emulator process behind `instance`, then let the
        stack drop its record. Idempotent: two instances may share one emulator."""
        stack, cloud = EMULATOR_OF[instance]
        svc = self.stacks[stack].services().get(cloud)
        if svc is not None:
            procs.stop(svc.pid, svc.start_time, timeout=2)
        self.stacks[stack].down(only=[cloud])

    def emulator_running(self, instance: str) -> bool:
        stack, cloud = EMULATOR_OF[instance]
        return cloud in self.stacks[stack].services()


def _up(stack: Stack, only: list[str], backend: str) -> dict[str, dict]:
    """Start one stack; for AWS also make one call, so LocalStack loads its KMS service (~13 s) during setup."""
    settings = stack.up(only=only, aws_backend=backend)
    if "aws" in settings:
        aws = settings["aws"]
        boto3.client("kms", endpoint_url=aws["endpoint_url"], region_name=aws["region"],
                     aws_access_key_id=aws["access_key_id"], aws_secret_access_key=aws["secret_access_key"]).list_keys()
    return settings


def _up_all(stacks: dict[str, Stack]) -> dict[str, dict[str, dict]]:
    """Every stack at once (LocalStack dominates); any failure fails the suite with the reason."""
    with ThreadPoolExecutor(len(stacks)) as pool:
        futures = {name: pool.submit(_up, stacks[name], *STACKS[name]) for name in stacks}
    failures = []
    for name, future in futures.items():
        exc = future.exception()
        if exc is not None:
            failures.append(f"{name} ({', '.join(STACKS[name][0])}): {exc}")
    if failures:
        pytest.fail("the local stack could not start:\n" + "\n".join(failures), pytrace=False)
    return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, hsm_token: TestToken) -> Iterator[World]:
    base = tmp_path_factory.mktemp("conformance")
    stacks = {name: Stack(base / f"stack-{name}") for name in STACKS}
    broker: RunningBroker | None = None
    try:
        up = _up_all(stacks)
        assert up["localstack"]["aws"].get("backend") == "localstack" and up["moto"]["aws"].get("backend") == "moto"
        tables = provider_tables(up)
        broker = start_broker(base / "data", base / "logs", name="broker-conformance", workers=2,
                              env={"KMSB_PROVIDERS_JSON": json.dumps(tables)})
        hsm = _hsm_table(base / "data")
        all_tables = {"hsm": hsm, **tables}
        caps = {name: declared_capabilities(name, all_tables[name], hsm_token.config()) for name in INSTANCES}
        yield World(broker, broker.session(), stacks, all_tables, caps)
    finally:
        if broker is not None:
            broker.server.stop()
        for stack in stacks.values():
            stack.down()


def _hsm_table(data_dir: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads((data_dir / "broker.toml").read_text())["providers"]["hsm"]
