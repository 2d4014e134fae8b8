"""Checks for the strings identity requests carry (names, ids, secrets, metadata): typed, bounded, valid Unicode.

JSON can carry a lone surrogate ("\\ud800"), which no database, LDAP server or audit record can store: such input is
a ValidationException (400) before it reaches any of them. Messages name the field, never echo the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker.errors import ValidationError

MAX_POLICIES = 64
MAX_POLICY_NAME = 128
MAX_META = 32
MAX_META_KEY = 128
MAX_META_VALUE = 512


def is_text(value: Any) -> bool:
    """A str that encodes as UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def text(value: Any, name: str, *, high: int, low: int = 1) -> str:
    """A string of `low`..`high` characters, valid Unicode."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string")
    if not low <= len(value) <= high:
        raise ValidationError(f"{name} must be {low} to {high} characters")
    if not is_text(value):
        raise ValidationError(f"{name} is not valid Unicode")
    return value


def policy_names(values: Any, name: str = "policies") -> list[str]:
    """A list of policy names (deduplicated, order kept), at most MAX_POLICIES."""
    if not isinstance(values, list | tuple):
        raise ValidationError(f"{name} must be a list of policy names")
    if len(values) > MAX_POLICIES:
        raise ValidationError(f"{name}: at most {MAX_POLICIES}")
    out: list[str] = []
    for value in values:
        value = text(value, f"{name}[]", high=MAX_POLICY_NAME)
        if value != value.strip():
            raise ValidationError(f"{name}: a policy name has no surrounding spaces")
        if value not in out:
            out.append(value)
    return out


def metadata(values: Any, name: str = "meta", *, reserved: Iterable[str] = ()) -> dict[str, str]:
    """Token/secret-id metadata: at most MAX_META string pairs; `reserved` keys (identity fields) are refused."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValidationError(f"{name} must be an object of string values")
    if len(values) > MAX_META:
        raise ValidationError(f"{name}: at most {MAX_META} entries")
    blocked = set(reserved)
    out: dict[str, str] = {}
    for key, value in values.items():
        key = text(key, f"{name} key", high=MAX_META_KEY)
        out[key] = text(value, f"{name} value", high=MAX_META_VALUE, low=0)
        if key in blocked:
            raise ValidationError(f"{name}: {key!r} is an identity field and cannot be set")
    return out


def check_strings(value: Any, name: str) -> None:
    """Every string inside a JSON-like value is valid Unicode (for configuration models written through the API)."""
    if isinstance(value, str):
        if not is_text(value):
            raise ValueError(f"{name} is not valid Unicode")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            check_strings(k, name)
            check_strings(v, name)
    elif isinstance(value, list | tuple):
        for v in value:
            check_strings(v, name)
