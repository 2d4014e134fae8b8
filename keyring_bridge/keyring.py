"""KeyringService: versioned database keys per (mount, id), sealed under the root of trust, every method on the gate.

Each public method is a declared operation (`broker.gate`): the gate names the resource from the arguments
(`keyring/<mount as one segment>/<id>`, see broker/policy/keyring_names.py), authorizes it, audits the outcome
durably, then runs the body. Material is born in the HSM (`random` of the root of trust) or written by the database
or imported, and is stored only as `seal(json(secret), aad)` with the AAD binding mount, id and version. Versions are
never pruned: `version=N` is exactly version N or NotFound.

No escalation: a token minted for a database (`create_token`, and the AppRoles in approle.py) carries the policy
`keyring:<mount>`, which only a caller holding that policy, or every keyring action on every entry of that mount,
may hand on (`check_hand_on`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from broker import errors
from broker.auth import Principal, TokenAuth
from broker.gate import (
    Call,
    Need,
    Service,
    Target,
    fixed,
    internal,
    operation,
    reads_may_be_cached,
    valid_text,
    within,
)
from broker.policy.keyring_names import (
    ALL_MOUNTS,
    admin_resource,
    check_id,
    check_mount,
    check_prefix,
    entry_resource,
    mount_glob,
    mount_policy,
    mount_resource,
    policy_mount,
    prefix_resource,
)
from broker.service import KeyService
from keyring_bridge.repository import EntryInfo, KeyringRepository, Raced, guarded
from providers import base as pb

__all__ = ["DeletedVersion", "EntryInfo", "ExportedEntry", "IssuedToken", "KeyringService", "MountInfo", "Secret",
           "check_hand_on", "check_id", "check_mount", "destroy_kind", "within_caller"]

MAX_SECRET_BYTES = 64 * 1024
MAX_SECRET_DEPTH = 32
MAX_IMPORTED_KEY = 16 * 1024  # MySQL keyrings hold keys of up to 16 KiB
MAX_METADATA = 32
KEY_SIZES = (16, 24, 32)
AAD_PREFIX = b"kms-broker/keyring/v1"
# What the `keyring:<mount>` policy lets its holder do on the mount's entries: handing it on needs all of them.
MOUNT_ACTIONS = ("keyring:Read", "keyring:ReadMetadata", "keyring:Write", "keyring:List", "keyring:Create",
                 "keyring:Rotate", "keyring:SetRotation", "keyring:Import", "keyring:Export", "keyring:DescribeMount",
                 "keyring:Delete", "keyring:Undelete", "keyring:Destroy")
DESTROY_KIND = "keyring-destroy"  # the quorum-approved operation that destroys versions (broker/approvals.py)
MAX_VERSIONS_PER_CALL = 1000


class Sealer(Protocol):
    """What the keyring needs of the root of trust."""

    def seal(self, data: bytes, aad: bytes = b"") -> bytes: ...
    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes: ...
    def random(self, n: int) -> bytes: ...


# ------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Secret:
    mount: str
    entry_id: str
    version: int
    data: dict[str, Any] = field(repr=False)  # the material: never in a repr
    created_at: datetime
    custom_metadata: dict[str, str]


class DeletedVersion(errors.NotFound):
    """The version exists but was soft-deleted or destroyed: a read answers 404 with its metadata, as Vault does."""

    def __init__(self, mount: str, entry_id: str, version: int, created_at: datetime, deleted_at: datetime | None,
                 destroyed: bool, custom_metadata: Mapping[str, str]) -> None:
        super().__init__(f"keyring entry {mount}/{entry_id} version {version} is "
                         f"{'destroyed' if destroyed else 'deleted'}")
        self.version, self.created_at, self.deleted_at = version, created_at, deleted_at
        self.destroyed, self.custom_metadata = destroyed, dict(custom_metadata)


@dataclass(frozen=True)
class MountInfo:
    """A mount as `sys/mounts` shows it (its KV layout; never an entry)."""

    mount: str
    kv_version: int


@dataclass(frozen=True)
class ExportedEntry:
    info: EntryInfo
    secrets: list[tuple[int, dict[str, Any]]] = field(repr=False)  # (version, secret) in clear: never in a repr


@dataclass(frozen=True)
class IssuedToken:
    token: str = field(repr=False)
    accessor: str
    policies: list[str]
    ttl_seconds: int  # 0: no expiry


# ------------------------------------------------------------------------------------------------- helpers


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


def aad(mount: str, entry_id: str, version: int) -> bytes:
    return b"\0".join([AAD_PREFIX, mount.encode(), entry_id.encode(), str(version).encode()])


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else ""


def _now() -> datetime:
    return datetime.now(UTC)


def check_secret(secret: Any) -> dict[str, Any]:
    """A KV secret: a non-empty JSON object, at most 64 KiB and 32 levels deep, every string valid Unicode."""
    if not isinstance(secret, dict) or not secret:
        raise errors.ValidationError("the secret must be a non-empty JSON object")
    stack: list[tuple[Any, int]] = [(secret, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_SECRET_DEPTH:
            raise errors.ValidationError(f"the secret is nested more than {MAX_SECRET_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                valid_text(k, "secret key")
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            valid_text(value, "secret value")
    if len(json.dumps(secret, separators=(",", ":"))) > MAX_SECRET_BYTES:
        raise errors.ValidationError("the secret is larger than 64 KiB")
    return secret


def check_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or len(metadata) > MAX_METADATA:
        raise errors.ValidationError(f"custom metadata is an object of at most {MAX_METADATA} strings")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 1 <= len(k) <= 128 or len(v) > 512:
            raise errors.ValidationError("custom metadata: keys of 1-128 and values of up to 512 characters")
        valid_text(k, "custom metadata key")
        valid_text(v, "custom metadata value")
    return dict(metadata)


def check_period(period_seconds: Any) -> int | None:
    if period_seconds is None:
        return None
    if not isinstance(period_seconds, int) or isinstance(period_seconds, bool) or not 60 <= period_seconds <= 2**31:
        raise errors.ValidationError("the rotation period must be 60 seconds or more")
    return period_seconds


def check_hand_on(call: Call, mount: str) -> str:
    """The no-escalation rule for database credentials: `keyring:<mount>` may be handed on only by a caller that
    holds that policy itself, or every keyring action on every entry of the mount. Returns the policy name."""
    policy = mount_policy(mount)
    if call.policies_beyond([policy]) and not call.covers(MOUNT_ACTIONS, mount_glob(mount)):
        raise errors.AccessDenied(f"{call.principal.name} does not hold every keyring action on mount {mount}, "
                                  f"so it cannot hand on {policy}")
    return policy


def within_caller(tokens: TokenAuth, call: Call, seconds: int | None) -> int | None:
    """A lifetime for a credential the caller mints, never beyond the caller's own: `seconds` (None: unbounded)
    capped at what the caller's token has left. A caller whose token never expires (a root token) is no bound.
    The minted credential is an orphan: revoking the caller later does not revoke it (a database must not stop)."""
    if not call.principal.accessor:
        return seconds
    with guarded():
        info = tokens.by_accessor(call.principal.accessor)
    left = info.seconds_left()
    if left == float("inf"):
        return seconds
    if left < 1:
        raise errors.Unauthenticated("the caller's token has expired")
    return int(left) if seconds is None else min(seconds, int(left))


@contextmanager
def _hsm_guard() -> Iterator[None]:
    """HSM failures the provider does not map (e.g. a raw pkcs11 ObjectHandleInvalid) become DependencyFailure
    inside the operation, so the audit record says "error" and the bridge drops the connection."""
    try:
        yield
    except (errors.BrokerError, pb.ProviderError):
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure of the HSM call
        raise errors.DependencyFailure(f"HSM operation failed ({type(exc).__name__})") from None


# ------------------------------------------------------------------------------------------------- resolvers


def _entry(host: KeyringService, args: Mapping[str, Any]) -> Target:
    return Target(resource=entry_resource(args["mount"], args["entry_id"]))  # validates both, mount first


def _whole_mount(host: KeyringService, args: Mapping[str, Any]) -> Target:
    return Target(resource=mount_resource(check_mount(args["mount"])))


def _listing(host: KeyringService, args: Mapping[str, Any]) -> Target:
    return Target(resource=prefix_resource(check_mount(args["mount"]), check_prefix(args["prefix"])))


def admin_target(host: Any, args: Mapping[str, Any]) -> Target:
    """keyring-admin/<mount>: what minting credentials for a mount and registering it are checked on."""
    return Target(resource=admin_resource(check_mount(args["mount"])))


# ================================================================================================== the service


class KeyringService(Service):
    def __init__(self, keys: KeyService, root: Sealer, tokens: TokenAuth) -> None:
        self.gate = keys.gate
        self.repo = KeyringRepository(keys.store)
        # How old a key read's row may be (the key metadata bound, `key_cache_seconds`): a change made on this host
        # is seen at once whatever it is (the host's keyring-write counter), one made on another host within it.
        self._kept_seconds = keys.key_cache_seconds
        self._root = root
        self._tokens = tokens

    # ------------------------------------------------------------------------------------------ sealing

    def _seal(self, mount: str, entry_id: str, version: int, secret: Mapping[str, Any]) -> str:
        plain = json.dumps(dict(secret), sort_keys=True, separators=(",", ":")).encode()
        with _hsm_guard():
            return base64.b64encode(self._root.seal(plain, aad(mount, entry_id, version))).decode()

    def _unseal(self, mount: str, entry_id: str, version: int, sealed: str) -> dict[str, Any]:
        with _hsm_guard():
            return json.loads(self._root.unseal(base64.b64decode(sealed), aad(mount, entry_id, version)))

    def _random(self, n: int) -> bytes:
        with _hsm_guard():
            return self._root.random(n)

    def _material(self, mount: str, entry_id: str, version: int) -> bytes | None:
        row = self.repo.version(mount, entry_id, version)
        if row is None or row.destroyed:
            return None
        return secret_material(self._unseal(mount, entry_id, version, row.sealed))

    def _append(self, mount: str, entry_id: str, secret: Mapping[str, Any], origin: str, *, cas: int | None = None,
                create_only: bool = False, custom_metadata: Mapping[str, str] | None = None,
                rotation_period_seconds: int | None = None, expected_latest: int | None = None) -> int:
        """Add the next version (creating the entry at version 1); 0 if `expected_latest` moved. Concurrent writers
        serialise on the entry row's latest version (compare-and-set), each sealing under its own version's AAD."""
        for _attempt in range(3):
            row = self.repo.entry(mount, entry_id)
            current = row.latest_version if row is not None else 0
            if create_only and row is not None:
                raise errors.AlreadyExists(f"keyring entry {mount}/{entry_id} exists")
            if cas is not None and cas != current:
                raise errors.ValidationError("check-and-set parameter did not match the current version")
            if expected_latest is not None and expected_latest != current:
                return 0
            now = _now()
            period = row.rotation_period_seconds if row is not None else rotation_period_seconds
            try:
                self.repo.append(mount, entry_id, current=current, sealed=self._seal(mount, entry_id, current + 1,
                                                                                     secret),
                                 origin=origin, now=now, custom_metadata=custom_metadata,
                                 rotation_period_seconds=rotation_period_seconds,
                                 next_rotation_at=now + timedelta(seconds=period) if period else None,
                                 period_of_existing=row.rotation_period_seconds if row is not None else None)
                return current + 1
            except Raced:
                continue
        raise errors.InvalidState(f"keyring entry {mount}/{entry_id} is being written concurrently; retry")

    # ------------------------------------------------------------------------------------------ not operations

    @internal
    def mounts(self) -> dict[str, int]:
        """Registered mounts and their KV version, for the bridge's path router before it authenticates anyone:
        names and a layout number only, nothing secret."""
        return self.repo.mounts()

    @internal
    def mounts_named_by(self, principal: Principal) -> set[str]:
        """The mounts a principal's `keyring:<mount>` policies name (an invalid name, e.g. `keyring:*`, names none):
        where a listing goes mount by mount. Names only; each listing is still an operation of its own."""
        return {m for m in map(policy_mount, principal.policies) if m is not None}

    @internal
    def authenticate(self, token: str | None) -> Principal:
        """Authentication, not an operation: a bridge token → its Principal (Unauthenticated if it is not valid).
        The front door audits a refusal through `Services.refused`."""
        with guarded():
            return self._tokens.authenticate(token)

    # ------------------------------------------------------------------------------------------ database reads

    @operation("keyring:DescribeMount", Need("keyring:DescribeMount", _whole_mount))
    def tune(self, call: Call, mount: str) -> int:
        """The mount's KV version (a mount nobody registered answers as KV v2)."""
        return self.repo.mounts().get(mount, 2)

    @operation("keyring:Read", Need("keyring:Read", _entry))
    def read(self, call: Call, mount: str, entry_id: str, version: int | None = None) -> Secret:
        """Exactly version N (or the latest); NotFound otherwise. Nothing leaves before its audit record is durable.
        The row (sealed material, version metadata) may be one this process kept (`repo.read`); the unseal is not."""
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise errors.ValidationError("version must be a positive integer")
        row = self.repo.read(mount, entry_id, version, max_age=self._kept_seconds if reads_may_be_cached() else 0.0)
        if row is None:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
        wanted, vrow = row.wanted, row.version
        if vrow is None:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} has no version {wanted}")
        call.entry.key_version = wanted
        if vrow.deleted_at is not None or vrow.destroyed:
            raise DeletedVersion(mount, entry_id, wanted, vrow.created_at, vrow.deleted_at, vrow.destroyed,
                                 row.custom_metadata)
        return Secret(mount, entry_id, wanted, self._unseal(mount, entry_id, wanted, vrow.sealed), vrow.created_at,
                      row.custom_metadata)

    @operation("keyring:ReadMetadata", Need("keyring:ReadMetadata", _entry))
    def describe(self, call: Call, mount: str, entry_id: str) -> EntryInfo:
        infos = self.repo.infos(mount, entry_id)
        if not infos:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
        return infos[0]

    @operation("keyring:List", Need("keyring:List", _listing))
    def list_entries(self, call: Call, mount: str, prefix: str = "") -> list[EntryInfo]:
        """Entries of one mount under `prefix` that the caller may list (a Deny on one entry hides it)."""
        return [i for i in self.repo.infos(mount, prefix=prefix)
                if call.holds("keyring:List", resource=entry_resource(mount, i.entry_id))]

    @operation("keyring:List", Need("keyring:List", fixed(ALL_MOUNTS)))
    def list_all(self, call: Call) -> list[EntryInfo]:
        """Every entry of every mount: an administrator's view (`keyring/*` is the name of all mounts at once)."""
        return self.repo.infos(None)

    # ------------------------------------------------------------------------------------------ writes

    @operation("keyring:Write", Need("keyring:Write", _entry), mutates=True)
    def write(self, call: Call, mount: str, entry_id: str, secret: Any, *, cas: int | None = None) -> int:
        """The next version of a secret the database writes (KV v2 `options.cas` honoured)."""
        secret = check_secret(secret)
        if cas is not None and (not isinstance(cas, int) or isinstance(cas, bool) or cas < 0):
            raise errors.ValidationError("cas must be a non-negative integer")
        call.entry.key_version = self._append(mount, entry_id, secret, "written", cas=cas)
        return call.entry.key_version

    @operation("keyring:Create", Need("keyring:Create", _entry), mutates=True)
    def create(self, call: Call, mount: str, entry_id: str, *, key_bytes: int = 32,
               rotation_period_seconds: int | None = None) -> int:
        """A new entry whose version 1 is born in the HSM."""
        if key_bytes not in KEY_SIZES:
            raise errors.ValidationError("key size must be 16, 24 or 32 bytes")
        period = check_period(rotation_period_seconds)
        self._refuse_nesting_v1(mount)
        material = self._random(key_bytes)
        call.entry.key_version = self._append(mount, entry_id, material_secret(material), "hsm", create_only=True,
                                              rotation_period_seconds=period)
        return call.entry.key_version

    @operation("keyring:Rotate", Need("keyring:Rotate", _entry), mutates=True)
    def rotate(self, call: Call, mount: str, entry_id: str, *, expected_latest: int | None = None) -> int:
        """Version N+1 born in the HSM, same size as version N. 0 if `expected_latest` moved meanwhile."""
        row = self.repo.entry(mount, entry_id)
        if row is None:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
        size = len(self._material(mount, entry_id, row.latest_version) or b"")
        if size not in KEY_SIZES:
            raise errors.Unsupported("only entries holding a hex key in `data` can be rotated by the broker")
        call.entry.key_version = self._append(mount, entry_id, material_secret(self._random(size)), "hsm",
                                              expected_latest=expected_latest)
        return call.entry.key_version

    @operation("keyring:SetRotation", Need("keyring:SetRotation", _entry), mutates=True)
    def set_rotation(self, call: Call, mount: str, entry_id: str, period_seconds: int | None) -> None:
        period = check_period(period_seconds)
        row = self.repo.entry(mount, entry_id)
        if row is None:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
        if period and len(self._material(mount, entry_id, row.latest_version) or b"") not in KEY_SIZES:
            raise errors.Unsupported("only entries holding a hex key in `data` can rotate on a schedule")
        if not self.repo.set_rotation(mount, entry_id, period, _now() + timedelta(seconds=period) if period else None):
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")

    @operation("keyring:Rotate", Need("keyring:Rotate", fixed(ALL_MOUNTS)), mutates=True)
    def rotate_due(self, call: Call, now: datetime | None = None) -> list[str]:
        """Rotate every entry whose period passed, each as its own `rotate` operation of the same caller. Safe in
        many processes (compare-and-set on the latest version)."""
        rotated = []
        for mount, entry_id, latest in self.repo.due(now or _now()):
            try:
                if self.rotate(call.ctx, mount, entry_id, expected_latest=latest):
                    rotated.append(f"{mount}/{entry_id}")
            except errors.NotReady:
                raise
            except errors.BrokerError:
                continue  # audited by rotate(); one entry that cannot rotate must not block the others
        call.entry.extra["rotated"] = len(rotated)
        return rotated

    @operation("keyring:Import", Need("keyring:Import", _entry), mutates=True)
    def import_entry(self, call: Call, mount: str, entry_id: str, versions: list[bytes], *,
                     custom_metadata: Mapping[str, str] | None = None) -> int:
        """Bring an existing database key in: its versions 1..n keep their material (the data on disk needs it).
        Returns how many versions were imported (0: the same material was already there)."""
        if not isinstance(versions, list) or not 1 <= len(versions) <= 1000:
            raise errors.ValidationError("give 1 to 1000 versions to import")
        for i, material in enumerate(versions, 1):
            if not isinstance(material, bytes | bytearray) or not 1 <= len(material) <= MAX_IMPORTED_KEY:
                raise errors.ValidationError(f"version {i}: a key is 1 to {MAX_IMPORTED_KEY} bytes")
        metadata = check_metadata(custom_metadata)
        self._refuse_nesting_v1(mount)
        row = self.repo.entry(mount, entry_id)
        if row is not None:
            # Importing the same file twice is fine; different material for an existing id is refused.
            existing = [self._material(mount, entry_id, v) for v in range(1, row.latest_version + 1)]
            if existing[:len(versions)] == [bytes(v) for v in versions]:
                call.entry.key_version = row.latest_version
                return 0
            raise errors.AlreadyExists(f"keyring entry {mount}/{entry_id} exists with other material")
        for i, material in enumerate(versions):
            call.entry.key_version = self._append(mount, entry_id, material_secret(bytes(material)), "imported",
                                                  create_only=i == 0, custom_metadata=metadata)
        return len(versions)

    @operation("keyring:Export", Need("keyring:Export", _whole_mount), dynamic=("keyring:Export",))
    def export_entries(self, call: Call, mount: str) -> list[ExportedEntry]:
        """Every version of every entry of a mount, unsealed, for leaving the bridge. Each entry is checked on its
        own too, so a Deny on one entry refuses the whole export rather than leaking it."""
        infos = self.repo.infos(mount)
        for info in infos:
            call.require("keyring:Export", resource=entry_resource(mount, info.entry_id))
        out = []
        for info in infos:
            secrets = []
            for v, _origin, _created in info.versions:
                if v in info.destroyed:
                    continue  # its material is gone
                row = self.repo.version(mount, info.entry_id, v)
                if row is None:
                    raise errors.InvalidState(f"keyring entry {mount}/{info.entry_id} lost version {v}")
                secrets.append((v, self._unseal(mount, info.entry_id, v, row.sealed)))
            out.append(ExportedEntry(info, secrets))
        call.entry.extra["entries"] = len(out)
        return out

    # ------------------------------------------------------------------------------------------ Vault KV v2 conventions
    # Soft delete is reversible (the sealed material stays); only an approved request destroys material
    # (`destroy_kind`, executed through broker/approvals.py). Versions are never pruned or expired.

    def _versions(self, mount: str, entry_id: str, versions: Any) -> list[int]:
        row = self.repo.entry(mount, entry_id)
        if row is None:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
        if versions is None:
            return [row.latest_version]
        return check_versions(versions)

    @operation("keyring:Delete", Need("keyring:Delete", _entry), mutates=True)
    def delete_versions(self, call: Call, mount: str, entry_id: str, versions: Any = None) -> list[int]:
        """Soft-delete versions (default: the latest): reads of them answer 404, the material is kept, `undelete`
        brings them back. -> the versions deleted now."""
        changed = self.repo.set_deleted(mount, entry_id, self._versions(mount, entry_id, versions), _now())
        call.entry.extra["versions"] = changed
        return changed

    @operation("keyring:Delete", Need("keyring:Delete", _entry), mutates=True)
    def delete_entry(self, call: Call, mount: str, entry_id: str) -> list[int]:
        """Vault's "delete metadata and all versions", kept reversible: every version soft-deleted (their material
        is destroyed only through an approved request)."""
        infos = self.repo.infos(mount, entry_id)
        if not infos:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
        changed = self.repo.set_deleted(mount, entry_id, [v for v, _o, _c in infos[0].versions], _now())
        call.entry.extra["versions"] = changed
        return changed

    @operation("keyring:Undelete", Need("keyring:Undelete", _entry), mutates=True)
    def undelete_versions(self, call: Call, mount: str, entry_id: str, versions: Any) -> list[int]:
        """Bring soft-deleted versions back (destroyed ones cannot come back). -> the versions restored now."""
        changed = self.repo.set_deleted(mount, entry_id, self._versions(mount, entry_id, versions), None)
        call.entry.extra["versions"] = changed
        return changed

    @operation("keyring:Write", Need("keyring:Write", _entry), mutates=True)
    def update_metadata(self, call: Call, mount: str, entry_id: str, *, custom_metadata: Any = None,
                        settings: Mapping[str, Any] | None = None) -> None:
        """An entry's custom metadata (Vault KV v2 metadata write). Version-keeping settings stay what they are."""
        check_kv_settings(settings or {})
        if custom_metadata is not None and not self.repo.set_custom_metadata(
                mount, entry_id, check_metadata(custom_metadata), _now()):
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")

    @operation("keyring:CreateMount", Need("keyring:CreateMount", admin_target))
    def configure_kv(self, call: Call, mount: str, settings: Any) -> None:
        """A Vault client configuring a KV v2 mount (`<mount>/config`): accepted only for the values the bridge
        keeps anyway (check_kv_settings), so it changes nothing; anything else is refused with the reason."""
        if not isinstance(settings, Mapping):
            raise errors.ValidationError("the configuration must be a JSON object")
        check_kv_settings(settings)

    @operation("keyring:DescribeMount", self_service=True)
    def list_mounts(self, call: Call) -> list[MountInfo]:
        """The mounts the caller may describe (registered ones and those with entries), for Vault's `sys/mounts`.
        Declared on the caller's own token: each mount is shown only if the caller holds DescribeMount on it."""
        known = {**dict.fromkeys(self.repo.mounts_with_entries(), 2), **self.repo.mounts()}
        return [MountInfo(m, v) for m, v in sorted(known.items())
                if call.holds("keyring:DescribeMount", resource=mount_resource(m))]

    @within("keyring:Destroy", resource=lambda a: entry_resource(a["mount"], a["entry_id"]))
    def destroy_approved(self, call: Call, mount: str, entry_id: str, versions: list[int]) -> list[int]:
        """Destroy versions' material for good: only inside the execution of an approved `keyring-destroy` request
        (the call authorized keyring:Destroy on this entry). -> the versions destroyed now."""
        if self.repo.entry(mount, entry_id) is None:
            raise errors.NotFound(f"keyring entry {mount}/{entry_id} not found")
        done = self.repo.destroy(mount, entry_id, check_versions(versions), _now())
        call.entry.extra["versions"] = done
        return done

    # ------------------------------------------------------------------------------------------ administration

    @operation("keyring:CreateMount", Need("keyring:CreateMount", admin_target), mutates=True)
    def create_mount(self, call: Call, mount: str, kv_version: int = 2) -> int:
        """Register a mount's KV layout. A mount may not nest in or above another registered mount, or one that
        has entries: the bridge routes `/v1/<path>` by the registered mounts first."""
        if kv_version not in (1, 2):
            raise errors.ValidationError("KV version must be 1 or 2")
        registered = self.repo.mounts()
        others = (set(registered) | (self.repo.mounts_with_entries() if kv_version == 1 else set())) - {mount}
        clash = sorted(m for m in others if _nests(m, mount))
        if clash:
            raise errors.ValidationError(f"mount {mount} nests with mount {clash[0]}")
        self.repo.put_mount(mount, kv_version, _now())
        return kv_version

    @operation("keyring:CreateToken", Need("keyring:CreateToken", admin_target), mutates=True)
    def create_token(self, call: Call, mount: str, ttl_seconds: int | None = None) -> IssuedToken:
        """A broker token with policy `keyring:<mount>` for a database, not renewable. No expiry unless asked (an
        expired token stops a running database), but never beyond the minting caller's own token."""
        if ttl_seconds is not None and (not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool)
                                        or not 60 <= ttl_seconds <= 10 * 365 * 86400):
            raise errors.ValidationError("the token TTL must be 60 seconds to 10 years")
        policy = check_hand_on(call, mount)
        ttl = within_caller(self._tokens, call, ttl_seconds)
        with guarded():
            token, accessor = self._tokens.create(policy, [policy], ttl_seconds=ttl, max_ttl_seconds=ttl,
                                                  renewable=False)
        call.entry.extra["token_accessor"] = accessor  # the gate HMACs extras named like a token
        return IssuedToken(token, accessor, [policy], ttl or 0)

    def _refuse_nesting_v1(self, mount: str) -> None:
        """Entries in a mount nested in or above a registered KV v1 mount could never be reached by the bridge."""
        for other, kv in self.repo.mounts().items():
            if kv == 1 and other != mount and _nests(other, mount):
                raise errors.ValidationError(f"mount {mount} nests with the KV v1 mount {other}")


