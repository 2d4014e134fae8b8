"""Raw create_key rate of each emulated cloud vs how many keys it holds (official SDKs through the providers, no
broker). Not a test.

    python bench/emulator_bench.py [--clouds gcp,aliyun,azure-mhsm] [--fill 2000]

Per cloud, on a fresh stack: 200 sequential creates on the empty emulator, then fill it with --fill keys (8 threads),
then 200 sequential creates again. Flat rates are the target: a request's cost must not grow with the keys held.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clouds", default="gcp,aliyun,azure-mhsm")
    ap.add_argument("--fill", type=int, default=2000)
    ap.add_argument("--sample", type=int, default=200)
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "localstack")]
    from kms_stack.stack import Stack

    from broker.model import KeySpec, KeyUsage
    from providers.registry import build_provider

    clouds = [c for c in args.clouds.split(",") if c]
    stack = Stack(Path(tempfile.mkdtemp(prefix="emulator-bench-")) / "stack")
    env = stack.up(only=sorted({"azure" if c.startswith("azure") else c for c in clouds}))
    try:
        for cloud in clouds:
            cfg = dict(env["azure" if cloud.startswith("azure") else cloud])
            if cloud == "azure-mhsm":
                cfg.update(managed_hsm=True, retries=0)
            provider = build_provider(cloud, cfg)
            provider.check_health()

            def create(label: str) -> None:
                provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=label)  # noqa: B023

            def rate(tag: str) -> float:
                t = time.perf_counter()
                for i in range(args.sample):
                    create(f"{tag}-{i}")
                return args.sample / (time.perf_counter() - t)

            empty = rate("empty")
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: create(f"fill-{i}"), range(args.fill)))
            full = rate("full")
            print(f"{cloud:>11}: {empty:7.1f} keys/s empty, {full:7.1f} keys/s holding {args.fill + args.sample}",
                  flush=True)
    finally:
        stack.down()


if __name__ == "__main__":
    main()
