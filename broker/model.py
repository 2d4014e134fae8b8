"""The key model: specs, usages, states, algorithms and lifecycle rules.

Pure value types with no I/O, shared by the service, the store and the providers (which receive them, never
import anything else from the broker).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class KeySpec(enum.StrEnum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
    HMAC_256 = "HMAC_256"
    HMAC_384 = "HMAC_384"
    HMAC_512 = "HMAC_512"
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"
    ECC_NIST_P256 = "ECC_NIST_P256"
    ECC_NIST_P384 = "ECC_NIST_P384"
    ECC_NIST_P521 = "ECC_NIST_P521"
    ECC_SECG_P256K1 = "ECC_SECG_P256K1"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("RSA_")

    @property
    def is_ecc(self) -> bool:
        return self.value.startswith("ECC_")

    @property
    def is_hmac(self) -> bool:
        return self.value.startswith("HMAC_")

    @property
    def is_asymmetric(self) -> bool:
        return self.is_rsa or self.is_ecc

    @property
    def rsa_bits(self) -> int:
        return int(self.value.split("_")[1])

    @property
    def hmac_bits(self) -> int:
        return int(self.value.split("_")[1])


class KeyUsage(enum.StrEnum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    SIGN_VERIFY = "SIGN_VERIFY"
    GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"


# Which usages each spec may take (AWS KMS rules).
ALLOWED_USAGES: dict[KeySpec, frozenset[KeyUsage]] = {
    KeySpec.SYMMETRIC_DEFAULT: frozenset({KeyUsage.ENCRYPT_DECRYPT}),
    KeySpec.HMAC_256: frozenset({KeyUsage.GENERATE_VERIFY_MAC}),
    KeySpec.HMAC_384: frozenset({KeyUsage.GENERATE_VERIFY_MAC}),
    KeySpec.HMAC_512: frozenset({KeyUsage.GENERATE_VERIFY_MAC}),
    KeySpec.RSA_2048: frozenset({KeyUsage.ENCRYPT_DECRYPT, KeyUsage.SIGN_VERIFY}),
    KeySpec.RSA_3072: frozenset({KeyUsage.ENCRYPT_DECRYPT, KeyUsage.SIGN_VERIFY}),
    KeySpec.RSA_4096: frozenset({KeyUsage.ENCRYPT_DECRYPT, KeyUsage.SIGN_VERIFY}),
    KeySpec.ECC_NIST_P256: frozenset({KeyUsage.SIGN_VERIFY}),
    KeySpec.ECC_NIST_P384: frozenset({KeyUsage.SIGN_VERIFY}),
    KeySpec.ECC_NIST_P521: frozenset({KeyUsage.SIGN_VERIFY}),
    KeySpec.ECC_SECG_P256K1: frozenset({KeyUsage.SIGN_VERIFY}),
}


class KeyState(enum.StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    PENDING_IMPORT = "PendingImport"
    DESTROYED = "Destroyed"  # material gone; the metadata row is kept for audit


class Origin(enum.StrEnum):
    BROKER = "AWS_KMS"  # material born in the provider (AWS calls this AWS_KMS)
    EXTERNAL = "EXTERNAL"  # material imported by the caller


class SigningAlgorithm(enum.StrEnum):
    RSASSA_PSS_SHA_256 = "RSASSA_PSS_SHA_256"
    RSASSA_PSS_SHA_384 = "RSASSA_PSS_SHA_384"
    RSASSA_PSS_SHA_512 = "RSASSA_PSS_SHA_512"
    RSASSA_PKCS1_V1_5_SHA_256 = "RSASSA_PKCS1_V1_5_SHA_256"
    RSASSA_PKCS1_V1_5_SHA_384 = "RSASSA_PKCS1_V1_5_SHA_384"
    RSASSA_PKCS1_V1_5_SHA_512 = "RSASSA_PKCS1_V1_5_SHA_512"
    ECDSA_SHA_256 = "ECDSA_SHA_256"
    ECDSA_SHA_384 = "ECDSA_SHA_384"
    ECDSA_SHA_512 = "ECDSA_SHA_512"

    @property
    def hash_name(self) -> str:
        """'sha256' | 'sha384' | 'sha512' — the digest the broker computes before calling a provider."""
        return "sha" + self.value.rsplit("_", 1)[1]

    @property
    def is_pss(self) -> bool:
        return self.value.startswith("RSASSA_PSS")

    @property
    def is_pkcs1(self) -> bool:
        return self.value.startswith("RSASSA_PKCS1")

    @property
    def is_ecdsa(self) -> bool:
        return self.value.startswith("ECDSA")


class MacAlgorithm(enum.StrEnum):
    HMAC_SHA_256 = "HMAC_SHA_256"
    HMAC_SHA_384 = "HMAC_SHA_384"
    HMAC_SHA_512 = "HMAC_SHA_512"

    @property
    def hash_name(self) -> str:
        return "sha" + self.value.rsplit("_", 1)[1]


class EncryptionAlgorithm(enum.StrEnum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"


def signing_algorithms_for(spec: KeySpec) -> list[SigningAlgorithm]:
    if spec.is_rsa:
        return [a for a in SigningAlgorithm if not a.is_ecdsa]
    return list(_ECDSA.get(spec, ()))


# AWS KMS: one ECDSA algorithm per curve (secp256k1, like P-256, signs SHA-256 digests).
_ECDSA = {KeySpec.ECC_NIST_P256: (SigningAlgorithm.ECDSA_SHA_256,), KeySpec.ECC_NIST_P384: (SigningAlgorithm.ECDSA_SHA_384,),
          KeySpec.ECC_NIST_P521: (SigningAlgorithm.ECDSA_SHA_512,),
          KeySpec.ECC_SECG_P256K1: (SigningAlgorithm.ECDSA_SHA_256,)}


def mac_algorithms_for(spec: KeySpec) -> list[MacAlgorithm]:
    return [MacAlgorithm(f"HMAC_SHA_{spec.hmac_bits}")] if spec.is_hmac else []


def encryption_algorithms_for(spec: KeySpec) -> list[EncryptionAlgorithm]:
    if spec is KeySpec.SYMMETRIC_DEFAULT:
        return [EncryptionAlgorithm.SYMMETRIC_DEFAULT]
    if spec.is_rsa:
        return [EncryptionAlgorithm.RSAES_OAEP_SHA_1, EncryptionAlgorithm.RSAES_OAEP_SHA_256]
    return []


class InvalidTransition(Exception):
    """A lifecycle change that is not allowed from the key's current state."""

    def __init__(self, state: KeyState, action: str) -> None:
        super().__init__(f"key is {state.value}; {action} is not allowed in that state")
        self.state = state


