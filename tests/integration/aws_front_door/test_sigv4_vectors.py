"""The verifier against AWS's published Signature Version 4 test suite (aws-sig-v4-test-suite: get-vanilla,
post-vanilla, ...; service "service", region us-east-1, 20150830T123600Z): signatures computed by AWS, not by us."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.auth import Principal
from broker.auth.sigv4 import IncompleteSignature, InvalidSignature, SigV4Verifier, UnrecognizedClient

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
WHEN = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
VECTORS = {  # name: (method, path, query, signature)
    "get-vanilla": ("GET", "/", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    "post-vanilla": ("POST", "/", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
}
PRINCIPAL = Principal("vector", "sigv4", ())


class OneCredential:
    def lookup(self, access_key_id: str) -> tuple[Principal, str]:
        if access_key_id != "AKIDEXAMPLE":
            raise UnrecognizedClient("The security token included in the request is invalid.")
        return PRINCIPAL, SECRET


def verifier(now: datetime = WHEN) -> SigV4Verifier:
    return SigV4Verifier(OneCredential(), service="service", clock=lambda: now)


def headers(signature: str, **extra: str) -> dict[str, str]:
    return {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z",
            "Authorization": f"AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=host;x-amz-date, "
                             f"Signature={signature}", **extra}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_published_vectors_verify(name):
    method, path, query, signature = VECTORS[name]
    verified = verifier().verify(method, path, query, headers(signature), b"")
    assert (verified.principal, verified.region, verified.access_key_id) == (PRINCIPAL, "us-east-1", "AKIDEXAMPLE")


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_any_change_breaks_them(name):
    method, path, query, signature = VECTORS[name]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    for args in ((method, path, query, headers(flipped), b""),
                 (method, path, query, headers(signature), b"body"),
                 (method, "/other", query, headers(signature), b""),
                 (method, path, "a=b", headers(signature), b""),
                 ("PUT", path, query, headers(signature), b"")):
        with pytest.raises(InvalidSignature):
            verifier().verify(*args)


def test_date_window_edges():
    method, path, query, signature = VECTORS["get-vanilla"]
    verifier(WHEN + timedelta(minutes=5)).verify(method, path, query, headers(signature), b"")
    verifier(WHEN - timedelta(minutes=5)).verify(method, path, query, headers(signature), b"")
    with pytest.raises(InvalidSignature, match=r"^Signature expired: 20150830T123600Z is now earlier than "
                                               r"20150830T123601Z \(20150830T124101Z - 5 min\.\)$"):
        verifier(WHEN + timedelta(minutes=5, seconds=1)).verify(method, path, query, headers(signature), b"")
    with pytest.raises(InvalidSignature, match=r"^Signature not yet current: "):
        verifier(WHEN - timedelta(minutes=5, seconds=1)).verify(method, path, query, headers(signature), b"")


def test_scope_and_header_rules():
    method, path, query, signature = VECTORS["get-vanilla"]
    good = headers(signature)
    with pytest.raises(IncompleteSignature):
        verifier().verify(method, path, query, {**good, "Authorization": "AWS4-HMAC-SHA256 Credential=x"}, b"")
    with pytest.raises(InvalidSignature, match="Date in Credential scope"):
        verifier().verify(method, path, query, {**good, "X-Amz-Date": "20150831T000000Z"}, b"")
    with pytest.raises(InvalidSignature, match="not signed"):
        verifier().verify(method, path, query, {**good, "X-Amz-Target": "TrentService.ListKeys"}, b"")
    with pytest.raises(InvalidSignature, match="correct service"):
        SigV4Verifier(OneCredential(), clock=lambda: WHEN).verify(method, path, query, good, b"")
    with pytest.raises(UnrecognizedClient):
        verifier().verify(method, path, query, {**good, "Authorization": good["Authorization"].replace(
            "AKIDEXAMPLE", "AKIDOTHER")}, b"")
