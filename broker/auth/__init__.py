"""Authentication: who is calling. Every front door turns its credential into a Principal here.

Methods: tokens (tokens.py), JWT/OIDC (jwt_auth.py), LDAP (ldap_auth.py), AppRole (approle.py); each login ends in a
broker token whose Principal carries the policies (names the policy engine resolves) and attributes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

TOKEN_PREFIX = "kmsb."


@dataclass(frozen=True)
class Principal:
    name: str
    auth_method: str
    policies: tuple[str, ...]
    accessor: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def is_root(self) -> bool:
        return "root" in self.policies


ANONYMOUS = Principal(name="anonymous", auth_method="none", policies=())  # a request before it is authenticated


def presented_token(token_header: str | None, authorization: str | None) -> str | None:
    """The broker token a request presents: its token header (X-KMSB-Token, X-Vault-Token), else
    `Authorization: Bearer <token>`."""
    header = authorization or ""
    return token_header or (header[7:] if header.startswith("Bearer ") else None)


def hash_token(token: str) -> str:
    """Tokens are high-entropy random strings: SHA-256 is the right hash for storing them (no stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


# The token method lives in broker.auth.tokens; re-exported here (create_app and `init` import it from broker.auth).
from broker.auth.tokens import TokenAuth, TokenInfo  # noqa: E402

__all__ = ["ANONYMOUS", "TOKEN_PREFIX", "Principal", "presented_token", "TokenAuth", "TokenInfo", "hash_token"]
