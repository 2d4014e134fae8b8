"""`stack up --only aws` (LocalStack host mode) → boto3 KMS over the printed settings → `env` → `down`.

Tests run in file order; the last one stops the session's LocalStack and checks it is gone by PID.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from kms_stack import procs

from .conftest import CliStack, cli_json, run_cli

pytestmark = pytest.mark.integration

AWS_KEYS = {"endpoint_url", "region", "access_key_id", "secret_access_key"}


def kms_client(settings: dict):
    aws = settings["aws"]
    return boto3.client("kms", endpoint_url=aws["endpoint_url"], region_name=aws["region"],
                        aws_access_key_id=aws["access_key_id"], aws_secret_access_key=aws["secret_access_key"])


def test_up_prints_only_aws_in_the_documented_shape(localstack_cli_stack: CliStack) -> None:
    settings = localstack_cli_stack.settings
    assert list(settings) == ["aws"]
    assert AWS_KEYS <= settings["aws"].keys()
    assert settings["aws"]["backend"] == "localstack"
    host, port = settings["aws"]["endpoint_url"].removeprefix("http://").split(":")
    assert host == "127.0.0.1" and int(port) < 32768


def test_recorded_pid_is_the_running_localstack(localstack_cli_stack: CliStack) -> None:
    svc = localstack_cli_stack.recorded()["aws"]
    assert procs.is_running(svc["pid"], svc["start_time"])
    assert "localstack.runtime.main" in " ".join(svc["cmd"])
    assert svc["cmd"][0].endswith("localstack/.venv/bin/python")


def test_boto3_encrypt_decrypt_with_context(localstack_cli_stack: CliStack) -> None:
    kms = kms_client(localstack_cli_stack.settings)
    key_id = kms.create_key(Description="stack test")["KeyMetadata"]["KeyId"]
    context = {"tenant": "t1", "purpose": "stack-test"}
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret bytes", EncryptionContext=context)["CiphertextBlob"]
    assert b"secret bytes" not in blob
    out = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
    assert out["Plaintext"] == b"secret bytes"
    assert out["KeyId"].endswith(key_id)
    with pytest.raises(ClientError) as err:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "t2", "purpose": "stack-test"})
    assert err.value.response["Error"]["Code"] == "InvalidCiphertextException"


def test_env_repeats_the_settings_of_up(localstack_cli_stack: CliStack) -> None:
    assert cli_json("env", state_dir=localstack_cli_stack.state_dir) == localstack_cli_stack.settings
    text = run_cli("env", state_dir=localstack_cli_stack.state_dir)
    assert text.returncode == 0 and "endpoint_url = http://127.0.0.1:" in text.stdout


def test_up_again_keeps_the_running_process(localstack_cli_stack: CliStack) -> None:
    pid = localstack_cli_stack.recorded()["aws"]["pid"]
    assert cli_json("up", "--only", "aws", state_dir=localstack_cli_stack.state_dir) == localstack_cli_stack.settings
    assert localstack_cli_stack.recorded()["aws"]["pid"] == pid


def test_localstack_stays_inside_its_state_dir(localstack_cli_stack: CliStack) -> None:
    data = localstack_cli_stack.state_dir / "aws"
    # host mode roots LocalStack's cache/lib/tmp under FILESYSTEM_ROOT, and plux's cache under XDG_CACHE_HOME
    assert (data / "var" / "lib" / "localstack" / "cache").is_dir()
    assert (data / "cache" / "plux").is_dir()


def test_down_stops_the_process_by_pid(localstack_cli_stack: CliStack) -> None:
    svc = localstack_cli_stack.recorded()["aws"]
    proc = run_cli("down", state_dir=localstack_cli_stack.state_dir)
    assert proc.returncode == 0, proc.stderr
    assert "stopped: aws" in proc.stdout
    assert not procs.is_running(svc["pid"], svc["start_time"])
    assert localstack_cli_stack.recorded() == {}
    assert cli_json("env", state_dir=localstack_cli_stack.state_dir) == {}
