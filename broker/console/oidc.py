"""OIDC authorization-code flow with PKCE (RFC 7636, S256) against the configured issuer.

The console is the OIDC client; the ID token it receives is then presented to the broker's own JWT login (the
configured `jwt_role`), which verifies its signature, issuer, audience and claims and maps them to policies — so a
console login through single sign-on carries exactly what an API login with the same ID token would. This module
only speaks the protocol: discovery, the authorization URL, the code exchange, the nonce check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import requests

from broker.console.config import OidcSettings
from broker.errors import Unauthenticated

_DISCOVERY_SECONDS = 300
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Flow:
    """What the browser must bring back: state (CSRF of the flow), nonce (binds the ID token), PKCE verifier."""

    state: str
    nonce: str
    verifier: str = field(repr=False)

    @classmethod
    def new(cls) -> Flow:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64))

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def discover(cfg: OidcSettings) -> dict[str, Any]:
    """The issuer's metadata (cached a few minutes); its `issuer` must be the configured one exactly."""
    with _lock:
        cached = _cache.get(cfg.issuer)
        if cached and cached[0] > time.monotonic():
            return cached[1]
    try:
        r = requests.get(f"{cfg.issuer}/.well-known/openid-configuration", timeout=cfg.timeout)
        r.raise_for_status()
        meta = r.json()
    except (requests.RequestException, ValueError):
        raise Unauthenticated("the sign-on provider cannot be reached") from None
    if not isinstance(meta, dict) or meta.get("issuer", "").rstrip("/") != cfg.issuer:
        raise Unauthenticated("the sign-on provider's metadata names another issuer")
    for name in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(meta.get(name), str) or not meta[name].startswith(("https://", "http://127.0.0.1",
                                                                              "http://localhost")):
            raise Unauthenticated(f"the sign-on provider's {name} is missing or not https")
    with _lock:
        _cache[cfg.issuer] = (time.monotonic() + _DISCOVERY_SECONDS, meta)
    return meta


def authorization_url(cfg: OidcSettings, flow: Flow, redirect_uri: str) -> str:
    meta = discover(cfg)
    query = urlencode({"response_type": "code", "client_id": cfg.client_id, "redirect_uri": redirect_uri,
                       "scope": " ".join(cfg.scopes), "state": flow.state, "nonce": flow.nonce,
                       "code_challenge": flow.challenge, "code_challenge_method": "S256"})
    sep = "&" if "?" in meta["authorization_endpoint"] else "?"
    return f"{meta['authorization_endpoint']}{sep}{query}"


def state_matches(flow: Flow, state: str | None) -> bool:
    return bool(state) and hmac.compare_digest(flow.state, state or "")


def exchange(cfg: OidcSettings, flow: Flow, code: str, redirect_uri: str) -> str:
    """Trade the code (with the PKCE verifier) for an ID token; check the nonce it carries. The signature and
    claims are verified by the broker's JWT login, not here."""
    if not code or len(code) > 2048:
        raise Unauthenticated("the sign-on answer carries no code")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": cfg.client_id, "code_verifier": flow.verifier}
    secret = cfg.secret()
    if secret:
        data["client_secret"] = secret
    try:
        r = requests.post(discover(cfg)["token_endpoint"], data=data, timeout=cfg.timeout,
                          headers={"Accept": "application/json"})
        body = r.json() if r.content else {}
    except (requests.RequestException, ValueError):
        raise Unauthenticated("the sign-on provider's token endpoint cannot be reached") from None
    if r.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
        error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else r.status_code
        raise Unauthenticated(f"the sign-on provider refused the code ({str(error)[:64]})")
    id_token = body["id_token"]
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthenticated("the sign-on provider sent a malformed ID token") from None
    if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], flow.nonce):
        raise Unauthenticated("the ID token's nonce does not match this login")
    return id_token
