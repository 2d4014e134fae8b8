"""Request authentication: ACS3-HMAC-SHA256 (Authorization header) and the legacy RPC HMAC-SHA1 scheme.

The recipes are the ones the official SDK (tea-openapi) signs with; a request passes only if the signature
matches a configured secret, its timestamp is within ±15 minutes and its nonce has not been seen.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from .errors import KmsError

WINDOW_SECONDS = 15 * 60
ACS3 = "ACS3-HMAC-SHA256"


@dataclass(frozen=True)
class SignedRequest:
    """What the verifier needs: method, path, decoded query pairs, form pairs, lowercase headers, raw body."""

    method: str
    path: str
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes


def _enc(value: str) -> str:
    return quote(value, safe="~")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def incomplete(message: str) -> KmsError:
    return KmsError("IncompleteSignature", f"The request signature does not conform to Aliyun standards. {message}", 400)


class NonceCache:
    """Nonces seen within the timestamp window; older ones can be forgotten because their timestamps expire.

    Forgotten oldest first from a queue in arrival order. (Past 10,000 nonces the cache used to be rebuilt on every
    request, and the rebuild kept them all while they were recent: from the 10,001st request within 30 minutes,
    each request scanned every nonce; raw CreateKey fell from ~630/s to ~310/s at 10,000 keys.)"""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._order: deque[tuple[float, tuple[str, str]]] = deque()
        self._lock = threading.Lock()

    def claim(self, access_key_id: str, nonce: str, now: float) -> bool:
        with self._lock:
            while self._order and now - self._order[0][0] >= 2 * WINDOW_SECONDS:
                _, old = self._order.popleft()
                self._seen.pop(old, None)
            key = (access_key_id, nonce)
            if key in self._seen:
                return False
            self._seen[key] = now
            self._order.append((now, key))
            return True

    def __len__(self) -> int:
        return len(self._seen)


class Verifier:
    def __init__(self, access_keys: Mapping[str, str], clock: Callable[[], float] = time.time) -> None:
        self._keys = dict(access_keys)
        self._clock = clock
        self._nonces = NonceCache()

    def verify(self, req: SignedRequest) -> str:
        """Returns the access key id, or raises KmsError with Aliyun's code."""
        auth = req.headers.get("authorization", "")
        if auth:
            return self._verify_acs3(req, auth)
        params = dict(req.query + req.form)
        if "Signature" in params:
            return self._verify_v1(req, params)
        raise incomplete("The request carries neither an Authorization header nor a Signature parameter.")

    def _secret(self, access_key_id: str) -> str:
        if not access_key_id:
            raise KmsError("MissingAccessKeyId", "AccessKeyId is mandatory for this action.", 400)
        secret = self._keys.get(access_key_id)
        if secret is None:
            raise KmsError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        return secret

    def _check_time(self, stamp: str | None) -> None:
        if not stamp:
            raise KmsError("MissingTimestamp", "Timestamp is mandatory for this action.", 400)
        try:
            ts = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError as exc:
            raise KmsError("InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.",
                           400) from exc
        if abs(self._clock() - ts) > WINDOW_SECONDS:
            raise KmsError("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", 400)

    def _claim_nonce(self, access_key_id: str, nonce: str | None) -> None:
        if not nonce:
            raise KmsError("MissingSignatureNonce", "SignatureNonce is mandatory for this action.", 400)
        if not self._nonces.claim(access_key_id, nonce, self._clock()):
            raise KmsError("SignatureNonceUsed", "Specified signature nonce was used already.", 400)

    def _verify_acs3(self, req: SignedRequest, auth: str) -> str:
        algorithm, _, rest = auth.partition(" ")
        if algorithm != ACS3:
            raise incomplete(f"Unsupported signature algorithm {algorithm!r}.")
        fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        try:
            access_key_id, signed, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
        except KeyError as exc:
            raise incomplete(f"The Authorization header lacks {exc.args[0]}.") from exc
        secret = self._secret(access_key_id)
        self._check_time(req.headers.get("x-acs-date"))
        names = signed.split(";")
        if names != sorted(names) or any(n not in req.headers for n in names):
            raise incomplete("SignedHeaders must be sorted, lowercase and present.")
        if not {"host", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"} <= set(names):
            raise incomplete("host, x-acs-date, x-acs-signature-nonce and x-acs-content-sha256 must be signed.")
        body_hash = _sha256_hex(req.body)
        if req.headers.get("x-acs-content-sha256") != body_hash:
            raise KmsError("SignatureDoesNotMatch", "The x-acs-content-sha256 header does not match the body.", 400)
        query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(req.query))
        canonical_headers = "".join(f"{n}:{req.headers[n].strip()}\n" for n in names)
        canonical = f"{req.method}\n{req.path or '/'}\n{query}\n{canonical_headers}\n{signed}\n{body_hash}"
        string_to_sign = f"{ACS3}\n{_sha256_hex(canonical.encode())}"
        expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise incomplete(f"server string to sign is:{string_to_sign}")
        self._claim_nonce(access_key_id, req.headers.get("x-acs-signature-nonce"))
        return access_key_id

    def _verify_v1(self, req: SignedRequest, params: dict[str, str]) -> str:
        secret = self._secret(params.get("AccessKeyId", ""))
        if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
            raise incomplete("SignatureMethod must be HMAC-SHA1 and SignatureVersion 1.0.")
        self._check_time(params.get("Timestamp"))
        pairs = sorted((k, v) for k, v in req.query + req.form if k != "Signature")
        canonical = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in pairs)
        string_to_sign = f"{req.method}&{_enc('/')}&{_enc(canonical)}"
        digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
        expected = base64.b64encode(digest).decode()
        if not hmac.compare_digest(expected, params["Signature"]):
            raise incomplete(f"server string to sign is:{string_to_sign}")
        self._claim_nonce(params["AccessKeyId"], params.get("SignatureNonce"))
        return params["AccessKeyId"]
