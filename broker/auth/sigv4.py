"""SigV4 authentication for the AWS-compatible front door.

Credentials are access key id / secret pairs bound to a principal name and its policies. The secret is stored only
sealed under the root KEK (AES-GCM inside the HSM, AAD = the access key id) and shown once, when issued.

Verification recomputes the signature over the incoming request (only the headers the client says it signed, the
body as received, the client's X-Amz-Date) as AWS SDKs compute it: the shape every SDK sends this door (POST to `/`,
no query, a plain host) from the spec's steps directly, anything else with botocore's own `SigV4Auth` over a rebuilt
`AWSRequest`; a property test holds the first to botocore's answer. The comparison is constant-time. Errors carry AWS's codes:
MissingAuthenticationTokenException, IncompleteSignatureException, UnrecognizedClientException and
InvalidSignatureException (including AWS's "Signature expired" message for a stale X-Amz-Date), all HTTP 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from broker import errors
from broker.auth import Principal

SERVICE = "kms"
MAX_SKEW = timedelta(minutes=5)
AMZ_DATE = "%Y%m%dT%H%M%SZ"
_ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256\s+(.*)$", re.S)
_REGION_RE = re.compile(r"^[a-z0-9-]{1,32}$")
_PLAIN_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_UNSIGNABLE = frozenset(SIGNED_HEADERS_BLACKLIST)  # headers botocore never signs (its list)
_ACCESS_KEY_RE = re.compile(r"^[A-Z0-9]{16,32}$")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_BASIC_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")  # the X-Amz-Date every SDK sends
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _aws_error(name: str, code: str) -> type[errors.BrokerError]:
    # Subclasses of Unauthenticated: audit_refusal records them as "denied".
    return type(name, (errors.Unauthenticated,), {"code": code, "status": 400, "__doc__": f"{code} (400)"})


MissingAuthenticationToken = _aws_error("MissingAuthenticationToken", "MissingAuthenticationTokenException")
IncompleteSignature = _aws_error("IncompleteSignature", "IncompleteSignatureException")
UnrecognizedClient = _aws_error("UnrecognizedClient", "UnrecognizedClientException")
InvalidSignature = _aws_error("InvalidSignature", "InvalidSignatureException")

_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS Secret "
             "Access Key and signing method. Consult the service documentation for details.")
_INVALID_TOKEN = "The security token included in the request is invalid."


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class IssuedCredentials:
    """What `issue` returns, once. The secret never appears in a repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    name: str
    policies: tuple[str, ...]
    expires_at: datetime | None = None


@dataclass(frozen=True)
class CredentialInfo:
    """One credential as listed: never its secret. `status` is Active, Inactive (revoked, or its parent token is
    gone) or Expired."""

    access_key_id: str
    name: str
    policies: tuple[str, ...]
    created_at: datetime | None
    created_by: str
    status: str
    revoked_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Verified:
    principal: Principal
    region: str
    access_key_id: str


class Parents(Protocol):
    """The token store, as credentials derived from a token see it."""

    def seconds_left(self, accessor: str) -> float: ...


