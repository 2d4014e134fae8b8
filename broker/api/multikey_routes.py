"""Native routes for multi-keys (envelope keyrings across providers) and replicated (BYOK) keys.

"multikey" and not "keyring": /v1/keyring/... belongs to the MySQL keyring bridge. Importing this module registers
the routes on the native blueprint (and so in the OpenAPI document).
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from pydantic import Field

from broker.api import schemas as s
from broker.api.native import op
from broker.service import KeyService, RequestContext

Svc = KeyService
Ctx = RequestContext


class CreateMultiKey(s.Body):
    Name: str
    Members: list[str]
    Description: str = ""
    Quorum: int | None = None


class UpdateMultiKey(s.Body):
    Members: list[str] | None = None
    Quorum: int | None = Field(default=None)
    ClearQuorum: bool = False


class MultiEncrypt(s.Body):
    Plaintext: s.B64
    EncryptionContext: s.Context | None = None


class MultiDecrypt(s.Body):
    CiphertextBlob: s.B64
    EncryptionContext: s.Context | None = None


class MultiRewrap(s.Body):
    CiphertextBlob: s.B64
    EncryptionContext: s.Context | None = None
    Refresh: bool = False


class CreateReplicatedKey(s.Body):
    Targets: list[str]
    KeySpec: str = "SYMMETRIC_DEFAULT"
    Description: str = ""
    Tags: dict[str, str] | None = None


def multikeys(svc: Svc) -> Any:
    from broker.replication.keyrings import MultiKeys

    ext = current_app.extensions
    if ext.get("kms_multikeys") is None or ext["kms_multikeys"].service is not svc:
        ext["kms_multikeys"] = MultiKeys(svc)
    return ext["kms_multikeys"]


def replicated(svc: Svc) -> Any:
    from broker.replication.replicated import ReplicatedKeys

    return ReplicatedKeys(svc)


@op("/multikeys", "POST", "CreateMultiKey", "Create a multi-key: member keys on several providers, in decrypt "
    "priority order", CreateMultiKey, 201)
def create_multikey(svc: Svc, ctx: Ctx, b: CreateMultiKey):
    return multikeys(svc).create(ctx, name=b.Name, members=b.Members, description=b.Description, quorum=b.Quorum)


@op("/multikeys", "GET", "ListMultiKeys", "List multi-keys")
def list_multikeys(svc: Svc, ctx: Ctx):
    return multikeys(svc).list(ctx)


@op("/multikeys/<path:mk>", "GET", "DescribeMultiKey", "Describe a multi-key (id or name), with member health")
def describe_multikey(svc: Svc, ctx: Ctx, mk: str):
    return multikeys(svc).describe(ctx, mk)


@op("/multikeys/<path:mk>", "PATCH", "UpdateMultiKey", "Change a multi-key's members or quorum", UpdateMultiKey)
def update_multikey(svc: Svc, ctx: Ctx, b: UpdateMultiKey, mk: str):
    quorum: Any = None if b.ClearQuorum else (b.Quorum if b.Quorum is not None else ...)
    return multikeys(svc).update(ctx, mk, members=b.Members, quorum=quorum)


@op("/multikeys/<path:mk>", "DELETE", "DeleteMultiKey", "Forget a multi-key (its ciphertexts stay decryptable "
    "through the member keys)")
def delete_multikey(svc: Svc, ctx: Ctx, mk: str):
    multikeys(svc).delete(ctx, mk)


@op("/multikeys/<path:mk>/encrypt", "POST", "MultiKeyEncrypt", "Encrypt under every member (ciphertext scheme 3)",
    MultiEncrypt)
def multikey_encrypt(svc: Svc, ctx: Ctx, b: MultiEncrypt, mk: str):
    return multikeys(svc).encrypt(ctx, mk, b.Plaintext, context=b.EncryptionContext)


@op("/multikeys/<path:mk>/generate-data-key", "POST", "MultiKeyGenerateDataKey",
    "A data key wrapped under every member", s.GenerateDataKey)
def multikey_generate_data_key(svc: Svc, ctx: Ctx, b: s.GenerateDataKey, mk: str):
    return multikeys(svc).generate_data_key(ctx, mk, key_spec=b.KeySpec, number_of_bytes=b.NumberOfBytes,
                                            context=b.EncryptionContext)


@op("/multikeys/decrypt", "POST", "MultiKeyDecrypt", "Decrypt a scheme-3 ciphertext with the first member that "
    "answers (priority order, unhealthy providers last)", MultiDecrypt)
def multikey_decrypt(svc: Svc, ctx: Ctx, b: MultiDecrypt):
    return multikeys(svc).decrypt(ctx, b.CiphertextBlob, context=b.EncryptionContext)


@op("/multikeys/rewrap", "POST", "MultiKeyRewrap", "Re-wrap a scheme-3 ciphertext for the multi-key's current "
    "members, without re-encrypting the data", MultiRewrap)
def multikey_rewrap(svc: Svc, ctx: Ctx, b: MultiRewrap):
    return multikeys(svc).rewrap(ctx, b.CiphertextBlob, context=b.EncryptionContext, refresh=b.Refresh)


@op("/replicated-keys", "POST", "CreateReplicatedKey", "A key born in the HSM and imported into each target cloud "
    "through its own import protocol (escrow copy in the store)", CreateReplicatedKey, 201)
def create_replicated_key(svc: Svc, ctx: Ctx, b: CreateReplicatedKey):
    return replicated(svc).create(ctx, targets=b.Targets, key_spec=b.KeySpec, description=b.Description,
                                  tags=b.Tags)


@op("/replicated-keys/<path:key>", "GET", "DescribeReplicatedKey", "A replicated key and its copies")
def describe_replicated_key(svc: Svc, ctx: Ctx, key: str):
    return replicated(svc).describe(ctx, key)


@op("/replicated-keys/<path:key>/rotate", "POST", "RotateReplicatedKey", "New HSM material, imported into every "
    "copy as a new version")
def rotate_replicated_key(svc: Svc, ctx: Ctx, key: str):
    return replicated(svc).rotate(ctx, key)
