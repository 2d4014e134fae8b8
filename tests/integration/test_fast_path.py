"""The hot crypto operations served without Flask's request cycle (broker/api/fast_path.py), native and AWS.

Every request below, hostile ones included, is sent twice to one broker app: once through its WSGI entry (the fast
path, which hands anything not plainly a hot request to Flask) and once straight to the Flask app. Both must give
the same status, headers and body (ciphertexts and data keys aside, which are random: their shape and length must
match) and the same audit record; the requests that are plainly hot ones must be served without Flask, the others
by Flask. Run in a child process: the broker opens its own SoftHSM token, which the test process must not.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANDOM = {"CiphertextBlob", "Plaintext"}  # fresh for each call of Encrypt / GenerateDataKey
AUDITED = ("action", "outcome", "error_code", "principal", "auth_method", "key_id", "key_version", "provider",
           "encryption_context", "front_door", "source_ip")

_PRELUDE = textwrap.dedent("""
    # One broker app over a fresh data folder; `both` sends a request through its WSGI entry (the fast paths in
    # front) or straight to Flask; `flask_calls` counts the requests the fast paths handed to Flask.
    import base64, json, subprocess, sys, tempfile
    from pathlib import Path
    from werkzeug.test import Client
    folder = Path(tempfile.mkdtemp()) / "data"
    out = subprocess.run([sys.executable, "-m", "broker.cli", "init", "--data-dir", str(folder), "--output", "json"],
                         check=True, capture_output=True, text=True)
    root = json.loads(out.stdout)["root_token"]
    from broker.app import create_app
    from broker.settings import load_settings
    app = create_app(load_settings(folder))
    front = app.wsgi_app
    native = front.following
    flask_calls = []
    real_flask = native.flask
    def counting(environ, start_response):
        flask_calls.append(environ.get("HTTP_X_REQUEST_ID"))
        return real_flask(environ, start_response)
    native.flask = counting
    both = {"fast": Client(front), "flask": Client(real_flask)}
    admin = {"X-KMSB-Token": root}
    setup = app.test_client()
