"""gunicorn in-process: the app is built in each worker after fork (a PKCS#11 session must not cross a fork)."""

from __future__ import annotations

import gc
import os
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from broker.balanced_worker import WORKER_CLASS
from broker.logs import gunicorn_logconfig
from broker.settings import Settings

_SUN_PATH_MAX = 108  # sockaddr_un.sun_path on Linux, the terminating NUL included


class GunicornApp(BaseApplication):
    """gunicorn run in-process with our options; `load` builds the WSGI app in each worker, after the fork."""

    def __init__(self, load: Callable[[], Any], options: dict[str, Any]) -> None:
        self._load = load
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("worker_exit", _worker_exit)
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self):
        return self._load()


def _worker_exit(server: Any, worker: Any) -> None:
    """A worker that stops cleanly covers its audit chain's tail with a signed checkpoint (a `kill -9` cannot: the
    next start reconciles instead)."""
    from broker.audit.log import close_all

    close_all()


def freeze_startup_objects(_worker: Any) -> None:
    """gunicorn's post_worker_init: after the worker built its app, everything allocated so far (modules,
    SQLAlchemy's, Flask's and pydantic's structures: ~157k objects in an API worker) leaves the collector's view. A
    full collection walked them all (84-113 ms on an idle 2-core machine, with the interpreter lock held), stalling
    every request of the worker meanwhile; requests allocate and free little, so afterwards one has little to
    walk (0.1-0.2 ms)."""
    gc.freeze()


def _create_api(settings: Settings):
    from broker.app import create_app

    return create_app(settings, run_jobs=True)


@dataclass(frozen=True)
class Tls:
    """TLS on the API listener; with `client_ca`, mutual TLS: a client without a certificate that CA signed is
    refused in the handshake (tokens still say who the caller is)."""

    cert: str
    key: str
    client_ca: str | None = None

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"certfile": self.cert, "keyfile": self.key}
        if self.client_ca:
            out.update(ca_certs=self.client_ca, cert_reqs=ssl.CERT_REQUIRED)
        return out


def serve_forever(settings: Settings, *, bind: str, workers: int, threads: int,
                  keyring: dict[str, Any] | None = None, tls: Tls | None = None, log_format: str = "text") -> None:
    # The keyring bridge (keyring_bridge/server.py): its own arbiter and listener in a child process.
    bridge, owner = None, os.getpid()
    if keyring:
        from keyring_bridge.server import bridge_options, start_bridge_process, stop_bridge_process

        bridge = start_bridge_process(settings, bridge_options(**keyring, log_format=log_format))
    try:
        _serve_api(settings, bind=bind, workers=workers, threads=threads, tls=tls, log_format=log_format)
    finally:
        if bridge is not None and os.getpid() == owner:  # not in the workers gunicorn forks
            stop_bridge_process(bridge)


def prepare_metrics(data_dir: Path) -> None:
    """Before the first import of broker.metrics and before any fork: a fresh folder of per-process metric files
    for this node, named in the environment every worker (and the bridge's arbiter) inherits."""
    folder = Path(data_dir) / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def child_exit(server: Any, worker: Any) -> None:
    from broker.metrics import worker_exited

    worker_exited(worker.pid)


def control_socket(data_dir: Path) -> dict[str, Any]:
    """gunicorn's control socket, one per data folder (its default, ~/.gunicorn/gunicorn.ctl, is one per user: a
    second broker on the host would take it over). Off when the folder's path is too long for a Unix socket."""
    path = Path(data_dir) / "gunicorn.ctl"
    if len(os.fsencode(path)) >= _SUN_PATH_MAX:
        return {"control_socket_disable": True}
    return {"control_socket": str(path), "control_socket_mode": 0o600}


def api_options(*, bind: str, workers: int, threads: int) -> dict[str, Any]:
    """The API listener's gunicorn options (bench/noop_server.py serves its baseline app with these too, so a
    benchmark's no-op row runs on exactly the broker's server stack)."""
    return {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": WORKER_CLASS,
        "preload_app": False,
        "accesslog": None,  # the audit log is the request record; access logs could leak ids into syslog
        "errorlog": "-",
        "loglevel": "info",
        "keepalive": 30,
        "timeout": 60,
        "graceful_timeout": 10,
        "proc_name": "kms-broker",
        "post_worker_init": freeze_startup_objects,
    }


def _serve_api(settings: Settings, *, bind: str, workers: int, threads: int, tls: Tls | None,
               log_format: str) -> None:
    logconfig = gunicorn_logconfig(log_format)
    GunicornApp(partial(_create_api, settings), {
        **api_options(bind=bind, workers=workers, threads=threads),
        **(tls.options() if tls is not None else {}),
        **({"logconfig_dict": logconfig} if logconfig else {}),
        **control_socket(settings.data_dir),
        "child_exit": child_exit,
    }).run()
