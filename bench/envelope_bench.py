"""Client-side envelope encryption benchmark (broker/envelope), one core, against a real broker.

    python bench/envelope_bench.py [--seconds 3] [--stream-mib 1024]

Starts a fresh broker (SQLite + SoftHSM, auth and audit on) for the data keys, then measures in this process:
raw AES-256-GCM of 4 KiB (the baseline), envelope encrypt/decrypt of 4 KiB messages with the data-key cache and
without it (one GenerateDataKey / Decrypt over HTTP per message), and streaming a large in-memory buffer with 1 MiB
frames beside raw AES-GCM on 1 MiB frames. Prints messages/s or GiB/s, CPU-seconds per 1,000 operations, and the
targets of issue 14 (>= 200,000 cached 4 KiB encrypts/s; >= 3 GiB/s streaming per core).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from broker.client import BrokerClient  # noqa: E402
from broker.envelope import CacheLimits, Envelope, KmsDataKeys  # noqa: E402
from tests.support.broker import start_broker  # noqa: E402

MSG = 4096


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(operations per second, CPU-seconds per 1,000 operations) of fn, run for about `seconds`."""
    n, batch = 0, 64
    wall, cpu = time.perf_counter(), time.process_time()
    deadline = wall + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            fn()
        n += batch
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1000


class _Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return len(data)


def stream_rate(envelope: Envelope, key: str, data: bytes) -> tuple[float, float]:
    """Encrypt an in-memory buffer to a discarding sink (so the figure is the encryption's, not a growing buffer's)."""
    wall, cpu = time.perf_counter(), time.process_time()
    envelope.encrypt_stream(io.BytesIO(data), _Sink(), key)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(data) / wall / 2**30, cpu / (len(data) / 2**20) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--stream-mib", type=int, default=1024)
    args = parser.parse_args()
    plaintext = os.urandom(MSG)
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(Path(tmp) / "data", Path(tmp) / "logs", name="envelope-bench-broker")
        try:
            client = BrokerClient(broker.addr, broker.root_token)
            key = client.create_key(description="envelope bench")["KeyId"]
            ctx = {"app": "bench"}
            rows: list[tuple[str, str, float, str, str]] = []

            raw = AESGCM(AESGCM.generate_key(256))
            ops, cpu = rate(lambda: raw.encrypt(os.urandom(12), plaintext, b""), args.seconds)
            rows.append(("raw AES-256-GCM, 4 KiB (baseline)", f"{ops:,.0f} /s", cpu, "1.00", ""))
            base = ops

            cached = Envelope(KmsDataKeys(client), cache=CacheLimits(max_age=300))
            ops, cpu = rate(lambda: cached.encrypt(plaintext, key, ctx), args.seconds)
            rows.append(("envelope encrypt 4 KiB, cached data key", f"{ops:,.0f} /s", cpu, f"{ops / base:.2f}",
                         "met" if ops >= 200_000 else "NOT met (>= 200,000/s)"))
            message = cached.encrypt(plaintext, key, ctx)
            ops, cpu = rate(lambda: cached.decrypt(message, ctx), args.seconds)
            rows.append(("envelope decrypt 4 KiB, cached data key", f"{ops:,.0f} /s", cpu, f"{ops / base:.2f}", ""))

            uncached = Envelope(KmsDataKeys(client))
            ops, cpu = rate(lambda: uncached.encrypt(plaintext, key, ctx), args.seconds)
            rows.append(("envelope encrypt 4 KiB, no cache (1 HTTP call each)", f"{ops:,.0f} /s", cpu,
                         f"{ops / base:.4f}", ""))
            ops, cpu = rate(lambda: uncached.decrypt(message, ctx), args.seconds)
            rows.append(("envelope decrypt 4 KiB, no cache (1 HTTP call each)", f"{ops:,.0f} /s", cpu,
                         f"{ops / base:.4f}", ""))

            data = os.urandom(args.stream_mib << 20)
            frames = memoryview(data)
            wall, c0 = time.perf_counter(), time.process_time()
            for i in range(0, len(data), 1 << 20):
                raw.encrypt(os.urandom(12), frames[i:i + (1 << 20)], b"")
            wall, c0 = time.perf_counter() - wall, time.process_time() - c0
            raw_gib = len(data) / wall / 2**30
            rows.append((f"raw AES-256-GCM, 1 MiB frames, {args.stream_mib} MiB (baseline)", f"{raw_gib:.2f} GiB/s",
                         c0 / args.stream_mib * 1000, "1.00", ""))
            streaming = Envelope(KmsDataKeys(client), frame_length=1 << 20)
            gib, cpu = stream_rate(streaming, key, data)
            rows.append((f"envelope encrypt stream, 1 MiB frames, {args.stream_mib} MiB", f"{gib:.2f} GiB/s", cpu,
                         f"{gib / raw_gib:.2f}", "met" if gib >= 3 else "NOT met (>= 3 GiB/s)"))
            sink = io.BytesIO()
            streaming.encrypt_stream(io.BytesIO(data), sink, key)
            sealed = sink.getvalue()
            del sink
            wall, c0 = time.perf_counter(), time.process_time()
            streaming.decrypt_stream(io.BytesIO(sealed), _Sink())
            wall, c0 = time.perf_counter() - wall, time.process_time() - c0
            rows.append((f"envelope decrypt stream, 1 MiB frames, {args.stream_mib} MiB",
                         f"{len(data) / wall / 2**30:.2f} GiB/s", c0 / args.stream_mib * 1000,
                         f"{len(data) / wall / 2**30 / raw_gib:.2f}", ""))
        finally:
            broker.server.stop()
    print("| operation | rate | CPU-s per 1,000 (streams: per 1,000 MiB) | x baseline | target |")
    print("|---|---|---|---|---|")
    for name, value, cpu, ratio, target in rows:
        print(f"| {name} | {value} | {cpu:.4f} | {ratio} | {target} |")


if __name__ == "__main__":
    main()
