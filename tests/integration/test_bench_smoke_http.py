"""The hot-path benchmarks run (briefly) in the suite, so a change to the code they drive cannot leave them broken:
bench/http_bench.py (every row but LocalStack's, whose stack start is the slow part), bench/hotpath_profile.py and
bench/envelope_bench.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_http_bench_runs_and_prints_every_row_and_target() -> None:
    out = _run(str(BENCH / "http_bench.py"), "--only", "native,aws,keyring", "--connections", "2", "--duration", "1",
               "--warmup", "1", "--sequential", "20")
    for row in ("no-op: bare Flask JSON (API listener)", "native Encrypt 64 B + context", "native Decrypt",
                "native GenerateDataKey AES_256", "AWS Encrypt (SigV4)", "AWS Decrypt (SigV4)",
                "AWS GenerateDataKey (SigV4)", "no-op: bare Flask JSON (keyring listener)",
                "keyring GET /v1/kv/bench/data/1", "keyring GET data/1, new conn/request", "targets (issue 14):"):
        assert row in out, row
    full_speed, _, paced = out.partition("\npaced: ")
    rows = [line for line in full_speed.splitlines() if line.startswith(("native ", "AWS ", "keyring GET /v1"))]
    assert len(rows) == 7, out
    for line in rows:  # conns, req/s, p50, p99, errors, CPU s/1k, context switches per request
        numbers = re.search(r"\s(\d+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+(\d+)\s+[\d.]+\s+([\d.]+)\s", line)
        assert numbers is not None, line
        assert float(numbers.group(2)) > 0 and numbers.group(3) == "0", line
        assert float(numbers.group(4)) > 0, line  # the worker hands each request from its poller to a thread: never 0
    paced_rows = [line for line in paced.split("\n\n")[0].splitlines() if line.startswith(("no-op", "native ", "AWS ",
                                                                                               "keyring GET /v1"))]
    assert len(paced_rows) == 9, out
    for line in paced_rows:  # offered, req/s, p50, p99, errors, CPU s/1k: offered about half the full-speed req/s
        numbers = re.search(r"\s([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+(\d+)\s+[\d.]+$", line)
        assert numbers is not None, line
        assert float(numbers.group(1)) > 0 and float(numbers.group(2)) <= 1.2 * float(numbers.group(1)), line
        assert numbers.group(3) == "0", line
    assert out.count(" met ") + out.count("NOT met") >= 10


def test_the_hotpath_profile_runs_with_its_steps() -> None:
    out = _run(str(BENCH / "hotpath_profile.py"), "--requests", "30", "--only", "noop,encrypt,aws,keyring",
               "--steps", "encrypt")
    for row in ("noop", "encrypt", "aws", "keyring", "gate: Gate.run", "audit record (Gate._write)", "fsync"):
        assert row in out, row


def test_the_hotpath_profile_runs_in_rounds() -> None:
    out = _run(str(BENCH / "hotpath_profile.py"), "--requests", "20", "--rounds", "2", "--only", "encrypt,aws")
    for row in ("encrypt", "aws"):
        numbers = re.search(rf"^{row}\s+(\d+)\s+(\d+)\s+([\d.]+)$", out, re.M)
        assert numbers is not None, out
        cpu, thread, door = (float(n) for n in numbers.groups())
        assert cpu >= thread > door > 0, out  # the door's share is part of the thread's, which is part of the process's


def test_the_hotpath_profile_runs_for_callgrind() -> None:
    for extra in ([], ["--door-only"]):
        out = _run(str(BENCH / "hotpath_profile.py"), "--requests", "10", "--instructions", "aws", *extra)
        assert "10 requests counted" in out and ("door only" in out) == bool(extra), out


def test_the_envelope_bench_runs() -> None:
    out = _run(str(BENCH / "envelope_bench.py"), "--seconds", "0.2", "--stream-mib", "8")
    for row in ("raw AES-256-GCM, 4 KiB (baseline)", "envelope encrypt 4 KiB, cached data key",
                "envelope decrypt 4 KiB, cached data key", "envelope encrypt 4 KiB, no cache",
                "raw AES-256-GCM, 1 MiB frames", "envelope encrypt stream", "envelope decrypt stream"):
        assert row in out, row
    targets = [line for line in out.splitlines() if "met" in line]  # "met" or "NOT met (>= ...)", load decides
    assert len(targets) == 2 and "GiB/s" in out, out


def test_the_inprocess_envelope_bench_runs() -> None:
    out = _run(str(BENCH / "envelope_inproc.py"), "-n", "500", "--repeats", "1")
    assert re.search(r"encrypt [0-9.]+ us \([0-9,]+/s\)\s+decrypt [0-9.]+ us \([0-9,]+/s\)", out), out


def test_the_wal_bench_runs_and_prints_each_threshold() -> None:
    out = _run(str(BENCH / "wal_bench.py"), "--batches", "60", "--rounds", "1", "--pages", "256,1000")
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert [r[0] for r in rows] == ["256", "1000"], out
    assert rows[0][2] == "1.00" and all(float(r[1]) > 0 for r in rows), out
