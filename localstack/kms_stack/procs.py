"""Detached child processes identified by (pid, start time), so a later `down` never signals a recycled PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below 32768 (outside the ephemeral range, where gRPC once failed to bind)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 32768:
            port = 20000 + (port % 12000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below 32768 on 127.0.0.1")


def spawn(cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` in its own session, output to `log_path`, no inherited pipes: it outlives the caller."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(env), cwd=cwd, start_new_session=True, close_fds=True,
        )


def start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(pid: int, started: int | None) -> bool:
    """True if `pid` is alive and is still the process we started (same start time)."""
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent (or init) reaps it


def stop(pid: int, started: int | None, timeout: float = 15.0) -> bool:
    """SIGTERM the process group of `pid`, SIGKILL after `timeout`. Returns False if it was already gone."""
    if not is_running(pid, started):
        _reap(pid)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not is_running(pid, started):
                return True
            time.sleep(0.1)
    _reap(pid)
    if is_running(pid, started):
        raise RuntimeError(f"process {pid} survived SIGKILL")
    return True
