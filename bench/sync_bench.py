"""Sync benchmark: plan + apply of a manifest of N keys across the emulated clouds and the HSM, sizes side by side.

    python bench/sync_bench.py [--sizes 1000,4000] [--concurrency 8] [--providers hsm,aws,azure-mhsm,gcp,aliyun]

Each size runs in a fresh child process with a fresh local stack (LocalStack + our emulators) and a fresh broker
data folder, so sizes do not see each other's keys. The manifest spreads keys round-robin over the providers, one
broker key per entry. Printed per size:

- plan, apply, total seconds and ms/key (flat across sizes is the target: no cost that grows with the catalog);
- CPU-seconds per 1,000 keys of the broker process and of the stack's emulators (CPU time is far less sensitive to
  the machine's load than wall time, and shows a change that only moves cost from one side to the other);
- a no-change re-plan (catalog only, `--no-inventory`) and a no-change apply (which reads every cloud's inventory:
  its time is bounded by the clouds' list/describe APIs, printed beside the raw inventory calls);
- per provider: keys/s inside the apply, beside the provider's raw sequential create_key measured in the same run
  on the empty stack and again once it holds the apply's keys (an emulator that slows down as it fills shows
  there, not as the broker's cost).

Not a test. Target (issue 14): 10,000 keys over the five providers planned + applied in <= 60 s, ms/key flat from
1,000 to 10,000, a no-change re-plan of 10,000 keys <= 2 s.
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
CLOUD_OF = {"aws": "aws", "azure-mhsm": "azure", "azure": "azure", "gcp": "gcp", "aliyun": "aliyun"}
_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and every descendant alive now."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    roots, total = set(pids), 0.0
    for pid in cpu:
        p, seen = pid, 0
        while p and seen < 64:
            if p in roots:
                total += cpu[pid]
                break
            p, seen = parent.get(p, 0), seen + 1
    return total


class _Meter:
    """Wall seconds, this process's CPU seconds and the stack's CPU seconds of one phase."""

    def __init__(self, stack_pids: list[int]) -> None:
        self.pids = stack_pids

    def __call__(self, fn):  # noqa: ANN001, ANN204 - a thunk and its result
        w, c, s = time.perf_counter(), time.process_time(), _tree_cpu(self.pids)
        result = fn()
        return result, {"wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                        "stack_cpu": _tree_cpu(self.pids) - s}


def _raw_rates(service, providers: list[str], n: int, tag: str) -> dict[str, float]:  # noqa: ANN001
    from broker.model import KeySpec, KeyUsage

    out = {}
    for p in providers:
        t = time.perf_counter()
        for i in range(n):
            service.providers[p].create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                            label=f"baseline-{tag}-{i}")
        out[p] = n / (time.perf_counter() - t)
    return out


def _one(size: int, concurrency: int, baseline: int, providers: list[str]) -> dict:
    sys.path.insert(0, str(ROOT))
    from kms_stack.stack import Stack

    clouds = sorted({CLOUD_OF[p] for p in providers if p in CLOUD_OF})
    base = Path(tempfile.mkdtemp(prefix=f"sync-bench-{size}-"))
    stack = Stack(base / "stack")
    env = stack.up(only=clouds) if clouds else {}
    try:
        cfgs = {name: dict(cfg) for name, cfg in env.items()}
        if "azure" in cfgs:
            cfgs["azure"]["retries"] = 0
            # symmetric keys on a Managed HSM are AES keys; on a standard vault they are RSA keys (wrap_data_key),
            # whose generation bounds the emulator to ~5 keys/s: the standard vault is in the baseline row only
            cfgs["azure-mhsm"] = {**cfgs["azure"], "managed_hsm": True}
        os.environ["KMSB_PROVIDERS_JSON"] = json.dumps(cfgs)
        subprocess.run([sys.executable, "-m", "broker.cli", "init", "--data-dir", str(base / "data"), "--output",
                        "json"], check=True, capture_output=True, cwd=ROOT)
        import yaml

        from broker.app import build_service
        from broker.auth import Principal
        from broker.replication.manifest import parse_manifest
        from broker.service import RequestContext
        from broker.services import Services
        from broker.settings import load_settings

        service = build_service(load_settings(base / "data"))
        service.store.migrate()
        sync = Services.over(service).sync
        ctx = RequestContext(Principal("bench", "local", ("root",)), front_door="sync")
        for c in clouds:  # warm-up (LocalStack starts its KMS on first use), not timed
            service.providers[c].check_health()
        meter = _Meter([svc.pid for svc in stack.services().values()])
        raw = [p for p in providers if p != "hsm"] + (["azure"] if "azure-mhsm" in providers else []) + \
            (["hsm"] if "hsm" in providers else [])
        empty = _raw_rates(service, raw, baseline, "empty")
        doc = {"manifest": f"bench-{size}", "concurrency": concurrency,
               "keys": [{"name": f"k{i:05d}", "targets": [providers[i % len(providers)]], "tags": {"bench": "1"}}
                        for i in range(size)]}
        manifest = parse_manifest(yaml.safe_dump(doc))
        plan, plan_m = meter(lambda: sync.plan(ctx, manifest))
        applied, apply_m = meter(lambda: sync.apply(ctx, manifest))
        assert applied.status == "converged", applied.as_dict()["errors"] or [
            a for a in applied.as_dict()["actions"] if a["status"] != "done"][:3]
        replan, replan_m = meter(lambda: sync.plan(ctx, manifest, inventory=False))
        assert replan.actions == [], len(replan.actions)
        second, noop_m = meter(lambda: sync.apply(ctx, manifest))
        assert second.actions == [], len(second.actions)
        inventory = {}
        for p in providers:
            if service.providers[p].capabilities.inventory:
                t = time.perf_counter()
                n = len(list(service.providers[p].inventory()))
                inventory[p] = {"seconds": time.perf_counter() - t, "items": n}
        full = _raw_rates(service, raw, baseline, "full")
        service.store.dispose()
        return {"size": size, "plan": plan_m, "apply": apply_m, "replan": replan_m, "noop_apply": noop_m,
                "creates": len(plan.actions), "per_provider": applied.per_provider, "empty": empty, "full": full,
                "inventory": inventory, "load": os.getloadavg()}
    finally:
        stack.down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,4000")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--baseline", type=int, default=20, help="sequential raw creates per provider for the baseline")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    providers = [p for p in args.providers.split(",") if p]
    if args.one is not None:
        print(json.dumps(_one(args.one, args.concurrency, args.baseline, providers)))
        return
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--concurrency", str(args.concurrency),
                              "--baseline", str(args.baseline), "--providers", ",".join(providers)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"size {size} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"sync plan + apply, concurrency {args.concurrency} per provider, keys round-robin over "
          f"{', '.join(providers)}\n")
    print(f"{'keys':>6} {'plan s':>7} {'apply s':>8} {'total s':>8} {'keys/s':>7} {'ms/key':>7} "
          f"{'broker CPU s/1k':>16} {'stack CPU s/1k':>15} {'re-plan s':>10} {'no-op apply s':>14} {'load':>5}")
    for r in results:
        total = r["plan"]["wall"] + r["apply"]["wall"]
        k = r["size"] / 1000
        cpu = (r["plan"]["cpu"] + r["apply"]["cpu"]) / k
        stack_cpu = (r["plan"]["stack_cpu"] + r["apply"]["stack_cpu"]) / k
        print(f"{r['size']:>6} {r['plan']['wall']:>7.2f} {r['apply']['wall']:>8.2f} {total:>8.2f} "
              f"{r['size'] / total:>7.1f} {1000 * total / r['size']:>7.2f} {cpu:>16.2f} {stack_cpu:>15.2f} "
              f"{r['replan']['wall']:>10.2f} {r['noop_apply']['wall']:>14.2f} {r['load'][0]:>5.1f}")
    print("\nre-plan: a no-change plan from the catalog only (--no-inventory); no-op apply: a no-change apply, "
          "which reads every cloud's inventory:")
    print(f"{'keys':>6} " + " ".join(f"{p:>22}" for p in providers if p in results[-1]["inventory"]))
    for r in results:
        cells = [f"{r['inventory'][p]['items']:>6} items {r['inventory'][p]['seconds']:>7.2f}s"
                 for p in providers if p in r["inventory"]]
        print(f"{r['size']:>6} " + " ".join(f"{c:>22}" for c in cells) + "   (raw provider.inventory())")
    print(f"\nper provider (apply): keys, wall s, keys/s | raw: sequential create_key keys/s ({args.baseline} keys, "
          f"no broker) on the empty stack / on the stack holding the apply's keys")
    print(f"{'keys':>6} " + " ".join(f"{p:>26}" for p in providers))
    for r in results:
        cells = []
        for p in providers:
            s = r["per_provider"].get(p, {"operations": 0, "wall_seconds": 0})
            rate = s["operations"] / s["wall_seconds"] if s["wall_seconds"] else 0
            cells.append(f"{s['operations']:>5} {s['wall_seconds']:>7.2f}s {rate:>7.1f}/s")
        print(f"{r['size']:>6} " + " ".join(f"{c:>26}" for c in cells))
        print(f"{'raw':>6} " + " ".join(f"{r['empty'][p]:>15.1f} /{r['full'][p]:>7.1f}/s" for p in providers))
    last = results[-1]
    if "azure" in last["empty"]:
        print(f"\nraw, Azure standard vault (symmetric = RSA key, RSA generation): {last['empty']['azure']:.1f} / "
              f"{last['full']['azure']:.1f} keys/s")


if __name__ == "__main__":
    main()