class AwsCredentials:
    """Issue, list, revoke and look up SigV4 credentials.

    `seal`/`unseal` are the root of trust's (AES-GCM under the root KEK, in the HSM). Credentials die with their
    parent: a credential issued by a token (`parent_accessor`) is honoured only while that token is valid, and never
    past its own `expires_at`. `cache_seconds` bounds how long a revocation (of the credential or of its parent) may
    take to reach every process, as for tokens.
    """

    def __init__(self, store: Any, seal: Callable[..., bytes], unseal: Callable[..., bytes],
                 cache_seconds: float = 1.0, *, parents: Parents | None = None) -> None:
        self._store = store
        self._seal = seal
        self._unseal = unseal
        self._parents = parents
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal, str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "AwsCredentials()"

    @staticmethod
    def new_access_key_id() -> str:
        return "AKIA" + "".join(secrets.choice(_BASE32) for _ in range(16))

    def issue(self, name: str, policies: list[str], created_by: str, *, parent_accessor: str | None = None,
              expires_at: datetime | None = None, attributes: Mapping[str, str] | None = None) -> IssuedCredentials:
        from broker.store.tables import AwsCredentialRow

        access_key_id = self.new_access_key_id()
        secret = secrets.token_urlsafe(30)  # 40 characters, 240 bits
        sealed = self._seal(secret.encode(), aad=access_key_id.encode())
        self._store.add_aws_credential(AwsCredentialRow(
            access_key_id=access_key_id, sealed_secret=base64.b64encode(sealed).decode(),
            display_name=name or access_key_id, policies=json.dumps(list(policies)), created_at=_now(),
            created_by=created_by, revoked_at=None, parent_accessor=parent_accessor or None, expires_at=expires_at,
            attributes=json.dumps(dict(attributes or {}), sort_keys=True)))
        return IssuedCredentials(access_key_id, secret, name or access_key_id, tuple(policies),
                                 self.effective_expiry(expires_at, parent_accessor))

    def effective_expiry(self, expires_at: datetime | None, parent_accessor: str | None) -> datetime | None:
        """When a credential stops working by itself: its own expiry or its parent's, whichever comes first."""
        ends = [_utc(expires_at)] if expires_at is not None else []
        if parent_accessor and self._parents is not None:
            left = self._parents.seconds_left(parent_accessor)
            if left != float("inf"):
                ends.append(_now() + timedelta(seconds=left))
        return min(ends) if ends else None

    def _seconds_left(self, row: Any) -> float:
        """How long this credential is still honoured (0: not at all)."""
        if row.revoked_at is not None or not row.sealed_secret:
            return 0.0
        left = float("inf")
        expires = _utc(getattr(row, "expires_at", None))
        if expires is not None:
            left = (expires - _now()).total_seconds()
        parent = getattr(row, "parent_accessor", None)
        if parent:
            left = min(left, self._parents.seconds_left(parent) if self._parents is not None else 0.0)
        return max(0.0, left)

    def list(self) -> list[CredentialInfo]:
        out = []
        for row in self._store.list_aws_credentials():
            expires = _utc(getattr(row, "expires_at", None))
            if row.revoked_at is not None:
                status = "Inactive"
            elif expires is not None and expires <= _now():
                status = "Expired"
            else:
                status = "Active" if self._seconds_left(row) > 0 else "Inactive"
            out.append(CredentialInfo(
                access_key_id=row.access_key_id, name=row.display_name, policies=tuple(json.loads(row.policies)),
                created_at=_utc(row.created_at), created_by=row.created_by, status=status,
                revoked_at=_utc(row.revoked_at), expires_at=self.effective_expiry(expires, getattr(
                    row, "parent_accessor", None)) if status == "Active" else expires))
        return out

    def revoke(self, access_key_id: str) -> bool:
        revoked = self._store.revoke_aws_credential(access_key_id, _now())
        with self._lock:
            self._cache.pop(access_key_id, None)
        return revoked

    def lookup(self, access_key_id: str) -> tuple[Principal, str]:
        """(principal, secret) of a credential honoured now; UnrecognizedClientException otherwise."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(access_key_id)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        row = self._store.get_aws_credential(access_key_id) if _ACCESS_KEY_RE.match(access_key_id) else None
        left = self._seconds_left(row) if row is not None else 0.0
        if left <= 0:
            raise UnrecognizedClient(_INVALID_TOKEN)
        try:
            secret = self._unseal(base64.b64decode(row.sealed_secret), aad=access_key_id.encode()).decode()
        except Exception:  # noqa: BLE001 - a sealed secret that does not open is a credential that does not exist
            raise UnrecognizedClient(_INVALID_TOKEN) from None
        principal = Principal(name=row.display_name, auth_method="sigv4", policies=tuple(json.loads(row.policies)),
                              accessor=access_key_id, attributes=json.loads(getattr(row, "attributes", None) or "{}"))
        ttl = min(self._cache_seconds, left)
        if ttl > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[access_key_id] = (now + ttl, principal, secret)
        return principal, secret


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_CGI_HEADERS = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}  # WSGI keeps these without HTTP_
_SHADOWED = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})  # the CGI keys above are the ones read


def environ_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """A WSGI request's headers, names lower-cased, read straight from its environ: the same pairs, in the same order,
    as lower-casing what werkzeug's `EnvironHeaders(environ)` lists (a later key wins a name, as in a dict built from
    it), without building its title-cased names first (~4 us a request)."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key in _SHADOWED:
                continue
            name = key[5:].replace("_", "-")
        elif key in _CGI_HEADERS and value:
            name = _CGI_HEADERS[key]
        else:
            continue
        # title() first changes nothing for ASCII; for other text ('ß' -> 'Ss') it is what werkzeug's name gives
        headers[name.lower() if name.isascii() else name.title().lower()] = value
    return headers


