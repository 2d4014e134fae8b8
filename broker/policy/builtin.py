"""Built-in policies for the seed roles. They cannot be overwritten; operators add their own beside them.

key-admin is "lifecycle, no crypto": besides the crypto actions it lacks kms:GetParametersForImport and
kms:ImportKeyMaterial, because whoever imports key material knows the key (and so can decrypt, offline, whatever is
encrypted under it). docs/security-policies.md tabulates what each built-in can and cannot reach.
"""

from __future__ import annotations

import functools

from broker.policy.document import PolicyDocument, parse_document
from broker.policy.keyring_names import mount_glob, policy_mount

_LIFECYCLE = [f"kms:{a}" for a in (
    "CreateKey", "DescribeKey", "ListKeys", "UpdateKeyDescription", "EnableKey", "DisableKey", "ScheduleKeyDeletion",
    "CancelKeyDeletion", "CreateAlias", "UpdateAlias", "DeleteAlias", "ListAliases", "TagResource", "UntagResource",
    "ListResourceTags", "EnableKeyRotation", "DisableKeyRotation", "GetKeyRotationStatus", "RotateKeyOnDemand",
    "ListKeyRotations", "ListKeyVersions", "DeleteImportedKeyMaterial",
    "PutKeyPolicy", "GetKeyPolicy", "ListKeyPolicies", "CreateGrant", "ListGrants", "ListRetirableGrants",
    "RevokeGrant", "DescribeCustomKeyStores")]
_CRYPTO = [f"kms:{a}" for a in (
    "DescribeKey", "Encrypt", "Decrypt", "ReEncrypt*", "GenerateDataKey*", "Sign", "Verify", "GetPublicKey",
    "GenerateMac", "VerifyMac", "GenerateRandom")]
_READ = [f"kms:{a}" for a in (
    "DescribeKey", "ListKeys", "ListAliases", "ListResourceTags", "GetKeyRotationStatus", "ListKeyRotations",
    "ListKeyVersions", "GetKeyPolicy", "ListKeyPolicies", "ListGrants", "DescribeCustomKeyStores")] + [
    "broker:ReadAudit", "broker:VerifyAudit", "broker:GetPolicy", "broker:ListPolicies"]

BUILTIN_DOCUMENTS = {
    "key-admin": {"Version": "2012-10-17", "Statement": [
        {"Sid": "KeyLifecycleNoCrypto", "Effect": "Allow", "Action": _LIFECYCLE, "Resource": "*"}]},
    "key-user": {"Version": "2012-10-17", "Statement": [
        {"Sid": "CryptoOnPermittedKeys", "Effect": "Allow", "Action": _CRYPTO, "Resource": "*"}]},
    "keyring-admin": {"Version": "2012-10-17", "Statement": [
        {"Sid": "ManageKeyringMounts", "Effect": "Allow", "Action": "keyring:*",
         "Resource": ["keyring/*", "keyring-admin/*"]}]},
    "auditor": {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadMetadataAndAudit", "Effect": "Allow", "Action": _READ, "Resource": "*"}]},
}
BUILTIN: dict[str, PolicyDocument] = {name: parse_document(doc) for name, doc in BUILTIN_DOCUMENTS.items()}
RESERVED = {"root", *BUILTIN}


def builtin(name: str) -> PolicyDocument | None:
    """A built-in document, including the family keyring:<mount> (a database reads/writes its own mount).

    `keyring:<mount>` allows `keyring:*` on `keyring/<mount as one segment>/*` (broker/policy/keyring_names.py):
    every entry of that mount and nothing of a mount nested in or above it. A name whose mount is not a valid
    mount (`keyring:*`, `keyring:kv/..`) is no policy at all, so a glob can never be smuggled in through it.
    """
    if name in BUILTIN:
        return BUILTIN[name]
    mount = policy_mount(name)
    return None if mount is None else _mount_document(mount)


@functools.lru_cache(maxsize=4096)
def _mount_document(mount: str) -> PolicyDocument:
    """Parsed once per mount: a database's every key read asks for it (documents are never mutated)."""
    return parse_document({"Version": "2012-10-17", "Statement": [
        {"Sid": "OwnKeyringMount", "Effect": "Allow", "Action": "keyring:*", "Resource": mount_glob(mount)}]})
