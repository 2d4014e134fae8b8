"""Compact JSON, written by orjson only where its bytes are provably the `json` module's, else by `json`.

Why: the hot path encodes the audit record (for its hash and its line), the encryption context (the AAD) and the
answer on every request, and `json`'s C encoder is several times slower than orjson. But the audit chain's hashes,
the AAD of existing ciphertexts and the fast path's parity with the Flask views are all defined by the bytes the
`json` encoder writes, so orjson may only be used where its output is the same. It differs on (measured with orjson
3.8): non-ASCII and DEL (orjson writes them raw; json with ensure_ascii escapes them), floats (orjson writes 1e16,
0.00001, and NaN/Infinity as null; json writes repr: 1e+16, 1e-05, NaN, Infinity), ints beyond 64 bits and non-str
keys (orjson refuses), and types json refuses but orjson writes (Enum, UUID, datetime, dataclasses).

The guard (one list comprehension per container picks out the values that are not exact str/int/bool/None, then
C-level `isascii()` on the output; about 1 us for a 650-byte audit record, where json takes ~5.5 us and orjson ~1):
- every value inside is of an exact JSON type (dict, list, tuple, str, int, bool, None) or a str/int subclass (both
  encoders write the underlying value), or a float that both write as `repr` does: 0.0, -0.0, or a finite magnitude
  in [1e-4, 1e16), where repr uses no exponent and orjson writes the same shortest round-trip digits (no
  difference in 2-3 M random doubles of that range with orjson 3.8.3 and 3.13.0; the property test runs on whatever
  orjson is installed);
- orjson does not raise (ints beyond 64 bits, non-str keys, nesting deeper than orjson's limit);
- with ensure_ascii, every output byte is below 0x7f.
Anything else is written by the `json` encoder, so the answer (or the exception) is exactly json's.
`tests/unit/test_canonical_json.py` checks this with a property test over the JSON value space.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import orjson

_LEAVES = frozenset({str, int, bool, type(None)})
_DEL = b"\x7f"


def _plain(values: Iterable[Any]) -> bool:
    """True when every value in `values` (recursively) is one orjson writes exactly as json does."""
    for value in [v for v in values if type(v) not in _LEAVES]:  # usually none, or a float and a dict
        kind = type(value)
        if kind is float:
            if not (value == 0.0 or 1e-4 <= abs(value) < 1e16):  # NaN fails every comparison: refused too
                return False
        elif kind is dict:
            if not _plain(value.values()):
                return False
        elif kind is list or kind is tuple:
            if not _plain(value):
                return False
        elif not isinstance(value, str | int):
            # dict/list subclasses may override items()/iteration, which json honours and orjson does not;
            # floats' subclasses, Enum, UUID, datetime, ...: json's business (it writes or refuses them)
            return False
    return True


class Encoder:
    """`json.JSONEncoder(sort_keys=..., ensure_ascii=..., separators=(",", ":"), default=...).encode(v).encode()`,
    byte for byte (and raising what it raises), through orjson when the guard above allows."""

    __slots__ = ("_json", "_option", "_ascii")

    def __init__(self, *, sort_keys: bool, ensure_ascii: bool = True,
                 default: Callable[[Any], Any] | None = None) -> None:
        self._json = json.JSONEncoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=(",", ":"),
                                      default=default)
        # the passthrough options make orjson refuse (not write) what json hands to `default` or refuses
        self._option = (orjson.OPT_SORT_KEYS if sort_keys else 0) | orjson.OPT_PASSTHROUGH_DATACLASS \
            | orjson.OPT_PASSTHROUGH_DATETIME
        self._ascii = ensure_ascii

    def encode(self, value: Any) -> bytes:
        """The UTF-8 bytes of json's text for `value`."""
        try:
            plain = _plain(value.values()) if type(value) is dict else _plain((value,))
            out = orjson.dumps(value, option=self._option) if plain else None
        except (TypeError, RecursionError):  # JSONEncodeError: big ints, non-str keys; a cycle or a deep nest
            out = None
        if out is not None and (not self._ascii or (out.isascii() and _DEL not in out)):
            return out
        return self._json.encode(value).encode()
