"""The audit chain across the switch to orjson (broker/canonical_json.py): a file written by the json-only writer
still verifies, and a file written now is what the json encoder would have written, so it verifies with the old
canonical form too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit import chain, sinks, verify_lines
from tests.support.audit_fixture import PUBLIC_DER, write_log
from tests.unit.test_canonical_json import leaves

FIXTURE = Path(__file__).parent / "data" / "audit-json-encoder.jsonl"
JSON_ONLY = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # the canonical form before orjson


def json_line(line: bytes) -> bytes:
    return JSON_ONLY.encode(json.loads(line)).encode() + b"\n"


def events(lines: list[bytes]) -> list[bytes]:
    return [re.sub(rb'"(prev_)?hash":"[0-9a-f]{64}",', b"", x) for x in lines if b'"type":"event"' in x]


def check(data: bytes) -> None:
    report = verify_lines(data, serialization.load_der_public_key(PUBLIC_DER))
    assert report.ok, report.problem
    assert report.records == 48


def test_a_file_written_by_the_json_encoder_still_verifies():
    check(FIXTURE.read_bytes())


def test_a_file_written_now_is_byte_for_byte_what_json_wrote(tmp_path: Path, monkeypatch):
    data = write_log(tmp_path)
    lines = data.splitlines(keepends=True)
    assert lines == [json_line(line) for line in lines]
    # the events are the fixture's lines, but for the hashes (the checkpoints between carry the time they were made)
    assert events(lines) == events(FIXTURE.read_bytes().splitlines(keepends=True))
    check(data)
    monkeypatch.setattr(chain, "canonical", lambda body: JSON_ONLY.encode(body).encode())  # the old writer's form
    check(data)


@pytest.mark.parametrize("line", FIXTURE.read_bytes().splitlines(keepends=True)[:6])
def test_the_canonical_form_of_fixture_records_is_unchanged(line: bytes):
    assert chain.canonical(json.loads(line)) + b"\n" == line


placeholder = st.just(chain._PLACEHOLDER)
record_keys = st.sampled_from(["hash", "hashes", "has", "a", "z", "prev_hash", "seq", "\u00e9", ""]) | st.text(max_size=4)
record_values = st.recursive(
    leaves | placeholder,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(record_keys, children, max_size=4),
    max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(record_keys, record_values, max_size=8))
def test_the_line_made_with_the_hash_is_the_line_encoded_after_it(record):
    """chain.seal_line (one encoding) == seal_record + sinks.encode (two), whatever the record holds."""
    expected = dict(record)
    try:
        want: bytes | type = sinks.encode(chain.seal_record(expected, "ab" * 32))
    except (TypeError, ValueError):
        want = TypeError
    got_record = dict(record)
    try:
        got: bytes | type = chain.seal_line(got_record, "ab" * 32)
    except (TypeError, ValueError):
        got = TypeError
    assert got == want
    if want is not TypeError:
        assert got_record == expected


def test_a_nested_placeholder_is_not_taken_for_the_record_hash():
    record = {"a": {"hash": chain._PLACEHOLDER}, "z": 1}
    assert chain.seal_line(dict(record), "0" * 64) == sinks.encode(chain.seal_record(dict(record), "0" * 64))


def test_the_writer_writes_the_lines_made_when_sealing(tmp_path: Path, monkeypatch):
    """No record is encoded a second time for its line (sinks.encode is only the fallback)."""
    from broker.audit import log as audit_log

    def second_encoding(record: dict) -> bytes:
        raise AssertionError(f"record {record.get('seq')} encoded again")
    monkeypatch.setattr(audit_log, "encode", second_encoding)
    check(write_log(tmp_path))


def test_a_head_dumped_by_json_still_loads_and_orjson_dumps_round_trip():
    """The lock file's head (an internal format) is now written by orjson; one written by json.dumps still loads."""
    from broker.audit.log import _Head

    head = _Head(seq=7, hash="ab" * 32, cp_seq=5, uncovered_since=1704067200.123456, size=4096,
                 open={"6": "writer-zoë"})
    old = json.dumps(head.__dict__).encode()
    assert _Head.load(old) == head
    assert _Head.load(old + b" " * 64) == head  # the lock file pads the head with spaces
    assert _Head.load(head.dump()) == head
    assert _Head.load(b'{"seq": 1, "bogus": 2}') is None and _Head.load(b"{not json") is None
