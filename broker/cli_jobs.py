"""`kms-broker jobs run-due`: one round of the cluster's background jobs, now, on this node (for cron, or to catch up
after maintenance). Runs in-process on the data folder like `sync`; each job runs only if it is due and no other
node holds its lease, so it is safe beside running servers and on every node at once."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click


@click.group("jobs")
def jobs() -> None:
    """Background jobs (due deletions and rotations, keyring rotation schedules), leased across the cluster."""


@jobs.command("run-due")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="the node's data folder (default: $KMSB_DATA_DIR or ./var)")
@click.option("--now", "now", default=None, hidden=True, help="the round's time (ISO 8601, UTC): a driven clock")
@click.option("--output", type=click.Choice(["text", "json"]), default="text")
def run_due(data_dir: Path | None, now: str | None, output: str) -> None:
    from broker.app import build_service, cluster_jobs
    from broker.jobs import JobRunner, holder_id
    from broker.services import Services
    from broker.settings import SettingsError, load_settings
    from broker.store.leases import JobLeases

    at = None
    if now is not None:
        try:
            at = datetime.fromisoformat(now)
        except ValueError:
            raise click.BadParameter("an ISO 8601 time, e.g. 2030-01-01T00:00:00+00:00", param_hint="--now") from None
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    try:
        settings = load_settings(Path(data_dir) if data_dir else None)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    service = build_service(settings)
    try:
        services = Services.over(service, settings)
        runner = JobRunner(JobLeases(service.store.engine), holder_id(settings.data_dir))
        results = runner.run_due(cluster_jobs(services, settings.job_interval_seconds), at)
    finally:
        service.audit.close()
        service.store.dispose()
    if output == "json":
        click.echo(json.dumps(results, sort_keys=True))
    else:
        click.echo("\n".join(f"{name}: {outcome}" for name, outcome in sorted(results.items())))
    sys.exit(1 if any(v in ("failed", "store unavailable") for v in results.values()) else 0)
