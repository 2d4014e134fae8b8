"""A real broker for tests: `kms-broker init` in a temp folder, then `kms-broker serve` (gunicorn) on a free port."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.procs import Server, free_port, start_server

CLI = [sys.executable, "-m", "broker.cli"]


@dataclass
class RunningBroker:
    data_dir: Path
    addr: str
    root_token: str
    server: Server

    def url(self, path: str) -> str:
        return f"{self.addr}/v1{path}"

    def session(self, token: str | None = None) -> requests.Session:
        s = requests.Session()
        s.headers["X-KMSB-Token"] = token if token is not None else self.root_token
        return s

    def snapshot(self) -> dict[str, list[tuple]]:
        """Every row of every table but the audit trail (which must grow): to prove a refused request changed nothing."""
        con = sqlite3.connect(f"file:{self.data_dir / 'broker.db'}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")
                      if not r[0].startswith("audit")]
            return {t: sorted(con.execute(f'select * from "{t}"').fetchall(), key=repr) for t in tables}
        finally:
            con.close()


def init_data_dir(data_dir: Path) -> str:
    out = subprocess.run([*CLI, "init", "--data-dir", str(data_dir), "--output", "json"], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)["root_token"]


def start_broker(data_dir: Path, log_dir: Path, *, env: dict[str, str] | None = None, workers: int = 2,
                 name: str = "broker") -> RunningBroker:
    token = init_data_dir(data_dir) if not (data_dir / "broker.toml").exists() else ""
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    server = start_server(
        name, [*CLI, "serve", "--data-dir", str(data_dir), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        log_dir=log_dir, env=env, ready=lambda: requests.get(f"{addr}/v1/health", timeout=1).ok,
    )
    return RunningBroker(data_dir, addr, token, server)
