"""Refusals in AWS's words: SigV4 failures, unknown keys and operations, policy denials — all audited, none leaking
the secret. Signed requests are made by botocore itself (boto3, or its SigV4Auth for hand-built requests)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import botocore.auth
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.integration.aws_front_door.conftest import REGION, Creds, kms_client

AUTH_CACHE_SECONDS = 1.0  # the broker's default auth_cache_seconds: the bound on revocation latency


def signed_post(broker, creds: Creds, operation: str, body: dict, *, region: str = REGION,
                tamper: dict | None = None, raw: bytes | None = None) -> requests.Response:
    """POST / signed by botocore's SigV4Auth; `tamper` changes headers after signing, `raw` replaces the body."""
    data = json.dumps(body).encode()
    request = AWSRequest(method="POST", url=f"{broker.addr}/", data=data, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}"})
    SigV4Auth(Credentials(creds.access_key_id, creds.secret_access_key), "kms", region).add_auth(request)
    headers = dict(request.headers.items())
    headers.update(tamper or {})
    return requests.post(f"{broker.addr}/", data=raw if raw is not None else data, headers=headers, timeout=30)


def error(r: requests.Response) -> tuple[int, str, str]:
    body = r.json()
    return r.status_code, body["__type"], body["message"]


def code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def audit_records(broker) -> list[dict]:
    path = broker.data_dir / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]  # events and signed checkpoints


def test_wrong_secret_is_an_invalid_signature(aws_broker, root_creds):
    forged = kms_client(aws_broker, Creds(root_creds.access_key_id, "x" * 40))
    with pytest.raises(ClientError) as bad:
        forged.list_keys()
    assert code(bad) == "InvalidSignatureException"
    assert bad.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "does not match the signature you provided" in bad.value.response["Error"]["Message"]


def test_unknown_access_key_is_an_unrecognized_client(aws_broker):
    stranger = kms_client(aws_broker, Creds("AKIAUNKNOWNUNKNOWN00", "y" * 40))
    with pytest.raises(ClientError) as bad:
        stranger.list_keys()
    assert code(bad) == "UnrecognizedClientException"
    assert bad.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(("shift", "words"), [(-timedelta(minutes=6), "Signature expired: "),
                                               (timedelta(minutes=6), "Signature not yet current: ")])
def test_stale_or_future_date_is_refused(aws_broker, root_creds, monkeypatch, shift, words):
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: real() + shift)
    with pytest.raises(ClientError) as bad:
        kms_client(aws_broker, root_creds).list_keys()
    assert code(bad) == "InvalidSignatureException"
    assert bad.value.response["Error"]["Message"].startswith(words)
    assert "5 min." in bad.value.response["Error"]["Message"]


def test_a_date_inside_the_window_is_accepted(aws_broker, root_creds, monkeypatch):
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: real() - timedelta(minutes=4))
    assert "Keys" in kms_client(aws_broker, root_creds).list_keys()


def test_body_or_target_changed_after_signing(aws_broker, root_creds):
    assert signed_post(aws_broker, root_creds, "ListKeys", {"Limit": 1}).status_code == 200
    r = signed_post(aws_broker, root_creds, "ListKeys", {"Limit": 1}, raw=b'{"Limit": 2}')
    assert error(r)[:2] == (400, "InvalidSignatureException")
    r = signed_post(aws_broker, root_creds, "ListKeys", {}, tamper={"X-Amz-Target": "TrentService.CreateKey"})
    assert error(r)[:2] == (400, "InvalidSignatureException")
    r = signed_post(aws_broker, root_creds, "ListKeys", {}, tamper={"X-Amz-Content-SHA256": "0" * 64})
    assert error(r)[:2] == (400, "InvalidSignatureException")


