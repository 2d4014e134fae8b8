"""How to launch each cloud's emulator and tell when it is ready: one table, read by Stack.

AWS has two backends: LocalStack (host mode, its own Python 3.13 venv) and moto_server (this interpreter).
Azure, GCP and Aliyun are our own emulator packages, each started as `python -m <pkg> --host 127.0.0.1 ...`
and announcing readiness with one stdout line `READY {json settings}`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.machinery import PathFinder
from pathlib import Path

from .procs import free_port

HOST = "127.0.0.1"
STACK_ROOT = Path(__file__).resolve().parent.parent  # the repo's localstack/ folder
AWS_REGION = "us-east-1"
AWS_TEST_CREDENTIALS = {"access_key_id": "test", "secret_access_key": "test"}


class LaunchError(RuntimeError):
    """An emulator cannot be launched here (missing package or interpreter); the message says why."""


class EmulatorMissing(LaunchError):
    """The emulator package is not there (yet): `up` with no --only skips the cloud, `--only` fails."""


@dataclass
class Launch:
    """Everything needed to start one emulator and recognise that it is ready."""

    backend: str
    cmd: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    probe: Callable[[Path], dict | None]  # log path -> settings once ready, else None
    timeout: float = 60.0
    cwd: Path | None = None
    extra: dict = field(default_factory=dict)


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _child_env(**extra: str) -> dict[str, str]:
    """This environment plus STACK_ROOT on PYTHONPATH, so our emulator packages import without a reinstall."""
    env = dict(os.environ)
    paths = [str(STACK_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


# --- AWS: LocalStack ---------------------------------------------------------------------------------

def localstack_python() -> Path:
    """Build (or reuse) localstack/.venv via setup-venv.sh and return its interpreter; fail with the reason.

    The script's progress lines are echoed to our stderr as they come (a build takes a minute or two) and
    kept for the error message."""
    script = STACK_ROOT / "setup-venv.sh"
    if not script.is_file():
        raise LaunchError(f"{script} not found: LocalStack runs from the repository's localstack/ folder")
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        lines.append(line)
    if proc.wait() != 0:
        raise LaunchError("cannot prepare LocalStack's Python 3.13 venv:\n" + "".join(lines).strip())
    return STACK_ROOT / ".venv" / "bin" / "python"


def localstack_env(port: int, data_dir: Path) -> dict[str, str]:
    """Host-mode settings that keep LocalStack on loopback, offline, and writing only under `data_dir`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
    env.update(
        PYTHONPATH="",  # our 3.11 paths must not leak into LocalStack's 3.13 venv (empty, so a merge still clears it)
        SERVICES="kms",
        GATEWAY_LISTEN=f"{HOST}:{port}",
        LOCALSTACK_HOST=f"{HOST}:{port}",
        LOCALSTACK_VOLUME_DIR=str(data_dir),
        # Detected "in docker" here, LocalStack would write to /var/lib/localstack; host mode roots every
        # directory (cache, lib, logs, tmp, state, init hooks) under FILESYSTEM_ROOT instead.
        OVERRIDE_IN_DOCKER="0",
        FILESYSTEM_ROOT=str(data_dir),
        XDG_CACHE_HOME=str(data_dir / "cache"),  # plux entry-point cache (default ~/.cache/plux)
        CONFIG_DIR=str(data_dir / "config"),  # CLI profiles (default ~/.localstack)
        DNS_ADDRESS="0",  # no DNS server (it would bind port 53 and probe upstream resolvers)
        SKIP_SSL_CERT_DOWNLOAD="1",  # self-signed cert, no fetch from the internet
        DISABLE_EVENTS="1",  # no analytics
        PERSISTENCE="0",
        AWS_DEFAULT_REGION=AWS_REGION,
    )
    return env


def _localstack_probe(port: int) -> Callable[[Path], dict | None]:
    def probe(log: Path) -> dict | None:
        if "Ready." not in log.read_text(errors="replace"):
            return None
        with urllib.request.urlopen(f"http://{HOST}:{port}/_localstack/health", timeout=2) as resp:  # noqa: S310
            health = json.loads(resp.read())
        if health.get("services", {}).get("kms") not in ("available", "running"):
            return None
        return {"endpoint_url": f"http://{HOST}:{port}", "region": AWS_REGION, **AWS_TEST_CREDENTIALS,
                "backend": "localstack", "version": health.get("version")}
    return probe


def localstack(data_dir: Path) -> Launch:
    python = localstack_python()
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    return Launch("localstack", [str(python), "-m", "localstack.runtime.main"], localstack_env(port, data_dir),
                  {"gateway": port}, _localstack_probe(port), timeout=120.0, cwd=data_dir)


# --- AWS: moto_server --------------------------------------------------------------------------------

