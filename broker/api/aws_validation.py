"""AWS's value constraints and its validation message, for the AWS-compatible front door.

AWS KMS checks every request member against its API model before the operation runs and answers one
ValidationException for all the violations it found, in a fixed shape that scripts grep for:

    1 validation error detected: Value '3' at 'pendingWindowInDays' failed to satisfy constraint: Member must have
    value greater than or equal to 7

(`N validation errors detected: …; …` for several). The constraints are botocore's KMS model (the model every AWS
SDK is generated from: required members, enums, lengths, ranges, patterns), plus the narrower ranges AWS documents
for a few members (`DOCUMENTED_RANGES`). Values of sensitive or binary members (plaintexts, tokens, key material)
are never echoed: their message says `Value at '…'`, as AWS does for blobs.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache
from typing import Any

from broker import errors
from broker.api.aws_input import input_shape

# AWS documents narrower ranges than its model for these members (operation, member) -> (low, high).
DOCUMENTED_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("ScheduleKeyDeletion", "PendingWindowInDays"): (7, 30),
}
_MAX_ECHO = 256  # longer strings are not echoed back (AWS would; a 128 KiB policy in an error helps nobody)


def path_name(member: str) -> str:
    """AWS's name for a member in a validation message: the member name with its first letter lower-cased."""
    return member[:1].lower() + member[1:]


def message(violations: list[str]) -> str:
    """AWS's ValidationException message for one or more "Value … at '…' failed to satisfy constraint: …"."""
    n = len(violations)
    return f"{n} validation error{'s' if n != 1 else ''} detected: " + "; ".join(violations)


def violation(value: Any, path: str, constraint: str, *, echo: bool = True) -> str:
    """One violation: `Value 'v' at 'path' failed to satisfy constraint: Member must …`."""
    if value is None:
        shown = "Value null"
    elif echo and not (isinstance(value, str) and len(value) > _MAX_ECHO):
        shown = f"Value '{value}'"
    else:
        shown = "Value"
    return f"{shown} at '{path}' failed to satisfy constraint: Member must {constraint}"


def invalid(value: Any, member: str, constraint: str, *, echo: bool = True) -> errors.ValidationError:
    """A ValidationException with one violation, for the checks handlers make themselves."""
    return errors.ValidationError(message([violation(value, path_name(member), constraint, echo=echo)]))


def check_constraints(operation: str, data: dict[str, Any]) -> None:
    """Refuse (one ValidationException naming every violation) a request whose members break the model's
    constraints. Types were checked before (aws_input.check_members); operations outside the model: unchecked."""
    shape = input_shape(operation)
    if shape is None:
        return
    found: list[str] = []
    for name in shape.required_members:
        if data.get(name) is None:
            found.append(violation(None, path_name(name), "not be null"))
    for name, member in shape.members.items():
        value = data.get(name)
        if value is None:
            continue
        _check(member, value, path_name(name), found)
        documented = DOCUMENTED_RANGES.get((operation, name))
        if documented is not None and isinstance(value, int):
            _range(value, documented[0], documented[1], path_name(name), found)
    if found:
        raise errors.ValidationError(message(found))


def _range(value: int, low: int | None, high: int | None, path: str, found: list[str]) -> None:
    if low is not None and value < low:
        found.append(violation(value, path, f"have value greater than or equal to {low}"))
    elif high is not None and value > high:
        found.append(violation(value, path, f"have value less than or equal to {high}"))


def _check(shape: Any, value: Any, path: str, found: list[str]) -> None:
    meta = shape.metadata
    kind = shape.type_name
    echo = not meta.get("sensitive") and kind != "blob"
    low, high = meta.get("min"), meta.get("max")
    if kind in ("integer", "long"):
        _range(value, low, high, path, found)
    elif kind == "string":
        enum = getattr(shape, "enum", None) or []
        if enum and value not in enum:
            found.append(violation(value, path, f"satisfy enum value set: [{', '.join(enum)}]", echo=echo))
            return
        _length(len(value), low, high, value, path, found, echo)
        pattern = meta.get("pattern")
        if pattern and len(value) >= (low or 0) and not _matches(pattern, value):
            found.append(violation(value, path, f"satisfy regular expression pattern: {pattern}", echo=echo))
    elif kind == "blob":
        try:
            size = len(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            return  # the handler answers SerializationException for a blob that is not base64
        _length(size, low, high, value, path, found, False)
    elif kind == "list":
        _length(len(value), low, high, value, path, found, False)
        for i, item in enumerate(value):
            if item is not None:
                _check(shape.member, item, f"{path}.{i + 1}.member", found)
    elif kind == "structure":
        for name in shape.required_members:
            if value.get(name) is None:
                found.append(violation(None, f"{path}.{path_name(name)}", "not be null"))
        for name, member in shape.members.items():
            if value.get(name) is not None:
                _check(member, value[name], f"{path}.{path_name(name)}", found)


def _length(size: int, low: int | None, high: int | None, value: Any, path: str, found: list[str],
            echo: bool) -> None:
    if low is not None and size < low:
        found.append(violation(value, path, f"have length greater than or equal to {low}", echo=echo))
    elif high is not None and size > high:
        found.append(violation(value, path, f"have length less than or equal to {high}", echo=echo))


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)  # Java's \w and \d are ASCII


def _matches(pattern: str, value: str) -> bool:
    """The model's patterns are Java regular expressions matched against the whole value."""
    return _compiled(pattern).fullmatch(value) is not None