# state -> actions allowed in it
_TRANSITIONS: dict[str, set[KeyState]] = {
    "enable": {KeyState.ENABLED, KeyState.DISABLED},
    "disable": {KeyState.ENABLED, KeyState.DISABLED},
    "schedule_deletion": {KeyState.ENABLED, KeyState.DISABLED, KeyState.PENDING_IMPORT},
    "cancel_deletion": {KeyState.PENDING_DELETION},
    "destroy": {KeyState.PENDING_DELETION},
    "import": {KeyState.PENDING_IMPORT, KeyState.ENABLED, KeyState.DISABLED},
    "delete_imported": {KeyState.ENABLED, KeyState.DISABLED},
}


def check_transition(state: KeyState, action: str) -> None:
    if state not in _TRANSITIONS[action]:
        raise InvalidTransition(state, action)


@dataclass
class KeyVersion:
    """One generation of a key's material. `provider_ref` says where the provider keeps it."""

    version: int
    provider_ref: dict
    created_at: datetime
    state: str = "Enabled"  # Enabled | Destroyed
    rotation_type: str | None = None  # how version N>1 came: "AUTOMATIC" | "ON_DEMAND" (None: not recorded)


@dataclass
class Key:
    key_id: str
    provider: str
    spec: KeySpec
    usage: KeyUsage
    state: KeyState
    origin: Origin
    description: str
    created_at: datetime
    primary_version: int = 1
    deletion_date: datetime | None = None
    rotation_period_days: int | None = None
    next_rotation_at: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
