"""Hostile input at every door of a real broker (gunicorn + SoftHSM): a 4xx with a stable code, never a 500, and
nothing changed in the store.

Bodies are sent as raw bytes: 100,000-deep JSON, lone surrogates (escaped and as raw UTF-8 bytes), non-standard
numbers, oversized bodies (with and without Content-Length), encryption contexts past AWS's limits, long or
strange request ids, and — on the AWS JSON 1.1 door — every member of every operation with a JSON type it does not
take (the member list is botocore's own KMS model).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import botocore.session
import pytest
import requests

from broker.api.aws import OPERATIONS
from tests.support.broker import RunningBroker, start_broker
from tests.support.doors import AwsCreds, audit_records, aws, issue_aws_creds, native, records_of

DEEP_LIST = b"[" * 100_000 + b"]" * 100_000
DEEP_MEMBER = b'{"Description": ' + b'{"a":' * 25_000 + b"1" + b"}" * 25_000 + b"}"  # 150 KB, under the size limit
SURROGATE_VALUE = b'{"Description": "\\ud800"}'
SURROGATE_NAME = b'{"\\udc00x": "y"}'
SURROGATE_RAW_UTF8 = b'{"Description": "\xed\xa0\x80"}'  # a surrogate encoded as if it were UTF-8
NOT_JSON = {"nan": b'{"NumberOfBytes": NaN}', "infinity": b'{"NumberOfBytes": -Infinity}',
            "float overflow": b'{"NumberOfBytes": 1e400}', "5000 digits": b'{"NumberOfBytes": 1' + b"0" * 5000 + b"}",
            "truncated": b'{"Description": "x', "bad utf-8": b'{"Description": "\xff"}'}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("hostile")
    running = start_broker(base / "data", base / "logs", workers=1, name="broker-hostile")
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def key_id(broker: RunningBroker) -> str:
    r = native(broker, "POST", "/keys", body={"Description": "hostile input"})
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


@pytest.fixture(scope="module")
def blob(broker: RunningBroker, key_id: str) -> str:
    r = native(broker, "POST", f"/keys/{key_id}/encrypt", body={"Plaintext": b64(b"x")})
    assert r.status_code == 200, r.text
    return r.json()["CiphertextBlob"]


@pytest.fixture(scope="module")
def creds(broker: RunningBroker) -> AwsCreds:
    return issue_aws_creds(broker, "root")


@pytest.fixture(scope="module")
def body_routes(broker: RunningBroker, key_id: str) -> list[tuple[str, str]]:
    """(method, path) of every native route that reads a body, from the served document, path filled in."""
    doc = requests.get(broker.url("/openapi.json"), timeout=10).json()
    fill = {"key": key_id, "mk": "no-such-multikey", "name": "x", "grant_id": "g", "access_key_id": "AKIAX",
            "operation": "root-token", "request_id": "apr-" + "0" * 24}
    out = []
    for path, ops in doc["paths"].items():
        for method, spec in ops.items():
            if "requestBody" in spec:
                concrete = re.sub(r"\{(\w+)\}", lambda m: fill.get(m.group(1), "x"), path)
                out.append((method.upper(), concrete[len("/v1"):]))
    assert len(out) > 40
    return out


@contextmanager
def unchanged(broker: RunningBroker) -> Iterator[None]:
    before = broker.snapshot()
    yield
    assert broker.snapshot() == before, "a refused request changed the store"


def refused(r: requests.Response, status: int, code: str, door: str = "native") -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    if door == "native":
        assert r.json()["error"]["code"] == code, r.text[:300]
        return r.json()["error"]["message"]
    assert r.json()["__type"] == code, r.text[:300]
    return r.json()["message"]


# ------------------------------------------------------------------------------------------------ the native API


@pytest.mark.parametrize("raw", [DEEP_LIST, DEEP_MEMBER], ids=["deep-list", "deep-member"])
def test_deep_json_is_a_validation_error_on_every_native_body_route(broker, body_routes, raw):
    with unchanged(broker):
        for method, path in body_routes:
            message = refused(native(broker, method, path, raw=raw), 400, "ValidationException")
            assert "nests deeper than 32 levels" in message, (path, message)


@pytest.mark.parametrize("raw", [SURROGATE_VALUE, SURROGATE_NAME, SURROGATE_RAW_UTF8],
                         ids=["escaped-value", "member-name", "raw-utf8-surrogate"])
def test_lone_surrogates_are_validation_errors_on_every_native_body_route(broker, body_routes, raw):
    with unchanged(broker):
        for method, path in body_routes:
            message = refused(native(broker, method, path, raw=raw), 400, "ValidationException")
            assert "not valid Unicode" in message, (path, message)


@pytest.mark.parametrize("name", sorted(NOT_JSON))
def test_non_standard_json_is_refused_on_every_native_body_route(broker, body_routes, name):
    with unchanged(broker):
        for method, path in body_routes:
            refused(native(broker, method, path, raw=NOT_JSON[name]), 400, "ValidationException")


def test_login_routes_refuse_hostile_bodies_without_a_token_and_audit_them(broker):
    """Unauthenticated routes parse inside their audited operation: a 400, and a record of the attempt."""
    with unchanged(broker):
        for path in ("/auth/approle/login", "/auth/jwt/login", "/auth/ldap/login"):
            for raw in (DEEP_LIST, b'{"role_id": "\\ud800", "secret_id": "x"}', b'{"role": "\\ud800", "jwt": "x"}',
                        b'{"username": "\\ud800", "password": "x"}'):
                r = native(broker, "POST", path, raw=raw, token="")
                refused(r, 400, "ValidationException")
                outcomes = [x["outcome"] for x in records_of(broker, r.headers["X-Request-Id"])
                            if x.get("phase") != "intent"]  # a login changes state: its intent goes first
                assert outcomes == ["error"]


@pytest.mark.parametrize("field", ["EncryptionContext key", "EncryptionContext value", "Description", "Tags (map)",
                                   "Tags (list)", "AliasName", "query string"])
def test_lone_surrogates_in_named_fields(broker, key_id, field):
    cases = {
        "EncryptionContext key": ("POST", f"/keys/{key_id}/encrypt",
                                  b'{"Plaintext": "eA==", "EncryptionContext": {"\\ud800": "v"}}'),
        "EncryptionContext value": ("POST", "/decrypt",
                                    b'{"CiphertextBlob": "eA==", "EncryptionContext": {"k": "\\udfff"}}'),
        "Description": ("PATCH", f"/keys/{key_id}", b'{"Description": "ok \\ud83d"}'),
        "Tags (map)": ("POST", f"/keys/{key_id}/tags", b'{"Tags": {"team": "\\ud800"}}'),
        "Tags (list)": ("POST", "/keys", b'{"Tags": [{"TagKey": "\\ud800", "TagValue": "v"}]}'),
        "AliasName": ("POST", "/aliases", b'{"AliasName": "alias/\\ud800", "TargetKeyId": "' + key_id.encode() + b'"}'),
        "query string": ("GET", "/keys?marker=%ED%A0%80", None),  # invalid UTF-8 in a URL decodes as U+FFFD
    }
    method, path, raw = cases[field]
    with unchanged(broker):
        r = native(broker, method, path, raw=raw)
        if field == "query string":
            assert r.status_code == 200, r.text  # nothing to refuse: the marker is text, just not a known one
        else:
            assert "not valid Unicode" in refused(r, 400, "ValidationException")


def test_bodies_larger_than_256_kib_are_refused_with_and_without_content_length(broker, key_id, creds):
    big = b'{"Description": "' + b"x" * (300 * 1024) + b'"}'
    with unchanged(broker):
        refused(native(broker, "POST", "/keys", raw=big), 413, "ValidationException")
        chunked = requests.post(broker.url("/keys"), data=iter([big[:1024], big[1024:]]), timeout=60,
                                headers={"X-KMSB-Token": broker.root_token, "Content-Type": "application/json"})
        refused(chunked, 413, "ValidationException")
        refused(aws(broker, creds, "CreateKey", raw=big), 400, "ValidationException", door="aws")


# ------------------------------------------------------------------------------------------------ encryption contexts


EXACTLY_8_KIB = {"a": "x" * 4096, "b": "y" * 4094}  # 1 + 4096 + 1 + 4094 bytes
OVER_LIMITS = {
    "65 pairs": {f"k{i}": "v" for i in range(65)},
    "8 KiB + 1": {**EXACTLY_8_KIB, "b": "y" * 4095},
    "10,000 pairs": {f"k{i}": str(i) for i in range(10_000)},  # an 869 KB audit record before the limits
}


NATIVE_CONTEXT_DOORS = {
    "Encrypt": ("/keys/{key}/encrypt", lambda c, blob: {"Plaintext": "eA==", "EncryptionContext": c}),
    "Decrypt": ("/decrypt", lambda c, blob: {"CiphertextBlob": blob, "EncryptionContext": c}),
    "ReEncrypt source": ("/re-encrypt", lambda c, blob: {"CiphertextBlob": blob, "DestinationKeyId": "{key}",
                                                         "SourceEncryptionContext": c}),
    "ReEncrypt destination": ("/re-encrypt", lambda c, blob: {"CiphertextBlob": blob, "DestinationKeyId": "{key}",
                                                              "DestinationEncryptionContext": c}),
    "GenerateDataKey": ("/keys/{key}/generate-data-key", lambda c, blob: {"KeySpec": "AES_256",
                                                                          "EncryptionContext": c}),
    "GenerateDataKeyWithoutPlaintext": ("/keys/{key}/generate-data-key-without-plaintext",
                                        lambda c, blob: {"KeySpec": "AES_256", "EncryptionContext": c}),
    "GenerateDataKeyPair": ("/keys/{key}/generate-data-key-pair",
                            lambda c, blob: {"KeyPairSpec": "ECC_NIST_P256", "EncryptionContext": c}),
    "MultiKeyEncrypt": ("/multikeys/{mk}/encrypt", lambda c, blob: {"Plaintext": "eA==", "EncryptionContext": c}),
    "MultiKeyDecrypt": ("/multikeys/decrypt", lambda c, blob: {"CiphertextBlob": blob, "EncryptionContext": c}),
}
AWS_CONTEXT_DOORS = {
    "Encrypt": lambda c, key, blob: {"KeyId": key, "Plaintext": "eA==", "EncryptionContext": c},
    "Decrypt": lambda c, key, blob: {"CiphertextBlob": blob, "EncryptionContext": c},
    "ReEncrypt": lambda c, key, blob: {"CiphertextBlob": blob, "DestinationKeyId": key,
                                       "DestinationEncryptionContext": c},
    "GenerateDataKey": lambda c, key, blob: {"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": c},
    "GenerateDataKeyWithoutPlaintext": lambda c, key, blob: {"KeyId": key, "KeySpec": "AES_256",
                                                             "EncryptionContext": c},
    "GenerateDataKeyPairWithoutPlaintext": lambda c, key, blob: {"KeyId": key, "KeyPairSpec": "ECC_NIST_P256",
                                                                 "EncryptionContext": c},
}


@pytest.fixture(scope="module")
def multikey(broker: RunningBroker, key_id: str) -> str:
    r = native(broker, "POST", "/multikeys", body={"Name": "hostile-mk", "Members": [key_id]})
    assert r.status_code in (200, 201), r.text
    return "hostile-mk"


@pytest.mark.parametrize("case", ["65 pairs", "8 KiB + 1", "10,000 pairs"])
def test_encryption_context_limits_hold_at_every_native_door(broker, key_id, blob, multikey, case):
    context = OVER_LIMITS[case]
    with unchanged(broker):
        for name, (path, make) in NATIVE_CONTEXT_DOORS.items():
            body = json.loads(json.dumps(make(context, blob)).replace("{key}", key_id))
            r = native(broker, "POST", path.format(key=key_id, mk=multikey), body=body)
            message = refused(r, 400, "ValidationException")
            assert "EncryptionContext" in message, (name, message)


@pytest.mark.parametrize("case", ["65 pairs", "8 KiB + 1", "10,000 pairs"])
def test_encryption_context_limits_hold_at_every_aws_door(broker, creds, key_id, blob, case):
    context = OVER_LIMITS[case]
    with unchanged(broker):
        for name, make in AWS_CONTEXT_DOORS.items():
            r = aws(broker, creds, name, body=make(context, key_id, blob))
            message = refused(r, 400, "ValidationException", door="aws")
            assert "EncryptionContext" in message, (name, message)


def test_encryption_context_at_the_limits_is_accepted(broker, creds, key_id):
    """64 pairs, and exactly 8 KiB: AWS's limits are limits, not one-off errors."""
    for context in ({f"k{i}": "v" for i in range(64)}, EXACTLY_8_KIB):
        r = native(broker, "POST", f"/keys/{key_id}/encrypt", body={"Plaintext": "eA==", "EncryptionContext": context})
        assert r.status_code == 200, r.text
        r = native(broker, "POST", "/decrypt", body={"CiphertextBlob": r.json()["CiphertextBlob"],
                                                     "EncryptionContext": context})
        assert r.status_code == 200 and r.json()["Plaintext"] == "eA=="
        r = aws(broker, creds, "Encrypt", body={"KeyId": key_id, "Plaintext": "eA==", "EncryptionContext": context})
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------------ request ids