def parse_amz_date(text: str) -> datetime:
    """X-Amz-Date as a UTC datetime, or ValueError: exactly what `strptime(text, AMZ_DATE)` accepts, and its answer.

    The form SDKs send (8 ASCII digits, `T`, 6 ASCII digits, `Z`) leaves strptime no choice to make (every field
    is two digits, or four for the year): it is ISO 8601's basic format, which `datetime.fromisoformat` reads in C
    and refuses where strptime's patterns or `datetime` would (month 13, 30 February, hour 24, second 60), ~4,000
    instructions instead of strptime's ~60,000. Anything else goes to strptime, whose leniencies (one-digit fields,
    a lower-case `t` or `z`, a space before a one-digit day, non-ASCII digits) stay as they were;
    tests/unit/test_sigv4_shortcuts.py holds the two together."""
    if _BASIC_DATE.fullmatch(text):
        return datetime.fromisoformat(text)
    return datetime.strptime(text, AMZ_DATE).replace(tzinfo=UTC)


def _parse_authorization(header: str) -> tuple[str, str, str, str, str, list[str], str]:
    """→ (access key id, date, region, service, terminator, signed headers, signature)."""
    match = _AUTH_RE.match(header.strip())
    if match is None:
        if header.split(" ", 1)[0] not in ("", _ALGORITHM):
            raise IncompleteSignature(f"Unsupported AWS 'algorithm': '{header.split(' ', 1)[0]}'")
        raise IncompleteSignature(f"Authorization header requires the {_ALGORITHM} algorithm.")
    parts: dict[str, str] = {}
    for item in match.group(1).split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts[name.strip()] = value.strip()
    missing = [p for p in ("Credential", "SignedHeaders", "Signature") if not parts.get(p)]
    if missing:
        raise IncompleteSignature(f"Authorization header requires '{missing[0]}' parameter. "
                                  f"Authorization={_ALGORITHM} ...")
    scope = parts["Credential"].split("/")
    if len(scope) != 5:
        raise IncompleteSignature("Credential must have exactly 5 slash-delimited elements, e.g. "
                                  "keyid/date/region/service/term")
    signed = parts["SignedHeaders"].lower().split(";")
    if not _SIGNATURE_RE.fullmatch(parts["Signature"]):
        raise IncompleteSignature("Signature must be 64 lowercase hexadecimal characters")
    return scope[0], scope[1], scope[2], scope[3], scope[4], signed, parts["Signature"]


