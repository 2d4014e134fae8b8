"""The hot path over HTTP (issue 14): every row beside its baseline measured in the same run, and the targets.

    python bench/http_bench.py [--connections 16,64] [--duration 10] [--rounds 1] [--warmup 2] [--workers 2]
                               [--threads 8] [--no-localstack] [--only native,aws,keyring,localstack] [--paced 0.5]

Starts, on free loopback ports, in one temporary folder:
* the baselines: a bare Flask JSON no-op (bench/noop_server.py) under the API listener's gunicorn options, and
  another under the keyring bridge listener's options;
* a fresh broker (`kms-broker serve --keyring-bind`: SQLite + SoftHSM, token auth, a stored identity policy that is
  evaluated on every call, durable hash-chained audit: fsync'd before each answer);
* LocalStack's KMS through `kms-broker stack up --only aws` (unless --no-localstack).

Every row is driven by the same `wrk` (2 threads, keep-alive), at each connection count, after an unmeasured
warm-up of every row (--warmup seconds at the highest connection count). Rows: the no-op; native
Encrypt, Decrypt, GenerateDataKey (an app token whose policy allows them on the key); the same three through the
AWS front door (SigV4, signed by botocore right before each run); LocalStack's Encrypt; the keyring bridge's
`GET /v1/<mount>/data/<id>` beside the bridge listener's no-op; and one client reading the keyring key with a new
TCP connection per request (what mariadbd's curl does) for its p99. Each row prints server CPU-seconds per 1,000
requests (the server's whole process tree, from /proc). With --rounds N every row runs N times interleaved;
req/s, p50 and p99 are the median run's, ratios the median of the per-round ratios.

wrk at full speed is a closed loop: a row's mean latency is connections / throughput (Little's law), so its p99 at 16
connections cannot be under 16 / req/s whatever the server does (the no-op's own p99 is far above 10 ms on a 2-core
machine). `--paced F` (default 0.5) then runs every row again offering F x its own throughput, spread evenly over the
connections: the latency a client sees from a server that keeps up.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import ProcessTree, Result, ensure_wrk, load_average, lua_script, paced, run_wrk, times  # noqa: E402
from tests.support.procs import Server, free_port, start_server  # noqa: E402

CLI = [sys.executable, "-m", "broker.cli"]
MOUNT = "kv/bench"
REGION = "us-east-1"
PLAINTEXT = base64.b64encode(b"x" * 64).decode()
CONTEXT = {"app": "bench", "tenant": "t-0001"}
GROUPS = ("native", "aws", "localstack", "keyring")


# ================================================================================================ requests


def sigv4(url: str, access_key: str, secret: str, operation: str, body: dict) -> tuple[dict[str, str], bytes]:
    """Headers and body of one AWS KMS JSON 1.1 request, SigV4-signed now by botocore."""
    data = json.dumps(body, separators=(",", ":")).encode()
    request = AWSRequest(method="POST", url=url, data=data, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}"})
    SigV4Auth(Credentials(access_key, secret), "kms", REGION).add_auth(request)
    return dict(request.headers.items()), data


@dataclass
class Case:
    label: str
    group: str
    url: str
    method: str
    script: Callable[[Path], Path]  # writes (or re-signs) its wrk script right before each run
    tree: ProcessTree
    baseline: str | None = None
    target: float | None = None  # ratio to the baseline that meets the target
    p99_target: float | None = None  # ms, at the first connection count
    runs: dict[int, list[Result]] = field(default_factory=dict)
    paced: Result | None = None  # at --paced of its own throughput, first connection count
    paced_offered: float = 0.0  # the rate that run offered (wrk's delay is whole milliseconds)


def fixed(label: str, method: str, headers: dict[str, str], body: dict | None) -> Callable[[Path], Path]:
    data = json.dumps(body, separators=(",", ":")) if body is not None else None
    return lambda folder: lua_script(folder, label, method, headers, data)


def signed(label: str, url: str, access_key: str, secret: str, operation: str, body: dict) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        headers, data = sigv4(url, access_key, secret, operation, body)
        return lua_script(folder, label, "POST", headers, data)
    return write


# ================================================================================================ servers


def start_noop(folder: Path, listener: str, workers: int, threads: int) -> tuple[Server, str]:
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    server = start_server(f"noop-{listener}", [sys.executable, str(Path(__file__).with_name("noop_server.py")),
                                               "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                                               "--threads", str(threads), "--listener", listener],
                          log_dir=folder / "logs", ready=lambda: requests.get(f"{addr}/health", timeout=1).ok)
    return server, addr


def start_broker(folder: Path, workers: int, threads: int,
                 env: dict[str, str] | None = None) -> tuple[Server, str, str, str]:
    data_dir = folder / "data"
    init = subprocess.run([*CLI, "init", "--data-dir", str(data_dir), "--output", "json"], check=True,
                          capture_output=True, text=True)
    root = json.loads(init.stdout)["root_token"]
    api, bridge = free_port(), free_port()
    addr, vault = f"http://127.0.0.1:{api}", f"http://127.0.0.1:{bridge}"
    server = start_server("bench-broker", [*CLI, "serve", "--data-dir", str(data_dir), "--bind", f"127.0.0.1:{api}",
                                           "--keyring-bind", f"127.0.0.1:{bridge}", "--workers", str(workers),
                                           "--threads", str(threads)],
                          log_dir=folder / "logs", env=env,
                          ready=lambda: requests.get(f"{addr}/v1/health", timeout=1).ok
                          and requests.get(f"{vault}/v1/sys/health", timeout=1).ok)
    return server, addr, vault, root


def start_localstack(folder: Path) -> tuple[str, int]:
    """LocalStack's KMS through `kms-broker stack up --only aws`: (endpoint, pid)."""
    from kms_stack.stack import Stack

    state = folder / "stack"
    out = subprocess.run([*CLI, "stack", "up", "--only", "aws", "--state-dir", str(state), "--output", "json"],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"kms-broker stack up --only aws failed:\n{out.stderr[-2000:]}")
    endpoint = json.loads(out.stdout)["aws"]["endpoint_url"]
    return endpoint, Stack(state).services()["aws"].pid


