"""How often one hot-path request gives the interpreter lock away, and where: a count, not a time.

    python bench/gil_releases.py [--rows encrypt,keyring,noop] [--requests 2000]

Under load every release of the GIL (a syscall, a PKCS#11 call, a blocking lock) lets another of the worker's threads
in, and costs the releasing thread a context switch to get it back (docs/performance.md, "the scheduler"). Times
move with the machine's load; these counts do not. The bench puts a uprobe on libpython's `PyEval_SaveThread`
(`perf probe`), runs `bench/hotpath_profile.py --only ROW` twice under `perf record --call-graph dwarf` (a short and
a long run: their difference is `--requests` requests, without the set-up), and prints, per request, the releases
of the thread that served the requests by the C function that made them, and those of the process's other threads
(the audit mirror, the housekeeper) in one line. Needs Linux `perf` with uprobes (Debian: linux-perf) and root.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENT = "PyEval_SaveThread"
WARMUP = 300  # hotpath_profile.measure() calls min(300, n) unmeasured requests first
_SAMPLE = re.compile(r"^\S.*?\s(\d+)\s+\[\d+\]")  # "python3.11 12184 [001] 32239.9: probe_...": the thread id
_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(\S+?)(?:\+0x[0-9a-f]+)?\s")


def libpython() -> str:
    name = sysconfig.get_config_var("LDLIBRARY") or ""
    path = Path(sysconfig.get_config_var("LIBDIR") or "") / name
    if not (name.endswith(".so") or ".so." in name) or not path.exists():
        raise SystemExit(f"{sys.executable} is not linked to a shared libpython ({name!r}): nothing to probe")
    return str(path)


def callers(perf_script: Iterable[str]) -> tuple[collections.Counter[str], int]:
    """From `perf script` output: releases by caller in the busiest thread (the one that served the requests:
    "a/b", the two C functions above PyEval_SaveThread), and the count of every other thread's releases."""
    samples: list[tuple[int, str]] = []
    tid, frames = None, []

    def flush() -> None:
        if tid is not None:
            samples.append((tid, "/".join(frames[1:3]) if len(frames) >= 3 else "(stack not unwound)"))

    for line in perf_script:
        if not line.strip():
            flush()
            tid, frames = None, []
            continue
        head = _SAMPLE.match(line)
        if head:
            tid, frames = int(head.group(1)), []
            continue
        frame = _FRAME.match(line)
        if frame and tid is not None:
            frames.append(frame.group(1))
    flush()
    if not samples:
        return collections.Counter(), 0
    main = collections.Counter(t for t, _ in samples).most_common(1)[0][0]
    counted = collections.Counter(name for t, name in samples if t == main)
    return counted, sum(1 for t, _ in samples if t != main)


def record(row: str, requests: int, folder: Path) -> tuple[collections.Counter[str], int]:
    data = folder / f"{row}-{requests}.data"
    subprocess.run(["perf", "record", "-q", "-e", f"probe_{_probe_group()}:{EVENT}", "--call-graph", "dwarf,8192",
                    "-o", str(data), sys.executable, str(ROOT / "bench" / "hotpath_profile.py"), "--requests",
                    str(requests), "--only", row], check=True, cwd=ROOT, capture_output=True)
    out = subprocess.run(["perf", "script", "-i", str(data)], check=True, capture_output=True, text=True).stdout
    return callers(out.splitlines())


def _probe_group() -> str:
    """perf's group name for a probe on libpython: "probe_" + the library's name up to its first dot."""
    return re.sub(r"[^A-Za-z0-9_]", "_", Path(libpython()).name.split(".")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="encrypt,keyring,noop", help="hotpath_profile rows, comma-separated")
    parser.add_argument("--requests", type=int, default=2000, help="requests the two runs differ by")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("needs Linux perf (Debian: apt-get install linux-perf)")
    probe = subprocess.run(["perf", "probe", "-x", libpython(), EVENT], capture_output=True, text=True)
    if probe.returncode != 0 and "already exists" not in probe.stderr:
        raise SystemExit(f"perf probe failed (uprobes and root are needed):\n{probe.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="kmsb-gil-") as tmp:
        for row in [r.strip() for r in args.rows.split(",") if r.strip()]:
            short, short_other = record(row, WARMUP, Path(tmp))
            long, long_other = record(row, WARMUP + args.requests, Path(tmp))
            per = {name: (long[name] - short[name]) / args.requests for name in set(long) | set(short)}
            print(f"{row}: {sum(per.values()):.2f} releases per request in the serving thread, "
                  f"{(long_other - short_other) / args.requests:.2f} in the process's other threads")
            for name, count in sorted(per.items(), key=lambda kv: -kv[1])[:args.top]:
                if abs(count) >= 0.05:
                    print(f"  {count:6.2f}  {name}")


if __name__ == "__main__":
    main()
