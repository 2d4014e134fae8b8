"""Every request is authenticated: wrong secret, unknown key, replayed nonce, stale timestamp and tampering are
rejected with Aliyun's own codes, for both ACS3-HMAC-SHA256 and the legacy HMAC-SHA1 scheme."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from alibabacloud_tea_openapi import utils_models as um
from alibabacloud_tea_openapi.utils import Utils
from alibabacloud_tea_util.models import RuntimeOptions

from .helpers import aliyun_error, call, new_key

SCHEMES = [None, "v2"]


@pytest.fixture
def captured(monkeypatch):
    """Records every PreparedRequest the SDK sends (it uses requests.Session.send underneath)."""
    sent: list[requests.PreparedRequest] = []
    original = requests.Session.send

    def recording_send(self, request, **kwargs):
        sent.append(request.copy())
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", recording_send)
    return sent


def _resend(prepared: requests.PreparedRequest) -> requests.Response:
    with requests.Session() as session:
        return session.send(prepared, timeout=10)


def _with_query(prepared: requests.PreparedRequest, **changes: str) -> requests.PreparedRequest:
    copy = prepared.copy()
    parts = urlsplit(copy.url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    copy.url = urlunsplit(parts._replace(query=urlencode(query)))
    return copy


def _assert_error(response: requests.Response, code: str, status: int) -> None:
    body = response.json()
    assert (response.status_code, body["Code"]) == (status, code), body
    assert set(body) == {"RequestId", "HostId", "Code", "Message"}


def test_ready_line_reports_the_configured_pair(emulator):
    assert emulator.ready["access_key_id"] == emulator.access_key_id
    assert emulator.ready["access_key_secret"] == emulator.access_key_secret
    assert emulator.ready["endpoint"] == emulator.endpoint and emulator.ready["region"] == "cn-hangzhou"


@pytest.mark.parametrize("algorithm", SCHEMES)
def test_wrong_secret_is_rejected(client_factory, algorithm):
    client = client_factory(secret="not-the-secret", algorithm=algorithm)
    with aliyun_error("IncompleteSignature", 400):
        call(client, "list_keys")


@pytest.mark.parametrize("algorithm", SCHEMES)
def test_unknown_access_key_is_rejected(client_factory, algorithm):
    client = client_factory(key_id="LTAIunknown", secret="whatever", algorithm=algorithm)
    with aliyun_error("InvalidAccessKeyId.NotFound", 404):
        call(client, "list_keys")


@pytest.mark.parametrize("algorithm", SCHEMES)
def test_every_configured_access_key_is_accepted(client_factory, algorithm):
    client = client_factory(key_id="LTAIsecond", secret="second-secret", algorithm=algorithm)
    assert call(client, "get_random_password")["RandomPassword"]


@pytest.mark.parametrize("algorithm", SCHEMES)
def test_replayed_nonce_is_rejected_through_the_sdk(client_factory, monkeypatch, algorithm):
    nonce = f"fixed-nonce-{time.time_ns()}"
    monkeypatch.setattr(Utils, "get_nonce", staticmethod(lambda: nonce))
    client = client_factory(algorithm=algorithm)
    call(client, "list_keys")
    with aliyun_error("SignatureNonceUsed", 400):
        call(client, "list_keys")


@pytest.mark.parametrize("algorithm", SCHEMES)
def test_replaying_a_captured_request_is_rejected(client_factory, captured, algorithm):
    client = client_factory(algorithm=algorithm)
    call(client, "describe_key", key_id=new_key(client)["KeyId"])
    _assert_error(_resend(captured[-1]), "SignatureNonceUsed", 400)


@pytest.mark.parametrize("algorithm", SCHEMES)
def test_tampered_signed_parameter_is_rejected(client_factory, captured, algorithm):
    client = client_factory(algorithm=algorithm)
    key_id = new_key(client)["KeyId"]
    call(client, "encrypt", key_id=key_id, plaintext="pay 10")
    tampered = _with_query(captured[-1], Plaintext="pay 1000")
    _assert_error(_resend(tampered), "IncompleteSignature", 400)


def test_acs3_body_not_matching_its_hash_is_rejected(client_factory, captured):
    client = client_factory()
    call(client, "list_keys")
    tampered = captured[-1].copy()
    tampered.prepare_body(data={"PageSize": "1"}, files=None)
    _assert_error(_resend(tampered), "SignatureDoesNotMatch", 400)


def test_acs3_stale_date_is_rejected(client_factory, captured):
    client = client_factory()
    call(client, "list_keys")
    stale = captured[-1].copy()
    stale.headers["x-acs-date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    stale.headers["x-acs-signature-nonce"] = f"n-{time.time_ns()}"
    _assert_error(_resend(stale), "InvalidTimeStamp.Expired", 400)


def test_v1_stale_timestamp_is_rejected(client_factory, captured):
    client = client_factory(algorithm="v2")
    call(client, "list_keys")
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    _assert_error(_resend(_with_query(captured[-1], Timestamp=future)), "InvalidTimeStamp.Expired", 400)


def test_unsigned_request_is_rejected(emulator):
    response = requests.post(f"http://{emulator.endpoint}/?Action=ListKeys&Version=2016-01-20", timeout=10)
    _assert_error(response, "IncompleteSignature", 400)


def test_malformed_authorization_header_is_rejected(emulator):
    response = requests.post(f"http://{emulator.endpoint}/", timeout=10, headers={
        "Authorization": "ACS3-HMAC-SHA256 Credential=x", "x-acs-action": "ListKeys", "x-acs-version": "2016-01-20"})
    _assert_error(response, "IncompleteSignature", 400)


@pytest.mark.parametrize("algorithm", SCHEMES)
def test_unknown_action_is_not_found(client_factory, algorithm):
    """A correctly signed call of an action KMS does not have, via the SDK's generic call_api."""
    client = client_factory(algorithm=algorithm)
    params = um.Params(action="NoSuchAction", version="2016-01-20", protocol="HTTP", pathname="/", method="POST",
                       auth_type="AK", style="RPC", req_body_type="formData", body_type="json")
    with aliyun_error("InvalidAction.NotFound", 404):
        client.call_api(params, um.OpenApiRequest(query={}), RuntimeOptions(autoretry=False))


def test_wrong_api_version_is_rejected(client_factory):
    client = client_factory()
    params = um.Params(action="ListKeys", version="2099-01-01", protocol="HTTP", pathname="/", method="POST",
                       auth_type="AK", style="RPC", req_body_type="formData", body_type="json")
    with aliyun_error("InvalidVersion", 400):
        client.call_api(params, um.OpenApiRequest(query={}), RuntimeOptions(autoretry=False))