""")

_CHILD = _PRELUDE + textwrap.dedent("""
    key = setup.post("/v1/keys", json={}, headers=admin).get_json()["KeyMetadata"]["KeyId"]
    off = setup.post("/v1/keys", json={}, headers=admin).get_json()["KeyMetadata"]["KeyId"]
    setup.post(f"/v1/keys/{off}/disable", headers=admin)
    setup.post(f"/v1/aliases", json={"AliasName": "alias/fast", "TargetKeyId": key}, headers=admin)
    setup.put("/v1/policies/fast-app", headers=admin, json={"Document": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"],
         "Resource": f"key/{key}"}]}})
    app_token = setup.post("/v1/auth/token/create", headers=admin,
                           json={"policies": ["fast-app"]}).get_json()["auth"]["client_token"]
    ctx = {"app": "fast", "tenant": "t-1"}
    pt = base64.b64encode(b"x" * 48).decode()
    blob = setup.post(f"/v1/keys/{key}/encrypt", headers=admin,
                      json={"Plaintext": pt, "EncryptionContext": ctx}).get_json()["CiphertextBlob"]
    J = "application/json"
    def req(name, path, body, token=app_token, content_type=J, raw=None, expect_fast=True):
        return {"name": name, "path": path, "body": body, "token": token, "content_type": content_type,
                "raw": raw, "expect_fast": expect_fast}
    cases = [
        req("encrypt", f"/v1/keys/{key}/encrypt", {"Plaintext": pt, "EncryptionContext": ctx}),
        req("encrypt, no context", f"/v1/keys/{key}/encrypt", {"Plaintext": pt}),
        req("decrypt", "/v1/decrypt", {"CiphertextBlob": blob, "EncryptionContext": ctx}),
        req("decrypt, wrong context", "/v1/decrypt", {"CiphertextBlob": blob, "EncryptionContext": {"app": "x"}}),
        req("decrypt, garbage blob", "/v1/decrypt", {"CiphertextBlob": base64.b64encode(b"nope").decode()}),
        req("generate data key", f"/v1/keys/{key}/generate-data-key", {"KeySpec": "AES_256", "EncryptionContext": ctx}),
        req("generate data key, 32 bytes", f"/v1/keys/{key}/generate-data-key", {"NumberOfBytes": 32}),
        req("gdk without plaintext", f"/v1/keys/{key}/generate-data-key-without-plaintext", {"KeySpec": "AES_128"},
            token=root),
        req("unknown key", "/v1/keys/00000000-0000-4000-8000-000000000000/encrypt", {"Plaintext": pt}),
        req("disabled key", f"/v1/keys/{off}/encrypt", {"Plaintext": pt}, token=root),
        req("not allowed on that key", f"/v1/keys/{off}/encrypt", {"Plaintext": pt}),
        req("plaintext too long", f"/v1/keys/{key}/encrypt", {"Plaintext": base64.b64encode(b"x" * 4097).decode()}),
        req("too many context pairs", f"/v1/keys/{key}/encrypt",
            {"Plaintext": pt, "EncryptionContext": {f"k{i}": "v" for i in range(65)}}),
        req("unknown algorithm", f"/v1/keys/{key}/encrypt", {"Plaintext": pt, "EncryptionAlgorithm": "ROT13"}),
        req("bad key spec", f"/v1/keys/{key}/generate-data-key", {"KeySpec": "AES_9"}),
        req("alias: Flask", "/v1/keys/alias/fast/encrypt", {"Plaintext": pt}, expect_fast=False),
        req("no token", f"/v1/keys/{key}/encrypt", {"Plaintext": pt}, token=None, expect_fast=False),
        req("bad token", f"/v1/keys/{key}/encrypt", {"Plaintext": pt}, token="kmsb-not-a-token", expect_fast=False),
        req("not JSON", f"/v1/keys/{key}/encrypt", None, raw=b"{nope", expect_fast=False),
        req("an array", f"/v1/keys/{key}/encrypt", None, raw=b"[1]", expect_fast=False),
        req("deep JSON", f"/v1/keys/{key}/encrypt", None, raw=b"[" * 100000 + b"]" * 100000, expect_fast=False),
        req("lone surrogate", f"/v1/keys/{key}/encrypt", None,
            raw=b'{"Plaintext": "eA==", "EncryptionContext": {"a": "\\\\ud800"}}', expect_fast=False),
        req("wrong type", f"/v1/keys/{key}/encrypt", {"Plaintext": 12}, expect_fast=False),
        req("unknown member", f"/v1/keys/{key}/encrypt", {"Plaintext": pt, "Extra": 1}, expect_fast=False),
        req("charset: Flask", f"/v1/keys/{key}/encrypt", {"Plaintext": pt}, content_type=J + "; charset=utf-8",
            expect_fast=False),
        req("too large", f"/v1/keys/{key}/encrypt", None, raw=b'{"Plaintext": "' + b"A" * 300000 + b'"}',
            expect_fast=False),
    ]
    report = []
    for i, case in enumerate(cases):
        answers = {}
        for way, client in both.items():
            rid = f"parity-{i}-{way[:2]}"  # both the same length: Content-Length compares
            headers = {"X-Request-Id": rid, "Content-Type": case["content_type"]}
            if case["token"]:
                headers["X-KMSB-Token"] = case["token"]
            data = case["raw"] if case["raw"] is not None else json.dumps(case["body"]).encode()
            before = len(flask_calls)
            r = client.post(case["path"], data=data, headers=headers)
            answers[way] = {"status": r.status_code, "headers": sorted(r.headers.items()), "body": r.get_data(as_text=True),
                            "flask": len(flask_calls) > before, "rid": rid}
        report.append({"name": case["name"], "expect_fast": case["expect_fast"], **answers})
    records = [json.loads(x) for x in (folder / "audit" / "audit.jsonl").read_text().splitlines() if x.strip()]
    print(json.dumps({"cases": report, "records": [r for r in records if str(r.get("request_id", "")).startswith("parity-")]}))
