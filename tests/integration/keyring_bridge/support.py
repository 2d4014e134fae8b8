"""Real servers for the keyring bridge tests: the broker with its bridge listener, and our own mariadbd instances.

Everything listens on 127.0.0.1 (free ports), lives under pytest's temp folders, and is stopped by its own PID.
Never the system MariaDB: own datadir, socket, pid file and port; `--no-defaults` style config via --defaults-file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import requests

from tests.support.broker import init_data_dir
from tests.support.procs import Server, free_port, port_open, start_server

CLI = [sys.executable, "-m", "broker.cli"]
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def have_mariadb() -> bool:
    plugin_dirs = [Path("/usr/lib/mysql/plugin"), Path("/usr/lib/x86_64-linux-gnu/mariadb19/plugin")]
    return Path(MARIADBD).exists() and Path(INSTALL_DB).exists() and any(
        (d / "hashicorp_key_management.so").exists() for d in plugin_dirs)


@dataclass
class Bridge:
    data_dir: Path
    log_dir: Path
    api_port: int
    bridge_port: int
    root_token: str
    server: Server | None = None
    starts: int = 0
    server_env: dict[str, str] | None = None
    workers: int = 2
    tls: tuple[Path, Path, Path] | None = None  # (cert, key, CA) for the bridge listener

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def vault(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.bridge_port}"

    def start(self) -> None:
        self.starts += 1
        tls = ["--keyring-cert", str(self.tls[0]), "--keyring-key", str(self.tls[1])] if self.tls else []
        verify = str(self.tls[2]) if self.tls else True
        self.server = start_server(
            f"broker-{self.starts}",
            [*CLI, "serve", "--data-dir", str(self.data_dir), "--bind", f"127.0.0.1:{self.api_port}",
             "--keyring-bind", f"127.0.0.1:{self.bridge_port}", "--workers", str(self.workers), "--threads", "4",
             *tls],
            log_dir=self.log_dir, env=self.server_env,
            ready=lambda: requests.get(f"{self.addr}/v1/health", timeout=1).ok
            and requests.get(f"{self.vault}/v1/sys/health", timeout=1, verify=verify).ok)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            deadline = time.monotonic() + 10
            while (port_open(self.bridge_port) or port_open(self.api_port)) and time.monotonic() < deadline:
                time.sleep(0.1)

    def env(self, token: str | None = None) -> dict[str, str]:
        return {**os.environ, "KMSB_ADDR": self.addr, "KMSB_TOKEN": token or self.root_token}

    def cli(self, *args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([*CLI, *args], env=self.env(token), capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"kms-broker {' '.join(args[:3])} failed: {out.stderr}")
        return out

    def db_token(self, mount: str) -> tuple[str, str]:
        out = json.loads(self.cli("keyring", "token", "create", "--mount", mount, "--output", "json").stdout)
        return out["token"], out["accessor"]

    def audit(self) -> list[dict]:
        """The audit events (signed checkpoint lines, which carry no event, are left out)."""
        path = self.data_dir / "audit" / "audit.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in records if "action" in r]


def start_bridge(base: Path, env: dict[str, str] | None = None, workers: int = 2,
                 tls: tuple[Path, Path, Path] | None = None) -> Bridge:
    data_dir = base / "data"
    token = init_data_dir(data_dir)
    bridge = Bridge(data_dir, base / "logs", free_port(), free_port(), token, server_env=env, workers=workers,
                    tls=tls)
    bridge.start()
    return bridge


@dataclass
class MariaDB:
    base: Path
    port: int = field(default_factory=free_port)
    options: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def datadir(self) -> Path:
        return self.base / "datadir"

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.base / "mariadbd.err"

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)

    def write_config(self) -> Path:
        cnf = self.base / "my.cnf"
        lines = ["[mariadbd]", f"datadir={self.datadir}", f"socket={self.socket}", f"port={self.port}",
                 "bind-address=127.0.0.1", f"pid-file={self.base / 'mariadbd.pid'}", f"log-error={self.error_log}",
                 "user=root", "skip-name-resolve", "innodb_buffer_pool_size=32M", "innodb_log_file_size=16M",
                 "performance_schema=OFF", "skip-log-bin", "innodb_encryption_threads=1"]
        lines += [f"{k}={v}" if v != "" else k for k, v in self.options.items()]
        cnf.write_text("\n".join(lines) + "\n")
        cnf.chmod(0o600)  # holds the database's broker token, as a real server's config would
        return cnf

    def log_mark(self) -> int:
        return self.error_log.stat().st_size if self.error_log.exists() else 0

    def log_since(self, mark: int) -> str:
        return self.error_log.read_bytes()[mark:].decode(errors="replace") if self.error_log.exists() else ""

    def start(self, *, expect_failure: bool = False, timeout: float = 60) -> None:
        cnf = self.write_config()
        self.starts += 1
        log = open(self.base / f"stdout-{self.starts}.log", "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([MARIADBD, f"--defaults-file={cnf}"], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if expect_failure:
                    return
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}:\n{self.tail()}")
            if self.socket.exists():
                try:
                    self.connect().close()
                    if expect_failure:
                        raise RuntimeError("mariadbd started although it should have failed")
                    return
                except pymysql.err.OperationalError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mariadbd did not become ready:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60) -> None:
        if not self.alive():
            return
        self.proc.terminate()  # SIGTERM to exactly our mariadbd: a clean shutdown
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def connect(self, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(unix_socket=str(self.socket), user="root", password="", database=database,
                               autocommit=True, connect_timeout=5, read_timeout=60)

    def query(self, sql: str, args=None, database: str | None = None) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def hashicorp_options(bridge: Bridge, mount: str, token: str, **extra: str) -> dict[str, str]:
    options = {
        "plugin_load_add": "hashicorp_key_management",
        "hashicorp-key-management-vault-url": f"{bridge.vault}/v1/{mount}",
        "hashicorp-key-management-token": token,
        "hashicorp-key-management-timeout": "2",
        "hashicorp-key-management-max-retries": "1",
        "innodb_encrypt_tables": "ON",
        "innodb_encrypt_log": "ON",
    }
    options.update(extra)
    return options


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (cert, key, ca)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms-broker test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (folder / "bridge.pem", folder / "bridge.key", folder / "ca.pem")
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[1].chmod(0o600)
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths
