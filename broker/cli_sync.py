"""`kms-broker sync plan|apply MANIFEST`: declarative keys across the broker's providers (docs/sync.md).

The sync runs in-process on the broker's data folder (settings, store, HSM PIN): it builds the same services the
server does, so every key operation is a declared operation of the same gate (authorize + audit, front door
"sync").

Exit codes: 0 converged (plan: nothing to do), 2 drift or changes left, 1 failed.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from broker.jobs import schedule_tick

SYNC_PRINCIPAL = "sync"
_EVERY = re.compile(r"^(\d+)([smhd]?)$")


def _interval(value: str | None) -> float | None:
    if value is None:
        return None
    m = _EVERY.match(value.strip())
    if not m or int(m.group(1)) == 0:
        raise click.BadParameter("use a duration like 30s, 10m, 1h")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _services(data_dir: Path | None) -> Any:
    from broker.app import build_service
    from broker.services import Services
    from broker.settings import SettingsError, load_settings

    try:
        settings = load_settings(Path(data_dir) if data_dir else None)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    service = build_service(settings)
    service.store.migrate()
    return Services.over(service)


def _ctx() -> Any:
    from broker.auth import Principal
    from broker.service import RequestContext

    return RequestContext(Principal(name=SYNC_PRINCIPAL, auth_method="local", policies=("root",)),
                          front_door="sync")


def _manifest(path: str) -> Any:
    from broker.replication.manifest import ManifestError, load_manifest

    try:
        return load_manifest(path)
    except (ManifestError, OSError) as exc:
        click.echo(f"error: manifest {path}: {exc}", err=True)
        sys.exit(1)


def _print(report: Any, output: str, lines: bool = False) -> None:
    data = report.as_dict()
    if output == "json":  # with --every: one report per line (JSON Lines)
        click.echo(json.dumps(data, sort_keys=True, default=str) if lines
                   else json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    click.echo(f"manifest {data['manifest']}: {data['mode']} {data['status']} in {data['seconds']:.1f}s")
    if any(data["resumed"].values()):
        click.echo("resumed: " + ", ".join(f"{k} {v}" for k, v in data["resumed"].items()))
    for a in data["actions"]:
        mark = {"pending": "~", "done": "+", "failed": "!", "unfixable": "?"}[a["status"]]
        line = f"  {mark} {a['kind']:<9} {a['entry']}/{a['target']} on {a['provider']}"
        if a["key_id"]:
            line += f" ({a['key_id']})"
        if a["changes"]:
            line += ": " + ", ".join(a["changes"])
        if a["error"]:
            line += f" -- {a['error']}"
        click.echo(line)
    for d in data["drift"]:
        click.echo(f"  ? drift {d['kind']} on {d['provider']}: {d['key_id'] or d['cloud_key']} ({d['detail']})")
    for p, stats in data["per_provider"].items():
        click.echo(f"  {p}: {stats['operations']} operations, {stats['busy_seconds']}s busy")
    for e in data["errors"]:
        click.echo(f"  error: {e}")
    if not data["actions"] and not data["drift"]:
        click.echo("  nothing to do")


def _run(mode: str, data_dir: Path | None, manifest_path: str, output: str, inventory: bool,
         concurrency: int | None, lines: bool = False) -> int:
    from broker import errors
    from broker.replication.sync import Report

    manifest = _manifest(manifest_path)
    services = _services(data_dir)
    bar = None
    progress = None
    if mode == "apply" and sys.stderr.isatty() and output != "json":
        state: dict[str, Any] = {}

        def progress(total: int, done: int) -> None:
            if "bar" not in state:
                state["bar"] = click.progressbar(length=total, label="applying", file=sys.stderr)
                state["bar"].__enter__()
            state["bar"].update(1)
        bar = state
    try:
        if mode == "plan":
            report = services.sync.plan(_ctx(), manifest, inventory=inventory)
        else:
            report = services.sync.apply(_ctx(), manifest, inventory=inventory, concurrency=concurrency,
                                         progress=progress)
    except (errors.BrokerError, OSError) as exc:
        report = Report(manifest.manifest, mode, errors=[f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"])
    finally:
        if bar and "bar" in bar:
            bar["bar"].__exit__(None, None, None)
        services.keys.store.dispose()
    _print(report, output, lines)
    if mode == "plan":
        if report.errors:
            return 1
        return 0 if not report.actions and not [d for d in report.drift if d.kind != "not-in-manifest"
                                                and d.kind != "unmanaged"] else 2
    return report.exit_code


def _scheduled(data_dir: Path | None, manifest_path: str, output: str, inventory: bool, concurrency: int | None,
               interval: float, last: int, now: datetime | None = None) -> int:
    """One tick of `apply --every`: the apply runs only if this node wins the manifest's lease for the period, so
    the same schedule on several nodes applies once per period. Returns the exit code of the last apply."""
    from broker.jobs import leased_round

    name = f"sync:{_manifest(manifest_path).manifest}"
    result = {"code": last}

    def run() -> None:
        result["code"] = _run("apply", data_dir, manifest_path, output, inventory, concurrency, lines=True)
        if result["code"] == 1:  # failed: free the lease without moving the period, so the next tick retries
            raise RuntimeError("sync apply failed")

    outcome = leased_round(Path(data_dir) if data_dir else None, name, timedelta(seconds=interval), run, now)
    if outcome != "ran":
        click.echo(json.dumps({"manifest": name[5:], "status": outcome}) if output == "json"
                   else f"manifest {name[5:]}: {outcome}", err=output != "json")
    return result["code"]


def _driven_clock(now: str | None) -> Callable[[], datetime | None]:
    """The schedule's clock: the real one (None), or one that starts at `--now` and runs on from there."""
    if now is None:
        return lambda: None
    try:
        start = datetime.fromisoformat(now)
    except ValueError:
        raise click.BadParameter("an ISO 8601 time, e.g. 2030-01-01T00:00:00+00:00", param_hint="--now") from None
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="the broker's data folder (default: $KMSB_DATA_DIR or ./var)")
OUTPUT = click.option("--output", type=click.Choice(["text", "json"]), default="text", help="json: the report")
NO_INVENTORY = click.option("--no-inventory", is_flag=True, help="skip the clouds' inventories (no drift check)")


@click.group("sync")
def sync() -> None:
    """Declarative keys: a YAML manifest reconciled across the broker's providers (docs/sync.md)."""


@sync.command("plan")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@DATA_DIR
@OUTPUT
@NO_INVENTORY
def plan(manifest: str, data_dir: Path | None, output: str, no_inventory: bool) -> None:
    """Show what apply would change: manifest vs broker catalog vs each cloud (exit 0: nothing, 2: changes)."""
    sys.exit(_run("plan", data_dir, manifest, output, not no_inventory, None))


@sync.command("apply")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@DATA_DIR
@OUTPUT
@NO_INVENTORY
@click.option("--concurrency", type=click.IntRange(1, 64), default=None,
              help="operations in flight per provider (default: the manifest's, 4)")
@click.option("--every", "every", default=None,
              help="run again every PERIOD (30s, 10m, 1h) until stopped; on several nodes, once per period in all")
@click.option("--max-runs", type=int, default=None, hidden=True)
@click.option("--now", "now", default=None, hidden=True,
              help="with --every: the first round's time (ISO 8601, UTC), later rounds after it: a driven clock")
def apply(manifest: str, data_dir: Path | None, output: str, no_inventory: bool, concurrency: int | None,
          every: str | None, max_runs: int | None, now: str | None) -> None:
    """Reconcile: idempotent and resumable (exit 0 converged, 2 drift left, 1 failed)."""
    interval = _interval(every)
    if now is not None and interval is None:
        raise click.BadParameter("only with --every", param_hint="--now")
    clock = _driven_clock(now)
    stop = {"now": False}
    if interval is not None:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    runs, code = 0, 1
    while True:
        if interval is None:
            code = _run("apply", data_dir, manifest, output, not no_inventory, concurrency)
            break
        code = _scheduled(data_dir, manifest, output, not no_inventory, concurrency, interval, code if runs else 0,
                          clock())
        runs += 1
        if stop["now"] or (max_runs is not None and runs >= max_runs):
            break
        deadline = time.monotonic() + schedule_tick(interval)
        try:
            while time.monotonic() < deadline and not stop["now"]:
                time.sleep(min(1.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            break
        if stop["now"]:
            break
    sys.exit(code)
