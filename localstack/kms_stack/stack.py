"""Stack: bring emulators up as detached processes, record them in stack.json, report settings, stop by PID.

The CLI and the test fixtures use this same class, so tests exercise exactly what `kms-broker stack up` runs.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import procs, state
from .launchers import EmulatorMissing, Launch, LaunchError, launch_for

CLOUDS: tuple[str, ...] = ("aws", "azure", "gcp", "aliyun")
DEFAULT_STATE_DIR = Path("var/stack")


class StackError(RuntimeError):
    """The stack could not do what was asked; the message says why (and includes the emulator's log)."""


class _Missing(StackError):
    """Internal: the cloud's emulator package is absent (skippable when no --only was given)."""


def default_state_dir() -> Path:
    return Path(os.environ.get("KMSB_STACK_DIR") or DEFAULT_STATE_DIR)


def parse_only(only: str | Iterable[str] | None) -> list[str]:
    """'aws,gcp' or ['aws'] or None (all) -> validated clouds in canonical order."""
    if only is None:
        return list(CLOUDS)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in names if n not in CLOUDS]
    if unknown:
        raise StackError(f"unknown cloud(s) {unknown}; choose from {', '.join(CLOUDS)}")
    return [c for c in CLOUDS if c in names]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Stack:
    """The emulators recorded under one state directory."""

    def __init__(self, state_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir = self.state_dir.resolve()
        self._children: dict[int, subprocess.Popen] = {}  # ours to reap when stopped in-process
        self.skipped: dict[str, str] = {}  # cloud -> why, from the last up() without `only`

    # -- queries ------------------------------------------------------------------------------------------
    def services(self) -> dict[str, state.Service]:
        """Recorded services that are still running (dead ones are dropped from stack.json)."""
        recorded = state.load(self.state_dir)
        alive = {c: s for c, s in recorded.items() if procs.is_running(s.pid, s.start_time)}
        if alive.keys() != recorded.keys():
            state.save(self.state_dir, alive)
        return alive

    def env(self) -> dict[str, dict]:
        """Settings for each cloud that is up, in the documented shape."""
        return {cloud: svc.settings for cloud, svc in sorted(self.services().items(), key=lambda i: CLOUDS.index(i[0]))}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per state dir (two concurrent `up`s would each start the same cloud)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- up / down ----------------------------------------------------------------------------------------
    def up(self, only: str | Iterable[str] | None = None, *, aws_backend: str = "localstack") -> dict[str, dict]:
        """Start every requested cloud that is not already running; on any failure stop what this call started.

        With `only=None` (all clouds) an emulator package that does not exist yet is skipped (see `skipped`);
        a cloud named in `only` must start."""
        wanted = parse_only(only)
        with self._locked():
            return self._up(wanted, only is not None, aws_backend)

    def _up(self, wanted: list[str], strict: bool, aws_backend: str) -> dict[str, dict]:
        running = self.services()
        started: list[str] = []
        self.skipped = {}
        try:
            for cloud in wanted:
                if cloud in running:
                    if cloud == "aws" and running[cloud].backend != aws_backend:
                        raise StackError(f"aws is already up with backend {running[cloud].backend!r}; "
                                         f"run `stack down` before switching to {aws_backend!r}")
                    continue
                try:
                    running[cloud] = self._start(cloud, aws_backend)
                except _Missing as e:
                    if strict:
                        raise StackError(str(e)) from None
                    self.skipped[cloud] = str(e)
                    continue
                started.append(cloud)
                state.save(self.state_dir, running)
        except BaseException:
            for cloud in started:
                svc = running.pop(cloud)
                procs.stop(svc.pid, svc.start_time)
            state.save(self.state_dir, running)
            raise
        return {c: running[c].settings for c in CLOUDS if c in running}

    def down(self, only: str | Iterable[str] | None = None) -> list[str]:
        """Stop the recorded processes by PID (only those still carrying their recorded start time)."""
        wanted = parse_only(only)
        with self._locked():
            return self._down(wanted)

    def _down(self, wanted: list[str]) -> list[str]:
        recorded = state.load(self.state_dir)
        stopped = []
        for cloud in wanted:
            svc = recorded.pop(cloud, None)
            if svc is None:
                continue
            if procs.stop(svc.pid, svc.start_time):
                stopped.append(cloud)
            child = self._children.pop(svc.pid, None)
            if child is not None:
                child.wait(5)
        state.save(self.state_dir, recorded)
        return stopped

    # -- internals ----------------------------------------------------------------------------------------
    def _start(self, cloud: str, aws_backend: str) -> state.Service:
        try:
            launch = launch_for(cloud, self.state_dir / cloud, aws_backend=aws_backend)
        except EmulatorMissing as e:
            raise _Missing(str(e)) from None
        except LaunchError as e:
            raise StackError(str(e)) from None
        log = self.state_dir / "logs" / f"{cloud}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_bytes(b"")  # readiness is judged from this run's output only
        proc = procs.spawn(launch.cmd, env=launch.env, log_path=log, cwd=launch.cwd)
        self._children[proc.pid] = proc
        svc = state.Service(cloud=cloud, backend=launch.backend, pid=proc.pid, start_time=procs.start_time(proc.pid),
                            cmd=launch.cmd, log=str(log), settings={}, ports=launch.ports)
        try:
            # "kind" makes each block a provider table as is: KMSB_PROVIDERS_JSON="$(kms-broker stack env --output json)"
            svc.settings = {"kind": cloud, **self._wait_ready(cloud, launch, proc, log)}
        except BaseException:
            procs.stop(proc.pid, svc.start_time)
            self._children.pop(proc.pid, None)
            raise
        return svc

    @staticmethod
    def _wait_ready(cloud: str, launch: Launch, proc: subprocess.Popen, log: Path) -> dict:
        deadline = time.monotonic() + launch.timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{cloud} ({launch.backend}) exited with {proc.returncode} before it was ready; "
                                 f"log {log}:\n{_tail(log)}")
            try:
                settings = launch.probe(log)
            except LaunchError as e:
                raise StackError(str(e)) from None
            except Exception as e:  # noqa: BLE001 - probes fail until the server answers
                last_error, settings = e, None
            if settings is not None:
                return settings
            time.sleep(0.2)
        raise StackError(f"{cloud} ({launch.backend}) not ready after {launch.timeout:.0f}s "
                         f"(last probe error: {last_error}); log {log}:\n{_tail(log)}")
