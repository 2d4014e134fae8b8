"""create_app(settings) → Flask. Builds the store, providers and KeyService; nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from flask import Flask, Request, current_app, g, request
from werkzeug.exceptions import HTTPException

from broker import errors
from broker.api.answers import as_broker_error, audited_refusal
from broker.api.fast_path import FastAws, FastCrypto
from broker.api.limits import MAX_BODY_BYTES, TOO_LARGE, request_id
from broker.audit.setup import build_audit_log
from broker.auth import ANONYMOUS, Principal, presented_token
from broker.jobs import Job, JobRunner, holder_id, start_loop
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.services import Services
from broker.settings import Settings
from broker.store import Store
from broker.store.leases import JobLeases
from broker.store.policies import PolicyRepository
from providers.registry import build_provider, root_of_trust

log = logging.getLogger("kms_broker")
SYSTEM = Principal(name="broker-jobs", auth_method="internal", policies=("root",))
_HTTP_CODES = {404: "UnknownOperationException", 405: "UnsupportedOperationException",
               413: "ValidationException", 415: "ValidationException"}


def build_service(settings: Settings) -> KeyService:
    store = Store(settings.store_url, host_state=settings.data_dir)  # key writes seen by every process at once
    providers = {name: build_provider(name, cfg) for name, cfg in settings.providers.items()}
    root = root_of_trust(providers[settings.root_of_trust])
    audit = build_audit_log(settings, root, store.engine)  # sinks, group commit, HSM-signed checkpoints
    engine = PolicyEngine(PolicyRepository(store), store, cache_seconds=settings.auth_cache_seconds)
    return KeyService(store, providers, settings.default_provider, engine, audit, root=root,
                      rsa_encryption_provider=settings.rsa_encryption_provider,
                      key_cache_seconds=settings.key_cache_seconds)


def create_app(settings: Settings, *, run_jobs: bool = False, service: KeyService | None = None) -> Flask:
    import broker.api.approval_routes  # noqa: F401 - quorum-approved operations (/v1/approvals)
    import broker.api.audit_routes  # noqa: F401 - the auditor's /v1/audit/events
    import broker.api.auth_routes  # noqa: F401  - identity routes (/v1/auth/...) register on the native blueprint
    import broker.api.backup_routes  # noqa: F401 - backups over the API (/v1/backups)
    import broker.api.multikey_routes  # noqa: F401 - multi-keys and replicated keys (/v1/multikeys, /v1/replicated-keys)
    import broker.api.node_routes  # noqa: F401 - cluster nodes (/v1/nodes)
    import broker.api.policy_routes  # noqa: F401 - registers its routes on the native blueprint
    import keyring_bridge.admin_routes  # noqa: F401 - keyring bridge admin routes (/v1/keyring/...)
    from broker.api import aws, aws_credentials  # noqa: F401 - AWS front door; its credential routes join ROUTES
    from broker.api.native import ROUTES, bp

    app = Flask("kms_broker", static_folder=None)  # no file serving: every route is a declared one
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1  # bodies are read by limits.read_body
    app.json.sort_keys = False
    service = service or build_service(settings)
    services = Services.over(service, settings)
    app.extensions["kms"] = services
    app.extensions["kms_service"] = service
    app.extensions["kms_settings"] = settings
    public = {r.operation for r in ROUTES if not r.authenticated}
    # Front doors with their own credentials (e.g. SigV4) register `blueprint name -> fn(request) -> Principal`.
    authenticators: dict[str, Callable[[Request], Principal]] = app.extensions.setdefault("kms_authenticators", {})

    def token_principal(req: Request) -> Principal:
        return services.identity.authenticate_token(presented_token(req.headers.get("X-KMSB-Token"),
                                                                    req.headers.get("Authorization")))

    @app.before_request
    def authenticate() -> None:
        g.request_id = request_id(request.headers.get("X-Request-Id"))  # a client's only when short and plain
        g.ctx = RequestContext(ANONYMOUS, request_id=g.request_id, source_ip=request.remote_addr or "")
        endpoint = (request.endpoint or "").split(".")[-1]
        if request.blueprint == "native" and endpoint in public:
            return
        g.ctx.principal = authenticators.get(request.blueprint or "", token_principal)(request)

    @app.after_request
    def stamp(response):
        response.headers["X-Request-Id"] = getattr(g, "request_id", "")
        return response

    def refuse(exc: errors.BrokerError):
        if not (request.blueprint == "native" and (request.endpoint or "").split(".")[-1] in public):
            exc = audit_refusal(exc)
        return exc.to_dict(getattr(g, "request_id", "")), exc.status

    @app.errorhandler(errors.BrokerError)
    def broker_error(exc: errors.BrokerError):
        return refuse(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = _HTTP_CODES.get(exc.code or 500, "ValidationException")
        message = TOO_LARGE if exc.code == 413 else exc.description or ""
        err = type("HttpError", (errors.BrokerError,), {"code": code, "status": exc.code or 400})(message)
        body, status = refuse(err)
        allow = [(k, v) for k, v in exc.get_headers() if k.lower() == "allow"]  # a 405 names what is allowed
        return body, status, allow

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        return refuse(as_broker_error(exc, getattr(g, "request_id", "?")))

    aws.init_app(app, service, settings)  # blueprint "aws" (POST /, SigV4) + kms_authenticators["aws"]
    app.register_blueprint(bp)
    if settings.console.enabled:
        from broker.console.web import init_app as init_console

        init_console(app, settings.console, settings.data_dir)  # the management console under /ui
    # the hot crypto routes without Flask's request cycle (same handlers, gate, answers; anything else: Flask)
    app.wsgi_app = FastAws(app, services.identity, FastCrypto(app, services))  # type: ignore[method-assign]
    if run_jobs:
        start_jobs(services, settings)
    return app


def audit_refusal(exc: errors.BrokerError) -> errors.BrokerError:
    """Audit a request refused before it reached an operation; returns the error to answer with.

    Every front door's error handler calls this, so rejected requests (bad credentials, malformed bodies, unknown
    operations) are audited too. If the audit record cannot be written, the answer becomes 503 (fail closed).
    """
    operation = g.operation if "operation" in g else (request.endpoint or "unknown").split(".")[-1]
    return audited_refusal(current_app.extensions["kms"], getattr(g, "ctx", None), operation, exc)


def cluster_jobs(services: Services, period: float) -> list[Job]:
    """The jobs every node ticks, each run once per period across the cluster (broker/jobs.py): due deletions and
    rotations of keys, and keyring entries' rotation schedules. Each step is a declared operation run as SYSTEM."""
    every = timedelta(seconds=period)

    def ctx() -> RequestContext:
        return RequestContext(SYSTEM, front_door="jobs")

    jobs = [Job("keys", every, lambda now: services.keys.run_due_jobs(ctx(), now))]
    if services.keyring is not None:
        keyring = services.keyring
        jobs.append(Job("keyring-rotation", every, lambda now: keyring.rotate_due(ctx(), now)))
    return jobs


def start_jobs(services: Services, settings: Settings, *, only: str | None = None,
               thread_name: str = "kmsb-jobs") -> None:
    """Tick the cluster's jobs in this worker (leased: one process runs each per period; `only` names one) and,
    for the API's loop, bound the SQLite WAL (node upkeep, not leased)."""
    from broker import metrics
    from broker.jobs import ON_RUN

    if metrics.observe_job not in ON_RUN:
        ON_RUN.append(metrics.observe_job)
    store = services.keys.store
    jobs = [j for j in cluster_jobs(services, settings.job_interval_seconds) if only is None or j.name == only]
    runner = JobRunner(JobLeases(store.engine), holder_id(settings.data_dir))
    start_loop(runner, jobs, settings.job_interval_seconds, local=store.bound_wal if only is None else None,
               name=thread_name)