def stop_localstack(folder: Path) -> None:
    subprocess.run([*CLI, "stack", "down", "--only", "aws", "--state-dir", str(folder / "stack")],
                   capture_output=True, timeout=120)


# ================================================================================================ set-up


def app_principal(addr: str, root: str, key: str) -> tuple[str, dict]:
    """An app's token and SigV4 credentials whose stored policy allows the three operations on this key only:
    every request pays a real policy decision, not root's short-circuit."""
    api = requests.Session()
    api.headers["X-KMSB-Token"] = root
    document = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": f"key/{key}"}]}
    api.put(f"{addr}/v1/policies/bench-app", json={"Document": document}).raise_for_status()
    made = api.post(f"{addr}/v1/auth/token/create", json={"policies": ["bench-app"], "display_name": "bench-app"})
    made.raise_for_status()
    creds = api.post(f"{addr}/v1/aws-credentials", json={"Policies": ["bench-app"], "Name": "bench-app"})
    creds.raise_for_status()
    return made.json()["auth"]["client_token"], creds.json()


def keyring_token(folder: Path, addr: str, root: str) -> str:
    env = {"KMSB_ADDR": addr, "KMSB_TOKEN": root}
    run = lambda *a: subprocess.run([*CLI, *a], env={**__import__("os").environ, **env}, check=True,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    run("keyring", "create", "--mount", MOUNT, "--id", "1")
    return json.loads(run("keyring", "token", "create", "--mount", MOUNT, "--output", "json").stdout)["token"]


def localstack_encrypt(endpoint: str) -> tuple[str, Callable[[Path], Path]]:
    import boto3

    kms = boto3.client("kms", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test",
                       aws_secret_access_key="test")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    body = {"KeyId": key, "Plaintext": PLAINTEXT, "EncryptionContext": CONTEXT}
    return key, signed("localstack-encrypt", f"{endpoint}/", "test", "test", "Encrypt", body)


# ================================================================================================ measuring


def sequential(addr: str, path: str, headers: dict[str, str], n: int) -> list[float]:
    """One client, a new TCP connection per request (as mariadbd's curl reads a key): latencies in ms."""
    host, port = addr.removeprefix("http://").split(":")

    def one() -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    for _ in range(min(200, n)):
        one()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        status = one()
        samples.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status}")
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def ratio(case: Case, base: Case, conns: int) -> float:
    return statistics.median(times(r.rps, b.rps) for r, b in zip(case.runs[conns], base.runs[conns], strict=True))


