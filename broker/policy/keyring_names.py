"""Keyring resource names: a mount and an entry id can never be confused, and no glob crosses a mount boundary.

A mount may contain slashes (`kv/mdb`) and an entry id may too (`percona/uuid_INNODBKey-1`), so `keyring/<mount>/<id>`
would name mount `kv` entry `mdb/1` and mount `kv/mdb` entry `1` alike, and the glob `keyring/kv/*` would reach
both. Resource names therefore carry the mount as ONE path segment, its slashes written `%2F`:

    keyring/<mount, "/" as "%2F">/<entry id>     an entry                  keyring/kv%2Fmdb/1
    keyring/<mount, "/" as "%2F">/               the mount as a whole      keyring/kv%2Fmdb/
    keyring-admin/<mount, "/" as "%2F">          minting tokens/AppRoles, registering the mount
    keyring/*                                    (this literal name) every mount at once: list all, rotate-due sweep

The mount alphabet has no `%`, `*`, `?` or `[`, so the encoding is one-to-one and the segment after `keyring/` ends
at the first `/`: `keyring/kv/*` names mount `kv` only, never `kv/mdb` (`keyring/kv%2Fmdb/...`). Mount and id
segments `.` and `..` are refused, so no name has two spellings.
"""

from __future__ import annotations

import re
from typing import Any

from broker.errors import ValidationError

MOUNT_POLICY_PREFIX = "keyring:"
ALL_MOUNTS = "keyring/*"
MAX_MOUNT = 255
MAX_ID = 512
# Vault path words: a mount segment named like them would make `<mount>/data/<id>` ambiguous.
RESERVED_SEGMENTS = frozenset({"data", "metadata", "sys", "auth", "delete", "undelete", "destroy", "config",
                               "subkeys"})
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_mount(mount: Any) -> str:
    """A mount: `/`-separated segments of letters, digits, `_`, `.`, `-`; no `.`/`..` or Vault-reserved segment."""
    if not isinstance(mount, str) or not mount or len(mount) > MAX_MOUNT:
        raise ValidationError(f"mount must be 1 to {MAX_MOUNT} characters")
    segments = mount.split("/")
    if not all(_SEGMENT.match(s) for s in segments):
        raise ValidationError("mount must be path segments of letters, digits, '_', '.', '-' (no empty segment)")
    if any(s in (".", "..") for s in segments):
        raise ValidationError("mount segments cannot be '.' or '..'")
    if set(segments) & RESERVED_SEGMENTS:
        raise ValidationError(f"mount segments cannot be one of {sorted(RESERVED_SEGMENTS)}")
    return mount


def check_id(entry_id: Any) -> str:
    """An entry id: 1-512 characters of valid Unicode, no control character, no empty, `.` or `..` segment."""
    if not isinstance(entry_id, str) or not entry_id or len(entry_id) > MAX_ID:
        raise ValidationError(f"entry id must be 1 to {MAX_ID} characters")
    _check_path(entry_id, "entry id")
    return entry_id


def check_prefix(prefix: Any) -> str:
    """A listing prefix: empty, or entry-id segments followed by `/`."""
    if not isinstance(prefix, str) or len(prefix) > MAX_ID:
        raise ValidationError(f"prefix must be at most {MAX_ID} characters")
    if prefix:
        if not prefix.endswith("/"):
            raise ValidationError("a listing prefix ends with '/'")
        _check_path(prefix[:-1], "prefix")
    return prefix


def _check_path(value: str, name: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValidationError(f"{name} is not valid Unicode") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError(f"{name} cannot contain control characters")
    if any(s in ("", ".", "..") for s in value.split("/")):
        raise ValidationError(f"{name} cannot have empty, '.' or '..' segments")


def mount_segment(mount: str) -> str:
    """The mount as one resource-name segment (its slashes as %2F); `mount` must be valid."""
    return check_mount(mount).replace("/", "%2F")


def entry_resource(mount: str, entry_id: str) -> str:
    return f"keyring/{mount_segment(mount)}/{check_id(entry_id)}"


def prefix_resource(mount: str, prefix: str) -> str:
    return f"keyring/{mount_segment(mount)}/{check_prefix(prefix)}"


def mount_resource(mount: str) -> str:
    return f"keyring/{mount_segment(mount)}/"


def mount_glob(mount: str) -> str:
    """Every entry of one mount, and nothing of another (what the `keyring:<mount>` policy allows)."""
    return f"keyring/{mount_segment(mount)}/*"


def admin_resource(mount: str) -> str:
    return f"keyring-admin/{mount_segment(mount)}"


def mount_policy(mount: str) -> str:
    """The built-in policy name a database of `mount` carries."""
    return MOUNT_POLICY_PREFIX + check_mount(mount)


def policy_mount(name: str) -> str | None:
    """The mount of a `keyring:<mount>` policy name; None for any other name or an invalid mount (e.g. `keyring:*`)."""
    if not name.startswith(MOUNT_POLICY_PREFIX):
        return None
    try:
        return check_mount(name[len(MOUNT_POLICY_PREFIX):])
    except ValidationError:
        return None
