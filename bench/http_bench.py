"""HTTP benchmark: Encrypt, Decrypt, GenerateDataKey vs a no-op JSON endpoint on the same gunicorn stack.

    python bench/http_bench.py [--connections 16] [--duration 10] [--workers 2] [--threads 8]

Starts a fresh broker (SQLite + SoftHSM, auth and audit on) on a free loopback port, drives it with `wrk`
(Debian package `wrk`, installed if missing), and prints req/s, p50, p99 and the ratio to the no-op baseline
measured in the same run. Target (issue 2): Encrypt >= 0.6 x no-op at 16 connections.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.broker import start_broker  # noqa: E402

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ensure_wrk() -> str:
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk")


def lua_script(folder: Path, name: str, method: str, body: dict | None, token: str | None) -> Path:
    lines = [f'wrk.method = "{method}"', 'wrk.headers["Content-Type"] = "application/json"']
    if token:
        lines.append(f'wrk.headers["X-KMSB-Token"] = "{token}"')
    if body is not None:
        lines.append(f"wrk.body = [[{json.dumps(body)}]]")
    path = folder / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * _UNITS[unit]


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        # anchored: the Latency line's "+/- Stdev" column also ends in a percentage
        "p50": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = start_broker(folder / "data", folder / "logs", workers=args.workers, name="bench-broker")
        try:
            api = broker.session()
            key = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
            plaintext = base64.b64encode(b"x" * 64).decode()
            context = {"app": "bench"}
            blob = api.post(broker.url(f"/keys/{key}/encrypt"),
                            json={"Plaintext": plaintext, "EncryptionContext": context}).json()["CiphertextBlob"]
            cases = [
                ("no-op (GET /v1/health)", "/health", "GET", None, None),
                ("Encrypt 64 B + context", f"/keys/{key}/encrypt", "POST",
                 {"Plaintext": plaintext, "EncryptionContext": context}, broker.root_token),
                ("Decrypt 64 B + context", "/decrypt", "POST",
                 {"CiphertextBlob": blob, "EncryptionContext": context}, broker.root_token),
                ("GenerateDataKey AES_256", f"/keys/{key}/generate-data-key", "POST",
                 {"KeySpec": "AES_256", "EncryptionContext": context}, broker.root_token),
            ]
            results = []
            for label, path, method, body, token in cases:
                script = lua_script(folder, re.sub(r"\W", "_", label), method, body, token)
                requests.get(broker.url("/health"))
                results.append((label, run_wrk(wrk, broker.url(path), script, args.connections, args.duration)))
        finally:
            broker.server.stop()
    base = results[0][1]["rps"]
    print(f"\nkms-broker HTTP benchmark: {args.connections} connections, {args.duration}s each, "
          f"gunicorn gthread x{args.workers} workers, SQLite + SoftHSM, token auth + hash-chained audit on\n")
    print(f"{'operation':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'x no-op':>10}{'non-2xx':>10}")
    for label, r in results:
        print(f"{label:<28}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['rps'] / base:>10.2f}{r['errors']:>10}")
    enc = results[1][1]["rps"] / base
    print(f"\nTarget: Encrypt >= 0.60 x no-op -> {enc:.2f} ({'met' if enc >= 0.6 else 'NOT met'})")


if __name__ == "__main__":
    main()
