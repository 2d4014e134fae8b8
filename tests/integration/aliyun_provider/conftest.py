"""The aliyun provider against a real emulator process."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from providers.aliyun import AliyunProvider
from tests.integration.aliyun_emulator.conftest import launch, make_client
from tests.support.procs import Server


@dataclass
class Running:
    server: Server
    endpoint: str
    key_id: str
    secret: str

    def config(self, **extra: object) -> dict[str, object]:
        return {"kind": "aliyun", "endpoint": f"http://{self.endpoint}", "region": "cn-hangzhou",
                "access_key_id": self.key_id, "access_key_secret": self.secret, "timeout": 5, **extra}

    def sdk(self):  # noqa: ANN201 - the official client, to look behind the provider's back
        return make_client(self.endpoint, self.key_id, self.secret)


@pytest.fixture(scope="session")
def aliyun(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    key_id, secret = f"LTAI{secrets.token_hex(6)}", secrets.token_urlsafe(18)
    server, port = launch(tmp_path_factory.mktemp("aliyun-provider"), "aliyun-kms-provider",
                          "--access-key", f"{key_id}:{secret}")
    try:
        yield Running(server, f"127.0.0.1:{port}", key_id, secret)
    finally:
        server.stop()


@pytest.fixture(scope="session", params=["acs3", "v2"])
def provider(request: pytest.FixtureRequest, aliyun: Running) -> Iterator[AliyunProvider]:
    extra = {} if request.param == "acs3" else {"signature_algorithm": "v2"}
    p = AliyunProvider.from_config(f"aliyun-{request.param}", aliyun.config(**extra))
    yield p
    p.close()
