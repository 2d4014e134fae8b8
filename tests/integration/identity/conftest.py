"""Fixtures for the identity suite: real signing keys (RSA, EC), a real slapd, one broker configured for both."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.broker import RunningBroker, init_data_dir, start_broker
from tests.support.slapd import SUFFIX, LdapUser, RunningSlapd, start_slapd

ISSUER = "https://issuer.test"
AUDIENCE = "kms-broker"
LDAP_USERS = [
    LdapUser("alice", "alice-pw", ["admins", "devs"], mail="alice@example.org"),
    LdapUser("bob", "bob-pw", ["devs"]),
    LdapUser("carol", "carol-pw", []),
    LdapUser("dave", "dave-pw", ["admins"]),
]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    attacker: rsa.RSAPrivateKey
    jwks_file: Path

    @property
    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def ec_public_pem(self) -> str:
        return self.ec.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ci-runner-7", "iat": now, "nbf": now - 5,
                "exp": now + 300, "repository": "org/app", "groups": ["dev-team", "admins"]}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def sign_rsa(self, claims: dict | None = None, *, kid: str = "rsa1", key=None, alg: str = "RS256") -> str:
        return jwt.encode(claims or self.claims(), key or self.rsa, algorithm=alg, headers={"kid": kid})

    def sign_ec(self, claims: dict | None = None, *, kid: str = "ec1") -> str:
        return jwt.encode(claims or self.claims(), self.ec, algorithm="ES256", headers={"kid": kid})

    @staticmethod
    def raw(header: dict, claims: dict, signature: bytes) -> str:
        h = _b64url(json.dumps(header).encode())
        c = _b64url(json.dumps(claims).encode())
        return f"{h}.{c}.{_b64url(signature)}"

    def hs256_with_public_key(self, claims: dict) -> str:
        """The classic confusion attack: HMAC-SHA256 keyed with the server's RSA public key PEM."""
        h = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
        c = _b64url(json.dumps(claims).encode())
        sig = hmac.new(self.rsa_public_pem, f"{h}.{c}".encode(), hashlib.sha256).digest()
        return f"{h}.{c}.{_b64url(sig)}"


@pytest.fixture(scope="package")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("jwks")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa1", "use": "sig"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec1", "use": "sig"},
    ]}
    path = folder / "jwks.json"
    path.write_text(json.dumps(jwks))
    return Keys(rsa_key, ec_key, attacker, path)


@pytest.fixture(scope="package")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSlapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"), LDAP_USERS)
    yield server
    server.stop()


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def auth_toml(keys: Keys, slapd: RunningSlapd) -> str:
    tables = {
        "auth.token": {"default_ttl": "1h", "max_ttl": "24h"},
        "auth.jwt.roles.ci": {
            "jwks_file": str(keys.jwks_file), "allowed_algorithms": ["RS256", "ES256"], "bound_issuer": ISSUER,
            "bound_audiences": [AUDIENCE], "bound_claims": {"repository": "org/*"}, "bound_claims_type": "glob",
            "claim_policies": {"groups": {"admins": ["key-admin"], "dev-*": ["key-user"]}},
            "claim_attributes": {"repository": "repo"}, "policies": ["default"], "token_ttl": "10m",
            "leeway": 0,
        },
        "auth.jwt.roles.pem": {
            "public_keys": [keys.ec_public_pem], "allowed_algorithms": ["ES256"], "bound_issuer": ISSUER,
            "bound_audiences": [AUDIENCE], "bound_claims": {"repository": "org/app"}, "policies": ["key-user"],
            "token_ttl": "5m",
        },
        "auth.ldap": {
            "url": slapd.url, "userdn_template": f"uid={{username}},ou=people,{SUFFIX}",
            "group_search_base": f"ou=groups,{SUFFIX}",
            "group_policies": {"admins": ["key-admin"], "devs": ["key-user"]},
            "user_attributes": {"mail": "email"}, "token_ttl": "15m",
        },
    }
    lines = []
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="package")
def ib(tmp_path_factory: pytest.TempPathFactory, keys: Keys, slapd: RunningSlapd) -> Iterator[RunningBroker]:
    """The identity broker: 2 gunicorn workers (so revocation must cross processes), JWT roles and LDAP set."""
    base = tmp_path_factory.mktemp("identity-broker")
    data = base / "data"
    root = init_data_dir(data)
    with open(data / "broker.toml", "a") as f:
        f.write(auth_toml(keys, slapd))
    running = start_broker(data, base / "logs", workers=2, name="identity-broker")
    running.root_token = root
    yield running
    running.server.stop()


def audit_records(broker: RunningBroker) -> list[dict]:
    """The one outcome record of each request (checkpoints, and the intent records state changes write first, left
    out)."""
    path = broker.data_dir / "audit" / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("type", "event") == "event" and "request_id" in r
            and r.get("phase") != "intent"]


def audit_text(broker: RunningBroker) -> str:
    return (broker.data_dir / "audit" / "audit.jsonl").read_text()


def anon() -> requests.Session:
    return requests.Session()
