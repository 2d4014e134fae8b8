"""Keyring bridge benchmark: key read latency (p50/p99) and reads/s through the bridge, as mariadbd reads keys.

    python bench/keyring_bench.py [--requests 2000] [--duration 5] [--threads 8] [--workers 2]

Starts a broker with its bridge listener (`kms-broker serve --keyring-bind`) on loopback, creates keyring entries
(born in the HSM) and a database token, then measures, in the same run:
- latency: one client, sequential requests, a NEW TCP connection per request with only the plugin's headers
  (Host, Accept, X-Vault-Token), exactly what mariadbd's curl does;
- throughput: --threads clients for --duration seconds, a new connection per request as well.
Rows: `GET /v1/sys/health` (HTTP + gunicorn floor: no auth, no audit), `tune` (token auth + policy + audit, no key),
`data/1` (latest: + store + HSM unseal) and `data/1?version=1` (an exact old version). Target: data p99 <= 2 ms.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.keyring_bridge.support import start_bridge  # noqa: E402

MOUNT = "kv/bench"


def one(port: int, path: str, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "*/*", "X-Vault-Token": token})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def latency(port: int, path: str, token: str, n: int) -> list[float]:
    for _ in range(min(200, n)):  # warm every worker thread's connections and caches
        one(port, path, token)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        status = one(port, path, token)
        samples.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status}")
    return samples


def throughput(port: int, path: str, token: str, threads: int, duration: float) -> float:
    counts = [0] * threads
    stop = time.monotonic() + duration

    def run(i: int) -> None:
        while time.monotonic() < stop:
            one(port, path, token)
            counts[i] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / duration


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def breakdown(data_dir: Path, n: int) -> list[tuple[str, float, float]]:
    """In-process cost of each step of a key read (same store and HSM, server stopped): where the time goes.

    Uses only what the services offer (no private members), so it cannot silently drift from the code it times.
    """
    import base64

    from broker.app import build_service
    from broker.auth import Principal
    from broker.policy.keyring_names import entry_resource
    from broker.service import RequestContext
    from broker.services import Services
    from broker.settings import load_settings
    from keyring_bridge.keyring import aad

    settings = load_settings(data_dir)
    service = build_service(settings)
    keyring = Services.over(service, settings).keyring
    root = service.root
    principal = Principal(f"keyring:{MOUNT}", "token", (f"keyring:{MOUNT}",))
    ctx = RequestContext(principal, front_door="bench")
    row = keyring.repo.version(MOUNT, "1", 1)
    resource = entry_resource(MOUNT, "1")

    steps = [
        ("policy decision", lambda: service.policy.decide(principal, "keyring:Read", None, {}, resource=resource)),
        ("store: entry + version rows (one joined read)", lambda: keyring.repo.read(MOUNT, "1", 1)),
        ("the same row kept (host counter unchanged)", lambda: keyring.repo.read(MOUNT, "1", 1, max_age=60.0)),
        ("HSM unseal", lambda: root.unseal(base64.b64decode(row.sealed), aad(MOUNT, "1", 1))),
        ("audit record (one durable write)", lambda: service.gate.audit_rejected(ctx, "keyring:Request", "Bench",
                                                                                 False)),
        ("KeyringService.read (all of it)", lambda: keyring.read(ctx, MOUNT, "1", 1)),
    ]
    out = []
    for name, fn in steps:
        for _ in range(min(50, n)):
            fn()
        samples = []
        for _ in range(min(n, 1000)):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1000)
        out.append((name, statistics.median(samples), pct(samples, 0.99)))
    service.audit.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--audit-fsync", choices=["settings", "on", "off"], default="settings",
                        help="override the broker's audit_fsync (KMSB_AUDIT_FSYNC) for this run")
    args = parser.parse_args()
    env = None if args.audit_fsync == "settings" else {"KMSB_AUDIT_FSYNC": str(args.audit_fsync == "on").lower()}

    with tempfile.TemporaryDirectory(prefix="kmsb-keyring-bench-") as tmp:
        bridge = start_bridge(Path(tmp), env, args.workers)
        try:
            bridge.cli("keyring", "create", "--mount", MOUNT, "--id", "1")
            bridge.cli("keyring", "rotate", "--mount", MOUNT, "--id", "1")
            token = bridge.db_token(MOUNT)[0]
            cases = [("baseline: GET /v1/sys/health", "/v1/sys/health"),
                     ("baseline: tune (auth+policy+audit)", f"/v1/sys/mounts/{MOUNT}/tune"),
                     ("key read: data/1 (latest)", f"/v1/{MOUNT}/data/1"),
                     ("key read: data/1?version=1", f"/v1/{MOUNT}/data/1?version=1")]
            rows = []
            for name, path in cases:
                samples = latency(bridge.bridge_port, path, token, args.requests)
                rate = throughput(bridge.bridge_port, path, token, args.threads, args.duration)
                rows.append((name, statistics.median(samples), pct(samples, 0.99), rate))
            bridge.stop()
            parts = breakdown(bridge.data_dir, args.requests)
        finally:
            bridge.stop()

    print(f"\nkeyring bridge on loopback: {args.requests} sequential requests (latency), {args.threads} threads x "
          f"{args.duration:g} s (throughput), new TCP connection per request, gunicorn gthread "
          f"{args.workers} workers, audit fsync: {args.audit_fsync}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print(f"{'case':<38} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    print("-" * 66)
    for name, p50, p99, rate in rows:
        print(f"{name:<38} {p50:>8.3f} {p99:>8.3f} {rate:>9.0f}")
    print(f"\nin process, per key read step (no HTTP)\n{'step':<38} {'p50 ms':>8} {'p99 ms':>8}")
    print("-" * 56)
    for name, p50, p99 in parts:
        print(f"{name:<38} {p50:>8.3f} {p99:>8.3f}")
    worst = max(r[2] for r in rows[2:])
    print(f"\nkey read p99 {worst:.3f} ms: target <= 2 ms {'MET' if worst <= 2.0 else 'NOT MET'}")


if __name__ == "__main__":
    main()
