"""Multi-key failover on a stack of its own: stop one emulator, then three, and still decrypt."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from .conftest import World, audit_records, b64, start_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(tmp_path_factory.mktemp("failover"), "broker-failover")
    try:
        yield w
    finally:
        w.broker.server.stop()
        w.stack.down()


def _decrypt(w: World, blob: str) -> dict:
    started = time.monotonic()
    r = w.api.post(w.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": blob,
                                                             "EncryptionContext": {"tenant": "t1"}})
    assert r.status_code == 200, r.text
    body = r.json()
    body["elapsed"] = time.monotonic() - started
    assert base64.b64decode(body["Plaintext"]) == b"survives outages"
    return body


def test_decrypt_survives_one_then_three_clouds_down(fw: World) -> None:
    order = ["aws", "azure", "gcp", "aliyun", "hsm"]
    members = {p: fw.key(p) for p in order}
    r = fw.api.post(fw.broker.url("/multikeys"), json={"Name": "failover", "Members": [members[p] for p in order]})
    assert r.status_code == 201, r.text
    mk = r.json()["MultiKey"]["MultiKeyId"]
    enc = fw.api.post(fw.broker.url(f"/multikeys/{mk}/encrypt"),
                      json={"Plaintext": b64(b"survives outages"), "EncryptionContext": {"tenant": "t1"}})
    assert enc.status_code == 200, enc.text
    blob = enc.json()["CiphertextBlob"]
    assert _decrypt(fw, blob)["AnsweredBy"]["Provider"] == "aws"

    fw.stack.down(only=["aws"])
    first = _decrypt(fw, blob)
    assert first["AnsweredBy"]["Provider"] == "azure"
    assert first["Attempts"][0]["KeyId"] == members["aws"] and first["Attempts"][0]["Outcome"] != "ok"
    record = next(r for r in reversed(audit_records(fw.broker)) if r["action"] == "kms:Decrypt")
    assert record["answered_provider"] == "azure" and record["outcome"] == "allowed"
    # aws is now known unhealthy (circuit open after repeated failures): it is tried last, not first
    _decrypt(fw, blob)
    again = _decrypt(fw, blob)
    assert again["AnsweredBy"]["Provider"] == "azure" and again["Attempts"][0]["KeyId"] == members["azure"]

    fw.stack.down(only=["azure", "gcp"])
    three = _decrypt(fw, blob)
    assert three["AnsweredBy"] == {"KeyId": members["aliyun"], "Provider": "aliyun"}
    assert three["elapsed"] < 20, three["elapsed"]  # short per-provider timeouts, not the SDKs' retry budgets

    # Encrypt needs every member unless a quorum is explicit: nothing half-written
    refused = fw.api.post(fw.broker.url(f"/multikeys/{mk}/encrypt"), json={"Plaintext": b64(b"x")})
    assert refused.status_code in (502, 503), refused.text
    assert "quorum" in refused.json()["error"]["message"]
    assert fw.api.patch(fw.broker.url(f"/multikeys/{mk}"), json={"Quorum": 2}).status_code == 200
    partial = fw.api.post(fw.broker.url(f"/multikeys/{mk}/encrypt"),
                          json={"Plaintext": b64(b"survives outages"), "EncryptionContext": {"tenant": "t1"}})
    assert partial.status_code == 200, partial.text
    assert partial.json()["WrappedBy"] == [members["aliyun"], members["hsm"]]
    assert sorted(m["Provider"] for m in partial.json()["Missing"]) == ["aws", "azure", "gcp"]
    assert _decrypt(fw, partial.json()["CiphertextBlob"])["AnsweredBy"]["Provider"] == "aliyun"
    fw.stack.down(only=["aliyun"])
    assert _decrypt(fw, blob)["AnsweredBy"]["Provider"] == "hsm"  # the root of trust is the last resort
