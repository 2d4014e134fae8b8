"""The body reader's limits (broker/api/limits.py), without a server: depth counted before parsing, standard JSON
only, valid Unicode, request ids."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import errors
from broker.api.limits import MAX_JSON_DEPTH, BadJson, load_json, request_id, too_deep


@pytest.mark.parametrize("text, limit, deep", [
    ("[[[]]]", 2, True),
    ("[[]]", 2, False),
    ('["[[[[[[", "{{{{"]', 1, False),            # brackets inside strings do not count
    ('["\\"[[[[", "\\\\"]', 1, False),           # nor after an escaped quote, nor after an escaped backslash
    ('["\\\\", [[["x"]]]]', 3, True),            # an escaped backslash ends before the string's quote
    ('{"a": {"b": {"c": 1}}}', 3, False),
    ('{"a": {"b": {"c": {}}}}', 3, True),
    ('"unterminated [[[[', 1, True),            # a string that never closes hides nothing: refused either way
])
def test_depth_is_counted_on_the_raw_text(text, limit, deep):
    assert too_deep(text.encode(), limit) is deep


def test_depth_matches_the_parser_at_the_limit():
    at = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert load_json(at.encode()) == json.loads(at)
    with pytest.raises(BadJson, match="deeper than 32"):
        load_json(("[" + at + "]").encode())
    with pytest.raises(BadJson, match="deeper than 32"):
        load_json(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b"[-Infinity]", b"[1e400]", b"1" + b"0" * 5000,
                                 '{"a": 1}'.encode("utf-16"), b"\xef\xbb\xbf{}", b"{\"a\": \"\xff\"}", b"{'a': 1}"])
def test_only_standard_utf8_json(raw):
    with pytest.raises(BadJson):
        load_json(raw)


@pytest.mark.parametrize("raw, where", [(b'{"a": "\\ud800"}', "a"), (b'{"a": ["ok", "\\udfff"]}', "a[1]"),
                                        (b'{"\\ud800": 1}', "a member name"), (b'{"a": "\xed\xa0\x80"}', "a"),
                                        (b'"\\udc00"', "the request body")])
def test_lone_surrogates_are_named(raw, where):
    with pytest.raises(errors.ValidationError, match=re.escape(where) + ": not valid Unicode"):
        load_json(raw)


def test_valid_text_and_empty_bodies():
    assert load_json('{"a": "é 😀 \\ud83d\\ude00"}'.encode()) == {"a": "é 😀 😀"}
    assert load_json(b"  ", empty={}) == {} and load_json(b"null", empty={}) is None


@pytest.mark.parametrize("sent, kept", [("req-1", True), ("a" * 128, True), ("a" * 129, False), ("", False),
                                        (None, False), ("two words", False), ("-x", False), ("x\ny", False),
                                        ("ok.id:1/2+3=4_5", True)])
def test_request_ids(sent, kept):
    used = request_id(sent)
    assert (used == sent) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f-]{36}", used)


@pytest.mark.parametrize("raw, where", [(b'{"a": "x\\uD800"}', "a"), (b'{"a": {"b": "\\uDbFf"}}', "a.b"),
                                        (b'["ok", {"\\udc00x": 1}]', "[1]")])
def test_lone_surrogates_in_any_spelling_are_found(raw, where):
    """Upper- and mixed-case escapes, deep in the value: the walk that names them is never skipped for these."""
    with pytest.raises(errors.ValidationError, match=re.escape(where)):
        load_json(raw)


def test_an_escaped_backslash_before_u_is_text():
    assert load_json(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}


_texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=8)
_values = st.recursive(_texts | st.integers() | st.booleans() | st.none(),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
                       max_leaves=12)


def _has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


@settings(max_examples=400, deadline=None)
@given(value=_values, ascii_only=st.booleans())
def test_refused_exactly_when_some_string_holds_a_lone_surrogate(value, ascii_only):
    """Whatever the spelling (escaped, or raw UTF-8 with surrogatepass), a body is refused if and only if one of
    its strings or member names holds a surrogate: skipping the walk never lets one through."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    raw = text.encode("utf-8", "surrogatepass")
    parsed = json.loads(text)  # an escaped high + low surrogate pair parses as one character
    if _has_surrogate(parsed):
        with pytest.raises(errors.ValidationError, match="not valid Unicode"):
            load_json(raw)
    else:
        assert load_json(raw) == parsed
