"""Start real servers for tests: loopback only, free ports, stopped by their own PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the ephemeral range (gRPC once failed to bind inside it)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 32768:
            return port
        candidate = 20000 + (port % 12000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free port found")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class Server:
    """A child process we started; stop() kills exactly that PID (and its process group)."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start_server(
    name: str,
    cmd: Sequence[str],
    *,
    log_dir: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start `cmd` in its own process group and wait until `ready()` is true; fail loudly with its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(
        list(cmd), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        cwd=cwd, start_new_session=True,
    )
    server = Server(name, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{server.log_tail()}")
        try:
            if ready():
                return server
        except Exception:  # noqa: BLE001 - readiness probes fail until the server is up
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} was not ready after {timeout}s:\n{server.log_tail()}")