def check_versions(versions: Any) -> list[int]:
    if not isinstance(versions, list) or not 1 <= len(versions) <= MAX_VERSIONS_PER_CALL or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**31 for v in versions):
        raise errors.ValidationError("versions must be a list of positive version numbers")
    return sorted(set(versions))


# What a Vault client may set on a KV v2 mount or entry: only the values the bridge keeps (never prune, never expire
# versions, no mandatory check-and-set). Anything else is refused rather than silently ignored.
KV_SETTINGS = {"max_versions": 0, "cas_required": False, "delete_version_after": "0s"}


def check_kv_settings(settings: Mapping[str, Any]) -> None:
    for name, value in settings.items():
        if name not in KV_SETTINGS:
            raise errors.ValidationError(f"unknown setting {str(name)[:64]!r}")
        if value is None:
            continue
        wanted = KV_SETTINGS[name]
        if value != wanted and not (name == "delete_version_after" and value in ("0", 0)):
            raise errors.ValidationError(f"{name} must stay {json.dumps(wanted)}: the keyring bridge never prunes "
                                         "or expires key versions (destroying one needs an approved request)")


def destroy_kind(keyring: KeyringService) -> Any:
    """The quorum-approved operation `keyring-destroy`: destroy versions of one entry for good. Params
    {"mount", "entry_id", "versions"}; requester, approvers and executor must hold keyring:Destroy on the entry."""
    from broker.approvals import Kind

    def check(_keys: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        mount, entry_id = check_mount(params.get("mount")), check_id(params.get("entry_id"))
        return {"mount": mount, "entry_id": entry_id, "versions": check_versions(params.get("versions"))}

    def target(_keys: Any, params: dict[str, Any]) -> Target:
        return Target(resource=entry_resource(params["mount"], params["entry_id"]))

    def execute(_keys: Any, call: Call, params: dict[str, Any], _target: Target) -> dict[str, Any]:
        done = keyring.destroy_approved(call, params["mount"], params["entry_id"], params["versions"])
        return {"Mount": params["mount"], "EntryId": params["entry_id"], "Destroyed": done}

    return Kind(DESTROY_KIND, "keyring:Destroy", check, target, execute, cooling_off_seconds=24 * 3600)


def _nests(a: str, b: str) -> bool:
    return a.startswith(b + "/") or b.startswith(a + "/")
