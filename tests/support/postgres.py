"""A real PostgreSQL server for tests: its own cluster in a temp dir, 127.0.0.1 only, a free port, stopped by PID.

initdb refuses to run as root, so under root the cluster belongs to a system user (`kmsb-test`, created with
`useradd --system` when missing) and the server runs as that user through `setpriv` (which execs, so the PID we
hold is the postmaster's own).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import Server, free_port, start_server

TEST_USER = "kmsb-test"
SUPERUSER = "kmsb"
MAX_CONNECTIONS = 300  # a cluster test runs three nodes of several workers and listeners, each with its pools


def pg_bin_dir() -> Path:
    """The newest Debian PostgreSQL bin dir (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                           "(apt-get install postgresql)")
    return Path(found[-1]).parent


def _os_user() -> pwd.struct_passwd | None:
    """The user the cluster runs as: None = the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(TEST_USER)


def _as_user(user: pwd.struct_passwd | None, cmd: Sequence[str]) -> list[str]:
    if user is None:
        return list(cmd)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *cmd]


@dataclass
class PostgresServer:
    server: Server
    root: Path
    port: int
    password: str

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres", driver="postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def halt(self) -> None:
        """Fast shutdown (SIGINT) of our postmaster, keeping its data: an outage `resume` ends."""
        proc = self.server.proc
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(30)

    def resume(self, log_dir: Path) -> None:
        """Start the same cluster again (same data, port and sockets) after `halt`."""
        self.server = start_server("postgres-again", self._command(), log_dir=log_dir, ready=self._ready,
                                   cwd=self.root, timeout=60)

    def _command(self) -> list[str]:
        return _as_user(_os_user(), [str(pg_bin_dir() / "postgres"), "-D", str(self.root / "data"), "-h",
                                     "127.0.0.1", "-p", str(self.port), "-k", str(self.root / "sock"),
                                     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                     "-c", f"max_connections={MAX_CONNECTIONS}"])

    def _ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.url("postgres", driver="postgresql"), connect_timeout=2):
            return True

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect clients, checkpoint) of our postmaster, then clean up its dir."""
        proc = self.server.proc
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGINT)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(log_dir: Path) -> PostgresServer:
    """initdb a fresh cluster and start it; the caller must stop() it."""
    bin_dir = pg_bin_dir()
    user = _os_user()
    # Not under pytest's tmp dir: that one is private to root, and the server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="kmsb-pg-"))
    data, sockets, pwfile = root / "data", root / "sock", root / "pwfile"
    sockets.mkdir()
    password = secrets.token_hex(16)
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if user is not None:
        for path in (root, sockets, pwfile):
            os.chown(path, user.pw_uid, user.pw_gid)
    subprocess.run(
        _as_user(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=scram-sha-256",
                        f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]),
        check=True, capture_output=True, cwd=root,
    )
    pwfile.unlink()
    pg = PostgresServer(None, root, free_port(), password)  # type: ignore[arg-type]
    pg.server = start_server("postgres", pg._command(), log_dir=log_dir, ready=pg._ready, cwd=root, timeout=60)
    return pg
