"""The remaining benchmarks run (briefly) in the suite, so a change to what they drive cannot leave them broken:
bench/aws_bench.py, bench/backup_bench.py and bench/cluster_bench.py (HAProxy in front of 1-3 nodes on PostgreSQL,
then a kill -9 under load)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _rate(out: str, row: str) -> float:
    """The first number after a row's label (its req/s)."""
    match = re.search(re.escape(row) + r"\s+([\d.]+)\s", out)
    assert match is not None, f"{row!r} missing:\n{out}"
    return float(match.group(1))


def test_the_aws_bench_runs_every_row() -> None:
    out = _run(str(BENCH / "aws_bench.py"), "--connections", "2", "--duration", "1")
    for row in ("no-op (GET /v1/health)", "native Encrypt 64 B + ctx", "AWS Encrypt 64 B + ctx",
                "native Decrypt 64 B + ctx", "AWS Decrypt 64 B + ctx"):
        assert _rate(out, row) > 0
    assert re.search(r"AWS / native Encrypt: [\d.]+", out) and re.search(r"AWS / native Decrypt: [\d.]+", out), out


def test_the_backup_bench_runs_create_verify_restore() -> None:
    out = _run(str(BENCH / "backup_bench.py"), "--keys", "3", "--entries", "2")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+3\s+2\s", line)]
    assert len(rows) == 1, out
    assert all(float(value) > 0 for value in rows[0][2:]), out  # sizes and the four timings


def test_the_cluster_bench_runs_through_haproxy_and_a_kill() -> None:
    out = _run(str(BENCH / "cluster_bench.py"), "--connections", "2", "--duration", "1", "--warmup", "1",
               "--kill-threads", "2")
    for row in ("node a, no proxy: Encrypt (baseline)", "HAProxy -> 1 node: Encrypt", "HAProxy -> 2 nodes: Encrypt",
                "HAProxy -> 3 nodes: Encrypt"):
        assert _rate(out, row) > 0
    assert re.search(r"kill -9 of node b .*every thread served again within [\d.]+s", out), out