def test_wrong_service_scope_and_missing_signature(aws_broker, root_creds):
    data = b"{}"
    request = AWSRequest(method="POST", url=f"{aws_broker.addr}/", data=data, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    SigV4Auth(Credentials(root_creds.access_key_id, root_creds.secret_access_key), "s3", REGION).add_auth(request)
    r = requests.post(f"{aws_broker.addr}/", data=data, headers=dict(request.headers.items()), timeout=30)
    assert error(r)[:2] == (400, "InvalidSignatureException") and "'kms'" in error(r)[2]
    r = requests.post(f"{aws_broker.addr}/", data=data, timeout=30, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    assert error(r)[:2] == (400, "MissingAuthenticationTokenException")


def test_unknown_operation(aws_broker, root_creds):
    r = signed_post(aws_broker, root_creds, "FlyToTheMoon", {})
    assert error(r)[:2] == (400, "UnknownOperationException")


def test_bad_bodies(aws_broker, root_creds):
    r = signed_post(aws_broker, root_creds, "Encrypt", {"KeyId": "x", "Plaintext": "not base64!"})
    assert error(r)[:2] == (400, "SerializationException")
    r = signed_post(aws_broker, root_creds, "Encrypt", {"Plaintext": "eA=="})
    assert error(r)[:2] == (400, "ValidationException") and "keyId" in error(r)[2]


@pytest.mark.parametrize("ref", ["1234abcd-12ab-34cd-56ef-1234567890ab", "alias/does-not-exist",
                                 f"arn:aws:kms:{REGION}:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                                 f"arn:aws:kms:{REGION}:111122223333:alias/does-not-exist"])
def test_unknown_key_ids(kms, ref):
    with pytest.raises(ClientError) as missing:
        kms.encrypt(KeyId=ref, Plaintext=b"x")
    assert code(missing) == "NotFoundException"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_arns_follow_the_signing_region(aws_broker, root_creds):
    other = kms_client(aws_broker, root_creds, region="ap-southeast-2")
    meta = other.create_key()["KeyMetadata"]
    assert meta["Arn"].startswith("arn:aws:kms:ap-southeast-2:111122223333:key/")


def test_credentials_run_as_their_principal_and_policies(aws_broker, issue, kms):
    auditor = kms_client(aws_broker, issue("auditor", name="aws-auditor"))
    key = kms.create_key()["KeyMetadata"]
    assert any(k["KeyId"] == key["KeyId"] for p in auditor.get_paginator("list_keys").paginate() for k in p["Keys"])
    with pytest.raises(ClientError) as denied:
        auditor.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    assert code(denied) == "AccessDeniedException"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    records = [r for r in audit_records(aws_broker) if r.get("principal") == "aws-auditor"]
    assert {(r["action"], r["outcome"], r["auth_method"], r["front_door"]) for r in records} >= {
        ("kms:ListKeys", "allowed", "sigv4", "aws"), ("kms:Encrypt", "denied", "sigv4", "aws")}


def test_one_audit_record_per_request_refusals_included(aws_broker, root_creds):
    ok = signed_post(aws_broker, root_creds, "GenerateRandom", {"NumberOfBytes": 8})
    forged = signed_post(aws_broker, Creds(root_creds.access_key_id, "z" * 40), "GenerateRandom", {"NumberOfBytes": 8})
    unknown = signed_post(aws_broker, root_creds, "NoSuchThing", {})
    records = audit_records(aws_broker)
    for response, outcome, error_code in ((ok, "allowed", None), (forged, "denied", "InvalidSignatureException"),
                                          (unknown, "error", "UnknownOperationException")):
        mine = [r for r in records if r.get("request_id") == response.headers["x-amzn-RequestId"]]
        assert len(mine) == 1, mine
        assert (mine[0]["outcome"], mine[0]["error_code"], mine[0]["front_door"]) == (outcome, error_code, "aws")
    # a made-up operation name never names a record's action (nor a metric series): it reads as unknown
    assert [r["action"] for r in records if r.get("request_id") == unknown.headers["x-amzn-RequestId"]] == \
        ["broker:UnknownOperation"]
    made_up = signed_post(aws_broker, root_creds, "DeleteEverything", {})
    assert error(made_up)[:2] == (400, "UnknownOperationException")
    assert [r["action"] for r in audit_records(aws_broker)
            if r.get("request_id") == made_up.headers["x-amzn-RequestId"]] == ["broker:UnknownOperation"]


def test_revoked_credentials_are_refused_by_every_process(aws_broker, issue):
    creds = issue("root", name="short-lived")
    client = kms_client(aws_broker, creds)
    for _ in range(4):  # two gunicorn workers: warm both caches
        client.list_keys(Limit=1)
    r = aws_broker.session().delete(aws_broker.url(f"/aws-credentials/{creds.access_key_id}"))
    assert r.status_code == 200, r.text
    time.sleep(AUTH_CACHE_SECONDS + 0.5)
    for _ in range(4):
        with pytest.raises(ClientError) as refused:
            client.list_keys(Limit=1)
        assert code(refused) == "UnrecognizedClientException"
    listed = aws_broker.session().get(aws_broker.url("/aws-credentials")).json()["Credentials"]
    assert [c["Status"] for c in listed if c["AccessKeyId"] == creds.access_key_id] == ["Inactive"]
    again = aws_broker.session().delete(aws_broker.url(f"/aws-credentials/{creds.access_key_id}"))
    assert again.status_code == 404


def test_the_secret_is_stored_only_sealed_and_never_logged(aws_broker, issue):
    creds = issue("root", name="sealed-check")
    kms_client(aws_broker, creds).list_keys(Limit=1)
    snapshot = aws_broker.snapshot()
    rows = [r for r in snapshot["aws_credentials"] if r[0] == creds.access_key_id]
    assert len(rows) == 1
    assert creds.secret_access_key not in repr(snapshot)
    assert creds.secret_access_key not in (aws_broker.data_dir / "audit" / "audit.jsonl").read_text()
    assert creds.secret_access_key not in aws_broker.server.log_path.read_text(errors="replace")
    listed = aws_broker.session().get(aws_broker.url("/aws-credentials")).text
    assert creds.access_key_id in listed and creds.secret_access_key not in listed


def test_issuing_credentials_needs_a_token_with_the_right(aws_broker):
    r = aws_broker.session(token="kmsb.not-a-token").post(aws_broker.url("/aws-credentials"),
                                                          json={"Policies": ["root"]})
    assert r.status_code == 401
    r = aws_broker.session().post(aws_broker.url("/aws-credentials"), json={"Policies": "root"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationException"


def test_a_non_root_issuer_cannot_widen_rights(aws_broker, kms):
    root = aws_broker.session()
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["broker:CreateAwsCredentials", "kms:ListKeys"], "Resource": "*"}]}
    assert root.put(aws_broker.url("/policies/aws-issuer"), json={"Document": document}).status_code in (200, 201)
    r = root.post(aws_broker.url("/auth/token/create"), json={"policies": ["aws-issuer"], "display_name": "bob"})
    assert r.status_code == 200, r.text
    bob = aws_broker.session(token=r.json()["auth"]["client_token"])
    wider = bob.post(aws_broker.url("/aws-credentials"), json={"Policies": ["root"]})
    assert wider.status_code == 403 and wider.json()["error"]["code"] == "AccessDeniedException"
    other_name = bob.post(aws_broker.url("/aws-credentials"), json={"Policies": ["aws-issuer"], "Name": "alice"})
    assert other_name.status_code == 403
    own = bob.post(aws_broker.url("/aws-credentials"), json={"Policies": ["aws-issuer"]})
    assert own.status_code == 201, own.text
    creds = Creds(own.json()["access_key_id"], own.json()["secret_access_key"])
    listed = root.get(aws_broker.url("/aws-credentials")).json()["Credentials"]
    entry = next(c for c in listed if c["AccessKeyId"] == creds.access_key_id)
    assert (entry["Policies"], entry["CreatedBy"], entry["Name"]) == (["aws-issuer"], entry["Name"], entry["Name"])
    client = kms_client(aws_broker, creds)
    assert "Keys" in client.list_keys(Limit=1)
    with pytest.raises(ClientError) as denied:
        client.create_key()
    assert code(denied) == "AccessDeniedException"
    assert bob.get(aws_broker.url("/aws-credentials")).status_code == 403  # listing is another right
