"""Administration of keyring entries over the native API (/v1/keyring/...): what `kms-broker keyring` calls.

Declared with `broker.api.native.op`, so they are authenticated, audited on refusal and listed in /v1/openapi.json.
Entry operations authorize `keyring/<mount>/<id>` (a database's `keyring:<mount>` token may manage its own mount);
minting tokens and AppRoles, listing every mount and registering mounts authorize `keyring-admin/<mount>`, which
only the root policy (or a future admin policy) allows.
"""

from __future__ import annotations

from typing import Literal

from flask import current_app
from pydantic import Field

from broker.api import schemas as s
from broker.api.native import op, parse_query
from broker.service import KeyService, RequestContext
from keyring_bridge.approle import AppRoles
from keyring_bridge.keyring import KeyringService, check_id, check_mount


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
    TokenTtlSeconds: int | None = Field(default=None, ge=60)


class ListQuery(s.Body):
    model_config = s.Body.model_config | {"strict": False}
    mount: str | None = None


def keyring_of(svc: KeyService) -> KeyringService:
    ext = current_app.extensions
    if "kms_keyring" not in ext:
        ext["kms_keyring"] = KeyringService(svc, ext["kms_settings"].root_of_trust)
    return ext["kms_keyring"]


@op("/keyring/entries", "POST", "CreateKeyringEntry", "Create a keyring entry whose version 1 is born in the HSM",
    CreateEntry, 201)
def create_entry(svc: KeyService, ctx: RequestContext, b: CreateEntry):
    mount, entry_id = check_mount(b.Mount), check_id(b.Id)
    version = keyring_of(svc).create(ctx, mount, entry_id, key_bytes=b.KeyBytes,
                                     rotation_period_seconds=b.RotationPeriodSeconds)
    return {"Mount": mount, "Id": entry_id, "Version": version}


@op("/keyring/entries", "GET", "ListKeyringEntries", "List keyring entries and their versions (?mount=M)")
def list_entries(svc: KeyService, ctx: RequestContext):
    q = parse_query(ListQuery)
    mount = check_mount(q.mount) if q.mount else None
    return {"Entries": [i.to_dict() for i in keyring_of(svc).list_entries(ctx, mount)]}


@op("/keyring/entries/rotate", "POST", "RotateKeyringEntry", "Add version N+1 (born in the HSM) to an entry",
    EntryRef)
def rotate_entry(svc: KeyService, ctx: RequestContext, b: EntryRef):
    mount, entry_id = check_mount(b.Mount), check_id(b.Id)
    return {"Mount": mount, "Id": entry_id, "Version": keyring_of(svc).rotate(ctx, mount, entry_id)}


@op("/keyring/entries/rotation", "POST", "SetKeyringRotation", "Set or clear an entry's rotation period",
    SetRotation)
def set_rotation(svc: KeyService, ctx: RequestContext, b: SetRotation):
    mount, entry_id = check_mount(b.Mount), check_id(b.Id)
    keyring_of(svc).set_rotation(ctx, mount, entry_id, b.PeriodSeconds)
    return {"Mount": mount, "Id": entry_id, "RotationPeriodSeconds": b.PeriodSeconds}


@op("/keyring/rotate-due", "POST", "RotateDueKeyringEntries", "Rotate every entry whose rotation period passed")
def rotate_due(svc: KeyService, ctx: RequestContext):
    return {"Rotated": keyring_of(svc).rotate_due(ctx)}


@op("/keyring/import", "POST", "ImportKeyringEntries", "Import existing database keys (versions keep their material)",
    ImportEntries)
def import_entries(svc: KeyService, ctx: RequestContext, b: ImportEntries):
    mount, keyring = check_mount(b.Mount), keyring_of(svc)
    imported, unchanged = [], []
    for item in b.Entries:
        entry_id = check_id(item.Id)
        n = keyring.import_entry(ctx, mount, entry_id, list(item.Versions), custom_metadata=item.CustomMetadata)
        (imported if n else unchanged).append(entry_id)
    return {"Mount": mount, "Imported": imported, "Unchanged": unchanged}


@op("/keyring/export", "POST", "ExportKeyringEntries", "Every version of every entry of a mount, in plaintext",
    MountRef)
def export_entries(svc: KeyService, ctx: RequestContext, b: MountRef):
    mount = check_mount(b.Mount)
    out = []
    for info, secrets in keyring_of(svc).export_entries(ctx, mount):
        out.append({"Id": info.entry_id, "CustomMetadata": info.custom_metadata,
                    "Versions": [{"Version": v, "Secret": secret} for (v, _o, _c), secret in zip(info.versions, secrets,
                                                                                                  strict=True)]})
    return {"Mount": mount, "Entries": out}


@op("/keyring/mounts", "POST", "CreateKeyringMount", "Register a mount and its KV version (default 2)", CreateMount,
    201)
def create_mount(svc: KeyService, ctx: RequestContext, b: CreateMount):
    mount = check_mount(b.Mount)
    with svc.operation(ctx, "keyring:CreateMount") as entry:
        svc.authorize(ctx, entry, "keyring:CreateMount", None, resource=f"keyring-admin/{mount}")
        keyring_of(svc).ensure_mount(mount, b.KvVersion)
    return {"Mount": mount, "KvVersion": b.KvVersion}


@op("/keyring/tokens", "POST", "CreateKeyringToken", "A broker token with policy keyring:<mount> for a database",
    CreateToken, 201)
def create_token(svc: KeyService, ctx: RequestContext, b: CreateToken):
    mount = check_mount(b.Mount)
    tokens = current_app.extensions["kms_tokens"]
    with svc.operation(ctx, "keyring:CreateToken") as entry:
        svc.authorize(ctx, entry, "keyring:CreateToken", None, resource=f"keyring-admin/{mount}")
        token, accessor = tokens.create(f"keyring:{mount}", [f"keyring:{mount}"], ttl_seconds=b.TtlSeconds)
        entry.extra["token_accessor"] = svc.audit.hmac_value(accessor)
    return {"token": token, "accessor": accessor, "policies": [f"keyring:{mount}"]}


@op("/keyring/approles", "POST", "CreateKeyringAppRole", "An AppRole (role_id, secret_id) bound to keyring:<mount>",
    CreateAppRole, 201)
def create_approle(svc: KeyService, ctx: RequestContext, b: CreateAppRole):
    mount = check_mount(b.Mount)
    role_id, secret_id = AppRoles(svc, current_app.extensions["kms_tokens"]).create(
        ctx, b.RoleName, mount, token_ttl_seconds=b.TokenTtlSeconds)
    return {"role_name": b.RoleName, "role_id": role_id, "secret_id": secret_id, "policies": [f"keyring:{mount}"]}
