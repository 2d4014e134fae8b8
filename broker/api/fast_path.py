"""The hot crypto operations (Encrypt, Decrypt, GenerateDataKey[WithoutPlaintext]) served without Flask's request
cycle, which cost about a fifth of an Encrypt's CPU on a loaded server (request context, URL routing, hooks, the
response object): `FastCrypto` for the native routes, `FastAws` for the AWS front door.

Only a request that is plainly one of those is served here: POST, no query, `Content-Type: application/json`, a
body of at most MAX_BODY_BYTES with its length given, a key named by its id (letters, digits, dashes), a token
header, and a body that parses and validates. Anything else, and any request whose token or body is refused, goes
to the Flask app with its body intact, which answers and audits it as it does every request (authentication has
no side effect, so trying it twice changes nothing). What is served here is the same operation: the route's own
handler over the same gated service, the same check that it was audited, the same error mapping (answers.py) and
the same response bytes and headers as the Flask view (a parity test compares them).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from broker.api import aws
from broker.api.answers import as_broker_error, audited_refusal
from broker.api.limits import MAX_BODY_BYTES, load_json, request_id
from broker.api.native import ROUTES, RouteDoc, Unaudited, jsonable
from broker.auth import ANONYMOUS, presented_token
from broker.canonical_json import Encoder
from broker.logs import request_scope
from broker.service import RequestContext

log = logging.getLogger("kms_broker.api")
HOT = ("Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext")
_KEY_ID = "[A-Za-z0-9-]{1,64}"
_JSON = "application/json"


def _pattern(rule: str) -> re.Pattern[str]:
    """A route rule as a regular expression over PATH_INFO, with its key argument a plain key id."""
    parts = re.split(r"(<path:key>)", f"/v1{rule}")
    return re.compile("".join(f"(?P<key>{_KEY_ID})" if p == "<path:key>" else re.escape(p) for p in parts))


def _whole_body(environ: dict[str, Any]) -> bytes | None:
    """The whole body (then put back for Flask, should it serve the request after all), or None when its length is
    not given or over MAX_BODY_BYTES (Flask refuses those)."""
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        return None
    raw = environ["wsgi.input"].read(int(length))
    environ["wsgi.input"] = io.BytesIO(raw)
    return raw if len(raw) == int(length) else None


def _respond(start_response: Callable, status: int, content_type: str, data: bytes,
             headers: list[tuple[str, str]]) -> list[bytes]:
    """The answer as werkzeug writes it: its status line, content type and length, then the door's own headers."""
    start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                   [("Content-Type", content_type), ("Content-Length", str(len(data))), *headers])
    return [data]