# ================================================================================================ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="16,64", help="comma-separated connection counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs of every row (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load on every row first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=2000, help="keyring reads by one client (p99)")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"row groups, of {','.join(GROUPS)}")
    parser.add_argument("--no-localstack", action="store_true", help="same as leaving localstack out of --only")
    parser.add_argument("--paced", type=float, default=0.5, metavar="FRACTION",
                        help="also run every row paced at this fraction of its own throughput (0: not at all)")
    parser.add_argument("--env", action="append", default=[], metavar="KMSB_NAME=VALUE",
                        help="a setting for the broker under test (e.g. KMSB_AUDIT_FSYNC=false), repeatable")
    args = parser.parse_args()
    conn_counts = [int(c) for c in args.connections.split(",")]
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    if args.no_localstack:
        groups.discard("localstack")
    if args.duration > 200 and "aws" in groups | {"localstack"}:
        parser.error("--duration over 200 s: a replayed SigV4 request would leave its 5-minute window")
    wrk = ensure_wrk()
    load_before = load_average()
    seq_rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="kmsb-http-bench-") as tmp:
        folder = Path(tmp)
        servers: list[Server] = []
        localstack_up = False
        try:
            noop, noop_addr = start_noop(folder, "api", args.workers, args.threads)
            servers.append(noop)
            broker_env = dict(item.split("=", 1) for item in args.env)
            broker, addr, vault, root = start_broker(folder, args.workers, args.threads, broker_env)
            servers.append(broker)
            api = requests.Session()
            api.headers["X-KMSB-Token"] = root
            key = api.post(f"{addr}/v1/keys", json={}).json()["KeyMetadata"]["KeyId"]
            token, creds = app_principal(addr, root, key)
            native = {"Content-Type": "application/json", "X-KMSB-Token": token}
            blob = requests.post(f"{addr}/v1/keys/{key}/encrypt", headers=native,
                                 json={"Plaintext": PLAINTEXT, "EncryptionContext": CONTEXT}).json()["CiphertextBlob"]
            noop_tree, broker_tree = ProcessTree(noop.pid), ProcessTree(broker.pid)
            encrypt = {"Plaintext": PLAINTEXT, "EncryptionContext": CONTEXT}
            decrypt = {"CiphertextBlob": blob, "EncryptionContext": CONTEXT}
            gdk = {"KeySpec": "AES_256", "EncryptionContext": CONTEXT}
            noop_label = "no-op: bare Flask JSON (API listener)"
            cases = [Case(noop_label, "base", f"{noop_addr}/v1/noop", "POST",
                          fixed("noop", "POST", {"Content-Type": "application/json"}, encrypt), noop_tree)]
            if "native" in groups or "aws" in groups:
                cases += [
                    Case("native Encrypt 64 B + context", "native", f"{addr}/v1/keys/{key}/encrypt", "POST",
                         fixed("n-enc", "POST", native, encrypt), broker_tree, noop_label, 0.6, 10.0),
                    Case("native Decrypt 64 B + context", "native", f"{addr}/v1/decrypt", "POST",
                         fixed("n-dec", "POST", native, decrypt), broker_tree, noop_label, 0.6, 10.0),
                    Case("native GenerateDataKey AES_256", "native", f"{addr}/v1/keys/{key}/generate-data-key", "POST",
                         fixed("n-gdk", "POST", native, gdk), broker_tree, noop_label, 0.5),
                ]
            if "aws" in groups:
                aws_url, (ak, sk) = f"{addr}/", (creds["access_key_id"], creds["secret_access_key"])
                cases += [
                    Case("AWS Encrypt (SigV4)", "aws", aws_url, "POST",
                         signed("a-enc", aws_url, ak, sk, "Encrypt", {"KeyId": key, **encrypt}), broker_tree,
                         "native Encrypt 64 B + context", 0.85),
                    Case("AWS Decrypt (SigV4)", "aws", aws_url, "POST",
                         signed("a-dec", aws_url, ak, sk, "Decrypt", decrypt), broker_tree,
                         "native Decrypt 64 B + context", 0.85),
                    Case("AWS GenerateDataKey (SigV4)", "aws", aws_url, "POST",
                         signed("a-gdk", aws_url, ak, sk, "GenerateDataKey", {"KeyId": key, **gdk}), broker_tree,
                         "native GenerateDataKey AES_256", 0.85),
                ]
            if "localstack" in groups:
                endpoint, pid = start_localstack(folder)
                localstack_up = True
                _, script = localstack_encrypt(endpoint)
                cases.append(Case("LocalStack KMS Encrypt (no auth/audit)", "localstack", f"{endpoint}/", "POST",
                                  script, ProcessTree(pid)))
            if "keyring" in groups:
                kr_token = keyring_token(folder, addr, root)
                kr_noop, kr_noop_addr = start_noop(folder, "keyring", args.workers, args.threads)
                servers.append(kr_noop)
                kr_headers = {"Accept": "*/*", "X-Vault-Token": kr_token}
                kr_noop_label = "no-op: bare Flask JSON (keyring listener)"
                cases += [
                    Case(kr_noop_label, "base", f"{kr_noop_addr}/v1/{MOUNT}/data/1", "GET",
                         fixed("kr-noop", "GET", {"Accept": "*/*"}, None), ProcessTree(kr_noop.pid)),
                    Case(f"keyring GET /v1/{MOUNT}/data/1", "keyring", f"{vault}/v1/{MOUNT}/data/1", "GET",
                         fixed("kr-read", "GET", kr_headers, None), broker_tree, kr_noop_label, 0.6),
                ]
            for case in cases:  # warm-up, not measured: each worker thread's first requests open its HSM session,
                # its store connection and its caches (seen as ~1 s p99 outliers in the first row measured)
                run_wrk(wrk, case.url, case.script(folder), max(conn_counts), args.warmup)
            for conns in conn_counts:
                for _ in range(args.rounds):
                    for case in cases:
                        script = case.script(folder)
                        case.runs.setdefault(conns, []).append(
                            run_wrk(wrk, case.url, script, conns, args.duration, cpu=case.tree))
            if args.paced > 0:
                for case in cases:
                    rate = args.paced * median_run(case.runs[conn_counts[0]]).rps
                    script, case.paced_offered = paced(case.script(folder), conn_counts[0], rate)
                    case.paced = run_wrk(wrk, case.url, script, conn_counts[0], args.duration, cpu=case.tree)
            if "keyring" in groups:
                seq_rows.append(("no-op (keyring listener), new conn/request",
                                 sequential(kr_noop_addr, f"/v1/{MOUNT}/data/1", {"Accept": "*/*"}, args.sequential)))
                seq_rows.append(("keyring GET data/1, new conn/request",
                                 sequential(vault, f"/v1/{MOUNT}/data/1", kr_headers, args.sequential)))
        finally:
            for server in reversed(servers):
                server.stop()
            if localstack_up:
                stop_localstack(folder)
    report(cases, conn_counts, seq_rows, args, load_before)


