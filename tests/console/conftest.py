"""Console fixtures: one real broker (gunicorn, two workers: sessions must hold across processes), tokens for an
admin and for narrower principals, and an HTTP client that logs in through the console's own forms."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.support.broker import RunningBroker, start_broker

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Console:
    """A browser-less console user: a requests session holding only the cookies the console set."""

    broker: RunningBroker
    http: requests.Session
    csrf: str = ""

    def url(self, path: str) -> str:
        return f"{self.broker.addr}{path}"

    def get(self, path: str, **kw) -> requests.Response:
        r = self.http.get(self.url(path), allow_redirects=False, **kw)
        m = CSRF.search(r.text)
        if m and r.status_code == 200:
            self.csrf = m.group(1)
        return r

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kw) -> requests.Response:
        body = dict(data or {})
        if csrf:
            body.setdefault("csrf", self.csrf)
        return self.http.post(self.url(path), data=body, allow_redirects=False, **kw)

    def login(self, token: str, *, check: bool = True) -> requests.Response:
        self.get("/ui/login")
        r = self.post("/ui/login/token", {"token": token, "next": "/ui/keys"})
        assert r.status_code == 302, r.text[-500:]
        if check:
            assert self.get("/ui/keys").status_code == 200
        return r


def api(broker: RunningBroker, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
    return broker.session(token).request(method, broker.url(path), timeout=30, **kw)


def make_token(broker: RunningBroker, policies: list[str]) -> str:
    r = api(broker, "POST", "/auth/token/create", json={"policies": policies, "display_name": f"user-{'-'.join(policies)}"})
    assert r.status_code == 200, r.text
    return r.json()["auth"]["client_token"]


def make_key(broker: RunningBroker, description: str = "console test", **extra) -> str:
    r = api(broker, "POST", "/keys", json={"Description": description, **extra})
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


@pytest.fixture(scope="package")
def console_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("console-broker")
    running = start_broker(base / "data", base / "logs", workers=2)
    yield running
    running.server.stop()


@pytest.fixture
def admin(console_broker: RunningBroker) -> Console:
    c = Console(console_broker, requests.Session())
    c.login(console_broker.root_token)
    return c


@pytest.fixture(scope="package")
def auditor_token(console_broker: RunningBroker) -> str:
    return make_token(console_broker, ["auditor"])


@pytest.fixture
def auditor(console_broker: RunningBroker, auditor_token: str) -> Console:
    c = Console(console_broker, requests.Session())
    c.login(auditor_token)
    return c
