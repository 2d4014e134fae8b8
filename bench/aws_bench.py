"""AWS front door benchmark: the foundation benchmark's Encrypt (and Decrypt) through the AWS KMS protocol (SigV4),
side by side with the native API and the no-op baseline, in one run on one broker.

    python bench/aws_bench.py [--connections 16] [--duration 10] [--workers 2]

Reuses bench/harness.py (wrk and its parsing); bench/http_bench.py has these rows beside every other one. wrk replays one precomputed request per case; a SigV4
request is valid while its X-Amz-Date is within the broker's ±5-minute window, so each AWS request is signed (by
botocore's SigV4Auth) immediately before its wrk run, and runs longer than the window allows (--duration > 240) fall
back to driving every case with the same Python client pool (threads × requests.Session), as the output then says.
Every AWS request is still fully verified by the broker (signature recomputed each time; the sealed secret is
unsealed at most once per `auth_cache_seconds` per process).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import ensure_wrk, lua_script, run_wrk, times  # noqa: E402
from tests.support.broker import start_broker  # noqa: E402

REGION = "us-east-1"
WINDOW_SAFE_SECONDS = 240  # a precomputed SigV4 request must stay inside the broker's ±300 s date window


def sign_aws(addr: str, creds: dict, operation: str, body: dict) -> tuple[dict[str, str], bytes]:
    """Headers and body of one SigV4-signed AWS KMS request, signed now by botocore."""
    data = json.dumps(body, separators=(",", ":")).encode()
    request = AWSRequest(method="POST", url=f"{addr}/", data=data, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}"})
    SigV4Auth(Credentials(creds["access_key_id"], creds["secret_access_key"]), "kms", REGION).add_auth(request)
    return dict(request.headers.items()), data


def aws_lua(folder: Path, name: str, headers: dict[str, str], data: bytes) -> Path:
    lines = ['wrk.method = "POST"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines.append(f"wrk.body = [[{data.decode()}]]")
    path = folder / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def aws_maker(addr: str, creds: dict, call: tuple[str, dict]) -> Callable[[], tuple[dict, bytes]]:
    def make() -> tuple[dict, bytes]:
        return sign_aws(addr, creds, *call)
    return make


def fixed_maker(headers: dict, body: dict | None) -> Callable[[], tuple[dict, bytes | None]]:
    data = json.dumps(body).encode() if body is not None else None

    def make() -> tuple[dict, bytes | None]:
        return headers, data
    return make


def run_pool(url: str, method: str, make: Callable[[], tuple], connections: int, duration: int) -> dict[str, float]:
    """The fallback driver: `connections` threads, each with its own keep-alive session, for `duration` seconds.
    `make()` returns (headers, body) for one request (AWS cases re-sign per request)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        session = requests.Session()
        mine: list[float] = []
        bad = 0
        while time.monotonic() < stop:
            headers, body = make()
            start = time.perf_counter()
            r = session.request(method, url, headers=headers, data=body, timeout=30)
            mine.append((time.perf_counter() - start) * 1000)
            bad += r.status_code >= 300
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / duration, "p50": q[49], "p99": q[98], "errors": errors[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--driver", choices=["auto", "wrk", "pool"], default="auto",
                        help="auto: wrk while the SigV4 window allows, else the Python pool")
    args = parser.parse_args()
    if args.driver == "wrk" and args.duration > WINDOW_SAFE_SECONDS:
        parser.error(f"--driver wrk needs --duration <= {WINDOW_SAFE_SECONDS} (the SigV4 date window)")
    use_wrk = args.driver == "wrk" or (args.driver == "auto" and args.duration <= WINDOW_SAFE_SECONDS)
    wrk = ensure_wrk() if use_wrk else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = start_broker(folder / "data", folder / "logs", workers=args.workers, name="bench-aws-broker")
        try:
            api = broker.session()
            key = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
            creds = api.post(broker.url("/aws-credentials"), json={"Policies": ["root"], "Name": "bench"}).json()
            plaintext = base64.b64encode(b"x" * 64).decode()
            context = {"app": "bench"}
            blob = api.post(broker.url(f"/keys/{key}/encrypt"),
                            json={"Plaintext": plaintext, "EncryptionContext": context}).json()["CiphertextBlob"]
            token = broker.root_token
            native_headers = {"Content-Type": "application/json", "X-KMSB-Token": token}
            # (label, url, method, native body | None, aws (operation, body) | None)
            cases = [
                ("no-op (GET /v1/health)", broker.url("/health"), "GET", None, None),
                ("native Encrypt 64 B + ctx", broker.url(f"/keys/{key}/encrypt"), "POST",
                 {"Plaintext": plaintext, "EncryptionContext": context}, None),
                ("AWS Encrypt 64 B + ctx", f"{broker.addr}/", "POST", None,
                 ("Encrypt", {"KeyId": key, "Plaintext": plaintext, "EncryptionContext": context})),
                ("native Decrypt 64 B + ctx", broker.url("/decrypt"), "POST",
                 {"CiphertextBlob": blob, "EncryptionContext": context}, None),
                ("AWS Decrypt 64 B + ctx", f"{broker.addr}/", "POST", None,
                 ("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": context})),
            ]
            results = []
            for label, url, method, native_body, aws_call in cases:
                name = re.sub(r"\W", "_", label)
                if aws_call is not None:
                    headers, data = sign_aws(broker.addr, creds, *aws_call)
                    probe = requests.post(url, headers=headers, data=data, timeout=30)
                    assert probe.status_code == 200, probe.text
                    if use_wrk:
                        script = aws_lua(folder, name, headers, data)
                    else:
                        make = aws_maker(broker.addr, creds, aws_call)
                elif use_wrk:
                    script = lua_script(folder, name, method, native_headers if native_body else {},
                                        json.dumps(native_body) if native_body else None)
                else:
                    make = fixed_maker(native_headers, native_body)
                requests.get(broker.url("/health"), timeout=10)
                if use_wrk:
                    results.append((label, vars(run_wrk(wrk, url, script, args.connections, args.duration))))
                else:
                    results.append((label, run_pool(url, method, make, args.connections, args.duration)))
        finally:
            broker.server.stop()
    base = results[0][1]["rps"]
    driver = ("wrk (each SigV4 request signed by botocore right before its run: inside the ±5 min window)" if use_wrk
              else f"one Python client pool for every case ({args.connections} threads x requests.Session; "
                   "AWS requests re-signed per request)" + (
                       f" because {args.duration}s exceeds the SigV4 date window a replayed wrk request could use"
                       if args.driver == "auto" else " (--driver pool)"))
    print(f"\nkms-broker AWS front door benchmark: {args.connections} connections, {args.duration}s each, "
          f"gunicorn gthread x{args.workers} workers, SQLite + SoftHSM, audit on\ndriver: {driver}\n")
    print(f"{'operation':<30}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'x no-op':>10}{'non-2xx':>10}")
    for label, r in results:
        print(f"{label:<30}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{times(r['rps'], base):>10.2f}"
              f"{r['errors']:>10}")
    by = dict(results)
    for op in ("Encrypt", "Decrypt"):
        native = by[f"native {op} 64 B + ctx"]["rps"]
        aws = by[f"AWS {op} 64 B + ctx"]["rps"]
        print(f"AWS / native {op}: {times(aws, native):.2f}")


if __name__ == "__main__":
    main()