def report(cases: list[Case], conn_counts: list[int], seq_rows: list[tuple[str, list[float]]], args, load_before):
    by = {c.label: c for c in cases}
    print(f"\nkms-broker hot path over HTTP: wrk -t2 keep-alive, {args.duration:g} s per run, {args.rounds} round(s), "
          f"gunicorn gthread (broker.balanced_worker) {args.workers} workers x {args.threads} threads for every server\n"
          f"load average before: {load_before}; after: {load_average()}\n"
          + (f"broker settings: {' '.join(args.env)}\n" if args.env else "") +
          "CPU s/1k = server CPU-seconds per 1,000 requests (the server's whole process tree); "
          "cs/req = its context switches per request\n")
    head = (f"{'row':<42}{'conns':>6}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'CPU s/1k':>9}{'cs/req':>7}"
            f"  {'x baseline (same run)':<34}")
    print(head)
    print("-" * len(head))
    verdicts: list[tuple[str, bool]] = []
    for conns in conn_counts:
        for case in cases:
            r = median_run(case.runs[conns])
            cpu = f"{r.cpu_per_1k:.2f}" if r.cpu_per_1k is not None else "-"
            versus = ""
            if case.baseline and case.baseline in by:
                x = ratio(case, by[case.baseline], conns)
                versus = f"{x:.2f} x {by[case.baseline].label.split(':')[0].split(' 64')[0]}"
                if case.target is not None and conns == conn_counts[0]:
                    verdicts.append((f"{case.label} >= {case.target} x {case.baseline} ({x:.2f})", x >= case.target))
            switches = f"{r.switches:.1f}" if r.switches is not None else "-"
            print(f"{case.label:<42}{conns:>6}{r.rps:>9.0f}{r.p50:>8.2f}{r.p99:>8.2f}{r.errors:>7}{cpu:>9}{switches:>7}"
                  f"  {versus}")
            if case.p99_target is not None and conns == conn_counts[0]:
                verdicts.append((f"{case.label} p99 <= {case.p99_target:g} ms at {conns} ({r.p99:.2f})",
                                 r.p99 <= case.p99_target))
            if conns != conn_counts[0] and case.group != "base":
                verdicts.append((f"{case.label} at {conns} connections: no errors ({r.errors})", r.errors == 0))
        print()
    if args.paced > 0:
        print(f"paced: each row offered about {args.paced:g} x its own req/s above, evenly over {conn_counts[0]} "
              "connections (its latency while keeping up, not queueing; wrk waits whole milliseconds, so a fast row "
              "with few connections is offered less)")
        print(f"{'row':<42}{'offered':>8}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'CPU s/1k':>9}")
        for case in cases:
            r, offered = case.paced, case.paced_offered
            assert r is not None
            cpu = f"{r.cpu_per_1k:.2f}" if r.cpu_per_1k is not None else "-"
            print(f"{case.label:<42}{offered:>8.0f}{r.rps:>9.0f}{r.p50:>8.2f}{r.p99:>8.2f}{r.errors:>7}{cpu:>9}")
        print()
    enc, ls = by.get("native Encrypt 64 B + context"), by.get("LocalStack KMS Encrypt (no auth/audit)")
    if enc and ls:
        x = ratio(enc, ls, conn_counts[0])
        verdicts.append((f"native Encrypt >= 3 x LocalStack Encrypt ({x:.2f})", x >= 3.0))
    if seq_rows:
        print(f"{'one client, new TCP connection per request':<52}{'n':>6}{'p50 ms':>8}{'p99 ms':>8}")
        for label, samples in seq_rows:
            print(f"{label:<52}{len(samples):>6}{pct(samples, 0.5):>8.2f}{pct(samples, 0.99):>8.2f}")
        p99 = pct(seq_rows[-1][1], 0.99)
        verdicts.append((f"keyring GET data/1 p99 <= 2 ms, one client ({p99:.2f})", p99 <= 2.0))
        print()
    print("targets (issue 14):")
    for text, met in verdicts:
        print(f"  {'met    ' if met else 'NOT met'}  {text}")


if __name__ == "__main__":
    main()
