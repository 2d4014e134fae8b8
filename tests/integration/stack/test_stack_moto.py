"""`stack up --only aws --aws-backend moto`: the second, independent AWS emulator, same lifecycle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kms_stack import procs

from .conftest import cli_json, run_cli
from .test_stack_localstack import AWS_KEYS, kms_client

pytestmark = pytest.mark.integration


def test_moto_up_roundtrip_env_down(tmp_path: Path) -> None:
    settings = cli_json("up", "--only", "aws", "--aws-backend", "moto", state_dir=tmp_path)
    try:
        assert AWS_KEYS <= settings["aws"].keys() and settings["aws"]["backend"] == "moto"
        kms = kms_client(settings)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"moto", EncryptionContext={"a": "b"})["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"moto"
        assert cli_json("env", state_dir=tmp_path) == settings
        switch = run_cli("up", "--only", "aws", state_dir=tmp_path)  # localstack while moto is up: refused
        assert switch.returncode != 0 and "already up with backend 'moto'" in switch.stderr
    finally:
        recorded = json.loads((tmp_path / "stack.json").read_text())["services"]["aws"]
        down = run_cli("down", state_dir=tmp_path)
    assert down.returncode == 0 and "stopped: aws" in down.stdout
    assert not procs.is_running(recorded["pid"], recorded["start_time"])


def test_concurrent_ups_start_one_process(tmp_path: Path) -> None:
    """Two `up`s racing on one state dir: the lock makes the second see the first's process."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: cli_json("up", "--only", "aws", "--aws-backend", "moto", state_dir=tmp_path),
                             range(2)))
    try:
        assert outs[0] == outs[1]
        recorded = json.loads((tmp_path / "stack.json").read_text())["services"]
        assert list(recorded) == ["aws"]
        mine = [line for line in _ps() if f"-p {outs[0]['aws']['endpoint_url'].rsplit(':', 1)[1]}" in line]
        assert len(mine) == 1, mine
    finally:
        assert run_cli("down", state_dir=tmp_path).returncode == 0


def _ps() -> list[str]:
    import subprocess

    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout.splitlines()
