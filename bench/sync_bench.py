"""Sync benchmark: plan + apply of a manifest with 100 / 500 / 1,000 keys across the emulated clouds and the HSM.

    python bench/sync_bench.py [--sizes 100,500,1000] [--concurrency 8]

Each size runs in a fresh child process with a fresh local stack (LocalStack + our emulators) and a fresh broker
data folder, so sizes do not see each other's keys. The manifest spreads keys round-robin over the five providers
(hsm, aws, azure-mhsm, gcp, aliyun), one broker key per entry. Printed per size: plan time, apply time, and per provider
keys, wall time and keys/s. Baseline (same run, same stack): the provider's own create_key called sequentially,
without the broker (no catalog, audit, policy or journal).

Not a test. Target: plan + apply of 1,000 keys <= 60 s, cost linear in the number of keys.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ["hsm", "aws", "azure-mhsm", "gcp", "aliyun"]
CLOUDS = ["aws", "azure", "gcp", "aliyun"]


def _one(size: int, concurrency: int, baseline: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from kms_stack.stack import Stack

    base = Path(tempfile.mkdtemp(prefix=f"sync-bench-{size}-"))
    stack = Stack(base / "stack")
    env = stack.up(only=CLOUDS)
    try:
        providers = {name: dict(cfg) for name, cfg in env.items()}
        providers["azure"]["retries"] = 0
        # symmetric keys on a Managed HSM are AES keys; on a standard vault they are RSA keys (wrap_data_key), whose
        # generation bounds the emulator to ~5 keys/s: the standard vault is measured in the baseline row only
        providers["azure-mhsm"] = {**providers["azure"], "managed_hsm": True}
        os.environ["KMSB_PROVIDERS_JSON"] = json.dumps(providers)
        subprocess.run([sys.executable, "-m", "broker.cli", "init", "--data-dir", str(base / "data"), "--output",
                        "json"], check=True, capture_output=True, cwd=ROOT)
        from broker.app import build_service
        from broker.auth import Principal
        from broker.model import KeySpec, KeyUsage
        from broker.replication.manifest import parse_manifest
        from broker.service import RequestContext
        from broker.services import Services
        from broker.settings import load_settings

        service = build_service(load_settings(base / "data"))
        service.store.migrate()
        sync = Services.over(service).sync
        ctx = RequestContext(Principal("bench", "local", ("root",)), front_door="sync")
        for p in CLOUDS:  # warm-up (LocalStack starts its KMS on first use), not timed
            service.providers[p].check_health()
        base_rates = {}
        for p in [*PROVIDERS, "azure"]:
            t = time.perf_counter()
            for i in range(baseline):
                service.providers[p].create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                                label=f"baseline-{i}")
            base_rates[p] = baseline / (time.perf_counter() - t)
        doc = {"manifest": f"bench-{size}", "concurrency": concurrency,
               "keys": [{"name": f"k{i:05d}", "targets": [PROVIDERS[i % len(PROVIDERS)]], "tags": {"bench": "1"}}
                        for i in range(size)]}
        import yaml
        manifest = parse_manifest(yaml.safe_dump(doc))
        t = time.perf_counter()
        plan = sync.plan(ctx, manifest)
        plan_s = time.perf_counter() - t
        t = time.perf_counter()
        applied = sync.apply(ctx, manifest)
        apply_s = time.perf_counter() - t
        t = time.perf_counter()
        second = sync.apply(ctx, manifest)
        noop_s = time.perf_counter() - t
        assert applied.status == "converged", applied.as_dict()["errors"] or [
            a for a in applied.as_dict()["actions"] if a["status"] != "done"][:3]
        assert second.actions == [], len(second.actions)
        service.store.dispose()
        return {"size": size, "plan_s": plan_s, "apply_s": apply_s, "noop_apply_s": noop_s,
                "creates": len(plan.actions), "per_provider": applied.per_provider, "baseline": base_rates}
    finally:
        stack.down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--baseline", type=int, default=20, help="sequential raw creates per provider for the baseline")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(_one(args.one, args.concurrency, args.baseline)))
        return
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--concurrency", str(args.concurrency),
                              "--baseline", str(args.baseline)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"size {size} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"sync plan + apply, concurrency {args.concurrency} per provider, keys round-robin over "
          f"{', '.join(PROVIDERS)}\n")
    print(f"{'keys':>6} {'plan s':>8} {'apply s':>8} {'total s':>8} {'keys/s':>8} {'ms/key':>7} {'no-op apply s':>14}")
    for r in results:
        total = r["plan_s"] + r["apply_s"]
        print(f"{r['size']:>6} {r['plan_s']:>8.2f} {r['apply_s']:>8.2f} {total:>8.2f} {r['size'] / total:>8.1f} "
              f"{1000 * total / r['size']:>7.1f} {r['noop_apply_s']:>14.2f}")
    print(f"\nper provider (apply): keys, wall s, keys/s   | baseline: raw sequential create_key keys/s "
          f"({args.baseline} keys, no broker)")
    print(f"{'keys':>6} " + " ".join(f"{p:>24}" for p in PROVIDERS))
    for r in results:
        cells = []
        for p in PROVIDERS:
            s = r["per_provider"].get(p, {"operations": 0, "wall_seconds": 0})
            rate = s["operations"] / s["wall_seconds"] if s["wall_seconds"] else 0
            cells.append(f"{s['operations']:>5} {s['wall_seconds']:>7.2f}s {rate:>7.1f}/s")
        print(f"{r['size']:>6} " + " ".join(f"{c:>24}" for c in cells))
    print(f"{'base':>6} " + " ".join(f"{results[-1]['baseline'][p]:>22.1f}/s" for p in PROVIDERS))
    print(f"\nbaseline, Azure standard vault (symmetric = RSA key, RSA generation): "
          f"{results[-1]['baseline']['azure']:.1f} keys/s")


if __name__ == "__main__":
    main()
