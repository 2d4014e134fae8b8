"""How the native API answers a failure: one mapping for Flask's error handlers and the hot-route fast path
(fast_path.py), so both answer and audit a refusal alike."""

from __future__ import annotations

import logging
from typing import Any

from broker import errors
from broker.gate import action_of, dependency_error
from broker.service import RequestContext

log = logging.getLogger("kms_broker")


def audited_refusal(services: Any, ctx: RequestContext | None, operation: str,
                    exc: errors.BrokerError) -> errors.BrokerError:
    """Audit a request refused before it reached an operation (an operation audits its own outcome); returns the
    error to answer with: NotReady (503) when the audit record cannot be written (fail closed)."""
    if ctx is None or ctx.audited:
        return exc
    denied = isinstance(exc, errors.Unauthenticated | errors.AccessDenied)
    try:
        services.refused(ctx, action_of(operation), exc.code, denied)
    except errors.NotReady as audit_failure:
        return audit_failure
    return exc


def as_broker_error(exc: Exception, request_id: str) -> errors.BrokerError:
    """Any failure as the error model: the store out of reach is a retryable 503, anything else unexpected an
    internal error (logged with its traceback, never answered with it)."""
    if isinstance(exc, errors.BrokerError):
        return exc
    mapped = dependency_error(exc)  # outside an operation (e.g. the token lookup): retryable, as inside one
    if mapped is not None:
        log.warning("store unavailable in request %s: %s", request_id, type(exc).__name__)
        return mapped
    log.error("unexpected error in request %s: %s", request_id, type(exc).__name__, exc_info=exc)
    return errors.BrokerError("internal error")
