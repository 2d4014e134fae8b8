"""bench/sync_bench.py and bench/failover_bench.py run (briefly: a few keys, the HSM and the Aliyun emulator) in the
suite, so a change to the code they drive cannot leave them broken. Not a measurement: nothing here is timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    return out.stdout


def test_the_sync_bench_runs_and_prints_every_table() -> None:
    stdout = _run(str(BENCH / "sync_bench.py"), "--sizes", "10,20", "--providers", "hsm,aliyun", "--baseline", "2",
                  "--concurrency", "2")
    for row in ("broker CPU s/1k", "stack CPU s/1k", "re-plan s", "no-op apply s", "(raw provider.inventory())",
                "per provider (apply)", "on the empty stack / on the stack holding the apply's keys"):
        assert row in stdout, row
    sizes = [line.split()[0] for line in stdout.splitlines() if line.strip()[:2] in ("10", "20")]
    assert "10" in sizes and "20" in sizes


def test_the_failover_bench_runs_and_prints_every_row() -> None:
    stdout = _run(str(BENCH / "failover_bench.py"), "--clouds", "aliyun", "--samples", "2")
    for row in ("baseline (plain decrypt)", "up: cloud answers", "refused, circuit closed", "refused, circuit open",
                "<= 200 ms"):
        assert row in stdout, row


def test_the_emulator_bench_runs_for_each_cloud() -> None:
    stdout = _run(str(BENCH / "emulator_bench.py"), "--clouds", "gcp,aliyun,azure-mhsm", "--fill", "8",
                  "--sample", "3")
    for cloud in ("gcp", "aliyun", "azure-mhsm"):
        assert any(line.strip().startswith(f"{cloud}:") and "keys/s holding 11" in line
                   for line in stdout.splitlines()), (cloud, stdout)
