"""Small helpers for the emulator conformance tests (official client types only)."""

from __future__ import annotations

import uuid
from typing import Any

import google_crc32c
import requests
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import kms_v1

PROJECT_LOCATION = "projects/kms-broker-local/locations/global"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


def status(exc: GoogleAPICallError) -> str:
    """The google.rpc status name on the wire: the gRPC status code, or the REST body's error.status."""
    if isinstance(exc.response, requests.Response):
        body = exc.response.json()["error"]
        assert set(body) >= {"code", "message", "status"}, body
        assert body["code"] == exc.response.status_code
        return body["status"]
    assert exc.grpc_status_code is not None, exc
    return exc.grpc_status_code.name


def make_key(client: kms_v1.KeyManagementServiceClient, ring: str, purpose: str, algorithm: str | None = None,
             **fields: Any) -> kms_v1.CryptoKey:
    template = {"algorithm": algorithm} if algorithm else {}
    skip = fields.pop("skip_initial_version_creation", False)
    return client.create_crypto_key(request={
        "parent": ring, "crypto_key_id": uid("key"), "skip_initial_version_creation": skip,
        "crypto_key": {"purpose": purpose, "version_template": template, **fields}})


def first_version(key: kms_v1.CryptoKey) -> str:
    return f"{key.name}/cryptoKeyVersions/1"
