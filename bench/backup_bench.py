"""Backup and restore benchmark: archive size and wall time of create, verify and restore, by store size.

    python bench/backup_bench.py [--keys 100 500] [--entries 50]

For each size: a fresh data folder (SQLite, its own SoftHSM token) with N keys (one encrypt each) and --entries
keyring entries, served by `kms-broker serve`; custodians 3-of-2; then, each as the CLI an operator runs:
`backup create` (while serving), `backup verify` (with 2 shares: opens the payload) and `backup restore` (new token,
new folder). Baseline in the same run: copying the SQLite file with the online backup API (the floor of any
consistent snapshot). Prints one table.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.broker import start_broker  # noqa: E402

CLI = [sys.executable, "-m", "broker.cli"]


def _cli(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{args[:2]} failed: {done.stderr[-500:]}")
    return time.perf_counter() - started, done.stdout


def run(keys: int, entries: int, base: Path) -> dict:
    broker = start_broker(base / "a", base / "logs", workers=1)
    try:
        s = broker.session()
        for _ in range(keys):
            key_id = s.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
            s.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": base64.b64encode(b"x").decode()})
        s.post(broker.url("/keyring/mounts"), json={"Mount": "kv"})
        for n in range(entries):
            s.post(broker.url("/keyring/entries"), json={"Mount": "kv", "Id": str(n)})
        _, out = _cli("backup", "custodians", "--shares", "3", "--threshold", "2", "--data-dir", str(broker.data_dir),
                      "--output", "json")
        shares = json.loads(out)["shares"]
        started = time.perf_counter()
        src = sqlite3.connect(broker.data_dir / "broker.db")
        dst = sqlite3.connect(base / "copy.db")
        src.backup(dst)
        src.close()
        dst.close()
        baseline = time.perf_counter() - started
        archive = base / "a.kmsb"
        create, _ = _cli("backup", "create", "--out", str(archive), "--data-dir", str(broker.data_dir))
    finally:
        broker.server.stop()
    verify, _ = _cli("backup", "verify", str(archive), "--share", shares[0], "--share", shares[1])
    restore, _ = _cli("backup", "restore", str(archive), "--data-dir", str(base / "restored"), "--share", shares[1],
                      "--share", shares[2])
    return {"keys": keys, "entries": entries, "db_kib": (base / "copy.db").stat().st_size // 1024,
            "archive_kib": archive.stat().st_size // 1024, "baseline_s": baseline, "create_s": create,
            "verify_s": verify, "restore_s": restore}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--entries", type=int, default=50)
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    for keys in args.keys:
        with tempfile.TemporaryDirectory(prefix="kmsb-backup-bench-") as folder:
            rows.append(run(keys, args.entries, Path(folder)))
    print(f"{'keys':>6} {'entries':>7} {'store KiB':>9} {'archive KiB':>11} {'sqlite copy s':>13} "
          f"{'create s':>8} {'verify s':>8} {'restore s':>9}")
    for r in rows:
        print(f"{r['keys']:>6} {r['entries']:>7} {r['db_kib']:>9} {r['archive_kib']:>11} {r['baseline_s']:>13.3f} "
              f"{r['create_s']:>8.2f} {r['verify_s']:>8.2f} {r['restore_s']:>9.2f}")
    print(f"(CLI wall times include process start; cores: {os.cpu_count()}; load average before "
          f"{load_before:.1f}, after {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
