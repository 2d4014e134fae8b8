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


def services() -> Any:
    """The broker's services (broker.services.Services), built by the application factory."""
    return current_app.extensions["kms"]


@op("/multikeys", "POST", "CreateMultiKey", "Create a multi-key: member keys on several providers, in decrypt "
    "priority order", CreateMultiKey, 201)
def create_multikey(svc: Svc, ctx: Ctx, b: CreateMultiKey):
    return services().multikeys.create(ctx, name=b.Name, members=b.Members, description=b.Description, quorum=b.Quorum)


@op("/multikeys", "GET", "ListMultiKeys", "List multi-keys")
def list_multikeys(svc: Svc, ctx: Ctx):
    return services().multikeys.list_multikeys(ctx)


@op("/multikeys/<path:mk>", "GET", "DescribeMultiKey", "Describe a multi-key (id or name), with member health")
def describe_multikey(svc: Svc, ctx: Ctx, mk: str):
    return services().multikeys.describe(ctx, mk)


@op("/multikeys/<path:mk>", "PATCH", "UpdateMultiKey", "Change a multi-key's members or quorum", UpdateMultiKey)
def update_multikey(svc: Svc, ctx: Ctx, b: UpdateMultiKey, mk: str):
    quorum: Any = None if b.ClearQuorum else (b.Quorum if b.Quorum is not None else ...)
    return services().multikeys.update(ctx, mk, members=b.Members, quorum=quorum)


@op("/multikeys/<path:mk>", "DELETE", "DeleteMultiKey", "Forget a multi-key (its ciphertexts stay decryptable "
    "through the member keys)")
def delete_multikey(svc: Svc, ctx: Ctx, mk: str):
    services().multikeys.delete(ctx, mk)


@op("/multikeys/<path:mk>/encrypt", "POST", "MultiKeyEncrypt", "Encrypt under every member (ciphertext scheme 3)",
    MultiEncrypt)
def multikey_encrypt(svc: Svc, ctx: Ctx, b: MultiEncrypt, mk: str):
    return services().multikeys.encrypt(ctx, mk, b.Plaintext, context=b.EncryptionContext)


@op("/multikeys/<path:mk>/generate-data-key", "POST", "MultiKeyGenerateDataKey",
    "A data key wrapped under every member", s.GenerateDataKey)
def multikey_generate_data_key(svc: Svc, ctx: Ctx, b: s.GenerateDataKey, mk: str):
    return services().multikeys.generate_data_key(ctx, mk, key_spec=b.KeySpec, number_of_bytes=b.NumberOfBytes,
                                                  context=b.EncryptionContext)


@op("/multikeys/<path:mk>/generate-data-key-without-plaintext", "POST", "MultiKeyGenerateDataKeyWithoutPlaintext",
    "A data key wrapped under every member, without its plaintext", s.GenerateDataKey)
def multikey_generate_data_key_without_plaintext(svc: Svc, ctx: Ctx, b: s.GenerateDataKey, mk: str):
    return services().multikeys.generate_data_key_without_plaintext(
        ctx, mk, key_spec=b.KeySpec, number_of_bytes=b.NumberOfBytes, context=b.EncryptionContext)


@op("/multikeys/decrypt", "POST", "MultiKeyDecrypt", "Decrypt a scheme-3 ciphertext with the first member that "
    "answers (priority order, unhealthy providers last)", MultiDecrypt)
def multikey_decrypt(svc: Svc, ctx: Ctx, b: MultiDecrypt):
    return services().multikeys.decrypt(ctx, b.CiphertextBlob, context=b.EncryptionContext)


@op("/multikeys/rewrap", "POST", "MultiKeyRewrap", "Re-wrap a scheme-3 ciphertext for the multi-key's current "
    "members, without re-encrypting the data", MultiRewrap)
def multikey_rewrap(svc: Svc, ctx: Ctx, b: MultiRewrap):
    return services().multikeys.rewrap(ctx, b.CiphertextBlob, context=b.EncryptionContext, refresh=b.Refresh)


@op("/replicated-keys", "POST", "CreateReplicatedKey", "A key born in the HSM and imported into each target cloud "
    "through its own import protocol (escrow copy in the store)", CreateReplicatedKey, 201)
def create_replicated_key(svc: Svc, ctx: Ctx, b: CreateReplicatedKey):
    return services().replicated.create(ctx, targets=b.Targets, key_spec=b.KeySpec, description=b.Description,
                                  tags=b.Tags)


@op("/replicated-keys/<path:key>", "GET", "DescribeReplicatedKey", "A replicated key and its copies")
def describe_replicated_key(svc: Svc, ctx: Ctx, key: str):
    return services().replicated.describe(ctx, key)


@op("/replicated-keys/<path:key>/rotate", "POST", "RotateReplicatedKey", "New HSM material, imported into every "
    "copy as a new version")
def rotate_replicated_key(svc: Svc, ctx: Ctx, key: str):
    return services().replicated.rotate(ctx, key)
