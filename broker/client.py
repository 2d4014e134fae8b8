"""HTTP client for the native API: what apps and the CLI use. Bytes in, bytes out; errors raise BrokerClientError."""

from __future__ import annotations

import base64
import os
import time
from typing import Any
from urllib.parse import quote

import requests


class BrokerClientError(Exception):
    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Answers that mean "this node cannot serve now, another may": a load balancer with no server or a dead one (502,
# 504), a node whose store, audit sink or HSM is down (503). Connection failures count too.
RETRYABLE_STATUS = frozenset({502, 503, 504})
# Calls that change nothing but the audit log, so sending one twice is harmless (an unacknowledged Encrypt's
# ciphertext is simply never used): reads, and the cryptographic operations.
_RETRY_SAFE_POSTS = ("/encrypt", "/decrypt", "/generate-data-key", "/generate-data-key-without-plaintext",
                     "/generate-data-key-pair", "/re-encrypt", "/sign", "/verify", "/generate-mac", "/verify-mac",
                     "/random")


def retry_safe(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") or (method == "POST" and path.endswith(_RETRY_SAFE_POSTS))


class BrokerClient:
    def __init__(self, addr: str | list[str] | None = None, token: str | None = None, *, timeout: float = 30.0,
                 verify: bool | str = True, anonymous: bool = False, retries: int = 3, backoff: float = 0.1,
                 cert: tuple[str, str] | None = None) -> None:
        """`addr`: one address, several (a list, or comma-separated as in KMSB_ADDR) tried in turn when one cannot
        serve. `retries`: how many more attempts a retry-safe call gets after a connection failure or a 502/503/504
        (never a call that changes state: it might have happened). `cert`: a client certificate and key (mutual
        TLS). `anonymous`: send no token at all (logins), whatever KMSB_TOKEN says."""
        raw = addr if addr is not None else os.environ.get("KMSB_ADDR") or "http://127.0.0.1:8200"
        addrs = raw if isinstance(raw, list) else raw.split(",")
        self.addrs = [a.strip().rstrip("/") for a in addrs if a.strip()]
        if not self.addrs:
            raise ValueError("no broker address")
        self._current = 0
        token = None if anonymous else token or os.environ.get("KMSB_TOKEN")
        self._session = requests.Session()
        self._session.verify = verify
        if cert is not None:
            self._session.cert = cert
        if token:
            if not (token.isascii() and token.isprintable()):
                raise BrokerClientError(0, "InvalidToken", "the token has characters no broker token has "
                                                           "(non-ASCII or control characters); check KMSB_TOKEN")
            self._session.headers["X-KMSB-Token"] = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retried = 0  # retryable failures seen (and retried) so far: what a cluster test bounds

    @property
    def addr(self) -> str:
        return self.addrs[self._current]

    def __repr__(self) -> str:
        return f"BrokerClient({','.join(self.addrs)!r})"

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> dict[str, Any]:
        attempts = 1 + (self.retries if retry_safe(method, path) else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            addr = self.addr
            try:
                # verify per request: a session's own is overridden by REQUESTS_CA_BUNDLE (requests#3829)
                response = self._session.request(method, f"{addr}/v1{path}", json=body, params=params,
                                                 timeout=self.timeout, verify=self._session.verify)
            except requests.RequestException as exc:
                if last:
                    raise BrokerClientError(0, "ConnectionError", f"cannot reach {addr}: {type(exc).__name__}") \
                        from None
                self._next(attempt)
                continue
            if response.status_code in RETRYABLE_STATUS and not last:
                self._next(attempt)
                continue
            return self._answer(response)
        raise AssertionError("unreachable")

    def _next(self, attempt: int) -> None:
        """Move to the next address (round robin) and wait a little longer each time."""
        self.retried += 1
        self._current = (self._current + 1) % len(self.addrs)
        time.sleep(self.backoff * (2 ** attempt))

    def _answer(self, response: requests.Response) -> dict[str, Any]:
        try:
            data = response.json() if response.content.strip() else {}
        except ValueError:
            data = None
        if response.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            err = err if isinstance(err, dict) else {}
            raise BrokerClientError(response.status_code, str(err.get("code", "HTTPError")),
                                    str(err.get("message", response.reason)), str(err.get("request_id", "")))
        if not isinstance(data, dict):
            raise BrokerClientError(response.status_code, "UnexpectedResponse",
                                    f"{self.addr} did not answer like a kms-broker (HTTP {response.status_code}, "
                                    "not a JSON object)")
        return data

    @staticmethod
    def _key(key: str) -> str:
        return quote(key, safe="/")

    # keys
    def create_key(self, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None, *, description: str = "",
                   provider: str | None = None, origin: str = "AWS_KMS", tags: dict | None = None) -> dict:
        body = {"KeySpec": spec, "Description": description, "Origin": origin}
        if usage:
            body["KeyUsage"] = usage
        if provider:
            body["Provider"] = provider
        if tags:
            body["Tags"] = tags
        return self.call("POST", "/keys", body)["KeyMetadata"]

    def list_keys(self, limit: int = 100, marker: str | None = None) -> dict:
        params: dict[str, Any] = {"limit": limit}
        if marker:
            params["marker"] = marker
        return self.call("GET", "/keys", params=params)

    def describe_key(self, key: str) -> dict:
        return self.call("GET", f"/keys/{self._key(key)}")["KeyMetadata"]

    def enable_key(self, key: str) -> None:
        self.call("POST", f"/keys/{self._key(key)}/enable")

    def disable_key(self, key: str) -> None:
        self.call("POST", f"/keys/{self._key(key)}/disable")

    def schedule_key_deletion(self, key: str, days: int = 30) -> dict:
        return self.call("POST", f"/keys/{self._key(key)}/schedule-deletion", {"PendingWindowInDays": days})

    def cancel_key_deletion(self, key: str) -> dict:
        return self.call("POST", f"/keys/{self._key(key)}/cancel-deletion")

    def rotate_key(self, key: str) -> dict:
        return self.call("POST", f"/keys/{self._key(key)}/rotate")

    def list_key_versions(self, key: str) -> dict:
        return self.call("GET", f"/keys/{self._key(key)}/versions")

    # crypto
    def encrypt(self, key: str, plaintext: bytes, context: dict[str, str] | None = None) -> bytes:
        body: dict[str, Any] = {"Plaintext": _b64(plaintext)}
        if context:
            body["EncryptionContext"] = context
        return base64.b64decode(self.call("POST", f"/keys/{self._key(key)}/encrypt", body)["CiphertextBlob"])

    def decrypt(self, ciphertext: bytes, context: dict[str, str] | None = None) -> bytes:
        body: dict[str, Any] = {"CiphertextBlob": _b64(ciphertext)}
        if context:
            body["EncryptionContext"] = context
        return base64.b64decode(self.call("POST", "/decrypt", body)["Plaintext"])

    def generate_data_key(self, key: str, key_spec: str = "AES_256",
                          context: dict[str, str] | None = None) -> tuple[bytes, bytes]:
        body: dict[str, Any] = {"KeySpec": key_spec}
        if context:
            body["EncryptionContext"] = context
        out = self.call("POST", f"/keys/{self._key(key)}/generate-data-key", body)
        return base64.b64decode(out["Plaintext"]), base64.b64decode(out["CiphertextBlob"])

    def multikey_generate_data_key(self, multikey: str, context: dict[str, str] | None = None) -> tuple[bytes, bytes]:
        """A 32-byte data key wrapped under every member of a multi-key (a scheme-3 ciphertext)."""
        body: dict[str, Any] = {"KeySpec": "AES_256"}
        if context:
            body["EncryptionContext"] = context
        out = self.call("POST", f"/multikeys/{self._key(multikey)}/generate-data-key", body)
        return base64.b64decode(out["Plaintext"]), base64.b64decode(out["CiphertextBlob"])

    def decrypt_any(self, ciphertext: bytes, context: dict[str, str] | None = None) -> bytes:
        """Decrypt a broker ciphertext of any scheme: a multi-key one (scheme 3) through its members."""
        from broker.ciphertext import MalformedCiphertext, Scheme, unpack

        try:
            multi = unpack(ciphertext).header.scheme is Scheme.MULTI_WRAP
        except MalformedCiphertext:
            multi = False
        if not multi:
            return self.decrypt(ciphertext, context)
        body: dict[str, Any] = {"CiphertextBlob": _b64(ciphertext)}
        if context:
            body["EncryptionContext"] = context
        return base64.b64decode(self.call("POST", "/multikeys/decrypt", body)["Plaintext"])

    # aliases
    def create_alias(self, name: str, key: str) -> None:
        self.call("POST", "/aliases", {"AliasName": name, "TargetKeyId": key})

    def list_aliases(self, key: str | None = None) -> dict:
        return self.call("GET", "/aliases", params={"key": key} if key else None)
