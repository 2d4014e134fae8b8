"""A real cluster on one machine: nodes with their own data folders and SoftHSM tokens on one PostgreSQL, joined
with `kms-broker node join` (the root keys move HSM to HSM after a quorum approved the join), and HAProxy in front
of their APIs and keyring bridges. Everything on free loopback ports, stopped by PID."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.postgres import PostgresServer, start_postgres
from tests.support.procs import Server, free_port, port_open, start_server

CLI = [sys.executable, "-m", "broker.cli"]
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
OPERATORS = {"Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
    "broker:RequestApproval", "broker:Approve", "broker:Veto", "broker:ExecuteApproval", "broker:GetApproval",
    "broker:ListApprovals", "broker:JoinNode", "broker:ListNodes", "broker:RemoveNode"]}]}


def have_haproxy() -> bool:
    return Path(HAPROXY).exists()


def kmsb(*args: str, addr: str = "", token: str = "", check: bool = True,
         timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "KMSB_ADDR": addr, "KMSB_TOKEN": token}
    env.pop("SOFTHSM2_CONF", None)  # each node's settings name its own token's config
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"kms-broker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


@dataclass
class Node:
    name: str
    data_dir: Path
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    bridge_port: int = field(default_factory=free_port)
    workers: int = 2
    server: Server | None = None
    starts: int = 0

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def vault(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        self.server = start_server(
            f"{self.name}-{self.starts}",
            [*CLI, "serve", "--data-dir", str(self.data_dir), "--bind", f"127.0.0.1:{self.api_port}",
             "--keyring-bind", f"127.0.0.1:{self.bridge_port}", "--workers", str(self.workers), "--threads", "4"],
            log_dir=self.log_dir, env=env, timeout=120,
            ready=lambda: requests.get(f"{self.addr}/v1/ready", timeout=2).ok
            and requests.get(f"{self.vault}/v1/sys/health", timeout=2).ok)

    def kill9(self) -> None:
        """What a host crash does: SIGKILL to the arbiter, its workers and the bridge (one process group)."""
        assert self.server is not None
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.proc.wait(10)
        deadline = time.monotonic() + 10
        while (port_open(self.api_port) or port_open(self.bridge_port)) and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=20)

    def alive(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None


class HAProxy:
    """HAProxy with docs/operations.md's configuration (TCP mode, health checks on /v1/ready and /v1/sys/health),
    its addresses given in the environment as the doc's placeholders expect."""

    def __init__(self, root: Path, nodes: list[Node]) -> None:
        self.root = root
        self.nodes = nodes
        self.api_port = free_port()
        self.bridge_port = free_port()
        self.server: Server | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def vault(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    def config(self) -> str:
        """docs/operations.md's haproxy.cfg as written, without the server lines of nodes this proxy leaves out."""
        block = re.search(r"```haproxy\n(.*?)```", DOC.read_text(), re.S)
        assert block, "docs/operations.md has no haproxy block"
        names = {n.name for n in self.nodes}
        lines = [line for line in block.group(1).splitlines()
                 if not (m := re.match(r"\s+server (\w+) ", line)) or m.group(1) in names]
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        out = {"KMSB_LB_API": f"127.0.0.1:{self.api_port}", "KMSB_LB_BRIDGE": f"127.0.0.1:{self.bridge_port}"}
        for n in self.nodes:
            out[f"KMSB_NODE_{n.name.upper()}_API"] = f"127.0.0.1:{n.api_port}"
            out[f"KMSB_NODE_{n.name.upper()}_BRIDGE"] = f"127.0.0.1:{n.bridge_port}"
        return out

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(self.config())
        env = {**os.environ, **self.env()}
        subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], check=True, capture_output=True, timeout=30, env=env)
        self.server = start_server("haproxy", [HAPROXY, "-db", "-f", str(cfg)], log_dir=self.root, env=self.env(),
                                   ready=lambda: requests.get(f"{self.addr}/v1/ready", timeout=2).ok)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class Cluster:
    base: Path
    pg: PostgresServer
    store_url: str
    root_token: str
    nodes: list[Node]
    haproxy: HAProxy
    tokens: dict[str, str]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def session(self, addr: str | None = None) -> requests.Session:
        s = requests.Session()
        s.headers["X-KMSB-Token"] = self.root_token
        s.base = addr or self.haproxy.addr  # type: ignore[attr-defined]
        return s

    def audit_records(self) -> list[dict]:
        """Every record of every node's audit file."""
        out = []
        for n in self.nodes:
            path = n.data_dir / "audit" / "audit.jsonl"
            out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return out

    def stop(self) -> None:
        self.haproxy.stop()
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # each node's graceful stop takes seconds: together
            list(pool.map(Node.stop, self.nodes))
        self.pg.stop()


def _join(cluster_addr: str, tokens: dict[str, str], store_url: str, node: Node) -> None:
    """`kms-broker node join` as an operator runs it: ask, two approvers agree, execute on a member, finish."""
    asked = kmsb("node", "join", "--data-dir", str(node.data_dir), "--store-url", store_url, "--name", node.name,
                 "--reason", "cluster test", "--output", "json", addr=cluster_addr, token=tokens["ops"])
    rid = json.loads(asked.stdout)["request_id"]
    for approver in ("alice", "bob"):
        kmsb("approval", "approve", rid, addr=cluster_addr, token=tokens[approver])
    kmsb("approval", "execute", rid, addr=cluster_addr, token=tokens["ops"])
    kmsb("node", "join", "--data-dir", str(node.data_dir))


def build_cluster(base: Path, names: tuple[str, ...] = ("a", "b", "c"), *, workers: int = 2) -> Cluster:
    """PostgreSQL, node `names[0]` initialised on it, the others joined, all serving, HAProxy in front."""
    pg = start_postgres(base / "pg-logs")
    nodes: list[Node] = []
    haproxy = None
    try:
        url = pg.create_database("kmsb_cluster")
        nodes = [Node(n, base / n, base / "logs", workers=workers) for n in names]
        first = nodes[0]
        done = kmsb("init", "--data-dir", str(first.data_dir), "--store-url", url, "--output", "json")
        root_token = json.loads(done.stdout)["root_token"]
        first.start()
        s = requests.Session()
        s.headers["X-KMSB-Token"] = root_token
        assert s.put(f"{first.addr}/v1/policies/cluster-operators", json={"Document": OPERATORS}).ok
        tokens = {}
        for who in ("ops", "alice", "bob"):
            r = s.post(f"{first.addr}/v1/auth/token/create", json={"display_name": who,
                                                                   "policies": ["cluster-operators"]})
            tokens[who] = r.json()["auth"]["client_token"]
        kmsb("approval", "configure", "node-join", "--approver", "alice", "--approver", "bob", "--required", "2",
             "--cooling-off", "0s", addr=first.addr, token=root_token)
        for node in nodes[1:]:
            _join(first.addr, tokens, url, node)
            node.start()
        haproxy = HAProxy(base / "haproxy", nodes)
        haproxy.start()
        return Cluster(base, pg, url, root_token, nodes, haproxy, tokens)
    except BaseException:
        if haproxy is not None:
            haproxy.stop()
        for n in nodes:
            n.stop()
        pg.stop()
        raise
