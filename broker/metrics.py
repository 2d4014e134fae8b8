"""Prometheus metrics of a broker node (prometheus-client), served at `GET /v1/metrics`.

The endpoint is on the main API and is a declared operation like any other (`broker:ReadMetrics`): the scraper
authenticates with a broker token (Prometheus' `authorization` credentials), the policy engine decides, and each
scrape is audited. Nothing in a metric names a key, a principal or a context: labels are action names, outcomes,
provider instance names and job names only.

gunicorn runs several worker processes per listener (and the keyring bridge has its own): `kms-broker serve` points
PROMETHEUS_MULTIPROC_DIR at `<data dir>/metrics` before anything imports this module (broker.wsgi.prepare_metrics),
so a scrape answered by any worker adds up every
process of the node (prometheus-client's multiprocess mode). Without it (tests, CLI) the process's own registry is
used.
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_made: SimpleNamespace | None = None
_lock = threading.Lock()


def _metrics() -> Any:
    """The metric objects, made on first use: prometheus-client picks its multiprocess storage when it is first
    imported, which must be after `serve` named the folder and after gunicorn forked (so never at import time)."""
    global _made
    if _made is None:
        with _lock:
            if _made is None:
                from prometheus_client import Counter, Gauge, Histogram

                _made = SimpleNamespace(
                    requests=Counter("kmsb_requests", "Audited requests by action and outcome", ["action", "outcome"]),
                    latency=Histogram("kmsb_request_seconds", "Time from the gate's start to the audit outcome",
                                      ["action"], buckets=_LATENCY),
                    audit_batch=Histogram("kmsb_audit_batch_records", "Records made durable together (one append and "
                                          "one fsync, or one store transaction)", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                                             1000)),
                    audit_flush=Histogram("kmsb_audit_flush_seconds", "Time to make one audit batch durable in every "
                                          "durable sink", buckets=_LATENCY),
                    audit_failures=Counter("kmsb_audit_failures", "Audit batches the durable sinks refused (their "
                                           "callers got 503)"),
                    audit_mirrored=Counter("kmsb_audit_mirrored_records", "Audit records this process copied "
                                           "into the store's copy of the chain"),
                    audit_mirror_failures=Counter("kmsb_audit_mirror_failures", "Runs of the audit store copy that "
                                                  "failed (the store lags the file; retried)"),
                    job_runs=Counter("kmsb_job_runs", "Background job runs this node won, by outcome",
                                     ["job", "outcome"]),
                    provider_up=Gauge("kmsb_provider_up", "1 if the provider answered its health check at the last "
                                      "scrape", ["provider"], multiprocess_mode="mostrecent"),
                    hsm_session_up=Gauge("kmsb_hsm_session_up", "1 if the root of trust's HSM session worked at the "
                                         "last scrape", multiprocess_mode="mostrecent"),
                    dependency_up=Gauge("kmsb_dependency_up", "1 if the audit log / store could take a request at "
                                        "the last scrape", ["dependency"], multiprocess_mode="mostrecent"),
                )
    return _made


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def exposition(providers: dict[str, str], root_provider: str, dependencies: dict[str, str]) -> tuple[bytes, str]:
    """The text a scrape gets, after setting the health gauges from what the caller just measured."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    m = _metrics()
    for name, status in providers.items():
        m.provider_up.labels(name).set(1 if status == "ok" else 0)
    m.hsm_session_up.set(1 if providers.get(root_provider) == "ok" else 0)
    for name, status in dependencies.items():
        m.dependency_up.labels(name).set(1 if status == "ok" else 0)
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


_request_series: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_request(action: str, outcome: str, seconds: float) -> None:
    """Count one audited request. Its two series are looked up once per (action, outcome) and kept: `labels()` takes
    a lock and checks every value on each call, a measurable share of a hot request. Both label sets are bounded
    (declared action names, four outcomes)."""
    if outcome == "intent":
        return
    series = _request_series.get((action, outcome))
    if series is None:
        m = _metrics()
        series = _request_series[(action, outcome)] = (m.requests.labels(action, outcome), m.latency.labels(action))
    series[0].inc()
    series[1].observe(seconds)


def observe_audit_batch(records: int, seconds: float, ok: bool) -> None:
    m = _metrics()
    if ok:
        m.audit_batch.observe(records)
        m.audit_flush.observe(seconds)
    else:
        m.audit_failures.inc()


def observe_audit_mirror(copied: int, ok: bool) -> None:
    m = _metrics()
    if ok:
        m.audit_mirrored.inc(copied)
    else:
        m.audit_mirror_failures.inc()


def observe_job(job: str, outcome: str) -> None:
    _metrics().job_runs.labels(job, outcome).inc()
