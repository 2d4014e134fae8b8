"""A real gunicorn broker (SQLite + SoftHSM, plus the aliyun provider on its emulator) for the AWS front door.

Clients are the real ones: boto3 / botocore (endpoint_url), the AWS CLI (subprocess), the AWS Encryption SDK.
Credentials are issued through the broker's native API, as an operator would.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.config import Config

from tests.integration.aliyun_emulator.conftest import launch
from tests.support.broker import RunningBroker, start_broker

REGION = "eu-central-1"
ACCOUNT = "111122223333"
STORES = ["hsm", "aliyun"]  # custom key store id = broker provider name: the pkcs11 root of trust and one cloud


@dataclass(frozen=True)
class Creds:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return f"Creds({self.access_key_id})"


@pytest.fixture(scope="session")
def aliyun_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    key_id, secret = f"LTAI{secrets.token_hex(6)}", secrets.token_urlsafe(18)
    server, port = launch(tmp_path_factory.mktemp("aliyun-awsfd"), "aliyun-kms-awsfd",
                          "--access-key", f"{key_id}:{secret}")
    try:
        yield {"kind": "aliyun", "endpoint": f"http://127.0.0.1:{port}", "region": "cn-hangzhou",
               "access_key_id": key_id, "access_key_secret": secret, "timeout": 5}
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws_broker(tmp_path_factory: pytest.TempPathFactory, aliyun_config: dict) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("aws-front-door")
    running = start_broker(base / "data", base / "logs", name="broker-aws", workers=2,
                           env={"KMSB_PROVIDERS_JSON": json.dumps({"aliyun": aliyun_config})})
    yield running
    running.server.stop()


@pytest.fixture(scope="session")
def issue(aws_broker: RunningBroker) -> Callable[..., Creds]:
    def make(*policies: str, name: str = "") -> Creds:
        r = aws_broker.session().post(aws_broker.url("/aws-credentials"),
                                      json={"Policies": list(policies), "Name": name})
        assert r.status_code == 201, r.text
        return Creds(r.json()["access_key_id"], r.json()["secret_access_key"])
    return make


@pytest.fixture(scope="session")
def root_creds(issue) -> Creds:
    return issue("root", name="aws-tests")


def kms_client(broker: RunningBroker, creds: Creds, region: str = REGION, **config):
    return boto3.client("kms", endpoint_url=broker.addr, region_name=region, aws_access_key_id=creds.access_key_id,
                        aws_secret_access_key=creds.secret_access_key,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config))


@pytest.fixture(scope="session")
def kms(aws_broker: RunningBroker, root_creds: Creds):
    return kms_client(aws_broker, root_creds)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return request.param


def botocore_session_for(broker: RunningBroker, creds: Creds, folder: Path) -> botocore.session.Session:
    """A botocore session whose KMS endpoint is the broker (AWS config file `services` section), nothing else."""
    config = folder / "aws-config"
    config.write_text(
        "[default]\n"
        f"region = {REGION}\n"
        f"aws_access_key_id = {creds.access_key_id}\n"
        f"aws_secret_access_key = {creds.secret_access_key}\n"
        "services = kms-broker\n\n"
        "[services kms-broker]\n"
        "kms =\n"
        f"  endpoint_url = {broker.addr}\n")
    session = botocore.session.Session()
    session.set_config_variable("config_file", str(config))
    session.set_config_variable("credentials_file", str(folder / "no-credentials"))
    return session


def cli_env(broker: RunningBroker, creds: Creds, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=creds.access_key_id, AWS_SECRET_ACCESS_KEY=creds.secret_access_key,
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(folder / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-credentials"), AWS_MAX_ATTEMPTS="1",
               AWS_PAGER="")
    return env
