"""The bridge's own listener: a second gunicorn arbiter in a child process (its own port and TLS settings).

`kms-broker serve --keyring-bind HOST:PORT` forks this before the API arbiter starts. The child asks the kernel to
SIGTERM it when the parent dies (PR_SET_PDEATHSIG), so it never outlives `serve`.
"""

from __future__ import annotations

import ctypes
import os
import signal
from functools import partial
from typing import Any

from broker.balanced_worker import WORKER_CLASS
from broker.logs import gunicorn_logconfig
from broker.settings import Settings
from broker.wsgi import GunicornApp, child_exit, freeze_startup_objects


def _create_bridge(settings: Settings):
    from keyring_bridge.vault_app import create_bridge_app

    return create_bridge_app(settings, run_jobs=True)


def bridge_options(bind: str, *, workers: int, threads: int, certfile: str | None = None,
                   keyfile: str | None = None, log_format: str = "text") -> dict[str, Any]:
    options: dict[str, Any] = {
        "bind": bind, "workers": workers, "threads": threads, "worker_class": WORKER_CLASS, "preload_app": False,
        "accesslog": None, "errorlog": "-", "loglevel": "info",
        # mariadbd opens a new connection per request; keep-alive only helps other clients
        "keepalive": 5, "timeout": 60, "graceful_timeout": 10, "proc_name": "kms-broker-keyring",
        "child_exit": child_exit,
        "post_worker_init": freeze_startup_objects,
        "control_socket_disable": True,  # the API arbiter has the data folder's gunicorn.ctl; one arbiter per socket
    }
    if certfile:
        options.update(certfile=certfile, keyfile=keyfile)
    logconfig = gunicorn_logconfig(log_format)
    if logconfig:
        options["logconfig_dict"] = logconfig
    return options


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_bridge_process(settings: Settings, options: dict[str, Any]) -> int:
    """Migrate the store (the keyring branch), then fork the bridge's arbiter; returns its PID.

    A bare fork, not multiprocessing: multiprocessing would register the child with its atexit hook, which then
    fails in every API worker gunicorn forks later ("can only join a child process").
    """
    from broker.store import Store

    store = Store(settings.store_url)
    store.migrate()
    store.dispose()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        _die_with_parent()
        if os.getppid() == parent:
            GunicornApp(partial(_create_bridge, settings), options).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must never return into the parent's code
        code = 1
    os._exit(code)


def stop_bridge_process(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the bridge's arbiter (a graceful gunicorn shutdown), SIGKILL it if it does not exit in time."""
    import time

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
