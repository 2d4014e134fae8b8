"""The audit chain across the switch to orjson (broker/canonical_json.py): a file written by the json-only writer
still verifies, and a file written now is what the json encoder would have written, so it verifies with the old
canonical form too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from broker.audit import chain, verify_lines
from tests.support.audit_fixture import PUBLIC_DER, write_log

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