@pytest.mark.parametrize("sent", ["a" * 3000, "two words", "semi;colon", "x" * 129, "-leading-dash", "é-latin1"],
                         ids=["3000-chars", "space", "semicolon", "129-chars", "leading-dash", "latin1"])
def test_long_or_strange_request_ids_are_replaced_never_stored(broker, creds, sent):
    for r, header in ((native(broker, "GET", "/keys", headers={"X-Request-Id": sent}),
                       "X-Request-Id"),
                      (aws(broker, creds, "ListKeys", headers={"X-Request-Id": sent}),
                       "x-amzn-RequestId")):
        assert r.status_code == 200, r.text
        used = r.headers[header]
        assert UUID.match(used), used
        assert [x["action"] for x in records_of(broker, used)] == ["kms:ListKeys"]
    assert not any(x.get("request_id") == sent for x in audit_records(broker))


def test_a_plain_request_id_is_kept(broker):
    sent = "req-2026.01:abc/DEF+1=" + "9" * 100
    r = native(broker, "GET", "/keys", headers={"X-Request-Id": sent})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == sent
    assert [x["action"] for x in records_of(broker, sent)] == ["kms:ListKeys"]


# ------------------------------------------------------------------------------------------------ the AWS door


@pytest.fixture(scope="module")
def aws_ops() -> list[str]:
    assert len(OPERATIONS) > 40
    return sorted(OPERATIONS)


