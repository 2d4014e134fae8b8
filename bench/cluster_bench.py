"""Cluster benchmark: Encrypt through HAProxy in front of 1, 2 and 3 broker nodes on one PostgreSQL, next to the same
node without HAProxy (the baseline, measured in the same run), then the errors and recovery time around a kill -9.

    python bench/cluster_bench.py [--connections 16] [--duration 10] [--warmup 2] [--workers 2] [--kill-threads 8]

Builds the cluster the tests build (tests/support/cluster.py: nodes joined with `kms-broker node join`, their own
SoftHSM tokens, HAProxy in TCP mode with health checks on /v1/ready), drives it with `wrk` (Debian package,
installed if missing) after `--warmup` seconds of the same Encrypt on every node (discarded: a node's first requests
open its store connections and HSM session and load the key), and prints req/s, p50/p99, and CPU-seconds per 1,000
requests of every broker process, HAProxy and PostgreSQL together. On a 2-core machine all nodes share the same
cores: the interesting number is the overhead of HAProxy and of more nodes, not the scaling.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import ensure_wrk, lua_script, run_wrk, times  # noqa: E402
from broker.client import BrokerClient  # noqa: E402
from tests.support.cluster import HAProxy, build_cluster  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pgids: set[int]) -> float:
    """User + system CPU time of every live process in these process groups (from /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def measure(wrk: str, url: str, script: Path, connections: int, duration: int, pgids: set[int]) -> dict:
    """One wrk run, with the CPU of every process in `pgids` (the nodes, HAProxy, PostgreSQL) per 1,000 requests."""
    before = cpu_seconds(pgids)
    result = run_wrk(wrk, url, script, connections, duration)
    cpu = cpu_seconds(pgids) - before
    return {"rps": result.rps, "p50": result.p50, "p99": result.p99, "errors": result.errors,
            "cpu_per_1k": cpu / result.requests * 1000 if result.requests else float("nan")}


def kill_phase(cluster, key_id: str, threads: int) -> dict:
    """Client threads (BrokerClient through HAProxy, retrying) while one node is killed with SIGKILL."""
    stop, kill_at = threading.Event(), {}
    firsts: list[float] = []  # per thread: its first success after the kill
    errors, clients = [], []

    def run(i: int) -> None:
        client = BrokerClient(cluster.haproxy.addr, cluster.root_token, retries=6, backoff=0.2)
        clients.append(client)
        seen_after = False
        while not stop.is_set():
            try:
                client.encrypt(key_id, b"kill phase", {"t": str(i)})
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(type(exc).__name__)
                continue
            if "t" in kill_at and not seen_after and time.monotonic() > kill_at["t"]:
                firsts.append(time.monotonic() - kill_at["t"])
                seen_after = True

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(3)
    kill_at["t"] = time.monotonic()
    cluster.node("b").kill9()
    deadline = time.monotonic() + 60
    while len(firsts) < threads and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for w in workers:
        w.join(30)
    return {"retried": sum(c.retried for c in clients), "errors": len(errors),
            "recovery_max_s": max(firsts) if firsts else float("nan"),
            "recovery_median_s": statistics.median(firsts) if firsts else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of Encrypt on each node before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-threads", type=int, default=8)
    args = parser.parse_args()
    wrk = ensure_wrk()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kmsb-cluster-bench-") as tmp:
        folder = Path(tmp)
        cluster = build_cluster(folder / "cluster", workers=args.workers)
        proxies: list[HAProxy] = []
        try:
            client = BrokerClient(cluster.haproxy.addr, cluster.root_token)
            key = client.create_key(description="bench")["KeyId"]
            body = {"Plaintext": base64.b64encode(b"x" * 64).decode(), "EncryptionContext": {"app": "bench"}}
            headers = {"Content-Type": "application/json", "X-KMSB-Token": cluster.root_token}
            encrypt = lua_script(folder, "encrypt", "POST", headers, json.dumps(body))
            noop = lua_script(folder, "noop", "GET", {}, None)
            pg_pgid = os.getpgid(cluster.pg.server.pid)

            def pgids(k: int, proxy: HAProxy | None) -> set[int]:  # each server is its own process group
                out = {n.server.pid for n in cluster.nodes[:k]} | {pg_pgid}
                return out | ({proxy.server.pid} if proxy is not None else set())

            for node in cluster.nodes:
                run_wrk(wrk, f"{node.addr}/v1/keys/{key}/encrypt", encrypt, args.connections, args.warmup)
            a = cluster.nodes[0]
            results = [
                ("node a, no proxy: no-op /v1/health", measure(wrk, f"{a.addr}/v1/health", noop, args.connections,
                                                                args.duration, pgids(1, None))),
                ("node a, no proxy: Encrypt (baseline)", measure(wrk, f"{a.addr}/v1/keys/{key}/encrypt", encrypt,
                                                                  args.connections, args.duration, pgids(1, None))),
            ]
            cluster.haproxy.stop()  # one proxy per node count, each over the first k nodes
            for k in (1, 2, 3):
                proxy = HAProxy(folder / f"haproxy-{k}", cluster.nodes[:k])
                proxy.start()
                proxies.append(proxy)
                results.append((f"HAProxy -> {k} node{'s' if k > 1 else ''}: Encrypt",
                                measure(wrk, f"{proxy.addr}/v1/keys/{key}/encrypt", encrypt, args.connections,
                                        args.duration, pgids(k, proxy))))
                proxy.stop()
            cluster.haproxy = HAProxy(folder / "haproxy-kill", cluster.nodes)
            cluster.haproxy.start()
            killed = kill_phase(cluster, key, args.kill_threads)
        finally:
            for proxy in proxies:
                proxy.stop()
            cluster.stop()
    base = results[1][1]
    print(f"\nkms-broker cluster benchmark: {args.connections} connections, {args.duration}s each; nodes: gunicorn "
          f"gthread x{args.workers} (+ keyring bridge), PostgreSQL store, SoftHSM each, audit on; {os.cpu_count()} "
          f"cores; load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}\n")
    print(f"{'case':<40}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'x base':>8}{'CPU s/1k':>10}{'non-2xx':>9}")
    for label, r in results:
        print(f"{label:<40}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{times(r['rps'], base['rps']):>8.2f}"
              f"{r['cpu_per_1k']:>10.2f}{r['errors']:>9}")
    print(f"\nkill -9 of node b under {args.kill_threads} client threads (BrokerClient through HAProxy, retrying): "
          f"{killed['retried']} retried request(s), {killed['errors']} error(s) seen by the application; every "
          f"thread served again within {killed['recovery_max_s']:.2f}s of the kill "
          f"(median {killed['recovery_median_s']:.2f}s)")


if __name__ == "__main__":
    main()
