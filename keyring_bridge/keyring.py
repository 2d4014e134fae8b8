"""Keyring entries: versioned secrets per (mount, id), sealed under the root KEK, behind the KeyService choke point.

Every public method runs inside `service.operation(ctx, "keyring:<Action>")` and asks `service.authorize` for the
resource `keyring/<mount>/<id>`. Material is born in the HSM (`random(32)` of the root-of-trust provider) or written
by the database / imported, and is stored only as `seal(json(secret), aad)` with the AAD binding mount, id and version.
Versions are never pruned: `version=N` is exactly version N or NotFound.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from broker import errors
from broker.service import KeyService, RequestContext
from broker.store.tables import KeyringEntryRow, KeyringMountRow, KeyringVersionRow
from providers import base as pb

MAX_SECRET_BYTES = 64 * 1024
KEY_BYTES = 32
AAD_PREFIX = b"kms-broker/keyring/v1"
_MOUNT_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_RESERVED_SEGMENTS = {"data", "metadata", "sys", "auth", "delete", "undelete", "destroy", "config", "subkeys"}

_E, _V = KeyringEntryRow.__table__, KeyringVersionRow.__table__
_ENTRY = select(_E).where(_E.c.mount == bindparam("mount"), _E.c.entry_id == bindparam("entry_id"))
_VERSION = select(_V).where(_V.c.mount == bindparam("mount"), _V.c.entry_id == bindparam("entry_id"),
                            _V.c.version == bindparam("version"))


def check_mount(mount: str) -> str:
    mount = (mount or "").strip("/")
    if not _MOUNT_RE.match(mount) or len(mount) > 255:
        raise errors.ValidationError("mount must be path segments of letters, digits, '_', '.', '-'")
    if set(mount.split("/")) & _RESERVED_SEGMENTS:
        raise errors.ValidationError(f"mount segments cannot be one of {sorted(_RESERVED_SEGMENTS)}")
    return mount


def check_id(entry_id: str) -> str:
    if not isinstance(entry_id, str) or not entry_id or len(entry_id) > 512 or entry_id.startswith("/") \
            or entry_id.endswith("/") or "//" in entry_id or any(ord(c) < 32 for c in entry_id):
        raise errors.ValidationError("invalid keyring entry id")
    return entry_id


def aad(mount: str, entry_id: str, version: int) -> bytes:
    return b"\0".join([AAD_PREFIX, mount.encode(), entry_id.encode(), str(version).encode()])


def material_secret(material: bytes) -> dict[str, str]:
    """The KV secret a MariaDB hashicorp_key_management plugin reads: field `data`, lowercase hex."""
    return {"data": material.hex()}


def secret_material(secret: Mapping[str, Any]) -> bytes | None:
    """Key bytes of a secret when it carries them as hex in `data` (MariaDB's layout); None otherwise."""
    value = secret.get("data")
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            return None
    return None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str:
    return _utc(value).isoformat().replace("+00:00", "Z") if value else ""


@dataclass(frozen=True)
class Secret:
    mount: str
    entry_id: str
    version: int
    data: dict[str, Any]
    created_at: datetime
    custom_metadata: dict[str, str]


@dataclass(frozen=True)
class EntryInfo:
    mount: str
    entry_id: str
    latest_version: int
    created_at: datetime
    updated_at: datetime
    custom_metadata: dict[str, str]
    rotation_period_seconds: int | None
    next_rotation_at: datetime | None
    versions: list[tuple[int, str, datetime]]  # (version, origin, created_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "Mount": self.mount, "Id": self.entry_id, "LatestVersion": self.latest_version,
            "CreatedAt": iso(self.created_at), "UpdatedAt": iso(self.updated_at),
            "CustomMetadata": self.custom_metadata, "RotationPeriodSeconds": self.rotation_period_seconds,
            "NextRotationAt": iso(self.next_rotation_at) or None,
            "Versions": [{"Version": v, "Origin": o, "CreatedAt": iso(c)} for v, o, c in self.versions],
        }


@contextmanager
def _store_guard() -> Iterator[None]:
    """Store failures become DependencyTimeout inside the operation, so the audit record says what happened."""
    try:
        yield
    except SQLAlchemyError:
        raise errors.DependencyTimeout("keyring store unavailable") from None


@contextmanager
def _hsm_guard() -> Iterator[None]:
    """HSM failures the provider does not map (e.g. a raw pkcs11 ObjectHandleInvalid) become DependencyFailure
    inside the operation, so the audit record says "error" and the front door drops the connection."""
    try:
        yield
    except (errors.BrokerError, pb.ProviderError):
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure of the HSM call
        raise errors.DependencyFailure(f"HSM operation failed ({type(exc).__name__})") from None


