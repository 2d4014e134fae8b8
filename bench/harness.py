"""What every HTTP benchmark shares: wrk (a Debian package, installed if missing), its Lua request scripts, the
parsing of its report, and the server-side CPU a run cost (so a change that only moves work elsewhere shows).

CPU is read from /proc/<pid>/stat (utime + stime) of every process in the server's tree (arbiter, workers, a
bridge arbiter and its workers) before and after a run: CPU-seconds per 1,000 requests is the delta over the
requests wrk completed, times 1,000. It is the work the server did, whatever the machine's load did to wall time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_TICK = os.sysconf("SC_CLK_TCK")


def ensure_wrk() -> str:
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed and apt-get could not install it")
    return found


def lua_script(folder: Path, name: str, method: str, headers: dict[str, str], body: bytes | str | None) -> Path:
    """A wrk script that replays one request. The body goes in a Lua long bracket (no escaping needed for JSON)."""
    lines = [f'wrk.method = "{method}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    if body is not None:
        text = body.decode() if isinstance(body, bytes) else body
        lines.append(f"wrk.body = [==[{text}]==]")
    path = folder / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def paced(script: Path, connections: int, rate: float) -> tuple[Path, float]:
    """A copy of `script` that offers about `rate` requests/s in all, and the rate it really offers: each connection
    waits connections/rate seconds before each request (wrk's `delay()`; the wait is not part of the latency it
    reports). The latency of a server that keeps up with a steady load, not of one that is queueing: with wrk's
    closed loop at full speed a row's p99 is at least connections / throughput, whatever the server does.

    wrk takes the delay in whole milliseconds (it truncates the number `delay()` returns, so 0.8 ms is no delay at
    all): the wait is rounded to whole milliseconds, at least 1, and the rate offered is the one that wait gives."""
    out = script.with_name(f"{script.stem}_paced.lua")
    wait_ms = max(1, round(connections * 1000.0 / rate))
    out.write_text(script.read_text() + f"function delay()\n  return {wait_ms}\nend\n")
    return out, connections * 1000.0 / wait_ms


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * _UNITS[unit]


@dataclass
class Result:
    rps: float
    p50: float
    p99: float
    errors: int
    requests: int
    cpu_per_1k: float | None = None  # server CPU-seconds per 1,000 requests
    switches: float | None = None  # server context switches per request (every thread, voluntary or not)


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration: float, *,
            cpu: ProcessTree | None = None) -> Result:
    """One wrk run (2 threads, `connections` keep-alive connections); errors = non-2xx answers + socket errors."""
    before = cpu.seconds() if cpu is not None else 0.0
    switched = cpu.switches() if cpu is not None else 0
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    spent = cpu.seconds() - before if cpu is not None else None
    switches = cpu.switches() - switched if cpu is not None else None
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return Result(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        # anchored: the Latency line's "+/- Stdev" column also ends in a percentage
        p50=_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        p99=_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        errors=(int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0),
        requests=requests,
        cpu_per_1k=(spent / requests * 1000) if spent is not None and requests else None,
        switches=(switches / requests) if switches is not None and requests else None,
    )


class ProcessTree:
    """CPU-seconds used so far by a process and all its descendants (those alive when asked)."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry))
        found, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def seconds(self) -> float:
        total = 0
        for pid in self.pids():
            stat = _stat(pid)
            if stat is not None:
                total += int(stat[11]) + int(stat[12])  # utime, stime (fields 14 and 15)
        return total / _TICK

    def switches(self) -> int:
        """Context switches so far of every thread of the tree (/proc/<pid>/task/*/status). Each one costs the
        server CPU (tens of microseconds on a virtual machine) and, unlike throughput, barely moves with the load: a
        request that gives the interpreter lock away less often shows here first."""
        total = 0
        for pid in self.pids():
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for task in tasks:
                try:
                    status = Path(f"/proc/{pid}/task/{task}/status").read_text()
                except OSError:
                    continue
                total += sum(int(line.split()[1]) for line in status.splitlines()
                             if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
        return total


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the parenthesised command name, which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def times(value: float, base: float) -> float:
    """`value` as a multiple of `base`; NaN (printed "nan") when the baseline served nothing, instead of a crash
    that would lose every other row of the run."""
    return value / base if base else float("nan")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min), {os.cpu_count()} CPUs"
