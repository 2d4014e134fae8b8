"""Error mapping over the wire: endpoint down (real emulators stopped mid-test) and the AWS errors LocalStack
and moto never produce (throttling with Retry-After, AccessDenied, 5xx) from a canned-response stub on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from broker.model import KeySpec, KeyUsage
from providers.aws import AwsProvider, KeyDisabled
from providers.base import (
    ProviderAccessDenied,
    ProviderError,
    ProviderInvalidCiphertext,
    ProviderInvalidInput,
    ProviderInvalidState,
    ProviderKeyRef,
    ProviderNotFound,
    ProviderThrottled,
    ProviderUnavailable,
    ProviderUnreachable,
    ProviderUnsupported,
)

from .conftest import BACKENDS, start_aws

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("which", BACKENDS)
def test_endpoint_down_is_unavailable(which: str, tmp_path: Path) -> None:
    server, settings = start_aws(which, tmp_path)
    try:
        provider = AwsProvider.from_config("aws-down", {**settings, "max_attempts": 2, "connect_timeout": 1})
        ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="k-down")
        blob = provider.encrypt(ref, b"x", b"aad")
    finally:
        server.stop()
    assert server.proc.poll() is not None
    with pytest.raises(ProviderUnreachable, match="refused the connection"):
        provider.decrypt(ref, blob, b"aad")
    with pytest.raises(ProviderUnavailable):
        provider.check_health()


class Canned:
    """What the stub answers next, and how many requests it saw."""

    def __init__(self) -> None:
        self.status, self.code, self.headers, self.requests = 200, "", {}, 0


@pytest.fixture
def stub() -> Iterator[tuple[Canned, str]]:
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            canned.requests += 1
            body = json.dumps({"__type": canned.code, "message": "canned"}).encode()
            self.send_response(canned.status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-RequestId", "stub")
            for k, v in canned.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield canned, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def stub_provider(endpoint: str, attempts: int) -> AwsProvider:
    return AwsProvider.from_config("aws-stub", {"endpoint_url": endpoint, "region": "us-east-1",
                                                "access_key_id": "AKIDSTUB", "secret_access_key": "stub-secret",
                                                "max_attempts": attempts})


CASES = [
    (400, "ThrottlingException", ProviderThrottled),
    (429, "TooManyRequestsException", ProviderThrottled),
    (400, "AccessDeniedException", ProviderAccessDenied),
    (400, "UnrecognizedClientException", ProviderAccessDenied),
    (400, "NotFoundException", ProviderNotFound),
    (400, "DisabledException", KeyDisabled),
    (400, "KMSInvalidStateException", ProviderInvalidState),
    (400, "InvalidCiphertextException", ProviderInvalidCiphertext),
    (400, "IncorrectKeyException", ProviderInvalidCiphertext),
    (400, "IncorrectKeyMaterialException", ProviderInvalidInput),
    (400, "UnsupportedOperationException", ProviderUnsupported),
    (500, "DependencyTimeoutException", ProviderUnavailable),
    (500, "KMSInternalException", ProviderUnavailable),
    (503, "", ProviderUnavailable),
    (400, "SomethingNew", ProviderError),
]


@pytest.mark.parametrize("status,code,error", CASES, ids=[c[1] or str(c[0]) for c in CASES])
def test_aws_errors_map_to_provider_errors(stub, status: int, code: str, error: type) -> None:
    canned, endpoint = stub
    canned.status, canned.code = status, code
    with pytest.raises(error) as err:
        stub_provider(endpoint, 1).encrypt(ProviderKeyRef(key_id="k"), b"secret plaintext", b"aad")
    assert type(err.value) is error
    assert "secret plaintext" not in str(err.value) and "stub-secret" not in str(err.value)


def test_throttling_is_retried_with_backoff_then_carries_retry_after(stub) -> None:
    canned, endpoint = stub
    canned.status, canned.code, canned.headers = 429, "ThrottlingException", {"Retry-After": "7"}
    with pytest.raises(ProviderThrottled) as err:
        stub_provider(endpoint, 3).encrypt(ProviderKeyRef(key_id="k"), b"x", b"")
    assert err.value.retry_after == 7.0
    assert canned.requests == 3  # boto3 standard retry mode: 3 attempts before giving up


def test_access_denied_is_not_retried(stub) -> None:
    canned, endpoint = stub
    canned.status, canned.code = 400, "AccessDeniedException"
    with pytest.raises(ProviderAccessDenied):
        stub_provider(endpoint, 3).encrypt(ProviderKeyRef(key_id="k"), b"x", b"")
    assert canned.requests == 1
