"""Optional bearer-token check shared by both transports (anonymous when no token is configured)."""

from __future__ import annotations

import hmac

from .errors import KmsError


def check_bearer(expected: str | None, header: str | None) -> None:
    if expected is None:
        return
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise KmsError("UNAUTHENTICATED", "Request had invalid authentication credentials. "
                       "Expected OAuth 2 access token, login cookie or other valid authentication credential.")
