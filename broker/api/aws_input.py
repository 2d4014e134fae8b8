"""AWS JSON 1.1 request members, typed by botocore's own KMS model (the model every AWS SDK is generated from).

Before a handler reads anything, every member a request carries must have the JSON type AWS gives it — strings and
base64 blobs are strings, lists hold their member type, maps map strings to their value type, integers are not
booleans or floats — checked recursively. A wrong type is AWS's SerializationException (400), whether or not the
handler would have read that member; unknown members are ignored, as AWS does. Value rules (ranges, enums,
lengths) stay with the handlers and services, which answer ValidationException like AWS.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from broker import errors


class Serialization(errors.BrokerError):
    """SerializationException (400): the body is not what the operation's shape says."""

    code = "SerializationException"
    status = 400


@lru_cache(maxsize=1)
def _model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("kms")


@lru_cache(maxsize=128)  # bounded: only served operations reach it, but a cache keyed by a name stays bounded
def input_shape(operation: str) -> Any:
    """The model's input shape of an operation (None outside the model or without input), looked up once: the model
    lists its operations in a list and guards `operation_model` with a per-call cache key (~1.5 us a request)."""
    model = _model()
    if operation not in model.operation_names:
        return None
    return model.operation_model(operation).input_shape


def check_members(operation: str, data: dict[str, Any]) -> None:
    """Refuse a request whose members do not have their model types (operations outside the model: unchecked)."""
    shape = input_shape(operation)
    if shape is not None:
        _check(shape, data, "")


_SCALARS: dict[str, tuple[type, ...]] = {"string": (str,), "blob": (str,), "boolean": (bool,),
                                         "integer": (int,), "long": (int,), "float": (int, float),
                                         "double": (int, float), "timestamp": (int, float, str)}


def _check(shape: Any, value: Any, where: str) -> None:
    kind = shape.type_name
    if value is None:
        return  # a null member is an absent one
    if kind in _SCALARS:
        numeric = kind in ("integer", "long", "float", "double", "timestamp")
        if not isinstance(value, _SCALARS[kind]) or (numeric and isinstance(value, bool)):
            raise Serialization(f"{where or 'body'}: expected {kind}, got {_json_type(value)}")
    elif kind == "list":
        if not isinstance(value, list):
            raise Serialization(f"{where}: expected a list, got {_json_type(value)}")
        for i, item in enumerate(value):
            _check(shape.member, item, f"{where}[{i}]")
    elif kind == "map":
        if not isinstance(value, dict):
            raise Serialization(f"{where}: expected an object, got {_json_type(value)}")
        for k, v in value.items():
            _check(shape.value, v, f"{where}.{k[:64]}")
    elif kind == "structure":
        if not isinstance(value, dict):
            raise Serialization(f"{where or 'body'}: expected an object, got {_json_type(value)}")
        for name, member in shape.members.items():
            if name in value:
                _check(member, value[name], f"{where}.{name}" if where else name)


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "list"),
                       (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"
