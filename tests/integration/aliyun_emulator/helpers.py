"""Thin helpers over the official SDK: call an operation, expect Aliyun's error code and HTTP status."""

from __future__ import annotations

import base64
import hashlib
from contextlib import contextmanager
from typing import Any

import pytest
from alibabacloud_kms20160120 import models as m
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException

from .conftest import RUNTIME


def call(client: Client, operation: str, **fields: Any) -> dict:
    """client.<operation>_with_options(<Operation>Request(**fields)) → response body as a dict."""
    request_class = getattr(m, "".join(p.capitalize() for p in operation.split("_")) + "Request")
    response = getattr(client, f"{operation}_with_options")(request_class(**fields), RUNTIME)
    assert response.status_code == 200
    body = response.body.to_map()
    assert body["RequestId"]
    return body


@contextmanager
def aliyun_error(code: str, status: int):
    with pytest.raises(AlibabaCloudException) as info:
        yield info
    assert info.value.code == code, info.value
    assert info.value.status_code == status, info.value


def new_key(client: Client, **fields: Any) -> dict:
    return call(client, "create_key", **fields)["KeyMetadata"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha256_b64(data: bytes) -> str:
    return b64(hashlib.sha256(data).digest())
