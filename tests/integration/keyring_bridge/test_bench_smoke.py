"""bench/keyring_bench.py runs (briefly) in the suite, so a change to the code it drives cannot leave it broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "keyring_bench.py"


def test_the_keyring_bench_runs_and_prints_every_row():
    out = subprocess.run([sys.executable, str(BENCH), "--requests", "10", "--duration", "0.2", "--threads", "2",
                          "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("baseline: GET /v1/sys/health", "baseline: tune", "key read: data/1 (latest)",
                "key read: data/1?version=1", "policy decision", "store: entry + version rows", "the same row kept", "HSM unseal",
                "audit record", "KeyringService.read (all of it)", "target <= 2 ms"):
        assert row in out.stdout, row