class FastCrypto:
    """WSGI in front of the Flask app: serves the HOT routes when a request is plainly one, else calls Flask."""

    def __init__(self, app: Flask, services: Any, operations: Iterable[str] = HOT) -> None:
        self.flask = app.wsgi_app
        self._app, self._services = app, services
        provider = app.json  # the Flask view's encoder settings, built once (app.json.dumps builds one per call)
        # json.JSONEncoder with those settings byte for byte (orjson where provably the same: canonical_json.py)
        self._encoder = Encoder(default=getattr(provider, "default", None),
                                ensure_ascii=getattr(provider, "ensure_ascii", True),
                                sort_keys=getattr(provider, "sort_keys", False))
        wanted = set(operations)
        self._routes: list[tuple[re.Pattern[str], RouteDoc]] = [
            (_pattern(doc.rule), doc) for doc in ROUTES
            if doc.operation in wanted and doc.method == "POST" and doc.body is not None and doc.handler is not None]

    def __call__(self, environ: dict[str, Any], start_response):
        found = self._route(environ)
        if found is None:
            return self.flask(environ, start_response)
        doc, path = found
        raw = _whole_body(environ)
        if raw is None:
            return self.flask(environ, start_response)
        answer = self._serve(environ, doc, path, raw)
        if answer is None:
            return self.flask(environ, start_response)
        status, data, rid = answer
        return _respond(start_response, status, _JSON, data, [("X-Request-Id", rid)])

    def _route(self, environ: dict[str, Any]) -> tuple[RouteDoc, dict[str, str]] | None:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("QUERY_STRING") \
                or environ.get("CONTENT_TYPE") != _JSON or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        path = environ.get("PATH_INFO", "")
        for pattern, doc in self._routes:
            match = pattern.fullmatch(path)
            if match is not None:
                return doc, match.groupdict()
        return None

    def _serve(self, environ: dict[str, Any], doc: RouteDoc, path: dict[str, str],
               raw: bytes) -> tuple[int, bytes, str] | None:
        """(status, body, request id) of the answer, or None when Flask must serve (and refuse) the request."""
        token = presented_token(environ.get("HTTP_X_KMSB_TOKEN"), environ.get("HTTP_AUTHORIZATION"))
        if not token:
            return None
        try:
            data = load_json(raw, empty={})
            if not isinstance(data, dict):
                return None
            body = doc.body.model_validate(data, strict=True)  # type: ignore[union-attr]
            principal = self._services.identity.authenticate_token(token)
        except Exception:  # noqa: BLE001 - refused (token, body) or failed (store): Flask answers and audits it
            return None
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        ctx = RequestContext(principal, request_id=rid, source_ip=environ.get("REMOTE_ADDR") or "")
        with request_scope(rid):  # log lines carry the request id, as in a Flask request
            return self._call(doc, ctx, body, path, rid)

    def _call(self, doc: RouteDoc, ctx: RequestContext, body: Any, path: dict[str, str],
              rid: str) -> tuple[int, bytes, str]:
        try:
            result = doc.handler(self._app.extensions["kms_service"], ctx, body, **path)  # type: ignore[misc]
            if not ctx.audited:
                log.error("route %s returned without an audited operation", doc.operation)
                raise Unaudited(f"internal error: {doc.operation} was not audited")
            status, payload = doc.status, jsonable(result if result is not None else {})
        except Exception as exc:  # noqa: BLE001 - answered as the Flask handlers answer it
            refusal = audited_refusal(self._services, ctx, doc.operation, as_broker_error(exc, rid))
            status, payload = refusal.status, refusal.to_dict(rid)
        return status, self._encoder.encode(payload) + b"\n", rid


class FastAws:
    """WSGI in front of the Flask app: an AWS JSON 1.1 request for a HOT operation (POST /, no query, `Content-Type:
    application/x-amz-json-1.1`, its length given) whose SigV4 signature verifies is served here, in an app context,
    through the AWS door's own `run` and `refusal` (so every answer after the signature is the door's); anything
    else, and a signature that does not verify, goes to the next WSGI callable with its body intact."""

    def __init__(self, app: Flask, identity: Any, following: Callable, operations: Iterable[str] = HOT) -> None:
        self.following = following
        self._app, self._identity = app, identity
        self._targets = frozenset(aws.TARGET_PREFIX + name for name in operations)

    def __call__(self, environ: dict[str, Any], start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target not in self._targets or environ.get("REQUEST_METHOD") != "POST" \
                or environ.get("PATH_INFO") != "/" or environ.get("QUERY_STRING") \
                or environ.get("CONTENT_TYPE") != aws.CONTENT_TYPES[0] or "HTTP_TRANSFER_ENCODING" in environ:
            return self.following(environ, start_response)
        raw = _whole_body(environ)
        if raw is None:
            return self.following(environ, start_response)
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        with self._app.app_context() as app, request_scope(rid):  # log lines carry the request id, as in Flask
            answer = self._serve(app.g, environ, target, raw, rid)
        if answer is None:
            return self.following(environ, start_response)
        status, data, headers = answer
        return _respond(start_response, status, aws.CONTENT_TYPES[0], data, headers)

    def _serve(self, state: Any, environ: dict[str, Any], target: str, raw: bytes,
               rid: str) -> tuple[int, bytes, list[tuple[str, str]]] | None:
        """`state` is the app context's `g` itself (each access through Flask's `g` proxy costs a context lookup)."""
        state.request_id = rid
        ctx = state.ctx = RequestContext(ANONYMOUS, request_id=rid, source_ip=environ.get("REMOTE_ADDR") or "")
        try:
            ctx.principal = aws.authenticate(self._identity, "POST", "/", "", environ, raw)
        except Exception:  # noqa: BLE001 - refused or failed: the Flask door answers and audits it
            return None
        try:
            status, data, extra = 200, aws.encode(aws.run(target, aws.CONTENT_TYPES[0], raw, ctx)), []
        except Exception as exc:  # noqa: BLE001 - answered as the door's error handlers answer it
            status, body, extra = aws.refusal(as_broker_error(exc, rid))
            data = aws.encode(body)
        return status, data, [*extra, ("x-amzn-RequestId", rid), ("X-Request-Id", rid)]