def moto(data_dir: Path) -> Launch:
    missing = [m for m in ("moto", "flask", "flask_cors") if importlib.util.find_spec(m) is None]
    if missing:
        raise LaunchError(f"moto_server needs moto[server] in {sys.executable} (missing: {', '.join(missing)}); "
                          "install the test extra: pip install -e '.[test]'")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)

    def probe(log: Path) -> dict | None:
        status = _http_status(f"http://{HOST}:{port}/moto-api/")
        if status is None or status >= 500:
            return None
        return {"endpoint_url": f"http://{HOST}:{port}", "region": AWS_REGION, **AWS_TEST_CREDENTIALS,
                "backend": "moto"}

    cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    return Launch("moto", cmd, _child_env(AWS_DEFAULT_REGION=AWS_REGION), {"http": port}, probe,
                  timeout=60.0, cwd=data_dir)


# --- Our emulators (READY line) ----------------------------------------------------------------------

@dataclass(frozen=True)
class EmulatorSpec:
    """A `python -m <package>` emulator: its port flags, extra args and the settings keys it must provide."""

    package: str
    port_flags: tuple[str, ...]
    required: tuple[str, ...]
    defaults: Callable[[dict[str, int]], dict]
    extra_args: Callable[[Path], list[str]] = lambda data_dir: []


EMULATORS: dict[str, EmulatorSpec] = {
    "azure": EmulatorSpec(
        "azure_keyvault_emulator", ("--port",), ("vault_url", "ca_bundle", "token"),
        lambda p: {"vault_url": f"https://{HOST}:{p['--port']}", "token": None},
        # a token of its own, so clients authenticate (and SDK code never falls back to a real Azure credential)
        # "--token=…": a token_urlsafe value may start with "-", which argparse would take for an option
        lambda d: ["--data-dir", str(d), f"--token={secrets.token_urlsafe(24)}",
                   "--state-file", str(d / "azure-keyvault.json")],
    ),
    "gcp": EmulatorSpec(
        "gcp_kms_emulator", ("--grpc-port", "--rest-port"), ("grpc_target", "rest_endpoint", "project", "location"),
        lambda p: {"grpc_target": f"{HOST}:{p['--grpc-port']}", "rest_endpoint": f"http://{HOST}:{p['--rest-port']}",
                   "project": "local-project", "location": "global"},
        lambda d: ["--state-file", str(d / "gcp-kms.json")],
    ),
    "aliyun": EmulatorSpec(
        "aliyun_kms_emulator", ("--port",), ("endpoint", "region", "access_key_id", "access_key_secret"),
        lambda p: {"endpoint": f"http://{HOST}:{p['--port']}", "region": "cn-hangzhou",
                   "access_key_id": "test", "access_key_secret": "test"},
        lambda d: ["--state-file", str(d / "aliyun-kms.json")],
    ),
}


def _runnable(package: str) -> str | None:
    """None if `python -m package` can run from STACK_ROOT or the installed packages, else the reason."""
    spec = PathFinder.find_spec(package, [str(STACK_ROOT)]) or importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return f"package {package!r} is not importable (not in {STACK_ROOT} nor installed)"
    if not any((Path(loc) / "__main__.py").is_file() for loc in spec.submodule_search_locations):
        return f"package {package!r} has no __main__.py yet, so `python -m {package}` cannot start it"
    return None


def read_ready_line(log: Path) -> dict | None:
    """The JSON of the first `READY {...}` line in `log`, or None if not printed yet."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("READY "):
            return json.loads(line[len("READY "):])
    return None


def emulator(cloud: str, data_dir: Path) -> Launch:
    spec = EMULATORS[cloud]
    reason = _runnable(spec.package)
    if reason:
        raise EmulatorMissing(f"cannot start the {cloud} emulator: {reason}")
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {flag: free_port() for flag in spec.port_flags}
    cmd = [sys.executable, "-m", spec.package, "--host", HOST]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    cmd += spec.extra_args(data_dir)

    def probe(log: Path) -> dict | None:
        ready = read_ready_line(log)
        if ready is None:
            return None
        settings = {**spec.defaults(ports), **ready}
        missing = [k for k in spec.required if k not in settings]
        if missing:
            raise LaunchError(f"{spec.package} READY line lacks {missing}: {ready}")
        return settings

    return Launch(spec.package, cmd, _child_env(), {f.lstrip("-"): p for f, p in ports.items()}, probe,
                  timeout=60.0, cwd=data_dir)


AWS_BACKENDS: dict[str, Callable[[Path], Launch]] = {"localstack": localstack, "moto": moto}


def launch_for(cloud: str, data_dir: Path, *, aws_backend: str = "localstack") -> Launch:
    """The Launch for `cloud`; raises LaunchError with the reason if it cannot run here."""
    if cloud == "aws":
        if aws_backend not in AWS_BACKENDS:
            raise LaunchError(f"unknown AWS backend {aws_backend!r}; choose one of {sorted(AWS_BACKENDS)}")
        return AWS_BACKENDS[aws_backend](data_dir)
    if cloud in EMULATORS:
        return emulator(cloud, data_dir)
    raise LaunchError(f"unknown cloud {cloud!r}; choose from aws, {', '.join(EMULATORS)}")