class SigV4Verifier:
    """Verify one request's SigV4 signature; returns the principal it runs as and the region it was signed for."""

    def __init__(self, credentials: AwsCredentials, *, service: str = SERVICE, max_skew: timedelta = MAX_SKEW,
                 clock: Callable[[], datetime] = _now) -> None:
        self.credentials = credentials
        self.service = service
        self.max_skew = max_skew
        self.clock = clock

    def verify(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Verified:
        lower = {k.lower(): v for k, v in headers.items()}
        header = lower.get("authorization")
        if not header:
            raise MissingAuthenticationToken("Missing Authentication Token")
        access_key_id, scope_date, region, service, terminator, signed, signature = _parse_authorization(header)

        amz_date = lower.get("x-amz-date", "")
        if not amz_date:
            raise IncompleteSignature("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
                                      "header.")
        try:
            when = parse_amz_date(amz_date)
        except ValueError:
            raise IncompleteSignature(f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.") from None
        if scope_date != amz_date[:8]:
            raise InvalidSignature(f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                                   f"from HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.")
        if service != self.service:
            raise InvalidSignature(f"Credential should be scoped to correct service: '{self.service}'. ")
        if terminator != "aws4_request":
            raise InvalidSignature(f"Credential should be scoped with a valid terminator: 'aws4_request', not "
                                   f"'{terminator}'. ")
        if not _REGION_RE.match(region):
            raise InvalidSignature(f"Credential should be scoped to a valid region, not '{region}'. ")
        for required in ("host", "x-amz-date"):
            if required not in signed:
                raise InvalidSignature(f"'{required}' must be a 'SignedHeader' in the AWS Authorization.")
        unsigned = sorted(h for h in lower if (h.startswith("x-amz-") or h == "content-type") and h not in signed)
        if unsigned:
            raise InvalidSignature(f"Header '{unsigned[0]}' is present but not signed.")
        absent = [h for h in signed if h not in lower]
        if absent:
            raise InvalidSignature(f"Signed header '{absent[0]}' is not present in the request.")

        now = self.clock()
        fmt = lambda d: d.strftime(AMZ_DATE)  # noqa: E731
        if when < now - self.max_skew:
            raise InvalidSignature(f"Signature expired: {amz_date} is now earlier than {fmt(now - self.max_skew)} "
                                   f"({fmt(now)} - 5 min.)")
        if when > now + self.max_skew:
            raise InvalidSignature(f"Signature not yet current: {amz_date} is still later than "
                                   f"{fmt(now + self.max_skew)} ({fmt(now)} + 5 min.)")
        if "x-amz-security-token" in lower:
            raise UnrecognizedClient(_INVALID_TOKEN)  # the broker issues long-term credentials only
        content_sha = lower.get("x-amz-content-sha256")
        if content_sha is not None and not hmac.compare_digest(content_sha, hashlib.sha256(body).hexdigest()):
            raise InvalidSignature("The provided 'x-amz-content-sha256' header does not match what was computed.")

        principal, secret = self.credentials.lookup(access_key_id)
        expected = self.expected_signature(
            method=method, path=path, query=query, headers={h: lower[h] for h in signed}, body=body,
            amz_date=amz_date, region=region, access_key_id=access_key_id, secret=secret)
        if not hmac.compare_digest(expected, signature):
            raise InvalidSignature(_MISMATCH)
        return Verified(principal, region, access_key_id)

    def expected_signature(self, *, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
                           amz_date: str, region: str, access_key_id: str, secret: str) -> str:
        """botocore's SigV4 over the rebuilt request, with the client's timestamp (not the clock's)."""
        plain = self.plain_signature(method=method, path=path, query=query, headers=headers, body=body,
                                     amz_date=amz_date, region=region, secret=secret)
        if plain is not None:
            return plain
        url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")  # http: always hash the body
        rebuilt = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
        rebuilt.context["timestamp"] = amz_date
        auth = SigV4Auth(Credentials(access_key_id, secret), self.service, region)
        canonical = auth.canonical_request(rebuilt)
        return auth.signature(auth.string_to_sign(rebuilt, canonical), rebuilt)

    def plain_signature(self, *, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
                        amz_date: str, region: str, secret: str) -> str | None:
        """The signature of the request shape every SDK sends this door — POST to `/`, no query string, a plain host,
        no header botocore leaves unsigned — computed from the spec's four steps in a few microseconds (botocore's
        `AWSRequest` + `SigV4Auth` take ~60 us, a quarter of an AWS Encrypt's own work). None for any other shape,
        which botocore canonicalises; tests/unit/test_sigv4_plain.py holds the two to the same answer."""
        if path != "/" or query or not _PLAIN_HOST.fullmatch(headers.get("host", "")) \
                or not _UNSIGNABLE.isdisjoint(headers):
            return None
        names = sorted(headers)
        canonical = "\n".join((
            method.upper(), "/", "",
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names),
            ";".join(names),
            headers["x-amz-content-sha256"] if "x-amz-content-sha256" in headers else hashlib.sha256(body).hexdigest(),
        ))
        scope = f"{amz_date[:8]}/{region}/{self.service}/aws4_request"
        to_sign = f"{_ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        return hmac.digest(_signing_key(secret, amz_date[:8], region, self.service), to_sign.encode(), "sha256").hex()


@lru_cache(maxsize=256)
def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """SigV4's signing key (four HMACs over the scope), as the SDKs keep it: it changes once a day per credential and
    region. Kept only in this process's memory, like the secrets AwsCredentials keeps; a revoked credential is
    refused by its lookup before any signature is computed, whatever is kept here."""
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key
