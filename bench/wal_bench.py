"""What the SQLite store copy of the audit log costs per batch, by WAL checkpoint threshold.

    python bench/wal_bench.py [--batches 4000] [--records 3] [--pages 256,1000,4000] [--rounds 2]

Each audited request's record is inserted into `audit_events` (the row and its eight B-trees: a few WAL pages per
commit) by the audit writer's leader, inside the audit lock every process of the host waits on. SQLite checkpoints
the WAL from inside the commit that crosses `wal_autocheckpoint` pages: it copies the pages back into the database
and fsyncs it there, in that request's thread. This bench commits batches of records through the broker's own
`Store` (its pragmas) and `StoreSink` (its insert), in one process, and prints for each threshold the process CPU
per batch (checkpoints included), the commit wall time p50/p99/max, and the WAL's peak size; the first threshold is
the baseline of the rows after it, measured in the same run (rounds interleaved; medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import broker.store as store_module  # noqa: E402
from broker.audit.sinks import StoreSink, row_of  # noqa: E402
from broker.store import Store  # noqa: E402


def one_run(pages: int, batches: int, per_batch: int) -> dict[str, float]:
    store_module.WAL_PAGES = pages  # read by the connection hook when the store's connection opens
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "broker.db"
        store = Store(f"sqlite:///{db}")
        store.migrate()
        sink = StoreSink(store.engine, "bench-host:/audit.jsonl")
        wal = Path(f"{db}-wal")
        seq, commits, peak = 0, [], 0
        cpu = time.process_time()
        for _ in range(batches):
            records, lines = [], []
            for _ in range(per_batch):
                seq += 1
                record = {"seq": seq, "time": datetime.now(UTC).isoformat(), "type": "event",
                          "request_id": f"req-{seq}", "principal": f"token:app-{seq % 50}", "auth_method": "token",
                          "source_ip": "127.0.0.1", "action": "kms:Encrypt", "key_id": f"key-{seq % 20}",
                          "outcome": "allowed", "prev_hash": "a" * 64, "hash": "b" * 64,
                          "encryption_context": {"app": "hmac-sha256:" + "c" * 64}}
                records.append(record)
                lines.append(json.dumps(record, sort_keys=True).encode() + b"\n")
            started = time.perf_counter()
            sink._insert_rows([row_of(r, line, sink.chain) for r, line in zip(records, lines, strict=True)])
            commits.append(time.perf_counter() - started)
            if seq % 64 < per_batch:
                peak = max(peak, wal.stat().st_size if wal.exists() else 0)
        cpu = time.process_time() - cpu
        sink.close()
        store.engine.dispose()
    commits.sort()
    return {"cpu_us": cpu / batches * 1e6, "p50_ms": commits[len(commits) // 2] * 1e3,
            "p99_ms": commits[int(len(commits) * 0.99)] * 1e3, "max_ms": commits[-1] * 1e3, "wal_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4000)
    parser.add_argument("--records", type=int, default=3, help="records per batch (a loaded broker's ~3-6)")
    parser.add_argument("--pages", default=f"256,{store_module.WAL_PAGES}",
                        help="wal_autocheckpoint values; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    thresholds = list(dict.fromkeys(int(p) for p in args.pages.split(",")))
    runs: dict[int, list[dict[str, float]]] = {p: [] for p in thresholds}
    for round_ in range(args.rounds):
        for pages in thresholds if round_ % 2 == 0 else thresholds[::-1]:
            runs[pages].append(one_run(pages, args.batches, args.records))
    print(f"store copy of the audit log: {args.batches} batches of {args.records} records, SQLite, "
          f"median of {args.rounds} rounds (the broker's default: {store_module.WAL_PAGES} pages)")
    print(f"{'wal_autocheckpoint':>18} {'CPU us/batch':>13} {'x baseline':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'WAL peak MiB':>12}")
    base = statistics.median(r["cpu_us"] for r in runs[thresholds[0]])
    for pages in thresholds:
        m = {k: statistics.median(r[k] for r in runs[pages]) for k in runs[pages][0]}
        print(f"{pages:>18} {m['cpu_us']:>13.0f} {m['cpu_us'] / base:>10.2f} {m['p50_ms']:>7.2f} "
              f"{m['p99_ms']:>7.2f} {m['max_ms']:>7.2f} {m['wal_mib']:>12.1f}")


if __name__ == "__main__":
    main()
