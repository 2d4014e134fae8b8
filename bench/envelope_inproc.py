"""Envelope encrypt/decrypt of cached 4 KiB messages in this process, no broker: the CPU cost of broker/envelope alone.

    python bench/envelope_inproc.py [--root DIR] [-n 100000] [--repeats 3]

A fake in-memory data-key source stands in for the KMS (after the first message every call hits the data-key cache,
as in bench/envelope_bench.py's cached rows, so the source is never on the measured path). Prints the median CPU
microseconds (thread time: less disturbed by other processes than wall time) per encrypt and per decrypt over
`--repeats` runs of `-n` calls. `--root` imports broker/ from another checkout (e.g. an export of an older commit),
so two versions can be run in turn (ABAB) on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class FakeSource:
    """Data keys in memory: the cost under test is the envelope's, not a KMS call's."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}

    def generate(self, key: str, context: Mapping[str, str]) -> tuple[bytes, list[bytes]]:
        data_key, blob = os.urandom(32), key.encode() + os.urandom(180)  # about a broker ciphertext's size
        self.keys[blob] = data_key
        return data_key, [blob]

    def unwrap(self, wrapped: Sequence[bytes], context: Mapping[str, str]) -> bytes:
        return self.keys[wrapped[0]]


def per_call_us(fn: Callable[..., object], args: tuple, n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        fn(*args)
    return (time.thread_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    from broker.envelope import CacheLimits, Envelope

    env = Envelope(FakeSource(), cache=CacheLimits(max_age=300))
    plaintext, context = os.urandom(4096), {"app": "bench"}
    message = env.encrypt(plaintext, "key-1", context)
    assert env.decrypt(message, context) == plaintext
    enc = statistics.median(per_call_us(env.encrypt, (plaintext, "key-1", context), args.n)
                            for _ in range(args.repeats))
    dec = statistics.median(per_call_us(env.decrypt, (message, context), args.n) for _ in range(args.repeats))
    print(f"{args.root}: encrypt {enc:.3f} us ({1e6 / enc:,.0f}/s)  decrypt {dec:.3f} us ({1e6 / dec:,.0f}/s)")


if __name__ == "__main__":
    main()
