"""The bearer challenge Key Vault answers with, and the token check.

The SDK sends its first request without a token or body and expects a 401 whose WWW-Authenticate names the
tenant's authority and the resource; it then resends with `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac

from .errors import Unauthorized

TENANT = "00000000-0000-0000-0000-000000000000"
CHALLENGE = (f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
             'resource="https://vault.azure.net"')


class Unchallenged(Exception):
    """No Authorization header at all: answer the bare challenge (401, empty body)."""


def check(header: str | None, expected_token: str | None) -> None:
    """Raise Unchallenged or Unauthorized unless the request carries an acceptable bearer token."""
    if not header:
        raise Unchallenged()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("AKV10000: Request is missing a Bearer or PoP token.")
    if expected_token is not None and not hmac.compare_digest(token.strip().encode(), expected_token.encode()):
        raise Unauthorized("AKV10032: Invalid token: the bearer token was not issued for this vault.")
