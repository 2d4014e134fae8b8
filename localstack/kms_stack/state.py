"""`<state dir>/stack.json`: what `up` started (PID, start time, command, settings), read by `env` and `down`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "stack.json"


@dataclass
class Service:
    """One running emulator as recorded by `up`."""

    cloud: str
    backend: str
    pid: int
    start_time: int | None
    cmd: list[str]
    log: str
    settings: dict
    ports: dict[str, int] = field(default_factory=dict)


def load(state_dir: Path) -> dict[str, Service]:
    path = state_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {cloud: Service(**svc) for cloud, svc in raw.get("services", {}).items()}


def save(state_dir: Path, services: dict[str, Service]) -> None:
    """Write atomically so a crash never leaves a half-written file that would orphan running PIDs."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    body = {"version": 1, "services": {cloud: asdict(svc) for cloud, svc in services.items()}}
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
