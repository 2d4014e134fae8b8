"""Administration of keyring entries over the native API (/v1/keyring/...): what `kms-broker keyring` calls.

Parse, call the keyring services (`Services.keyring`, `Services.keyring_approles`), render; the services declare
what each operation is authorized on. Entry operations are checked on `keyring/<mount>/<id>` (the mount written as
one segment, docs/keyring-bridge.md), so a database's `keyring:<mount>` token may manage its own mount and nothing
else; minting tokens and AppRoles and registering mounts on `keyring-admin/<mount>`, and what they mint can carry no
more than the caller holds on that mount; listing every mount and the rotate-due sweep on `keyring/*`.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import current_app
from pydantic import Field

from broker.api import schemas as s
from broker.api.native import op, parse_query
from broker.service import RequestContext
from keyring_bridge.approle import KeyringAppRoles
from keyring_bridge.keyring import EntryInfo, KeyringService, iso


class CreateEntry(s.Body):
    Mount: str
    Id: str
    KeyBytes: Literal[16, 24, 32] = 32
    RotationPeriodSeconds: int | None = Field(default=None, ge=60)


class EntryRef(s.Body):
    Mount: str
    Id: str


class SetRotation(s.Body):
    Mount: str
    Id: str
    PeriodSeconds: int | None = Field(default=None, ge=60)


class ImportItem(s.Body):
    Id: str
    Versions: list[s.B64] = Field(min_length=1, max_length=1000)
    CustomMetadata: dict[str, str] = Field(default_factory=dict)


class ImportEntries(s.Body):
    Mount: str
    Entries: list[ImportItem] = Field(min_length=1, max_length=10000)


class MountRef(s.Body):
    Mount: str


class CreateMount(s.Body):
    Mount: str
    KvVersion: Literal[1, 2] = 2


class CreateToken(s.Body):
    Mount: str
    TtlSeconds: int | None = Field(default=None, ge=60)


class CreateAppRole(s.Body):
    Mount: str
    RoleName: str
    TokenTtlSeconds: int | None = Field(default=None, ge=1)
    SecretIdTtlSeconds: int | None = Field(default=None, ge=1)


class ListQuery(s.Body):
    model_config = s.Body.model_config | {"strict": False}
    mount: str | None = None


def _keyring() -> KeyringService:
    return current_app.extensions["kms"].keyring


def _approles() -> KeyringAppRoles:
    return current_app.extensions["kms"].keyring_approles


def _mount(value: str) -> str:
    """The CLI and scripts may write `kv/mdb/`: the mount is the path between the slashes."""
    return value.strip("/")


def render_entry(info: EntryInfo) -> dict[str, Any]:
    return {
        "Mount": info.mount, "Id": info.entry_id, "LatestVersion": info.latest_version,
        "CreatedAt": iso(info.created_at), "UpdatedAt": iso(info.updated_at),
        "CustomMetadata": info.custom_metadata, "RotationPeriodSeconds": info.rotation_period_seconds,
        "NextRotationAt": iso(info.next_rotation_at) or None,
        "Versions": [{"Version": v, "Origin": o, "CreatedAt": iso(c)} for v, o, c in info.versions],
    }


@op("/keyring/entries", "POST", "CreateKeyringEntry", "Create a keyring entry whose version 1 is born in the HSM",
    CreateEntry, 201)
def create_entry(_svc: Any, ctx: RequestContext, b: CreateEntry):
    mount = _mount(b.Mount)
    version = _keyring().create(ctx, mount, b.Id, key_bytes=b.KeyBytes,
                                rotation_period_seconds=b.RotationPeriodSeconds)
    return {"Mount": mount, "Id": b.Id, "Version": version}


@op("/keyring/entries", "GET", "ListKeyringEntries", "List keyring entries and their versions (?mount=M)",
    query=ListQuery)
def list_entries(_svc: Any, ctx: RequestContext):
    q = parse_query()
    infos = _keyring().list_entries(ctx, _mount(q.mount)) if q.mount else _keyring().list_all(ctx)
    return {"Entries": [render_entry(i) for i in infos]}


@op("/keyring/entries/rotate", "POST", "RotateKeyringEntry", "Add version N+1 (born in the HSM) to an entry",
    EntryRef)
def rotate_entry(_svc: Any, ctx: RequestContext, b: EntryRef):
    mount = _mount(b.Mount)
    return {"Mount": mount, "Id": b.Id, "Version": _keyring().rotate(ctx, mount, b.Id)}


@op("/keyring/entries/rotation", "POST", "SetKeyringRotation", "Set or clear an entry's rotation period",
    SetRotation)
def set_rotation(_svc: Any, ctx: RequestContext, b: SetRotation):
    mount = _mount(b.Mount)
    _keyring().set_rotation(ctx, mount, b.Id, b.PeriodSeconds)
    return {"Mount": mount, "Id": b.Id, "RotationPeriodSeconds": b.PeriodSeconds}


@op("/keyring/rotate-due", "POST", "RotateDueKeyringEntries", "Rotate every entry whose rotation period passed")
def rotate_due(_svc: Any, ctx: RequestContext):
    return {"Rotated": _keyring().rotate_due(ctx)}


@op("/keyring/import", "POST", "ImportKeyringEntries", "Import existing database keys (versions keep their material)",
    ImportEntries)
def import_entries(_svc: Any, ctx: RequestContext, b: ImportEntries):
    mount, keyring = _mount(b.Mount), _keyring()
    imported, unchanged = [], []
    for item in b.Entries:
        n = keyring.import_entry(ctx, mount, item.Id, list(item.Versions), custom_metadata=item.CustomMetadata)
        (imported if n else unchanged).append(item.Id)
    return {"Mount": mount, "Imported": imported, "Unchanged": unchanged}


@op("/keyring/export", "POST", "ExportKeyringEntries", "Every version of every entry of a mount, in plaintext",
    MountRef)
def export_entries(_svc: Any, ctx: RequestContext, b: MountRef):
    mount = _mount(b.Mount)
    return {"Mount": mount, "Entries": [
        {"Id": e.info.entry_id, "CustomMetadata": e.info.custom_metadata,
         "Versions": [{"Version": v, "Secret": secret} for v, secret in e.secrets]}
        for e in _keyring().export_entries(ctx, mount)]}


@op("/keyring/mounts", "POST", "CreateKeyringMount", "Register a mount and its KV version (default 2)", CreateMount,
    201)
def create_mount(_svc: Any, ctx: RequestContext, b: CreateMount):
    mount = _mount(b.Mount)
    return {"Mount": mount, "KvVersion": _keyring().create_mount(ctx, mount, b.KvVersion)}


@op("/keyring/tokens", "POST", "CreateKeyringToken", "A broker token with policy keyring:<mount> for a database",
    CreateToken, 201)
def create_token(_svc: Any, ctx: RequestContext, b: CreateToken):
    issued = _keyring().create_token(ctx, _mount(b.Mount), b.TtlSeconds)
    return {"token": issued.token, "accessor": issued.accessor, "policies": issued.policies,
            "ttl": issued.ttl_seconds}


@op("/keyring/approles", "POST", "CreateKeyringAppRole", "An AppRole (role_id, secret_id) bound to keyring:<mount>",
    CreateAppRole, 201)
def create_approle(_svc: Any, ctx: RequestContext, b: CreateAppRole):
    role = _approles().create(ctx, b.RoleName, _mount(b.Mount), token_ttl_seconds=b.TokenTtlSeconds,
                              secret_id_ttl_seconds=b.SecretIdTtlSeconds)
    return {"role_name": role.role_name, "role_id": role.role_id, "secret_id": role.secret_id,
            "policies": role.policies, "secret_id_expires_at": iso(role.secret_id_expires_at),
            "token_ttl": role.token_ttl_seconds}
