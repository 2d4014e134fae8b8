"""A provider whose endpoint refuses the connection fails at once with ProviderUnreachable: the SDKs' retries (AWS
standard mode backs off ~3 s over five attempts, GCP's retry ran to its 10 s deadline) are not spent on a port that
nothing listens on, so a multi-key goes to its next member instead of waiting out its per-member deadline."""

from __future__ import annotations

import socket

import boto3
import pytest
from botocore.config import Config
from google.api_core import exceptions as gexc

from broker.model import KeySpec, KeyUsage
from providers import base as pb
from providers.aliyun import AliyunProvider
from providers.aws import AwsProvider
from providers.azure import AzureProvider
from providers.gcp import GcpProvider, _retryable


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create(provider: pb.Provider) -> pb.ProviderError:
    with pytest.raises(pb.ProviderError) as caught:
        provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="refused")
    return caught.value


def test_aws_sends_once_and_does_not_retry(closed_port: int) -> None:
    client = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{closed_port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 5}))
    sent: list[int] = []
    client.meta.events.register("before-send.kms", lambda **_: sent.append(1))
    err = _create(AwsProvider("aws", client))
    assert isinstance(err, pb.ProviderUnreachable), repr(err)
    assert len(sent) == 1  # one attempt, not five


def test_aws_still_retries_what_is_worth_retrying(closed_port: int) -> None:
    """A 5xx is retried as configured (the veto is for refused connections only)."""
    from botocore.stub import Stubber

    client = boto3.client("kms", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 2}))
    provider = AwsProvider("aws", client)
    with Stubber(client) as stub:
        stub.add_client_error("create_key", "KMSInternalException", http_status_code=500)
        stub.add_client_error("create_key", "KMSInternalException", http_status_code=500)
        err = _create(provider)
    assert type(err) is pb.ProviderUnavailable


def test_gcp_grpc_and_rest_fail_at_once(closed_port: int) -> None:
    for transport, target in (("grpc", {"grpc_target": f"127.0.0.1:{closed_port}"}),
                              ("rest", {"rest_endpoint": f"http://127.0.0.1:{closed_port}"})):
        provider = GcpProvider.from_config("gcp", {**target, "transport": transport, "project": "p",
                                                   "location": "global"})
        err = _create(provider)
        assert isinstance(err, pb.ProviderUnreachable), (transport, repr(err))
    # the client's retry predicate: unavailable is retried, a refused connection is not
    assert _retryable(gexc.ServiceUnavailable("the service is restarting"))
    assert not _retryable(gexc.ServiceUnavailable("failed to connect to all addresses; last error: UNKNOWN: "
                                                  "ipv4:127.0.0.1:1: Failed to connect to remote host: "
                                                  "Connection refused"))


def test_azure_and_aliyun_fail_at_once(closed_port: int) -> None:
    azure = AzureProvider.from_config("azure", {"vault_url": f"https://127.0.0.1:{closed_port}", "token": "t"})
    aliyun = AliyunProvider.from_config("aliyun", {"endpoint": f"127.0.0.1:{closed_port}", "region": "cn-hangzhou",
                                                   "access_key_id": "a", "access_key_secret": "b"})
    for provider in (azure, aliyun):
        err = _create(provider)
        assert isinstance(err, pb.ProviderUnreachable), repr(err)


def test_connection_refused_reads_the_chain() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise OSError("could not connect") from inner
    except OSError as outer:
        assert pb.connection_refused(outer)
    assert not pb.connection_refused(TimeoutError("timed out"))
    assert not pb.connection_refused(None)
