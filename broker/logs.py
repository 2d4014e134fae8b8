"""Structured logs: one JSON object per line, with the request id when a line is written inside a request.

`kms-broker serve --log-format json` sets this up in every process (gunicorn's own lines included), so a log shipper
can join a log line to the audit record of the same request (both carry `request_id`). Log lines never carry
secrets: the broker logs error types and request ids, never bodies, tokens or key material.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
# The request a line is written in, for requests served without Flask's request cycle (the hot-path fast paths).
_REQUEST_ID: ContextVar[str] = ContextVar("kmsb_request_id", default="")


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Log lines written inside carry `request_id` (what Flask's `g.request_id` gives the other requests)."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        request_id = _request_id()
        if request_id:
            line["request_id"] = request_id
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__  # the type only: a traceback's locals could hold secrets
        return json.dumps(line, ensure_ascii=False)


def _request_id() -> str:
    bound = _REQUEST_ID.get()
    if bound:
        return bound
    try:
        from flask import g, has_request_context
    except ImportError:  # pragma: no cover - flask is a dependency
        return ""
    return str(getattr(g, "request_id", "") or "") if has_request_context() else ""


def gunicorn_logconfig(fmt: str) -> dict[str, Any] | None:
    """gunicorn's `logconfig_dict` for `fmt`: its error log and the broker's loggers as JSON lines on stderr."""
    if fmt != "json":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "broker.logs.JsonFormatter"}},
        "handlers": {"console": handler, "error_console": handler},
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
            "kms_broker": {"level": "INFO", "propagate": True},
        },
    }
