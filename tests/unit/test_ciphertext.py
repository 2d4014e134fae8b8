"""Property tests of the broker ciphertext format (broker/ciphertext.py)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from broker import ciphertext as ct

key_ids = st.text(min_size=1, max_size=256).filter(lambda s: 1 <= len(s.encode()) <= ct.MAX_KEY_ID)
versions = st.integers(min_value=0, max_value=2**32 - 1)
schemes = st.sampled_from(list(ct.Scheme))
bodies = st.binary(max_size=512)
contexts = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=8)


@st.composite
def blobs(draw) -> tuple[ct.Header, bytes, bytes]:
    header = ct.Header(draw(schemes), draw(key_ids), draw(versions))
    body = draw(bodies)
    return header, body, ct.pack(header, body)


@given(blobs())
@example((ct.Header(ct.Scheme.PROVIDER_AEAD, "k", 0), b"", ct.pack(ct.Header(ct.Scheme.PROVIDER_AEAD, "k", 0), b"")))
def test_pack_unpack_round_trip(case) -> None:
    header, body, blob = case
    parsed = ct.unpack(blob)
    assert parsed.header == header
    assert parsed.body == body
    assert parsed.header_bytes == header.pack()
    assert parsed.header_bytes + parsed.body == blob
    assert len(parsed.header_bytes) == 10 + len(header.key_id.encode())


@given(blobs(), contexts)
def test_aad_is_header_then_canonical_context(case, context) -> None:
    header, _, blob = case
    parsed = ct.unpack(blob)
    assert parsed.aad(context) == header.pack() + ct.canonical_context(context)
    assert parsed.aad(None) == parsed.aad({}) == header.pack()


@given(contexts, st.randoms(use_true_random=False))
def test_canonical_context_ignores_key_order(context, rnd) -> None:
    items = list(context.items())
    rnd.shuffle(items)
    assert ct.canonical_context(dict(items)) == ct.canonical_context(context)
    assert ct.canonical_context(dict(reversed(items))) == ct.canonical_context(context)


@given(contexts, contexts)
def test_canonical_context_is_injective(a, b) -> None:
    assume(a != b)
    assert ct.canonical_context(a) != ct.canonical_context(b)


@given(contexts.filter(bool))
def test_canonical_context_decodes_back_to_the_context(context) -> None:
    assert json.loads(ct.canonical_context(context).decode()) == context


def test_empty_context_adds_nothing() -> None:
    assert ct.canonical_context(None) == b""
    assert ct.canonical_context({}) == b""


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_arbitrary_bytes_parse_or_raise_malformed(blob) -> None:
    try:
        parsed = ct.unpack(blob)
    except ct.MalformedCiphertext:
        return
    # whatever parsed must be a faithful split of the input
    assert parsed.header_bytes + parsed.body == blob
    assert parsed.header.pack() == parsed.header_bytes


@given(blobs(), st.data())
def test_every_truncated_header_is_malformed(case, data) -> None:
    header, _, blob = case
    cut = data.draw(st.integers(min_value=0, max_value=len(header.pack()) - 1))
    with pytest.raises(ct.MalformedCiphertext):
        ct.unpack(blob[:cut])


@given(blobs(), st.data())
def test_single_byte_change_in_header_is_rejected_or_changes_the_aad(case, data) -> None:
    """A changed header either fails to parse or yields different authenticated bytes (so the AEAD rejects it)."""
    header, _, blob = case
    header_len = len(header.pack())
    pos = data.draw(st.integers(min_value=0, max_value=header_len - 1))
    delta = data.draw(st.integers(min_value=1, max_value=255))
    changed = bytearray(blob)
    changed[pos] ^= delta
    try:
        parsed = ct.unpack(bytes(changed))
    except ct.MalformedCiphertext:
        return
    assert parsed.header_bytes != header.pack() or parsed.body != blob[header_len:]
    assert parsed.aad({}) != header.pack() or parsed.body != blob[header_len:]


@pytest.mark.parametrize(("blob", "reason"), [
    (b"", "truncated"),
    (b"KB\x01", "truncated"),
    (b"XX\x01\x01\x00\x01k\x00\x00\x00\x01", "not a broker ciphertext"),
    (b"KB\x02\x01\x00\x01k\x00\x00\x00\x01", "version"),
    (b"KB\x01\x09\x00\x01k\x00\x00\x00\x01", "scheme"),
    (b"KB\x01\x01\x00\x00\x00\x00\x00\x01", "truncated"),  # empty key id
    (b"KB\x01\x01\x01\x01" + b"k" * 257 + b"\x00\x00\x00\x01", "truncated"),  # key id over 256 bytes
    (b"KB\x01\x01\x00\x05kk\x00", "truncated"),
    (b"KB\x01\x01\x00\x02\xff\xfe\x00\x00\x00\x01", "UTF-8"),
])
def test_malformed_examples(blob: bytes, reason: str) -> None:
    with pytest.raises(ct.MalformedCiphertext, match=reason):
        ct.unpack(blob)


@given(st.binary(max_size=300), st.binary(min_size=28, max_size=300))
def test_envelope_round_trip(wrapped, sealed) -> None:
    assert ct.unpack_envelope(ct.pack_envelope(wrapped, sealed)) == (wrapped, sealed)


@given(st.binary(max_size=200))
def test_envelope_arbitrary_bytes_parse_or_raise_malformed(body) -> None:
    try:
        wrapped, sealed = ct.unpack_envelope(body)
    except ct.MalformedCiphertext:
        return
    assert struct.pack(">H", len(wrapped)) + wrapped + sealed == body
    assert len(sealed) >= 28


@given(st.binary(max_size=100), st.binary(min_size=28, max_size=100), st.data())
def test_truncated_envelope_is_malformed(wrapped, sealed, data) -> None:
    body = ct.pack_envelope(wrapped, sealed)
    cut = data.draw(st.integers(min_value=0, max_value=2 + len(wrapped) + 27))
    with pytest.raises(ct.MalformedCiphertext):
        ct.unpack_envelope(body[:cut])


@pytest.mark.parametrize("key_id", ["", "x" * 257])
def test_header_refuses_bad_key_id_length(key_id: str) -> None:
    with pytest.raises(ValueError):
        ct.Header(ct.Scheme.PROVIDER_AEAD, key_id, 1).pack()


@pytest.mark.parametrize("context, aad", [
    ({"app": "billing"}, b'{"app":"billing"}'),
    ({"z": "1", "a": "2", "m": "3"}, b'{"a":"2","m":"3","z":"1"}'),
    ({"zo\u00eb": "\u65e5\u672c", "t": "\x7f\x00\n\"\\/"}, '{"t":"\x7f\\u0000\\n\\"\\\\/","zo\u00eb":"\u65e5\u672c"}'.encode()),
    ({"\U0001f600": "\u2028", "\uffff": ""}, '{"\uffff":"","\U0001f600":"\u2028"}'.encode()),
])
def test_canonical_context_bytes_are_pinned(context, aad) -> None:
    """The AAD of every existing ciphertext: UTF-8 as is (not \\u escapes), json's control escapes, code-point order."""
    assert ct.canonical_context(context) == aad
    assert aad == json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
