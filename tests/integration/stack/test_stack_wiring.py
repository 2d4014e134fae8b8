"""The generic READY-line wiring, the errors users see, and the venv builder's loud failure without Python 3.13."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kms_stack import Stack, StackError, launchers, procs

from .conftest import STACK_ROOT, run_cli

pytestmark = pytest.mark.integration


def test_unknown_cloud_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("up", "--only", "aws,oracle", state_dir=tmp_path)
    assert proc.returncode != 0
    assert "unknown cloud(s) ['oracle']" in proc.stderr


def test_emulator_package_missing_fails_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = launchers.EmulatorSpec("no_such_emulator_pkg", ("--port",), ("endpoint",), lambda p: {})
    monkeypatch.setitem(launchers.EMULATORS, "aliyun", spec)
    with pytest.raises(StackError, match="no_such_emulator_pkg.*not importable"):
        Stack(tmp_path).up("aliyun")
    assert Stack(tmp_path).env() == {}


def test_ready_line_emulator_is_started_read_and_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in emulator package speaking the READY protocol: proves the table-driven launch path end to end."""
    pkg = tmp_path / "pkgs" / "fake_ready_emulator"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent("""
        import argparse, json, socket, time
        p = argparse.ArgumentParser()
        p.add_argument("--host"); p.add_argument("--port", type=int)
        a = p.parse_args()
        s = socket.socket(); s.bind((a.host, a.port)); s.listen()
        print("READY " + json.dumps({"endpoint": f"http://{a.host}:{a.port}", "region": "r1"}), flush=True)
        time.sleep(600)
    """))
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))
    spec = launchers.EmulatorSpec("fake_ready_emulator", ("--port",),
                                  ("endpoint", "region", "access_key_id", "access_key_secret"),
                                  lambda p: {"access_key_id": "ak", "access_key_secret": "sk"})
    monkeypatch.setitem(launchers.EMULATORS, "aliyun", spec)
    stack = Stack(tmp_path / "state")
    settings = stack.up("aliyun")
    svc = stack.services()["aliyun"]
    try:
        assert settings["aliyun"]["region"] == "r1"
        assert settings["aliyun"]["access_key_id"] == "ak"  # defaults fill what the READY line leaves out
        port = int(settings["aliyun"]["endpoint"].rsplit(":", 1)[1])
        assert port < 32768 and svc.ports == {"port": port}
        assert Stack(tmp_path / "state").env() == settings  # a second Stack object reads stack.json
    finally:
        assert stack.down() == ["aliyun"]
    assert not procs.is_running(svc.pid, svc.start_time)


def test_setup_venv_fails_loudly_without_python_313(tmp_path: Path) -> None:
    work = tmp_path / "ls"
    work.mkdir()
    shutil.copy(STACK_ROOT / "setup-venv.sh", work)
    (work / "requirements.txt").write_text("# empty\n")
    bin_dir = tmp_path / "bin"  # a PATH with bash and core tools only: no pyenv, no python3.13
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "mktemp", "rm", "touch", "grep", "tail", "flock"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    env = {"PATH": str(bin_dir), "KMSB_LOCALSTACK_PYTHON": sys.executable}  # a 3.11: rejected
    proc = subprocess.run(["bash", str(work / "setup-venv.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "no Python 3.13 found" in proc.stderr
    assert not (work / ".venv").exists()


def test_setup_venv_is_quiet_when_up_to_date() -> None:
    first = subprocess.run(["bash", str(STACK_ROOT / "setup-venv.sh")], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(["bash", str(STACK_ROOT / "setup-venv.sh")], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""


def test_up_without_only_skips_missing_emulators_but_only_fails(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for cloud in ("azure", "gcp", "aliyun"):
        monkeypatch.setitem(launchers.EMULATORS, cloud,
                            launchers.EmulatorSpec(f"missing_{cloud}_pkg", ("--port",), (), lambda p: {}))
    stack = Stack(tmp_path)
    try:
        settings = stack.up(aws_backend="moto")
        assert list(settings) == ["aws"]
        assert set(stack.skipped) == {"azure", "gcp", "aliyun"}
        assert "missing_gcp_pkg" in stack.skipped["gcp"]
        with pytest.raises(StackError, match="missing_gcp_pkg"):
            stack.up("aws,gcp", aws_backend="moto")
        assert list(stack.env()) == ["aws"]  # the failed --only did not stop what was already up
    finally:
        stack.down()
    assert stack.env() == {}