""")


_AWS_CHILD = _PRELUDE + textwrap.dedent("""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    key = setup.post("/v1/keys", json={}, headers=admin).get_json()["KeyMetadata"]["KeyId"]
    off = setup.post("/v1/keys", json={}, headers=admin).get_json()["KeyMetadata"]["KeyId"]
    other = setup.post("/v1/keys", json={}, headers=admin).get_json()["KeyMetadata"]["KeyId"]
    setup.post(f"/v1/keys/{off}/disable", headers=admin)
    setup.post("/v1/aliases", json={"AliasName": "alias/fast", "TargetKeyId": key}, headers=admin)
    setup.put("/v1/policies/fast-app", headers=admin, json={"Document": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"],
         "Resource": [f"key/{key}", f"key/{off}"]}]}})
    creds = setup.post("/v1/aws-credentials", headers=admin, json={"Policies": ["fast-app"]}).get_json()
    ak, sk = creds["access_key_id"], creds["secret_access_key"]
    ctx = {"app": "fast", "tenant": "t-1"}
    pt = base64.b64encode(b"x" * 48).decode()
    def sign(operation, data, secret=sk, content_type="application/x-amz-json-1.1"):
        request = AWSRequest(method="POST", url="http://localhost/", data=data, headers={
            "Content-Type": content_type, "X-Amz-Target": f"TrentService.{operation}"})
        SigV4Auth(Credentials(ak, secret), "kms", "eu-west-3").add_auth(request)
        return dict(request.headers.items())
    first = Client(front).post("/", data=json.dumps({"KeyId": key, "Plaintext": pt, "EncryptionContext": ctx}),
                               headers=sign("Encrypt", json.dumps({"KeyId": key, "Plaintext": pt, "EncryptionContext": ctx})))
    blob = json.loads(first.data)["CiphertextBlob"]
    def req(name, operation, body, raw=None, expect_fast=True, **kw):
        data = raw if raw is not None else json.dumps(body).encode()
        return {"name": name, "data": data, "headers": sign(operation, data, **kw), "expect_fast": expect_fast}
    cases = [
        req("encrypt", "Encrypt", {"KeyId": key, "Plaintext": pt, "EncryptionContext": ctx}),
        req("encrypt by alias", "Encrypt", {"KeyId": "alias/fast", "Plaintext": pt}),
        req("decrypt", "Decrypt", {"CiphertextBlob": blob, "EncryptionContext": ctx}),
        req("decrypt, wrong context", "Decrypt", {"CiphertextBlob": blob}),
        req("generate data key", "GenerateDataKey", {"KeyId": key, "KeySpec": "AES_256"}),
        req("gdk without plaintext", "GenerateDataKeyWithoutPlaintext", {"KeyId": key, "NumberOfBytes": 16}),
        req("disabled key", "Encrypt", {"KeyId": off, "Plaintext": pt}),
        req("unknown key", "Encrypt", {"KeyId": "00000000-0000-4000-8000-000000000000", "Plaintext": pt}),
        req("not allowed on that key", "Encrypt", {"KeyId": other, "Plaintext": pt}),
        req("unknown member", "Encrypt", {"KeyId": key, "Plaintext": pt, "Nope": 1}),
        req("wrong type", "Encrypt", {"KeyId": key, "Plaintext": 12}),
        req("dry run", "Encrypt", {"KeyId": key, "Plaintext": pt, "DryRun": True}),
        req("not JSON", "Encrypt", None, raw=b"{nope"),
        req("deep JSON", "Encrypt", None, raw=b"[" * 100000 + b"]" * 100000),
        req("lone surrogate", "Encrypt", None,
            raw=b'{"KeyId": "' + key.encode() + b'", "Plaintext": "eA==", "EncryptionContext": {"a": "\\\\ud800"}}'),
        req("bad signature: Flask", "Encrypt", {"KeyId": key, "Plaintext": pt}, secret="x" * 40, expect_fast=False),
        req("json 1.0: Flask", "Encrypt", {"KeyId": key, "Plaintext": pt}, content_type="application/x-amz-json-1.0",
            expect_fast=False),
        req("describe key: Flask", "DescribeKey", {"KeyId": key}, expect_fast=False),
    ]
    report = []
    for i, case in enumerate(cases):
        answers = {}
        for way, client in both.items():
            rid = f"aws-{i}-{way[:2]}"
            before = len(flask_calls)
            r = client.post("/", data=case["data"], headers={**case["headers"], "X-Request-Id": rid})
            answers[way] = {"status": r.status_code, "headers": sorted(r.headers.items()),
                            "body": r.get_data(as_text=True), "flask": len(flask_calls) > before, "rid": rid}
        report.append({"name": case["name"], "expect_fast": case["expect_fast"], **answers})
    records = [json.loads(x) for x in (folder / "audit" / "audit.jsonl").read_text().splitlines() if x.strip()]
    print(json.dumps({"cases": report, "records": [r for r in records if str(r.get("request_id", "")).startswith("aws-")]}))
""")


@pytest.fixture(scope="module", params=["native", "aws"])
def report(request: pytest.FixtureRequest) -> dict:
    child = _CHILD if request.param == "native" else _AWS_CHILD
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"door": request.param, **json.loads(out.stdout.strip().splitlines()[-1])}


def _shape(body: str) -> object:
    """An answer's JSON with random values replaced by their length; a non-JSON answer as it is."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        return {k: (len(v) if k in RANDOM and isinstance(v, str) else v) for k, v in data.items()}
    return data


