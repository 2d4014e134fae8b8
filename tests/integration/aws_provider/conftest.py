"""AWS provider fixtures: LocalStack and moto_server started once per session (tests/support/procs), stopped by PID.

The launch commands and environments come from kms_stack.launchers, so these are the same processes
`kms-broker stack up` runs. A missing Python 3.13 for LocalStack fails the LocalStack tests with the reason.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.support.procs import Server, start_server

STACK_ROOT = Path(__file__).resolve().parents[3] / "localstack"
if importlib.util.find_spec("kms_stack") is None:  # editable installs made before kms_stack existed
    sys.path.insert(0, str(STACK_ROOT))

from kms_stack import launchers  # noqa: E402

from providers.aws import AwsProvider  # noqa: E402

BACKENDS = ("localstack", "moto")


def start_aws(backend: str, root: Path) -> tuple[Server, dict]:
    """Start one AWS emulator with kms_stack's launch table; return the server and its settings."""
    try:
        launch = launchers.AWS_BACKENDS[backend](root / "data")
    except launchers.LaunchError as e:
        pytest.fail(f"cannot start {backend}: {e}")
    log_dir = root / "logs"
    log = log_dir / f"{backend}.log"
    found: dict = {}

    def ready() -> bool:
        settings = launch.probe(log)
        if settings:
            found.update(settings)
        return bool(settings)

    server = start_server(backend, launch.cmd, log_dir=log_dir, ready=ready, env=launch.env, cwd=launch.cwd,
                          timeout=launch.timeout)
    return server, found


@pytest.fixture(scope="session")
def aws_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Server, dict]]]:
    """Started lazily, one per backend per session."""
    servers: dict[str, tuple[Server, dict]] = {}

    class Lazy(dict):
        def __missing__(self, backend: str) -> tuple[Server, dict]:
            servers[backend] = start_aws(backend, tmp_path_factory.mktemp(f"aws-{backend}"))
            self[backend] = servers[backend]
            return servers[backend]

    yield Lazy()
    for server, _ in servers.values():
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def aws_settings(aws_servers: dict, backend: str) -> dict:
    return aws_servers[backend][1]


@pytest.fixture
def provider(aws_settings: dict) -> Iterator[AwsProvider]:
    p = AwsProvider.from_config("aws-test", {**aws_settings, "max_attempts": 2})
    yield p
    p.close()


@pytest.fixture
def raw_kms(aws_settings: dict):
    """A plain boto3 client, used only as an oracle (DescribeKey, VerifyMac) next to the provider under test."""
    return boto3.client("kms", endpoint_url=aws_settings["endpoint_url"], region_name=aws_settings["region"],
                        aws_access_key_id=aws_settings["access_key_id"],
                        aws_secret_access_key=aws_settings["secret_access_key"])


def emulator_gap(request: pytest.FixtureRequest, backend: str, **reasons: str) -> None:
    """A behaviour an emulator does not emulate (keyword = backend): strict xfail on that backend only, so the
    test still runs there and fails loudly the day the emulator starts to emulate it."""
    if backend in reasons:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{backend} does not emulate {reasons[backend]}"))


def moto_gap(request: pytest.FixtureRequest, backend: str, reason: str) -> None:
    emulator_gap(request, backend, moto=reason)
