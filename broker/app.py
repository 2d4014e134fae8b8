"""create_app(settings) → Flask. Builds the store, providers and KeyService; nothing happens at import time."""

from __future__ import annotations

import logging
import threading
import uuid

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from broker import errors
from broker.audit import AuditLog
from broker.auth import Principal, TokenAuth
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.settings import Settings
from broker.store import Store
from providers.registry import build_provider

log = logging.getLogger("kms_broker")
ANONYMOUS = Principal(name="anonymous", auth_method="none", policies=())
SYSTEM = Principal(name="broker-jobs", auth_method="internal", policies=("root",))
_HTTP_CODES = {404: "UnknownOperationException", 405: "UnsupportedOperationException",
               413: "ValidationException", 415: "ValidationException"}


def build_service(settings: Settings) -> KeyService:
    store = Store(settings.store_url)
    providers = {name: build_provider(name, cfg) for name, cfg in settings.providers.items()}
    root = providers[settings.root_of_trust]
    audit = AuditLog(settings.audit_file, hmac=root.audit_hmac, fsync=settings.audit_fsync)
    return KeyService(store, providers, settings.default_provider, PolicyEngine(), audit)


def create_app(settings: Settings, *, run_jobs: bool = False, service: KeyService | None = None) -> Flask:
    from broker.api.native import ROUTES, bp

    app = Flask("kms_broker")
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024
    app.json.sort_keys = False
    service = service or build_service(settings)
    app.extensions["kms_service"] = service
    app.extensions["kms_settings"] = settings
    tokens = TokenAuth(service.store, cache_seconds=settings.auth_cache_seconds)
    public = {r.operation for r in ROUTES if not r.authenticated}

    @app.before_request
    def authenticate() -> None:
        g.request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
        g.ctx = RequestContext(ANONYMOUS, request_id=g.request_id, source_ip=request.remote_addr or "")
        endpoint = (request.endpoint or "").split(".")[-1]
        if endpoint in public:
            return
        header = request.headers.get("Authorization", "")
        token = request.headers.get("X-KMSB-Token") or (header[7:] if header.startswith("Bearer ") else None)
        g.ctx.principal = tokens.authenticate(token)

    @app.after_request
    def stamp(response):
        response.headers["X-Request-Id"] = getattr(g, "request_id", "")
        return response

    def refuse(exc: errors.BrokerError):
        ctx: RequestContext | None = getattr(g, "ctx", None)
        if ctx is not None and not ctx.audited and (request.endpoint or "").split(".")[-1] not in public:
            action = "kms:" + getattr(g, "operation", (request.endpoint or "unknown").split(".")[-1])
            denied = isinstance(exc, errors.Unauthenticated | errors.AccessDenied)
            try:
                service.audit_rejected(ctx, action, exc.code, denied)
            except errors.NotReady as audit_failure:
                exc = audit_failure
        return exc.to_dict(getattr(g, "request_id", "")), exc.status

    @app.errorhandler(errors.BrokerError)
    def broker_error(exc: errors.BrokerError):
        return refuse(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = _HTTP_CODES.get(exc.code or 500, "ValidationException")
        err = type("HttpError", (errors.BrokerError,), {"code": code, "status": exc.code or 400})(exc.description or "")
        return refuse(err)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.error("unexpected error in request %s: %s", getattr(g, "request_id", "?"), type(exc).__name__,
                  exc_info=exc)
        return refuse(errors.BrokerError("internal error"))

    app.register_blueprint(bp)
    if run_jobs:
        _start_jobs(service, settings.job_interval_seconds)
    return app


def _start_jobs(service: KeyService, interval: int) -> None:
    """Due deletions and rotations, in every process: the jobs are safe to run concurrently."""
    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            try:
                service.run_due_jobs(RequestContext(SYSTEM, front_door="jobs"))
            except Exception as exc:  # noqa: BLE001 - a failed round must not kill the loop
                log.warning("background jobs failed: %s", type(exc).__name__)

    threading.Thread(target=loop, name="kmsb-jobs", daemon=True).start()