def _without_request_id(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_request_id(v) for k, v in value.items() if k != "request_id"}
    return value


def test_every_request_answers_alike_both_ways(report: dict) -> None:
    for case in report["cases"]:
        fast, flask = case["fast"], case["flask"]
        assert fast["status"] == flask["status"], case["name"]
        ids = ("X-Request-Id", "x-amzn-RequestId")
        assert [h for h in fast["headers"] if h[0] not in ids] == [h for h in flask["headers"] if h[0] not in ids], \
            case["name"]
        assert dict(fast["headers"])["X-Request-Id"] == fast["rid"], case["name"]
        if report["door"] == "aws":
            assert dict(fast["headers"])["x-amzn-RequestId"] == fast["rid"], case["name"]
        assert _without_request_id(_shape(fast["body"])) == _without_request_id(_shape(flask["body"])), case["name"]
        assert fast["status"] < 500, case["name"]


def test_plain_hot_requests_skip_flask_and_the_rest_reach_it(report: dict) -> None:
    served = {c["name"]: not c["fast"]["flask"] for c in report["cases"]}
    assert served == {c["name"]: c["expect_fast"] for c in report["cases"]}
    assert all(c["flask"]["flask"] is False for c in report["cases"])  # the straight way never counts
    assert sum(served.values()) >= 14


def test_every_request_is_audited_alike_both_ways(report: dict) -> None:
    by_rid: dict[str, list[dict]] = {}
    for record in report["records"]:
        by_rid.setdefault(record["request_id"], []).append(record)
    for case in report["cases"]:
        fast = [{k: r.get(k) for k in AUDITED} for r in by_rid.get(case["fast"]["rid"], [])]
        flask = [{k: r.get(k) for k in AUDITED} for r in by_rid.get(case["flask"]["rid"], [])]
        assert fast, case["name"]  # every request, refused or not, leaves a record
        assert fast == flask, case["name"]


def test_successes_and_refusals_are_what_the_api_answers(report: dict) -> None:
    if report["door"] == "aws":
        by_name = {c["name"]: c["fast"] for c in report["cases"]}
        assert base64.b64decode(json.loads(by_name["decrypt"]["body"])["Plaintext"]) == b"x" * 48
        assert json.loads(by_name["encrypt"]["body"])["KeyId"].startswith("arn:aws:kms:eu-west-3:")
        types = {name: json.loads(a["body"]).get("__type") for name, a in by_name.items() if a["status"] >= 400}
        assert types["disabled key"] == "DisabledException"
        assert types["not allowed on that key"] == "AccessDeniedException"
        assert types["wrong type"] == "SerializationException"
        assert types["bad signature: Flask"] in ("InvalidSignatureException", "IncompleteSignatureException")
        assert all(a["status"] < 500 for a in by_name.values())
        return
    by_name = {c["name"]: c["fast"] for c in report["cases"]}
    assert by_name["encrypt"]["status"] == 200
    assert base64.b64decode(json.loads(by_name["decrypt"]["body"])["Plaintext"]) == b"x" * 48
    codes = {name: json.loads(a["body"]).get("error", {}).get("code") for name, a in by_name.items()
             if a["status"] >= 400}
    assert codes["unknown key"] == "NotFoundException"
    assert codes["disabled key"] == "DisabledException"
    assert codes["not allowed on that key"] == "AccessDeniedException"
    assert codes["bad token"] in ("UnauthenticatedException", "AccessDeniedException", "UnrecognizedClientException")
    assert codes["deep JSON"] == "ValidationException"
    assert codes["too large"] == "ValidationException"
    assert codes["plaintext too long"] == "ValidationException"


def test_log_lines_of_a_request_served_without_flask_carry_its_request_id() -> None:
    import logging

    from broker.logs import JsonFormatter, request_scope

    record = logging.LogRecord("kms_broker.api", logging.ERROR, __file__, 1, "route %s failed", ("Encrypt",), None)
    with request_scope("req-fast-1"):
        inside = json.loads(JsonFormatter().format(record))
    outside = json.loads(JsonFormatter().format(record))
    assert inside["request_id"] == "req-fast-1" and inside["message"] == "route Encrypt failed"
    assert "request_id" not in outside
