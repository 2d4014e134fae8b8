"""Turning a successful login into a broker token, and the response shape every login shares (Vault's)."""

from __future__ import annotations

from broker.auth.config import AuthSettings, parse_duration
from broker.auth.tokens import TokenAuth


def token_bounds(settings: AuthSettings, ttl: int | str | None, max_ttl: int | str | None = None) -> tuple[int, int]:
    """(ttl, max_ttl) in seconds: defaults from settings, both capped by the configured max_ttl."""
    ceiling = parse_duration(settings.token.max_ttl) or 0
    ttl_s = parse_duration(ttl) or parse_duration(settings.token.default_ttl) or ceiling
    max_s = parse_duration(max_ttl) or ceiling
    if ceiling:
        ttl_s, max_s = min(ttl_s, ceiling) if ttl_s else ceiling, min(max_s, ceiling) if max_s else ceiling
    if max_s:
        ttl_s = min(ttl_s, max_s) if ttl_s else max_s
    return ttl_s, max_s


def auth_response(token: str, accessor: str, policies: list[str], meta: dict[str, str], ttl: int,
                  renewable: bool, *, orphan: bool = True) -> dict:
    return {
        "request_id": "", "lease_id": "", "renewable": False, "lease_duration": 0, "data": None,
        "wrap_info": None, "warnings": None,
        "auth": {
            "client_token": token, "accessor": accessor, "policies": list(policies),
            "token_policies": list(policies), "metadata": dict(meta), "lease_duration": ttl,
            "renewable": renewable, "entity_id": "", "token_type": "service", "orphan": orphan,
        },
    }


def issue_login_token(tokens: TokenAuth, settings: AuthSettings, *, display_name: str, policies: list[str],
                      auth_method: str, meta: dict[str, str], ttl: int | str | None,
                      max_ttl: int | str | None = None) -> tuple[dict, str]:
    """Create the (orphan) token a login hands out; returns (response, accessor)."""
    ttl_s, max_s = token_bounds(settings, ttl, max_ttl)
    token, accessor = tokens.create(display_name, policies, ttl_seconds=ttl_s, max_ttl_seconds=max_s,
                                    renewable=True, meta=meta, auth_method=auth_method)
    return auth_response(token, accessor, policies, meta, ttl_s, True), accessor
