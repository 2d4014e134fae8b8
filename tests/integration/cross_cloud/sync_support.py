"""Running `kms-broker sync` in tests: as a subprocess (the real console entry) or as a forked child of this
process (same CLI code, without paying the imports again: the crash loop kills it with SIGKILL)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.support.broker import init_data_dir
from tests.support.wire import TlsEnds, WireProxy

from .conftest import World, providers_json

CLI = [sys.executable, "-m", "broker.cli"]


def sync_env(world: World) -> dict[str, str]:
    return {**os.environ, "KMSB_PROVIDERS_JSON": json.dumps(providers_json(world.env))}


def new_data_dir(path: Path) -> Path:
    init_data_dir(path)
    return path


def write_manifest(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_sync(world: World, data_dir: Path, mode: str, manifest: Path, *extra: str,
             timeout: float = 180) -> tuple[int, dict]:
    """`kms-broker sync <mode> ... --output json` in a forked child (the real CLI code; imports paid once)."""
    args = ["sync", mode, str(manifest), "--data-dir", str(data_dir), "--output", "json", *extra]
    out_path, err_path = data_dir.parent / f".sync-{os.getpid()}.out", data_dir.parent / f".sync-{os.getpid()}.err"
    proc = _fork(args, sync_env(world), out_path, err_path)
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError(f"sync {mode} did not finish in {timeout}s")
    return proc.exitcode, _report(mode, proc.exitcode, out_path.read_text(), err_path.read_text())


def run_sync_subprocess(world: World, data_dir: Path, mode: str, manifest: Path, *extra: str,
                        timeout: float = 180) -> tuple[int, dict]:
    """The same through `python -m broker.cli` (the console entry as users run it)."""
    out = subprocess.run([*CLI, "sync", mode, str(manifest), "--data-dir", str(data_dir), "--output", "json", *extra],
                         env=sync_env(world), capture_output=True, text=True, timeout=timeout)
    return out.returncode, _report(mode, out.returncode, out.stdout, out.stderr)


def _report(mode: str, code: int, stdout: str, stderr: str) -> dict:
    try:
        return json.loads(stdout) if not stdout.startswith("{\"") else json.loads(stdout.splitlines()[-1])
    except ValueError:
        raise AssertionError(f"sync {mode} printed no JSON (exit {code}):\n{stdout}\n{stderr}") from None


def _child(args: list[str], env: dict[str, str] | None, out: str, err: str,
           setup: Callable[[], None] | None = None) -> None:
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    # fresh streams on the new descriptors: nothing the parent had buffered (or captured) leaks in
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    from broker.cli import main

    if setup is not None:
        setup()
    try:
        main(args, standalone_mode=True)
    except SystemExit as exc:
        sys.stdout.flush()
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    sys.stdout.flush()
    os._exit(0)


def _fork(args: list[str], env: dict[str, str] | None, out: Path, err: Path,
          setup: Callable[[], None] | None = None) -> multiprocessing.Process:
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(args, env, str(out), str(err), setup))
    proc.start()
    return proc


def preload() -> None:
    """Import what a sync run needs once, before forking (no threads, channels or HSM sessions are made here)."""
    import broker.app  # noqa: F401
    import broker.cli  # noqa: F401
    import broker.cli_sync  # noqa: F401
    import broker.replication.sync  # noqa: F401
    import providers.aliyun  # noqa: F401
    import providers.aws  # noqa: F401
    import providers.azure  # noqa: F401
    import providers.gcp  # noqa: F401
    import providers.pkcs11  # noqa: F401


def start_forked_apply(world: World, data_dir: Path, manifest: Path, *,
                       setup: Callable[[], None] | None = None) -> multiprocessing.Process:
    """`sync apply` in a forked child; `setup` runs in the child first (e.g. a fault that kills it at one point)."""
    args = ["sync", "apply", str(manifest), "--data-dir", str(data_dir), "--output", "json"]
    return _fork(args, sync_env(world), data_dir.parent / ".killed.out", data_dir.parent / ".killed.err", setup)


# ------------------------------------------------------------------ a cloud reached through a proxy on the wire


_URL_KEYS = ("endpoint_url", "endpoint")  # LocalStack's, the Aliyun emulator's (plain HTTP; host:port)


def wire_proxy(world: World, cloud: str) -> WireProxy:
    """A proxy in front of `cloud`'s endpoint (LocalStack's and the Aliyun emulator's HTTP, the GCP emulator's
    gRPC, the Azure emulator's HTTPS: its TLS ended in the proxy with the emulator's own certificate)."""
    cfg = world.env[cloud]
    if "vault_url" in cfg:
        url, ca = urlsplit(cfg["vault_url"]), Path(cfg["ca_bundle"])
        return WireProxy((url.hostname or "127.0.0.1", int(url.port or 443)),
                         tls=TlsEnds(ca.parent / "server.pem", ca.parent / "server-key.pem", ca))
    url_key = next((k for k in _URL_KEYS if k in cfg), None)
    if url_key is not None:
        url = urlsplit(cfg[url_key] if "://" in cfg[url_key] else f"http://{cfg[url_key]}")
        return WireProxy((url.hostname or "127.0.0.1", int(url.port or 80)))
    host, port = cfg["grpc_target"].rsplit(":", 1)
    return WireProxy((host, int(port)))


def through(world: World, proxy: WireProxy, cloud: str) -> World:
    """The same world, with `cloud` reached through `proxy`."""
    host, port = proxy.address
    cfg = dict(world.env[cloud])
    url_key = next((k for k in _URL_KEYS if k in cfg), None)
    if "vault_url" in cfg:
        cfg["vault_url"] = f"https://{host}:{port}"
    elif url_key is not None:
        cfg[url_key] = f"http://{host}:{port}" if "://" in cfg[url_key] else f"{host}:{port}"
    else:
        cfg["grpc_target"] = f"{host}:{port}"
    return replace(world, env={**world.env, cloud: cfg})


def labelled(world: World, cloud: str, label: str) -> list[Any]:
    """The cloud's keys labelled `label` (read directly, not through any proxy)."""
    from providers.registry import build_provider

    provider = build_provider(cloud, providers_json(world.env)[cloud])
    try:
        return [i for i in provider.inventory() if i.label and i.label.lower() == label.lower()]
    finally:
        provider.close()
