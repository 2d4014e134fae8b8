"""Console fixtures: one real broker (gunicorn, two workers: sessions must hold across processes), tokens for an
admin and for narrower principals, and an HTTP client that logs in through the console's own forms."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.console.oidc_issuer import CLIENT_ID, Issuer
from tests.support.broker import RunningBroker, init_data_dir, start_broker
from tests.support.slapd import SUFFIX, LdapUser, RunningSlapd, start_slapd

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


LDAP_USERS = [LdapUser("alice", "alice-pw", ["admins"]), LdapUser("bob", "bob-pw", ["devs"])]


@pytest.fixture(scope="package")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSlapd]:
    server = start_slapd(tmp_path_factory.mktemp("console-slapd"), LDAP_USERS)
    yield server
    server.stop()


@pytest.fixture(scope="package")
def issuer() -> Iterator[Issuer]:
    running = Issuer().start()
    yield running
    running.stop()


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def console_toml(slapd: RunningSlapd, issuer: Issuer) -> str:
    tables = {
        "auth.ldap": {"url": slapd.url, "userdn_template": f"uid={{username}},ou=people,{SUFFIX}",
                      "group_search_base": f"ou=groups,{SUFFIX}",
                      "group_policies": {"admins": ["key-admin", "auditor"], "devs": ["auditor"]},
                      "token_ttl": "30m"},
        "auth.jwt.roles.console": {"jwks_url": f"{issuer.url}/jwks", "allowed_algorithms": ["RS256"],
                                   "bound_issuer": issuer.url, "bound_audiences": [CLIENT_ID],
                                   "claim_policies": {"groups": {"kms-admins": ["key-admin", "auditor"]}},
                                   "token_ttl": "30m"},
        "console.oidc": {"issuer": issuer.url, "client_id": CLIENT_ID, "jwt_role": "console",
                         "label": "Test SSO"},
    }
    lines = []
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="package")
def console_broker(tmp_path_factory: pytest.TempPathFactory, slapd: RunningSlapd,
                   issuer: Issuer) -> Iterator[RunningBroker]:
    """One broker for the console suite: two workers, LDAP (the suite's slapd) and OIDC (the suite's issuer)."""
    base = tmp_path_factory.mktemp("console-broker")
    data = base / "data"
    root = init_data_dir(data)
    with open(data / "broker.toml", "a") as f:
        f.write(console_toml(slapd, issuer))
    # No token cache: a revoked token must end its session on the very next request (the default cache is 1 s).
    running = start_broker(data, base / "logs", workers=2, name="console-broker",
                           env={"KMSB_AUTH_CACHE_SECONDS": "0"})
    running.root_token = root
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
