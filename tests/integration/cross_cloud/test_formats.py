"""Scheme-3 framing and manifest validation: no stack needed."""

from __future__ import annotations

import pytest

from broker import ciphertext as ct
from broker.replication.manifest import ManifestError, parse_manifest


def test_multi_wrap_round_trip_and_truncation() -> None:
    header = ct.Header(ct.Scheme.MULTI_WRAP, "mk-1", 1).pack()
    body = ct.pack_multi_wrap([b"a" * 70, b"b" * 300], b"c" * 32, b"n" * 12 + b"x" * 20)
    parsed = ct.unpack(header + body)
    assert parsed.header.scheme is ct.Scheme.MULTI_WRAP
    wraps, commitment, sealed = ct.unpack_multi_wrap(parsed.body)
    assert wraps == [b"a" * 70, b"b" * 300] and commitment == b"c" * 32 and sealed == b"n" * 12 + b"x" * 20
    for cut in (0, 1, 3, 72, len(body) - 20):
        with pytest.raises(ct.MalformedCiphertext):
            ct.unpack_multi_wrap(body[:cut])
    with pytest.raises(ValueError):
        ct.pack_multi_wrap([], b"c" * 32, b"")
    with pytest.raises(ct.MalformedCiphertext):
        ct.unpack_multi_wrap(b"\x00" + body[1:])


def test_manifest_defaults_and_errors() -> None:
    m = parse_manifest("""
manifest: m1
defaults: {targets: [hsm], tags: {team: a}}
keys:
  - {name: a}
  - {name: b, targets: [aws, gcp], aliases: [alias/b]}
""")
    assert [k.targets for k in m.keys] == [["hsm"], ["aws", "gcp"]]
    assert m.keys[1].aliases_for("aws") == ["alias/b"] and m.keys[1].aliases_for("gcp") == ["alias/b/gcp"]
    bad = {
        "keys: [}": "YAML",
        "manifest: m\nkeys: [{name: a, targets: []}]": "targets",
        "manifest: m\nkeys: [{name: a, targets: [hsm]}, {name: a, targets: [hsm]}]": "twice",
        "manifest: m\nkeys: [{name: a, targets: [hsm], spec: NOPE}]": "spec",
        "manifest: m\nkeys: [{name: a, targets: [hsm], rotation_days: 5}]": "rotation_days",
        "manifest: m\nkeys: [{name: a, targets: [hsm], tags: {'kmsb:x': y}}]": "kmsb:",
        "manifest: m\nkeys: [{name: a, targets: [hsm], aliases: [nope]}]": "alias",
        "manifest: m\nkeys: [{name: a, targets: [aws], spec: RSA_2048, replicate: true}]": "replicate",
        "manifest: m\nkeys: [{name: a, targets: [hsm], colour: red}]": "colour",
    }
    for text, needle in bad.items():
        with pytest.raises(ManifestError, match=needle):
            parse_manifest(text)


def test_throttled_calls_back_off_and_rates_are_spaced() -> None:
    import time

    from broker import errors
    from broker.replication.sync import RateLimit, retry
    from providers.base import ProviderThrottled

    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ProviderThrottled("slow down", retry_after=0.3)
        if len(calls) == 2:
            raise errors.Throttled("slow down")
        return "ok"

    assert retry(flaky) == "ok" and len(calls) == 3
    assert calls[1] - calls[0] >= 0.3  # the provider's retry_after
    assert calls[2] - calls[1] >= 0.4  # exponential backoff, second attempt

    def always() -> None:
        raise ProviderThrottled("no", retry_after=0.001)
    with pytest.raises(ProviderThrottled):
        retry(always)

    limit, starts = RateLimit(20.0), []
    for _ in range(6):
        limit.wait()
        starts.append(time.monotonic())
    assert starts[-1] - starts[0] >= 5 / 20 - 0.01
