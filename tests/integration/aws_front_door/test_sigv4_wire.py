"""SigV4 over the wire, with the header lines written by hand: names in any case, a header sent twice (the server
joins the lines), hostile X-Amz-Date values signed as sent, an expired date, a captured request replayed over
another body or after its credential was revoked. Encrypt is served by the door's fast path, ListKeys by Flask;
both must give AWS's answer (tests/unit/test_sigv4_shortcuts.py holds the shortcuts to what they replace)."""

from __future__ import annotations

import http.client
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.integration.aws_front_door.conftest import REGION, Creds
from tests.integration.aws_front_door.test_errors import AUTH_CACHE_SECONDS

OPERATIONS = ["Encrypt", "ListKeys"]  # the fast path's and Flask's


def sign(creds: Creds, operation: str, body: bytes, amz_date: str) -> list[tuple[str, str]]:
    """The header lines of a request botocore signs with exactly this X-Amz-Date, whatever it says."""
    request = AWSRequest(method="POST", url="http://127.0.0.1/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}",
        "X-Amz-Date": amz_date})
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(creds.access_key_id, creds.secret_access_key), "kms", REGION)
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    names = auth.signed_headers(auth.headers_to_sign(request))
    return [("Content-Type", "application/x-amz-json-1.1"), ("X-Amz-Target", f"TrentService.{operation}"),
            ("X-Amz-Date", amz_date), ("Authorization", f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/"
             f"{amz_date[:8]}/{REGION}/kms/aws4_request, SignedHeaders={names}, Signature={signature}")]


def send(broker, lines: list[tuple[str, str]], body: bytes) -> tuple[int, str, str]:
    """POST / with these header lines as written (Host: 127.0.0.1, as signed), → (status, __type, message)."""
    address = urlsplit(broker.addr)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", "127.0.0.1")
        for name, value in lines:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        data = json.loads(answer.read() or b"{}")
        return answer.status, data.get("__type", "ok"), data.get("message", "")
    finally:
        connection.close()


def body_of(operation: str, key_id: str, limit: int = 1) -> bytes:
    return json.dumps({"KeyId": key_id, "Plaintext": "aGk="} if operation == "Encrypt" else {"Limit": limit}).encode()


def now(shift: timedelta = timedelta(0), fmt: str = "%Y%m%dT%H%M%SZ") -> str:
    return (datetime.now(UTC) + shift).strftime(fmt)


@pytest.fixture(scope="module")
def key_id(kms) -> str:
    return kms.create_key()["KeyMetadata"]["KeyId"]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_header_names_in_any_case(aws_broker, root_creds, key_id, operation):
    body = body_of(operation, key_id)
    lines = sign(root_creds, operation, body, now())
    for spell in (str.lower, str.upper, lambda name: name):
        assert send(aws_broker, [(spell(name), value) for name, value in lines], body)[:2] == (200, "ok")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_header_sent_twice_is_one_joined_value(aws_broker, root_creds, key_id, operation):
    body = body_of(operation, key_id)
    lines = sign(root_creds, operation, body, now())
    status, code, message = send(aws_broker, [*lines, ("x-amz-date", dict(lines)["X-Amz-Date"])], body)
    assert (status, code) == (400, "IncompleteSignatureException")
    assert message.startswith("Date must be in ISO-8601 'basic format'. Got '")
    twice = [*lines, ("X-Amz-Target", "TrentService.Decrypt")]  # a second target: joined, so signed as neither
    assert send(aws_broker, twice, body)[:2] == (400, "InvalidSignatureException")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_hostile_dates(aws_broker, root_creds, key_id, operation):
    body = body_of(operation, key_id)
    lenient = now(fmt="%Y%m%dt%H%M%Sz")  # strptime's leniency, kept: lower-case t and z
    assert send(aws_broker, sign(root_creds, operation, body, lenient), body)[:2] == (200, "ok")
    for text in (now()[:4] + "13" + now()[6:], now()[:8] + "T240000Z", now()[:13] + "60Z", now()[:15],
                 now().replace("T", "-"), now()[:8] + "T\xbd" + now()[10:]):
        status, code, message = send(aws_broker, sign(root_creds, operation, body, text), body)
        assert (status, code) == (400, "IncompleteSignatureException"), text
        assert message == f"Date must be in ISO-8601 'basic format'. Got '{text}'."


@pytest.mark.parametrize("operation", OPERATIONS)
def test_expired_and_replayed_signatures(aws_broker, root_creds, key_id, operation):
    body = body_of(operation, key_id)
    status, code, message = send(aws_broker, sign(root_creds, operation, body, now(-timedelta(minutes=6))), body)
    assert (status, code) == (400, "InvalidSignatureException") and message.startswith("Signature expired: ")
    captured = sign(root_creds, operation, body, now())
    assert send(aws_broker, captured, body)[:2] == (200, "ok")
    assert send(aws_broker, captured, body)[:2] == (200, "ok")  # a replay inside the window is AWS's to accept too
    other = body_of(operation, "alias/other", limit=2)
    status, code, message = send(aws_broker, captured, other)
    assert (status, code) == (400, "InvalidSignatureException") and "does not match" in message


def test_a_replay_after_revocation_is_refused(aws_broker, issue, key_id):
    creds = issue("root", name="replayed")
    captured = {op: (sign(creds, op, body_of(op, key_id), now()), body_of(op, key_id)) for op in OPERATIONS}
    for lines, body in captured.values():
        for _ in range(4):  # two gunicorn workers: both keep the credential (and its signing key)
            assert send(aws_broker, lines, body)[:2] == (200, "ok")
    revoked = aws_broker.session().delete(aws_broker.url(f"/aws-credentials/{creds.access_key_id}"))
    assert revoked.status_code == 200, revoked.text
    time.sleep(AUTH_CACHE_SECONDS + 0.5)
    for lines, body in captured.values():
        for _ in range(4):
            assert send(aws_broker, lines, body)[:2] == (400, "UnrecognizedClientException")
