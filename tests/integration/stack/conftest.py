"""Fixtures for the stack command: run `python -m kms_stack` exactly as a user would, one LocalStack per session."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STACK_ROOT = Path(__file__).resolve().parents[3] / "localstack"
if importlib.util.find_spec("kms_stack") is None:  # editable installs made before kms_stack existed
    sys.path.insert(0, str(STACK_ROOT))


def run_cli(*args: str, state_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(STACK_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "kms_stack", *args, "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def cli_json(*args: str, state_dir: Path) -> dict:
    proc = run_cli(*args, "--output", "json", state_dir=state_dir)
    if proc.returncode != 0:
        pytest.fail(f"`stack {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return json.loads(proc.stdout)


@dataclass
class CliStack:
    state_dir: Path
    settings: dict

    def recorded(self) -> dict:
        return json.loads((self.state_dir / "stack.json").read_text())["services"]


@pytest.fixture(scope="session")
def localstack_cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    """`stack up --only aws` with LocalStack, once per session; a missing Python 3.13 fails here, loudly."""
    state_dir = tmp_path_factory.mktemp("stack-localstack")
    stack = CliStack(state_dir, cli_json("up", "--only", "aws", state_dir=state_dir))
    yield stack
    run_cli("down", state_dir=state_dir)  # idempotent: test_down may already have stopped it