class KeyringService:
    def __init__(self, service: KeyService, root_of_trust: str) -> None:
        self.service = service
        self.store = service.store
        self.root = service.root  # the root of trust seals every entry (root_of_trust: kept for callers, unused)

    # ------------------------------------------------------------------------------------------ helpers

    def _authorize(self, ctx: RequestContext, entry, action: str, mount: str, entry_id: str = "") -> None:
        self.service.authorize(ctx, entry, action, None, resource=f"keyring/{mount}/{entry_id}")

    def _seal(self, mount: str, entry_id: str, version: int, secret: Mapping[str, Any]) -> str:
        with _hsm_guard():
            blob = self.root.seal(json.dumps(dict(secret), sort_keys=True, separators=(",", ":")).encode(),
                                  aad(mount, entry_id, version))
        return base64.b64encode(blob).decode()

    def _unseal(self, mount: str, entry_id: str, version: int, sealed: str) -> dict[str, Any]:
        with _hsm_guard():
            return json.loads(self.root.unseal(base64.b64decode(sealed), aad(mount, entry_id, version)))

    def _random(self, n: int) -> bytes:
        with _hsm_guard():
            return self.root.random(n)

    @staticmethod
    def _check_secret(secret: Any) -> dict[str, Any]:
        if not isinstance(secret, dict) or not secret:
            raise errors.ValidationError("the secret must be a non-empty JSON object")
        if len(json.dumps(secret)) > MAX_SECRET_BYTES:
            raise errors.ValidationError("the secret is too large")
        return secret

    def _entry_row(self, mount: str, entry_id: str):
        return self.store.first(_ENTRY, {"mount": mount, "entry_id": entry_id})

    def _append(self, mount: str, entry_id: str, secret: Mapping[str, Any], origin: str, *,
                cas: int | None = None, create_only: bool = False, custom_metadata: Mapping[str, str] | None = None,
                rotation_period_seconds: int | None = None, expected_latest: int | None = None) -> int:
        """Add the next version (creating the entry at version 1). Concurrent writers serialise on the entry row."""
        now = _now()
        for _attempt in range(3):
            row = self._entry_row(mount, entry_id)
            current = row.latest_version if row is not None else 0
            if create_only and row is not None:
                raise errors.AlreadyExists(f"keyring entry {mount}/{entry_id} exists")
            if cas is not None and cas != current:
                raise errors.ValidationError("check-and-set parameter did not match the current version")
            if expected_latest is not None and expected_latest != current:
                return 0
            version = current + 1
            sealed = self._seal(mount, entry_id, version, secret)
            try:
                with self.store.session() as s:
                    if row is None:
                        s.add(KeyringEntryRow(
                            mount=mount, entry_id=entry_id, latest_version=1, created_at=now, updated_at=now,
                            custom_metadata=json.dumps(dict(custom_metadata or {})),
                            rotation_period_seconds=rotation_period_seconds,
                            next_rotation_at=(now + timedelta(seconds=rotation_period_seconds)
                                              if rotation_period_seconds else None)))
                        s.flush()
                    else:
                        values: dict[str, Any] = {"latest_version": version, "updated_at": now}
                        if row.rotation_period_seconds:
                            values["next_rotation_at"] = now + timedelta(seconds=row.rotation_period_seconds)
                        done = s.execute(update(KeyringEntryRow).where(
                            KeyringEntryRow.mount == mount, KeyringEntryRow.entry_id == entry_id,
                            KeyringEntryRow.latest_version == current).values(**values)).rowcount
                        if done != 1:
                            raise IntegrityError("latest_version moved", None, Exception())
                    s.add(KeyringVersionRow(mount=mount, entry_id=entry_id, version=version, sealed=sealed,
                                            origin=origin, created_at=now))
                return version
            except IntegrityError:
                continue  # another writer won the race: re-read and try again
        raise errors.InvalidState(f"keyring entry {mount}/{entry_id} is being written concurrently; retry")

    def ensure_mount(self, mount: str, kv_version: int = 2) -> None:
        with _store_guard(), self.store.session() as s:
            row = s.get(KeyringMountRow, mount)
            if row is None:
                s.add(KeyringMountRow(mount=mount, kv_version=kv_version, created_at=_now()))
            elif row.kv_version != kv_version:
                row.kv_version = kv_version

    def mounts(self) -> dict[str, int]:
        """Known mounts and their KV version (a mount nobody registered answers as KV v2)."""
        with _store_guard(), self.store.session() as s:
            return {r.mount: r.kv_version for r in s.scalars(select(KeyringMountRow))}

    # ------------------------------------------------------------------------------------------ operations

    def tune(self, ctx: RequestContext, mount: str) -> int:
        with self.service.operation(ctx, "keyring:DescribeMount") as entry:
            self._authorize(ctx, entry, "keyring:DescribeMount", mount)
            with _store_guard():
                return self.mounts().get(mount, 2)

    def read(self, ctx: RequestContext, mount: str, entry_id: str, version: int | None = None) -> Secret:
        """Exactly version N (or the latest); NotFound otherwise. Nothing leaves before its audit record is written."""
        with self.service.operation(ctx, "keyring:Read") as entry:
            self._authorize(ctx, entry, "keyring:Read", mount, entry_id)
            with _store_guard():
                row = self._entry_row(mount, entry_id)
                if row is None:
                    raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
                wanted = row.latest_version if version is None else version
                vrow = self.store.first(_VERSION, {"mount": mount, "entry_id": entry_id, "version": wanted})
            if vrow is None:
                raise errors.NotFound(f"keyring entry {mount}/{entry_id} has no version {wanted}")
            entry.key_version = wanted
            data = self._unseal(mount, entry_id, wanted, vrow.sealed)
            secret = Secret(mount, entry_id, wanted, data, _utc(vrow.created_at), json.loads(row.custom_metadata))
        return secret

    def write(self, ctx: RequestContext, mount: str, entry_id: str, secret: Any, *, cas: int | None = None,
              origin: str = "written") -> int:
        with self.service.operation(ctx, "keyring:Write") as entry:
            self._authorize(ctx, entry, "keyring:Write", mount, entry_id)
            secret = self._check_secret(secret)
            with _store_guard():
                entry.key_version = self._append(mount, entry_id, secret, origin, cas=cas)
            return entry.key_version

    def create(self, ctx: RequestContext, mount: str, entry_id: str, *, key_bytes: int = KEY_BYTES,
               rotation_period_seconds: int | None = None) -> int:
        """A new entry whose version 1 is born in the HSM."""
        if key_bytes not in (16, 24, 32):
            raise errors.ValidationError("key size must be 16, 24 or 32 bytes")
        if rotation_period_seconds is not None and rotation_period_seconds < 60:
            raise errors.ValidationError("the rotation period must be at least 60 seconds")
        with self.service.operation(ctx, "keyring:Create") as entry:
            self._authorize(ctx, entry, "keyring:Create", mount, entry_id)
            material = self._random(key_bytes)
            with _store_guard():
                entry.key_version = self._append(mount, entry_id, material_secret(material), "hsm", create_only=True,
                                                 rotation_period_seconds=rotation_period_seconds)
            return entry.key_version

    def rotate(self, ctx: RequestContext, mount: str, entry_id: str, *, expected_latest: int | None = None) -> int:
        """Version N+1 born in the HSM, same size as version N. Returns 0 if `expected_latest` moved meanwhile."""
        with self.service.operation(ctx, "keyring:Rotate") as entry:
            self._authorize(ctx, entry, "keyring:Rotate", mount, entry_id)
            with _store_guard():
                row = self._entry_row(mount, entry_id)
                if row is None:
                    raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
                vrow = self.store.first(_VERSION, {"mount": mount, "entry_id": entry_id,
                                                     "version": row.latest_version})
            size = len(secret_material(self._unseal(mount, entry_id, row.latest_version, vrow.sealed)) or b"")
            if size not in (16, 24, 32):
                raise errors.Unsupported("only entries holding a hex key in `data` can be rotated by the broker")
            with _store_guard():
                entry.key_version = self._append(mount, entry_id, material_secret(self._random(size)), "hsm",
                                                 expected_latest=expected_latest)
            return entry.key_version

    def set_rotation(self, ctx: RequestContext, mount: str, entry_id: str, period_seconds: int | None) -> None:
        if period_seconds is not None and period_seconds < 60:
            raise errors.ValidationError("the rotation period must be at least 60 seconds")
        with self.service.operation(ctx, "keyring:SetRotation") as entry:
            self._authorize(ctx, entry, "keyring:SetRotation", mount, entry_id)
            if period_seconds:
                with _store_guard():
                    current = self._entry_row(mount, entry_id)
                    vrow = current and self.store.first(_VERSION, {"mount": mount, "entry_id": entry_id,
                                                                     "version": current.latest_version})
                if vrow:
                    material = secret_material(self._unseal(mount, entry_id, current.latest_version, vrow.sealed))
                    if len(material or b"") not in (16, 24, 32):
                        raise errors.Unsupported("only entries holding a hex key in `data` can rotate on a schedule")
            with _store_guard(), self.store.session() as s:
                row = s.get(KeyringEntryRow, (mount, entry_id))
                if row is None:
                    raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
                row.rotation_period_seconds = period_seconds
                row.next_rotation_at = _now() + timedelta(seconds=period_seconds) if period_seconds else None

    def rotate_due(self, ctx: RequestContext, now: datetime | None = None) -> list[str]:
        """Rotate every entry whose period passed. Safe in many processes (compare-and-set on the latest version)."""
        now = now or _now()
        with _store_guard(), self.store.session() as s:
            due = [(r.mount, r.entry_id, r.latest_version) for r in s.scalars(
                select(KeyringEntryRow).where(KeyringEntryRow.next_rotation_at <= now))]
        rotated = []
        for mount, entry_id, latest in due:
            try:
                if self.rotate(ctx, mount, entry_id, expected_latest=latest):
                    rotated.append(f"{mount}/{entry_id}")
            except errors.BrokerError:
                continue  # audited by rotate(); one entry that cannot rotate must not block the others
        return rotated

    def describe(self, ctx: RequestContext, mount: str, entry_id: str) -> EntryInfo:
        with self.service.operation(ctx, "keyring:ReadMetadata") as entry:
            self._authorize(ctx, entry, "keyring:ReadMetadata", mount, entry_id)
            with _store_guard():
                infos = self._infos(mount, entry_id)
            if not infos:
                raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
            return infos[0]

    def list_entries(self, ctx: RequestContext, mount: str | None = None, prefix: str = "") -> list[EntryInfo]:
        with self.service.operation(ctx, "keyring:List") as entry:
            if mount is not None:
                self._authorize(ctx, entry, "keyring:List", mount, prefix)
            else:
                # Listing every mount is an administrator's view: only a principal allowed on all keyrings.
                self.service.authorize(ctx, entry, "keyring:List", None, resource="keyring-admin/*")
            with _store_guard():
                return [i for i in self._infos(mount) if i.entry_id.startswith(prefix)]

    def _infos(self, mount: str | None, entry_id: str | None = None) -> list[EntryInfo]:
        with self.store.session() as s:
            q = select(KeyringEntryRow).order_by(KeyringEntryRow.mount, KeyringEntryRow.entry_id)
            vq = select(KeyringVersionRow.mount, KeyringVersionRow.entry_id, KeyringVersionRow.version,
                        KeyringVersionRow.origin, KeyringVersionRow.created_at).order_by(KeyringVersionRow.version)
            if mount is not None:
                q, vq = q.where(KeyringEntryRow.mount == mount), vq.where(KeyringVersionRow.mount == mount)
            if entry_id is not None:
                q = q.where(KeyringEntryRow.entry_id == entry_id)
                vq = vq.where(KeyringVersionRow.entry_id == entry_id)
            versions: dict[tuple[str, str], list] = {}
            for m, e, v, o, c in s.execute(vq):
                versions.setdefault((m, e), []).append((v, o, _utc(c)))
            return [EntryInfo(r.mount, r.entry_id, r.latest_version, _utc(r.created_at), _utc(r.updated_at),
                              json.loads(r.custom_metadata), r.rotation_period_seconds, _utc(r.next_rotation_at),
                              versions.get((r.mount, r.entry_id), [])) for r in s.scalars(q)]

    def import_entry(self, ctx: RequestContext, mount: str, entry_id: str, versions: list[bytes], *,
                     custom_metadata: Mapping[str, str] | None = None) -> int:
        """Bring an existing database key in: its versions 1..n keep their material (the data on disk needs it)."""
        if not versions:
            raise errors.ValidationError("nothing to import")
        with self.service.operation(ctx, "keyring:Import") as entry:
            self._authorize(ctx, entry, "keyring:Import", mount, entry_id)
            with _store_guard():
                row = self._entry_row(mount, entry_id)
                if row is not None:
                    # Importing the same file twice is fine; different material for an existing id is refused.
                    existing = [secret_material(self._unseal(mount, entry_id, v, self.store.first(
                        _VERSION, {"mount": mount, "entry_id": entry_id, "version": v}).sealed))
                        for v in range(1, row.latest_version + 1)]
                    if existing[:len(versions)] == list(versions):
                        entry.key_version = row.latest_version
                        return 0
                    raise errors.AlreadyExists(f"keyring entry {mount}/{entry_id} exists with other material")
                for i, material in enumerate(versions):
                    entry.key_version = self._append(mount, entry_id, material_secret(material), "imported",
                                                     create_only=i == 0, custom_metadata=custom_metadata)
            return len(versions)

    def export_entries(self, ctx: RequestContext, mount: str) -> list[tuple[EntryInfo, list[dict[str, Any]]]]:
        """Every version of every entry of a mount, unsealed: for leaving the bridge. Audited as keyring:Export."""
        with self.service.operation(ctx, "keyring:Export") as entry:
            self._authorize(ctx, entry, "keyring:Export", mount)
            out = []
            with _store_guard():
                infos = self._infos(mount)
                for info in infos:
                    secrets = []
                    for v, _o, _c in info.versions:
                        vrow = self.store.first(_VERSION, {"mount": mount, "entry_id": info.entry_id, "version": v})
                        secrets.append(self._unseal(mount, info.entry_id, v, vrow.sealed))
                    out.append((info, secrets))
            entry.extra["entries"] = len(out)
        return out
