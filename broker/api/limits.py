"""What every front door refuses before a request body reaches a service: the limits of hostile input.

A request body is read once, through `load_json`, whichever door it came in by:

* nesting depth at most `MAX_JSON_DEPTH` — measured on the raw bytes *before* parsing, because Python's parser
  recurses (100,000 brackets are a RecursionError, i.e. a 500, not a 400);
* only standard JSON: no `NaN`/`Infinity`, no integer literal longer than Python parses safely;
* every string valid Unicode — JSON can spell a lone surrogate (`"\\ud800"`), which no store, log or encoder takes.

Refusals are `BadJson` (syntax and depth: the door answers with its "cannot read the body" code) or
`errors.ValidationError` (a string that is not text): stable codes, never a traceback. Request ids a client sends
are kept only when short and plain (`request_id`), so a 3,000-character header never reaches the audit log.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from broker import errors
from broker.random_pool import RandomPool

MAX_BODY_BYTES = 256 * 1024  # read through `read_body`, with or without a Content-Length
TOO_LARGE = f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB"
MAX_JSON_DEPTH = 32
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")  # MAX_REQUEST_ID characters
_REQUEST_IDS = RandomPool(block=16 * 256)  # fresh request ids: uuid4s from one getrandom per 256 requests
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_STRUCTURE = bytes(range(256)).translate(None, b"[]{}\"\\")  # every byte but brackets, quotes and backslashes
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800-\udfff: the only way JSON spells a lone surrogate


class BadJson(errors.ValidationError):
    """The body is not JSON the broker reads (syntax, non-standard constants, nesting)."""


def read_body(request: Request) -> bytes:
    """The request body, at most MAX_BODY_BYTES (the app's MAX_CONTENT_LENGTH is one more, so that a chunked body
    werkzeug cut at its limit is seen as too large instead of arriving truncated)."""
    data = request.get_data(cache=True)
    if len(data) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return data


def request_id(client_value: str | None) -> str:
    """The id of this request: the client's when it is short and plain, else a fresh one (never refused)."""
    if client_value and _REQUEST_ID.fullmatch(client_value):
        return client_value
    return new_request_id()


def new_request_id() -> str:
    """A fresh uuid4, from random bytes drawn 256 ids at a time (one getrandom, not one per request)."""
    return str(uuid.UUID(bytes=_REQUEST_IDS.take(16, os.urandom), version=4))


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests deeper than `limit`, decided without parsing it (brackets in strings do not count).

    Linear in the body: the regular expressions below cannot backtrack (an escape is two bytes; once escapes are
    gone a string is a quote, non-quotes, a quote)."""
    skeleton = raw.translate(None, _STRUCTURE)  # brackets, quotes and backslashes only
    skeleton = _STRING.sub(b"", _ESCAPE.sub(b"", skeleton))  # escapes first, then the (now escape-free) strings
    if skeleton.count(b"[") + skeleton.count(b"{") <= limit:
        return False
    depth = 0
    for byte in skeleton:
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif byte in b"]}":
            depth -= 1
    return False


def load_json(raw: bytes | str, empty: Any = None) -> Any:
    """Parse a request body within the limits above; a blank body is `empty` (JSON `null` is None)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if not data.strip():
        return empty
    if too_deep(data):
        raise BadJson(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        # UTF-8 only (json.loads would also guess UTF-16/32); surrogates pass here so check_text can name them
        text = data.decode("utf-8", "surrogatepass")
        value = _DECODER.decode(text)
    except RecursionError:
        raise BadJson(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise BadJson("the request body is not valid JSON") from None
    if _may_hold_surrogate(text):
        check_text(value)
    return value


def _may_hold_surrogate(text: str) -> bool:
    """Whether a parsed string of `text` can hold a lone surrogate: only if the text has one (UTF-8 bytes that
    "surrogatepass" let through) or spells one as an escape. Most bodies have neither, and skip check_text's walk.
    A false yes (an escaped backslash before "ud8..") only costs the walk."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return True
    return _SURROGATE_ESCAPE.search(text) is not None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ValueError("a number out of range")
    return value


# Built once: json.loads with hooks builds a decoder per call. A decoder keeps no state between calls.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def check_text(value: Any, where: str = "") -> None:
    """Every string in a parsed JSON value (object keys too) encodes as UTF-8; names the first that does not."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _text(item, path)
        elif isinstance(item, dict):
            for k, v in item.items():
                _text(k, f"{path}.{k!a}" if path else "a member name")
                stack.append((v, f"{path}.{k}" if path else k))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))


def _text(value: str, path: str) -> None:
    if value.isascii():
        return
    try:
        value.encode()
    except UnicodeEncodeError:
        name = path.encode("ascii", "backslashreplace").decode()[:100] or "the request body"
        raise errors.ValidationError(f"{name}: not valid Unicode (a lone surrogate)") from None
