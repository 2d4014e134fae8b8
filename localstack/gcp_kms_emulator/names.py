"""Cloud KMS resource names: parse and build them, rejecting malformed ones as the API does."""

from __future__ import annotations

import re

from .errors import invalid

_ID = r"[a-zA-Z0-9_-]{1,63}"
ID_RE = re.compile(rf"^{_ID}$")
LOCATION_RE = re.compile(r"^projects/[^/]+/locations/[^/]+$")
KEY_RING_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+$")
CRYPTO_KEY_RE = re.compile(r"^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+)/cryptoKeys/[^/]+$")
VERSION_RE = re.compile(r"^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)/cryptoKeyVersions/(\d+)$")
IMPORT_JOB_RE = re.compile(r"^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+)/importJobs/[^/]+$")


def check(pattern: re.Pattern[str], name: str, kind: str) -> re.Match[str]:
    m = pattern.match(name or "")
    if not m:
        raise invalid(f"Resource name [{name}] does not represent a valid {kind}.")
    return m


def check_id(value: str, field: str) -> str:
    if not ID_RE.match(value or ""):
        raise invalid(f"{field} must match the pattern {_ID}.")
    return value


def version_key(name: str) -> str:
    """The CryptoKey a CryptoKeyVersion name belongs to."""
    return check(VERSION_RE, name, "CryptoKeyVersion").group(1)


def is_version(name: str) -> bool:
    return bool(VERSION_RE.match(name or ""))
