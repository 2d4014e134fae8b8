"""Requests through each front door of a running broker, as raw bytes (hostile input is not always JSON a client
library would send): the native API with a token, the AWS JSON 1.1 door signed by botocore's SigV4Auth."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.broker import RunningBroker

REGION = "eu-central-1"


@dataclass(frozen=True)
class AwsCreds:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return f"AwsCreds({self.access_key_id})"


def issue_aws_creds(broker: RunningBroker, *policies: str, token: str | None = None) -> AwsCreds:
    r = broker.session(token).post(broker.url("/aws-credentials"), json={"Policies": list(policies)})
    assert r.status_code == 201, r.text
    return AwsCreds(r.json()["access_key_id"], r.json()["secret_access_key"])


def child_token(broker: RunningBroker, *policies: str, name: str | None = None) -> str:
    body: dict[str, Any] = {"policies": list(policies)}
    if name:
        body["display_name"] = name
    r = broker.session().post(broker.url("/auth/token/create"), json=body)
    assert r.status_code == 200, r.text
    return r.json()["auth"]["client_token"]


def native(broker: RunningBroker, method: str, path: str, *, raw: bytes | None = None, body: Any = None,
           token: str | None = None, headers: dict[str, str] | None = None) -> requests.Response:
    """A native API call; `raw` is sent byte for byte (the JSON encoder never sees it)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    if token != "":
        h["X-KMSB-Token"] = token if token is not None else broker.root_token
    return requests.request(method, broker.url(path), data=data, headers=h, timeout=60)


def aws(broker: RunningBroker, creds: AwsCreds, operation: str, *, raw: bytes | None = None, body: Any = None,
        headers: dict[str, str] | None = None) -> requests.Response:
    """POST / signed over exactly the bytes sent."""
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    request = AWSRequest(method="POST", url=f"{broker.addr}/", data=data, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{operation}", **(headers or {})})
    SigV4Auth(Credentials(creds.access_key_id, creds.secret_access_key), "kms", REGION).add_auth(request)
    return requests.post(f"{broker.addr}/", data=data, headers=dict(request.headers.items()), timeout=60)


def audit_records(broker: RunningBroker) -> list[dict]:
    """Every record of the durable audit file (written before each answer)."""
    path = broker.data_dir / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records_of(broker: RunningBroker, request_id: str) -> list[dict]:
    return [r for r in audit_records(broker) if r.get("request_id") == request_id]