@pytest.mark.parametrize("raw, code", [(DEEP_LIST, "SerializationException"),
                                       (DEEP_MEMBER, "SerializationException"),
                                       (b'{"KeyId": "\\ud800"}', "ValidationException"),
                                       (b'{"KeyId": "k", "EncryptionContext": {"\\udbff": "v"}}',
                                        "ValidationException"),
                                       (b'{"KeyId": "\xed\xb0\x80"}', "ValidationException"),
                                       (b'{"Limit": NaN}', "SerializationException")],
                         ids=["deep-list", "deep-member", "KeyId", "context-name", "raw-utf8", "nan"])
def test_every_aws_operation_refuses_hostile_bodies(broker, creds, aws_ops, raw, code):
    with unchanged(broker):
        for operation in aws_ops:
            refused(aws(broker, creds, operation, raw=raw), 400, code, door="aws")


def _wrong_values(shape) -> list:
    kind = shape.type_name
    if kind == "string" or kind == "blob":
        return [7, ["x"], {"a": "b"}]
    if kind == "list":
        return ["x", [["nested"]], [{"a": 1}], [7]]
    if kind in ("map", "structure"):
        return ["x", ["x"], {"a": ["b"]}, {"a": {"b": 7}}]
    if kind in ("integer", "long"):
        return ["7", 1.5, True, -1, 2 ** 70]
    if kind == "boolean":
        return ["true", 1]
    return [["x"]]


def test_every_member_of_every_aws_operation_with_the_wrong_type_is_a_4xx(broker, creds, key_id, aws_ops):
    """botocore's KMS model names each operation's members; each gets JSON it does not take (e.g. CreateGrant
    Operations [["Decrypt"]]): a 4xx with an AWS error code, and the store unchanged."""
    model = botocore.session.get_session().get_service_model("kms")
    tried = 0
    with unchanged(broker):
        for operation in aws_ops:
            members = model.operation_model(operation).input_shape.members
            for member, shape in members.items():
                if member == "DryRun":
                    continue
                for value in _wrong_values(shape):
                    body = {"KeyId": key_id, member: value}
                    r = aws(broker, creds, operation, body=body)
                    tried += 1
                    assert 400 <= r.status_code < 500, (operation, member, value, r.status_code, r.text[:200])
                    assert r.json()["__type"].endswith("Exception"), r.text[:200]
    assert tried > 500
