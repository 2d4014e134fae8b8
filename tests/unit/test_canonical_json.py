"""broker/canonical_json.py: the orjson-or-json encoder writes exactly the json encoder's bytes (or raises as it
does), over the whole JSON value space and the known places where orjson differs."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.canonical_json import Encoder

CONFIGS = [(sort, ascii_) for sort in (True, False) for ascii_ in (True, False)]


class Text(str):
    pass


class Number(int):
    def __repr__(self) -> str:  # json writes int's own repr, not this
        return "not-a-number"


class Small(enum.IntEnum):
    ONE = 1
    BIG = 2**70


class Colour(enum.StrEnum):
    RED = "red\u00e9"


class Plain(enum.Enum):
    A = 1.5


class Real(float):
    pass


class Mapping(dict):
    def items(self):  # json's C encoder asks a dict subclass for items(); orjson would not
        return [("swapped", 1)]


class Sequence(list):
    pass


@dataclasses.dataclass
class Point:
    x: int


def reference(value: Any, sort_keys: bool, ensure_ascii: bool) -> bytes:
    return json.JSONEncoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=(",", ":")).encode(
        value).encode()


def same_or_both_raise(value: Any, sort_keys: bool, ensure_ascii: bool) -> None:
    try:
        expected: bytes | type = reference(value, sort_keys, ensure_ascii)
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        expected = type(exc)
    try:
        got: bytes | type = Encoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii).encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        got = type(exc)
    assert got == expected, (value, got, expected)


# every code point, surrogates and controls included, with the awkward ones often
characters = st.characters(codec=None, categories=None) | st.sampled_from(
    "\x00\x01\x1f\x7f\x80\"\\/\u2028\ud800\udfff\ue000\uffff\U00010000\U0010ffff")
texts = st.text(characters, max_size=12) | st.builds(Text, st.text(characters, max_size=6))
special_floats = st.sampled_from([
    0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 5e-324, 2.2250738585072014e-308, sys.float_info.max,
    1e-4, math.nextafter(1e-4, 0), 1e-5, 1e16, math.nextafter(1e16, 0), 1e15, 1e17, 1e21, 1e22, 0.1, 1 / 3,
    123.456, -98.765])
numbers = (st.integers() | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64])
           | st.builds(Number, st.integers()) | st.sampled_from(list(Small)) | st.floats() | special_floats
           | st.floats(min_value=1e-6, max_value=1e18) | st.builds(lambda x: round(x, 3), st.floats(0, 1e6)))
oddities = st.sampled_from([Colour.RED, Plain.A, Real(1.5), uuid.UUID(int=7), datetime(2026, 1, 2, tzinfo=UTC),
                            Point(1), Mapping(a=1), Sequence([1.5, "x"]), (1, "t"), b"bytes"])
leaves = st.none() | st.booleans() | texts | numbers
keys = texts | st.sampled_from([1, 2.5, None, True, Text("k")])
values = st.recursive(
    leaves | oddities,
    lambda children: st.lists(children, max_size=5) | st.tuples(children, children)
    | st.dictionaries(st.text(characters, max_size=6), children, max_size=6)
    | st.dictionaries(keys, children, max_size=3),
    max_leaves=30)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_same_bytes_as_json_or_both_raise(value):
    for sort_keys, ensure_ascii in CONFIGS:
        same_or_both_raise(value, sort_keys, ensure_ascii)


@pytest.mark.parametrize("sort_keys, ensure_ascii", CONFIGS)
@pytest.mark.parametrize("value", [
    {"latency_ms": 1e16}, {"x": 1e-05}, {"x": 9.999e-05}, {"x": 1e22}, [math.nan, math.inf, -math.inf],
    {"é": "\u00e9"}, {"del": "\x7f"}, {"s": "\ud800"}, {"n": 2**64}, {"n": -(2**63) - 1}, {1: "a"}, {Text("k"): 1},
    {"b": 1, "a": 2, "\U00010000": 3, "\uffff": 4}, Plain.A, [Real(2.5)], Mapping(a=1), {"c": Small.BIG},
    uuid.UUID(int=1), datetime(2026, 1, 1), Point(3), {"deep": [[[[[]]]]]}, [[]] * 3,
])
def test_the_known_differences_fall_back_to_json(value, sort_keys, ensure_ascii):
    same_or_both_raise(value, sort_keys, ensure_ascii)


def test_deep_and_circular_values_raise_as_json_does():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    circular: dict = {}
    circular["self"] = circular
    for value in (deep, circular, [deep]):
        for sort_keys, ensure_ascii in CONFIGS:
            same_or_both_raise(value, sort_keys, ensure_ascii)


def test_default_is_used_as_json_uses_it():
    encoder = Encoder(sort_keys=True, default=str)
    value = {"id": uuid.UUID(int=5), "at": datetime(2026, 1, 1), "n": [1.25]}
    assert encoder.encode(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
