"""Built-in policies for the seed roles. They cannot be overwritten; operators add their own beside them.

key-admin is "lifecycle, no crypto": besides the crypto actions it lacks kms:GetParametersForImport and
kms:ImportKeyMaterial, because whoever imports key material knows the key (and so can decrypt, offline, whatever is
encrypted under it). docs/security-policies.md tabulates what each built-in can and cannot reach.
"""

from __future__ import annotations

from broker.policy.document import PolicyDocument, parse_document

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
    "broker:ReadAudit", "broker:GetPolicy", "broker:ListPolicies"]

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
    """A built-in document, including the family keyring:<mount> (a database reads/writes its own mount)."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name.startswith("keyring:") and len(name) > len("keyring:"):
        mount = name[len("keyring:"):]
        return parse_document({"Version": "2012-10-17", "Statement": [
            {"Sid": "OwnKeyringMount", "Effect": "Allow", "Action": "keyring:*", "Resource": f"keyring/{mount}/*"}]})
    return None
