"""`stack up` with every cloud: the real emulator packages announce themselves through their READY lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kms_stack import procs

from .conftest import cli_json, run_cli

pytestmark = pytest.mark.integration

SHAPE = {
    "aws": {"endpoint_url", "region", "access_key_id", "secret_access_key"},
    "azure": {"vault_url", "ca_bundle", "token"},
    "gcp": {"grpc_target", "rest_endpoint", "project", "location"},
    "aliyun": {"endpoint", "region", "access_key_id", "access_key_secret"},
}


def test_up_all_prints_every_cloud_then_down_stops_them(tmp_path: Path) -> None:
    up = run_cli("up", "--output", "json", state_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert "skipped" not in up.stderr, up.stderr  # every emulator package is present
        settings = json.loads(up.stdout)
        assert list(settings) == ["aws", "azure", "gcp", "aliyun"]
        for cloud, keys in SHAPE.items():
            assert keys <= settings[cloud].keys(), (cloud, settings[cloud])
        assert (tmp_path / "azure").is_dir() and Path(settings["azure"]["ca_bundle"]).is_file()
        recorded = json.loads((tmp_path / "stack.json").read_text())["services"]
        for svc in recorded.values():
            assert procs.is_running(svc["pid"], svc["start_time"])
            assert all(port < 32768 for port in svc["ports"].values())
        assert cli_json("env", state_dir=tmp_path) == settings
    finally:
        down = run_cli("down", state_dir=tmp_path)
    assert down.returncode == 0 and "stopped: aws, azure, gcp, aliyun" in down.stdout
    for svc in recorded.values():
        assert not procs.is_running(svc["pid"], svc["start_time"])
