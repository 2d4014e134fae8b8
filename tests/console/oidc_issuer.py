"""A small OpenID Connect issuer for the console's single sign-on tests: discovery, an authorization endpoint that
signs in a preset user at once (no login form), a token endpoint that checks the PKCE verifier, and a JWKS. It runs
in a thread of the test process on a free loopback port; the browser and the broker both reach it."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.support.procs import free_port

CLIENT_ID = "kms-console"


@dataclass
class Issuer:
    url: str = ""
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "oidc-alice", "groups": ["kms-admins"]})
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    exchanged: list[dict[str, Any]] = field(default_factory=list)
    wrong_nonce: bool = False
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537,
                                                                                   key_size=2048))
    _server: Any = None

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}

    def __call__(self, environ, start_response):
        req = Request(environ)
        if req.path == "/.well-known/openid-configuration":
            resp = _json({"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                          "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                          "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"]})
        elif req.path == "/jwks":
            resp = _json(self.jwks())
        elif req.path == "/authorize":
            a = req.args
            if a.get("client_id") != CLIENT_ID or a.get("code_challenge_method") != "S256" or not a.get("state"):
                resp = _json({"error": "invalid_request"}, 400)
            else:
                code = secrets.token_urlsafe(16)
                self.codes[code] = {"challenge": a["code_challenge"], "nonce": a.get("nonce", ""),
                                    "redirect_uri": a["redirect_uri"]}
                query = urlencode({"code": code, "state": a["state"]})
                resp = Response(status=302, headers={"Location": f"{a['redirect_uri']}?{query}"})
        elif req.path == "/token" and req.method == "POST":
            resp = self._token(req.form)
        else:
            resp = Response("not found", 404)
        return resp(environ, start_response)

    def _token(self, form) -> Response:
        grant = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        self.exchanged.append(dict(form))
        if grant is None or challenge != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return _json({"error": "invalid_grant"}, 400)
        now = int(time.time())
        claims = {"iss": self.url, "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                  "nonce": "not-yours" if self.wrong_nonce else grant["nonce"], **self.user}
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})
        return _json({"access_token": "opaque", "token_type": "Bearer", "id_token": token, "expires_in": 300})

    def start(self) -> Issuer:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = make_server("127.0.0.1", port, self, threaded=True)
        threading.Thread(target=self._server.serve_forever, name="oidc-issuer", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")
