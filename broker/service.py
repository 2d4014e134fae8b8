"""KeyService: the KMS semantics, provider-agnostic, every public method a declared operation of the gate.

Each operation states what it authorizes on (`broker.gate.Need`); the gate resolves, authorizes and audits, then
runs the body with a `Call`. Sibling services (multi-keys, replicated keys, sync, keyring) reach keys only through
the `within` doors at the end of this class, which refuse unless their caller's call authorized that key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import secrets
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker import ciphertext as ct
from broker import errors
from broker.audit import AuditLog
from broker.gate import (
    AuditEntry,
    Call,
    Gate,
    Need,
    RequestContext,
    Service,
    Target,
    fixed,
    internal,
    key_arg,
    operation,
    provider_error,
    reads_may_be_cached,
    request_alias,
    resource,
    valid_text,
    with_facts,
    within,
)
from broker.key_views import (
    KEY_ACTIONS,
    KeyDetail,
    KeyPage,
    KeyQuery,
    KeyStoreInfo,
    KeySummary,
    KeyVersionInfo,
    summary_of,
)
from broker.model import (
    ALLOWED_USAGES,
    EncryptionAlgorithm,
    Key,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    MacAlgorithm,
    Origin,
    SigningAlgorithm,
    check_transition,
    encryption_algorithms_for,
    mac_algorithms_for,
    signing_algorithms_for,
)
from broker.policy import PolicyEngine
from broker.policy.key_policies import check_writer, read_key_policy
from broker.store import Conflict, Store
from providers import base as pb
from providers.base import Provider, ProviderKeyRef, RootOfTrust

__all__ = ["MAX_CIPHERTEXT", "MAX_PLAINTEXT", "AuditEntry", "KeyService", "Provisioned", "RequestContext",
           "Strays", "provider_error"]

MAX_PLAINTEXT = 4096
MAX_CIPHERTEXT = 6144
IMPORT_TOKEN_TTL = timedelta(hours=24)
ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512, "sha1": hashes.SHA1}
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
_KEY_PAIR_SPECS = {"RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
                   "ECC_SECG_P256K1"}
_ENCRYPTING = ("kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptTo",
               "kms:GenerateDataKeyPair", "kms:GenerateDataKeyPairWithoutPlaintext")
_DECRYPTING = ("kms:Decrypt", "kms:ReEncryptFrom")


def _now() -> datetime:
    return datetime.now(UTC)


def check_bytes(value: Any, name: str, *, low: int = 1, high: int = MAX_PLAINTEXT) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise errors.ValidationError(f"{name} is required")
    if not low <= len(value) <= high:
        raise errors.ValidationError(f"{name} must be {low} to {high} bytes")
    return bytes(value)


def check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if isinstance(tags, list):  # AWS shape: [{"TagKey","TagValue"}]
        try:
            tags = {t["TagKey"]: t["TagValue"] for t in tags}
        except (TypeError, KeyError):
            raise errors.ValidationError("Tags must be a list of {TagKey, TagValue}") from None
    if not isinstance(tags, Mapping) or len(tags) > 50:
        raise errors.ValidationError("Tags must be an object of at most 50 entries")
    for k, v in tags.items():
        if not isinstance(k, str) or not 1 <= len(k) <= 128 or not isinstance(v, str) or len(v) > 256:
            raise errors.ValidationError("tag keys are 1-128 characters, values 0-256 characters")
        valid_text(k, "TagKey")
        valid_text(v, "TagValue")
    return dict(tags)


def check_description(description: Any) -> str:
    if not isinstance(description, str) or len(description) > 8192:
        raise errors.ValidationError("Description must be a string of at most 8192 characters")
    return valid_text(description, "Description")


def check_alias(alias: Any) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or alias.startswith("alias/aws/"):
        raise errors.ValidationError("AliasName must match alias/[a-zA-Z0-9/_-]+ and not start with alias/aws/")
    return alias


def data_key_size(key_spec: str | None, number_of_bytes: int | None) -> int:
    if (key_spec is None) == (number_of_bytes is None):
        raise errors.ValidationError("give exactly one of KeySpec (AES_128, AES_256) or NumberOfBytes")
    if key_spec is not None:
        if key_spec not in _DATA_KEY_SPECS:
            raise errors.ValidationError("KeySpec must be AES_128 or AES_256")
        return _DATA_KEY_SPECS[key_spec]
    if not isinstance(number_of_bytes, int) or isinstance(number_of_bytes, bool) or not 1 <= number_of_bytes <= 1024:
        raise errors.ValidationError("NumberOfBytes must be 1 to 1024")
    return number_of_bytes


@dataclass(frozen=True)
class Provisioned:
    """Material a provider holds that is not (yet) a key or version of the catalog: what a sibling service
    journals between making it and registering it. `ref` is the provider's and opaque to the sibling; `owner` is
    the call that made (or restored) it, the only one that may use it."""

    provider: str
    label: str
    ref: Mapping[str, Any] = field(repr=False)
    owner: Call | None = field(default=None, repr=False, compare=False)

    def journal(self) -> dict[str, Any]:
        """What a journal keeps to settle a crash (`KeyService.restore_provisioned` takes it back)."""
        return {"provider": self.provider, "label": self.label, "ref": dict(self.ref)}


@dataclass(frozen=True)
class Strays:
    """What a sync plan finds of a provider's material labelled with catalog keys and held by none of their
    versions (`KeyService.strays`): key id -> the cloud keys (`keys`) and the names of the versions inside its own
    cloud key (`versions`)."""

    keys: dict[str, list[pb.InventoryItem]] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- resolvers


def _ciphertext_key(host: KeyService, args: Mapping[str, Any]) -> Target:
    """Decrypt/ReEncrypt: the key the ciphertext's authenticated header names (or the named RSA key)."""
    named_ref = args.get("key_ref", args.get("source_key_ref"))
    named = host.resolve_key(named_ref) if named_ref else None
    if named is not None and named.spec.is_rsa:
        return Target(key=named, conditions=request_alias(named_ref))
    blob = check_bytes(args["blob"], "CiphertextBlob", high=MAX_CIPHERTEXT)
    try:
        header = ct.unpack(blob).header
    except ct.MalformedCiphertext as exc:
        raise errors.InvalidCiphertext(str(exc)) from None
    try:
        key = host.resolve_key(header.key_id)
    except errors.NotFound:
        raise errors.InvalidCiphertext("the ciphertext refers to a key that does not exist") from None
    if named is not None and named.key_id != key.key_id:
        raise errors.IncorrectKey("the ciphertext was not encrypted under the key you named")
    return Target(key=key, conditions=request_alias(named_ref))


_ciphertext_key.arg = "blob"  # type: ignore[attr-defined]

# Condition values AWS takes from a request (kms:EncryptionAlgorithm, …): the argument each is read from, or a
# constant where the broker's operation has one answer (its data keys and ReEncrypt are symmetric only).
_SYMMETRIC = "SYMMETRIC_DEFAULT"
_ENCRYPTION = {"kms:EncryptionAlgorithm": "algorithm"}
_DATA_KEY = {"kms:EncryptionAlgorithm": lambda a: _SYMMETRIC}
_DATA_KEY_PAIR = {"kms:EncryptionAlgorithm": lambda a: _SYMMETRIC, "kms:DataKeyPairSpec": "key_pair_spec"}
_SIGNING = {"kms:SigningAlgorithm": "algorithm", "kms:MessageType": "message_type"}
_MAC = {"kms:MacAlgorithm": "algorithm"}


def _reencrypt_facts(destination: Key | None, source: Key) -> dict[str, tuple[str, ...]]:
    """ReEncrypt's request facts: its algorithm (symmetric only) and kms:ReEncryptOnSameKey."""
    same = destination is not None and destination.key_id == source.key_id
    return {"kms:EncryptionAlgorithm": (_SYMMETRIC,), "kms:ReEncryptOnSameKey": ("true" if same else "false",)}


def _reencrypt_source(host: KeyService, args: Mapping[str, Any]) -> Target:
    target = _ciphertext_key(host, args)
    try:
        destination = host.resolve_key(args["destination_key_ref"])
    except errors.NotFound:
        destination = None  # the destination's own check answers NotFound
    return dataclasses.replace(target, conditions={**target.conditions, **_reencrypt_facts(destination, target.key)})


_reencrypt_source.arg = "blob"  # type: ignore[attr-defined]


def _reencrypt_destination(host: KeyService, args: Mapping[str, Any]) -> Target:
    target = key_arg("destination_key_ref")(host, args)
    source = _ciphertext_key(host, args).key
    return dataclasses.replace(target, conditions={**target.conditions, **_reencrypt_facts(target.key, source)})


_reencrypt_destination.arg = "destination_key_ref"  # type: ignore[attr-defined]


def _provider_resource(host: KeyService, args: Mapping[str, Any]) -> Target:
    name = args.get("provider") or host.default_provider
    host.provider(name)
    return Target(resource=f"provider/{name}")


def _new_key_provider(host: KeyService, args: Mapping[str, Any]) -> Target:
    """CreateKey is authorized on the provider the key will be made on (`KeyService.provider_for_new_key`)."""
    name = host.provider_for_new_key(args.get("provider"), args.get("key_spec"), args.get("key_usage"))
    host.provider(name)
    return Target(resource=f"provider/{name}")


def _new_key_usage(args: Mapping[str, Any]) -> Any:
    """kms:KeyUsage of a CreateKey request: the one asked for, or the one the key will get."""
    if args.get("key_usage"):
        return args["key_usage"]
    try:
        allowed = ALLOWED_USAGES[KeySpec(args.get("key_spec"))]
    except (ValueError, KeyError, TypeError):
        return None  # the operation refuses the spec
    return next(iter(allowed)).value if len(allowed) == 1 else KeyUsage.ENCRYPT_DECRYPT.value


def request_tags(args: Mapping[str, Any]) -> dict[str, Any]:
    """aws:RequestTag/<key> for each tag of a CreateKey/TagResource request, and aws:TagKeys."""
    tags = check_tags(args.get("tags"))  # either shape (AWS's list or an object), refused here if neither
    return {**{f"aws:RequestTag/{k}": v for k, v in tags.items()}, "aws:TagKeys": list(tags)}


_NEW_KEY = with_facts(_new_key_provider, {
    "kms:KeySpec": "key_spec", "kms:KeyUsage": _new_key_usage, "kms:KeyOrigin": "origin",
    "kms:MultiRegion": lambda a: False, "kms:BypassPolicyLockoutSafetyCheck": lambda a: a["bypass_policy_lockout"] is True},
    more=request_tags)


def _alias_resource(args: Mapping[str, Any]) -> str:
    return check_alias(args["alias"])


def _alias_current_key(host: KeyService, args: Mapping[str, Any]) -> Target:
    """The key an existing alias points at now (UpdateAlias / DeleteAlias need rights on it, as in AWS)."""
    name = check_alias(args["alias"])
    key_id = host.store.resolve_alias(name)
    if key_id is None:
        raise errors.NotFound(f"alias {name} not found")
    key = host.store.get_key(key_id)
    if key is None:
        raise errors.NotFound(f"alias {name} not found")
    return Target(key=key)


_alias_current_key.arg = "alias"  # type: ignore[attr-defined]


# ================================================================================================== the service


class KeyService(Service):
    def __init__(self, store: Store, providers: Mapping[str, Provider], default_provider: str,
                 policy: PolicyEngine, audit: AuditLog, *, root: RootOfTrust | None = None,
                 rsa_encryption_provider: str | None = None, key_cache_seconds: float = 0.0) -> None:
        if default_provider not in providers:
            raise ValueError(f"default provider {default_provider!r} is not configured")
        if rsa_encryption_provider is not None:
            routed = providers.get(rsa_encryption_provider)
            offered = routed.capabilities.encryption_algorithms if routed is not None else None
            if routed is None or not routed.capabilities.asymmetric_decrypt or (
                    offered is not None and EncryptionAlgorithm.RSAES_OAEP_SHA_256 not in offered):
                raise ValueError(f"rsa_encryption_provider {rsa_encryption_provider!r} is not a configured provider "
                                 "that decrypts RSAES_OAEP_SHA_256")
        self.rsa_encryption_provider = rsa_encryption_provider
        self.key_cache_seconds = key_cache_seconds  # how old key metadata may be in an operation that changes nothing
        self.store = store
        self.providers = dict(providers)
        self.default_provider = default_provider
        self.gate = Gate(policy, audit)
        # The root of trust (seal/unseal, audit keys, node transfer). Tests that build a KeyService by hand get the
        # one the default provider offers (a pkcs11 token), if it offers one.
        self.root = root if root is not None else _offered_root(self.providers, default_provider)
        self._refs: dict[tuple[str, int], ProviderKeyRef] = {}
        # Set by the composition root: the service that rotates a key as a whole (a replicated key and its copies),
        # or None. Rotating one part alone would leave the others behind, so KeyService refuses it.
        self.rotated_by: Callable[[Key], str | None] = lambda key: None
        self._registered: weakref.WeakKeyDictionary[Call, set[str]] = weakref.WeakKeyDictionary()
        self._registered_lock = threading.Lock()

    @property
    def policy(self) -> PolicyEngine:
        return self.gate.policy

    @property
    def audit(self) -> AuditLog:
        return self.gate.audit

    @audit.setter
    def audit(self, log: AuditLog) -> None:
        """Tests swap the audit log of a running service (e.g. to simulate a restart of the writer)."""
        self.gate.audit = log

    # =========================================================================================== helpers

    @internal
    def provider(self, name: str) -> Provider:
        """A configured provider by name (ValidationError if there is none): for the service layer only."""
        try:
            return self.providers[name]
        except KeyError:
            raise errors.ValidationError(f"unknown provider {name!r}") from None

    @internal
    def resolve_key(self, key_ref: Any, *, details: bool = False) -> Key:
        """Key id, ARN or alias → Key (NotFound for unknown and destroyed keys). Reads metadata only."""
        if not isinstance(key_ref, str) or not key_ref:
            raise errors.ValidationError("KeyId is required")
        valid_text(key_ref, "KeyId")
        key_id = key_ref
        if key_ref.startswith("alias/"):
            key_id = self.store.resolve_alias(key_ref) if len(key_ref) <= 256 else None
            if key_id is None:
                raise errors.NotFound(f"alias {key_ref[:256]} not found")
        elif key_ref.startswith("arn:"):
            key_id = key_ref.rsplit("/", 1)[-1]
        max_age = self.key_cache_seconds if reads_may_be_cached() else 0.0
        key = self.store.get_key(key_id, details=details, max_age=max_age) if len(key_id) <= 64 else None
        if key is None or key.state is KeyState.DESTROYED:
            raise errors.NotFound(f"key {key_ref[:256]} not found")
        return key

    @staticmethod
    def _require_usable(key: Key) -> None:
        if key.state is KeyState.DISABLED:
            raise errors.Disabled(f"key {key.key_id} is disabled")
        if key.state is not KeyState.ENABLED:
            raise errors.InvalidState(f"key {key.key_id} is {key.state.value}")

    @staticmethod
    def _require_usage(key: Key, usage: KeyUsage, operation_name: str) -> None:
        if key.usage is not usage:
            raise errors.InvalidKeyUsage(f"key {key.key_id} has usage {key.usage.value}; {operation_name} needs {usage.value}")

    def _version(self, key: Key, version: int | None = None) -> tuple[int, ProviderKeyRef]:
        number = version or key.primary_version
        cache_key = (key.key_id, number)
        ref = self._refs.get(cache_key)
        if ref is None:
            kv = self.store.get_version(key.key_id, number)
            if kv is None or kv.state != "Enabled":
                raise errors.InvalidCiphertext(f"key version {number} of {key.key_id} is not available")
            ref = ProviderKeyRef.from_dict(kv.provider_ref)
            # Broker-born versions never change until destroyed, and a destroyed key is refused by its (always
            # freshly read) state before we get here. Imported material can be replaced: never cached.
            if key.origin is Origin.BROKER:
                self._refs[cache_key] = ref
                if len(self._refs) > 10_000:
                    self._refs.pop(next(iter(self._refs)))
        return number, ref

    def _encryption_algorithms(self, key: Key) -> list[EncryptionAlgorithm]:
        offered = self.providers[key.provider].capabilities.encryption_algorithms if key.provider in self.providers \
            else None
        return [a for a in encryption_algorithms_for(key.spec)
                if a is EncryptionAlgorithm.SYMMETRIC_DEFAULT or offered is None or a in offered]

    def _signing_algorithms(self, key: Key) -> list[SigningAlgorithm]:
        offered = self.providers[key.provider].capabilities.signing_algorithms if key.provider in self.providers \
            else None
        return [a for a in signing_algorithms_for(key.spec) if offered is None or a in offered]

    def _metadata(self, key: Key) -> dict[str, Any]:
        """KeyMetadata in AWS's shape (plus the broker's Provider and PrimaryVersion)."""
        meta: dict[str, Any] = {
            "KeyId": key.key_id,
            "Arn": f"arn:kms-broker:kms:local:000000000000:key/{key.key_id}",
            "CreationDate": key.created_at.isoformat(),
            "Enabled": key.state is KeyState.ENABLED,
            "Description": key.description,
            "KeyUsage": key.usage.value,
            "KeyState": key.state.value,
            "Origin": key.origin.value,
            "KeyManager": "CUSTOMER",
            "KeySpec": key.spec.value,
            "CustomerMasterKeySpec": key.spec.value,
            "MultiRegion": False,
            "Provider": key.provider,
            "PrimaryVersion": key.primary_version,
        }
        if key.usage is KeyUsage.ENCRYPT_DECRYPT:
            meta["EncryptionAlgorithms"] = [a.value for a in self._encryption_algorithms(key)]
        if key.usage is KeyUsage.SIGN_VERIFY:
            meta["SigningAlgorithms"] = [a.value for a in self._signing_algorithms(key)]
        if key.usage is KeyUsage.GENERATE_VERIFY_MAC:
            meta["MacAlgorithms"] = [a.value for a in mac_algorithms_for(key.spec)]
        if key.deletion_date:
            meta["DeletionDate"] = key.deletion_date.isoformat()
        if key.aliases:
            meta["Aliases"] = key.aliases
        return meta

    # =========================================================================================== lifecycle

    @internal
    def provider_for_new_key(self, provider: Any, key_spec: Any, key_usage: Any) -> str:
        """Where CreateKey makes a key: the provider asked for, else the default one — except an RSA encryption
        key, which goes to `rsa_encryption_provider` (when set) if the default provider cannot decrypt
        RSAES_OAEP_SHA_256, the OAEP AWS clients default to. Its KeyMetadata names the provider it went to."""
        if provider:
            return provider
        routed = self.rsa_encryption_provider
        if routed is None or not (isinstance(key_spec, str) and key_spec.startswith("RSA_")) \
                or key_usage not in (None, "", KeyUsage.ENCRYPT_DECRYPT.value):
            return self.default_provider
        offered = self.providers[self.default_provider].capabilities.encryption_algorithms
        return routed if offered is not None and EncryptionAlgorithm.RSAES_OAEP_SHA_256 not in offered \
            else self.default_provider

    @operation("kms:CreateKey", Need("kms:CreateKey", _NEW_KEY), mutates=True, creates_key=True)
    def create_key(self, call: Call, *, key_spec: str = "SYMMETRIC_DEFAULT", key_usage: str | None = None,
                   description: str = "", tags: Mapping[str, str] | None = None, origin: str = "AWS_KMS",
                   provider: str | None = None, policy: Any = None,
                   bypass_policy_lockout: bool = False) -> dict[str, Any]:
        """A new key; `policy` (a key policy, as text or object) is checked as PutKeyPolicy checks it — on the new
        key, as the default key policy lets its creator act — before anything is made, and stored with the key."""
        try:
            spec = KeySpec(key_spec)
        except ValueError:
            raise errors.ValidationError(f"KeySpec {key_spec!r} is not one of {[s.value for s in KeySpec]}") from None
        default_usage = next(iter(sorted(ALLOWED_USAGES[spec]))) if len(ALLOWED_USAGES[spec]) == 1 else None
        try:
            usage = KeyUsage(key_usage) if key_usage else (default_usage or KeyUsage.ENCRYPT_DECRYPT)
        except ValueError:
            raise errors.ValidationError(f"KeyUsage {key_usage!r} is not valid") from None
        if usage not in ALLOWED_USAGES[spec]:
            raise errors.ValidationError(f"KeyUsage {usage.value} is not valid for KeySpec {spec.value}")
        try:
            origin_value = Origin(origin)
        except ValueError:
            raise errors.ValidationError("Origin must be AWS_KMS or EXTERNAL") from None
        description = check_description(description)
        tags = check_tags(tags)
        provider_name = self.provider_for_new_key(provider, key_spec, key_usage)
        backend = self.provider(provider_name)
        call.entry.provider = provider_name
        missing = backend.capabilities.missing_for(spec)
        if missing:
            raise errors.Unsupported(f"provider {provider_name!r} lacks {missing}; cannot create this key there")
        if origin_value is Origin.EXTERNAL and not backend.capabilities.import_material:
            raise errors.Unsupported(f"provider {provider_name!r} lacks key material import")
        key_id = call.new_key_id  # chosen by the gate before the intent record, which names it
        now = _now()
        born = origin_value is Origin.BROKER
        key = Key(key_id=key_id, provider=provider_name, spec=spec, usage=usage,
                  state=KeyState.ENABLED if born else KeyState.PENDING_IMPORT, origin=origin_value,
                  description=description, created_at=now, tags=tags)
        key_policy = None
        if policy is not None:
            key_policy = read_key_policy(policy)
            check_writer(call, key, key_policy, bypass_lockout=bypass_policy_lockout is True)
            call.entry.extra["key_policy"] = True
        first = KeyVersion(1, backend.create_key(spec, usage, label=key_id).to_dict(), now) if born else None
        self.store.add_key(key, first, key_policy=key_policy.text if key_policy else None)
        if key_policy is not None:  # decisions made while checking it cached "no key policy" for the new key
            self.gate.policy.forget(("key-policy", key_id), ("grants", key_id))
        return self._metadata(key)

    @operation("kms:DescribeKey", Need("kms:DescribeKey", key_arg("key_ref", details=True)))
    def describe_key(self, call: Call, key_ref: str) -> dict[str, Any]:
        return self._metadata(call.key())

    @operation("kms:ListKeys", Need("kms:ListKeys"))
    def list_keys(self, call: Call, *, limit: int = 100, marker: str | None = None) -> dict[str, Any]:
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise errors.ValidationError("Limit must be 1 to 1000")
        if marker is not None and (not isinstance(marker, str) or len(marker) > 64):
            raise errors.ValidationError("Marker is not valid")
        keys: list[Key] = []
        after = marker
        while len(keys) <= limit:  # destroyed keys are skipped, so a page may take more than one read
            batch = self.store.list_keys(limit + 1, after)
            keys += [k for k in batch if k.state is not KeyState.DESTROYED]
            if len(batch) <= limit:
                break
            after = batch[-1].key_id
        page = keys[:limit]
        out: dict[str, Any] = {
            "Keys": [{"KeyId": k.key_id, "KeyArn": self._metadata(k)["Arn"], "Provider": k.provider} for k in page],
            "Truncated": len(keys) > limit,
        }
        if len(keys) > limit:
            out["NextMarker"] = page[-1].key_id
        return out

    @operation("kms:UpdateKeyDescription", Need("kms:UpdateKeyDescription", key_arg("key_ref")), mutates=True)
    def update_key_description(self, call: Call, key_ref: str, description: str) -> None:
        self.store.update_key(call.key().key_id, description=check_description(description))

    def _set_enabled(self, key: Key, enabled: bool) -> None:
        check_transition(key.state, "enable" if enabled else "disable")
        backend = self.provider(key.provider)
        for kv in self.store.list_versions(key.key_id):
            if kv.state == "Enabled":
                backend.set_enabled(ProviderKeyRef.from_dict(kv.provider_ref), enabled)
        self.store.update_key(key.key_id, state=KeyState.ENABLED if enabled else KeyState.DISABLED)

    @operation("kms:EnableKey", Need("kms:EnableKey", key_arg("key_ref")), mutates=True)
    def enable_key(self, call: Call, key_ref: str) -> None:
        self._set_enabled(call.key(), True)

    @operation("kms:DisableKey", Need("kms:DisableKey", key_arg("key_ref")), mutates=True)
    def disable_key(self, call: Call, key_ref: str) -> None:
        self._set_enabled(call.key(), False)

    @operation("kms:ScheduleKeyDeletion", Need("kms:ScheduleKeyDeletion", with_facts(
        key_arg("key_ref"), {"kms:ScheduleKeyDeletionPendingWindowInDays": "pending_days"})), mutates=True)
    def schedule_key_deletion(self, call: Call, key_ref: str, pending_days: int = 30) -> dict[str, Any]:
        key = call.key()
        if not isinstance(pending_days, int) or isinstance(pending_days, bool) or not 7 <= pending_days <= 30:
            raise errors.ValidationError("PendingWindowInDays must be 7 to 30")
        check_transition(key.state, "schedule_deletion")
        when = _now() + timedelta(days=pending_days)
        backend = self.provider(key.provider)
        for kv in self.store.list_versions(key.key_id):
            if kv.state == "Enabled":
                backend.schedule_destruction(ProviderKeyRef.from_dict(kv.provider_ref), pending_days)
        self.store.update_key(key.key_id, state=KeyState.PENDING_DELETION, deletion_date=when)
        return {"KeyId": key.key_id, "DeletionDate": when.isoformat(), "KeyState": KeyState.PENDING_DELETION.value,
                "PendingWindowInDays": pending_days}

    @operation("kms:CancelKeyDeletion", Need("kms:CancelKeyDeletion", key_arg("key_ref")), mutates=True)
    def cancel_key_deletion(self, call: Call, key_ref: str) -> dict[str, Any]:
        key = call.key()
        check_transition(key.state, "cancel_deletion")
        backend = self.provider(key.provider)
        versions = self.store.list_versions(key.key_id)
        for kv in versions:
            if kv.state == "Enabled":
                backend.cancel_destruction(ProviderKeyRef.from_dict(kv.provider_ref))
        # AWS semantics: a cancelled key comes back disabled (or pending import if it never had material).
        has_material = any(kv.state == "Enabled" for kv in versions)
        state = KeyState.DISABLED if has_material else KeyState.PENDING_IMPORT
        self.store.update_key(key.key_id, state=state, deletion_date=None)
        return {"KeyId": key.key_id}

    # =========================================================================================== symmetric

    @operation("kms:Encrypt", Need("kms:Encrypt", with_facts(key_arg("key_ref"), _ENCRYPTION), context="context"))
    def encrypt(self, call: Call, key_ref: str, plaintext: bytes, *, context: Any = None,
                algorithm: str = "SYMMETRIC_DEFAULT") -> dict[str, Any]:
        plaintext = check_bytes(plaintext, "Plaintext")
        key = call.key()
        self._require_usable(key)
        self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "Encrypt")
        if key.spec.is_rsa:
            return self._rsa_encrypt(key, call.entry, plaintext, algorithm)
        if algorithm != "SYMMETRIC_DEFAULT":
            raise errors.ValidationError("EncryptionAlgorithm must be SYMMETRIC_DEFAULT for a symmetric key")
        blob, version = self._seal(key, plaintext, context)
        call.entry.key_version = version
        return {"CiphertextBlob": blob, "KeyId": key.key_id, "KeyVersion": version,
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def _seal(self, key: Key, plaintext: bytes, context: Mapping[str, str]) -> tuple[bytes, int]:
        """Encrypt under the key's primary version: natively, or composed as an envelope (rule 3)."""
        version, ref = self._version(key)
        backend = self.provider(key.provider)
        native = backend.capabilities.native_symmetric
        header = ct.Header(ct.Scheme.PROVIDER_AEAD if native else ct.Scheme.ENVELOPE, key.key_id, version)
        header_bytes = header.pack()
        aad = header_bytes + ct.canonical_context(context)
        if native:
            body = backend.encrypt(ref, plaintext, aad)
        else:
            data_key = AESGCM.generate_key(bit_length=256)
            nonce = os.urandom(12)
            sealed = nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)
            body = ct.pack_envelope(backend.wrap_data_key(ref, data_key), sealed)
        return header_bytes + body, version

    def _open(self, key: Key, blob: bytes, context: Mapping[str, str], entry: AuditEntry) -> bytes:
        """Decrypt a broker ciphertext whose header names `key` (already authorized); AAD = header ‖ context."""
        try:
            parsed = ct.unpack(blob)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        if parsed.header.key_id != key.key_id:
            raise errors.IncorrectKey("the ciphertext was not encrypted under this key")
        entry.key_version = parsed.header.key_version
        self._require_usable(key)
        self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "Decrypt")
        _, ref = self._version(key, parsed.header.key_version)
        backend = self.provider(key.provider)
        caps = backend.capabilities
        if not (caps.native_symmetric if parsed.header.scheme is ct.Scheme.PROVIDER_AEAD else caps.wrap_data_key):
            # a header naming a scheme this key's provider never produces: tampered, not an unsupported operation
            raise errors.InvalidCiphertext("the ciphertext's scheme does not match its key")
        aad = parsed.aad(context)
        if parsed.header.scheme is ct.Scheme.PROVIDER_AEAD:
            return backend.decrypt(ref, parsed.body, aad)
        try:
            wrapped, sealed = ct.unpack_envelope(parsed.body)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        data_key = backend.unwrap_data_key(ref, wrapped)
        try:
            return AESGCM(data_key).decrypt(sealed[:12], sealed[12:], aad)
        except Exception:  # noqa: BLE001 - cryptography raises InvalidTag; any failure is a bad ciphertext
            raise errors.InvalidCiphertext("ciphertext failed authentication") from None

    @operation("kms:Decrypt", Need("kms:Decrypt", with_facts(_ciphertext_key, _ENCRYPTION), context="context"))
    def decrypt(self, call: Call, blob: bytes, *, key_ref: str | None = None, context: Any = None,
                algorithm: str = "SYMMETRIC_DEFAULT") -> dict[str, Any]:
        key = call.key("blob")
        if key.spec.is_rsa:
            return self._rsa_decrypt(key, call.entry, check_bytes(blob, "CiphertextBlob", high=MAX_CIPHERTEXT),
                                     algorithm)
        plaintext = self._open(key, blob, context, call.entry)
        return {"Plaintext": plaintext, "KeyId": key.key_id, "KeyVersion": call.entry.key_version,
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    @operation("kms:ReEncrypt", Need("kms:ReEncryptFrom", _reencrypt_source, context="source_context"),
               Need("kms:ReEncryptTo", _reencrypt_destination, context="destination_context"))
    def re_encrypt(self, call: Call, blob: bytes, destination_key_ref: str, *, source_context: Any = None,
                   destination_context: Any = None, source_key_ref: str | None = None) -> dict[str, Any]:
        """Decrypt and re-encrypt inside the broker; the plaintext never leaves this function."""
        source = call.key("blob")
        if source.spec.is_rsa:
            raise errors.Unsupported("ReEncrypt from an asymmetric key is not supported")
        plaintext = self._open(source, blob, source_context, call.entry)
        source_version = call.entry.key_version
        destination = call.key("destination_key_ref")
        self._require_usable(destination)
        self._require_usage(destination, KeyUsage.ENCRYPT_DECRYPT, "ReEncrypt")
        if destination.spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise errors.Unsupported("ReEncrypt to an asymmetric key is not supported")
        new_blob, version = self._seal(destination, plaintext, destination_context)
        call.entry.key_id, call.entry.provider = destination.key_id, destination.provider
        call.entry.key_version = version
        call.entry.extra["source_key_id"] = source.key_id
        call.entry.extra["source_key_version"] = source_version
        return {"CiphertextBlob": new_blob, "SourceKeyId": source.key_id, "KeyId": destination.key_id,
                "KeyVersion": version, "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def _data_key(self, call: Call, key_spec: str | None, number_of_bytes: int | None,
                  context: Mapping[str, str], include_plaintext: bool) -> dict[str, Any]:
        size = data_key_size(key_spec, number_of_bytes)
        key = call.key()
        self._require_usable(key)
        self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "GenerateDataKey")
        if key.spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise errors.InvalidKeyUsage("GenerateDataKey needs a symmetric key")
        data_key = secrets.token_bytes(size)
        blob, version = self._seal(key, data_key, context)
        call.entry.key_version = version
        out: dict[str, Any] = {"CiphertextBlob": blob, "KeyId": key.key_id, "KeyVersion": version}
        if include_plaintext:
            out["Plaintext"] = data_key
        return out

    @operation("kms:GenerateDataKey", Need("kms:GenerateDataKey", with_facts(key_arg("key_ref"), _DATA_KEY),
                                                 context="context"))
    def generate_data_key(self, call: Call, key_ref: str, *, key_spec: str | None = None,
                          number_of_bytes: int | None = None, context: Any = None) -> dict[str, Any]:
        return self._data_key(call, key_spec, number_of_bytes, context, True)

    @operation("kms:GenerateDataKeyWithoutPlaintext",
               Need("kms:GenerateDataKeyWithoutPlaintext", with_facts(key_arg("key_ref"), _DATA_KEY), context="context"))
    def generate_data_key_without_plaintext(self, call: Call, key_ref: str, *, key_spec: str | None = None,
                                            number_of_bytes: int | None = None, context: Any = None) -> dict:
        return self._data_key(call, key_spec, number_of_bytes, context, False)

    def _data_key_pair(self, call: Call, key_pair_spec: str, context: Mapping[str, str],
                       include_plaintext: bool) -> dict[str, Any]:
        if key_pair_spec not in _KEY_PAIR_SPECS:
            raise errors.ValidationError(f"KeyPairSpec must be one of {sorted(_KEY_PAIR_SPECS)}")
        key = call.key()
        self._require_usable(key)
        if key.spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise errors.InvalidKeyUsage("GenerateDataKeyPair needs a symmetric encryption key")
        private = _generate_pair(key_pair_spec)
        private_der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
        public_der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        blob, version = self._seal(key, private_der, context)
        call.entry.key_version = version
        out: dict[str, Any] = {"PrivateKeyCiphertextBlob": blob, "PublicKey": public_der, "KeyId": key.key_id,
                               "KeyPairSpec": key_pair_spec, "KeyVersion": version}
        if include_plaintext:
            out["PrivateKeyPlaintext"] = private_der
        return out

    @operation("kms:GenerateDataKeyPair", Need("kms:GenerateDataKeyPair", with_facts(key_arg("key_ref"), _DATA_KEY_PAIR),
                                                     context="context"))
    def generate_data_key_pair(self, call: Call, key_ref: str, key_pair_spec: str, *,
                               context: Any = None) -> dict[str, Any]:
        return self._data_key_pair(call, key_pair_spec, context, True)

    @operation("kms:GenerateDataKeyPairWithoutPlaintext",
               Need("kms:GenerateDataKeyPairWithoutPlaintext", with_facts(key_arg("key_ref"), _DATA_KEY_PAIR),
                    context="context"))
    def generate_data_key_pair_without_plaintext(self, call: Call, key_ref: str, key_pair_spec: str, *,
                                                 context: Any = None) -> dict[str, Any]:
        return self._data_key_pair(call, key_pair_spec, context, False)

    @operation("kms:GenerateRandom", Need("kms:GenerateRandom", _provider_resource))
    def generate_random(self, call: Call, number_of_bytes: int, *, provider: str | None = None) -> dict:
        if not isinstance(number_of_bytes, int) or isinstance(number_of_bytes, bool) or not 1 <= number_of_bytes <= 1024:
            raise errors.ValidationError("NumberOfBytes must be 1 to 1024")
        name = provider or self.default_provider
        backend = self.provider(name)
        call.entry.provider = name
        if not backend.capabilities.random:
            raise errors.Unsupported(f"provider {name!r} lacks random generation")
        return {"Plaintext": backend.random(number_of_bytes)}

    # =========================================================================================== asymmetric

    def _public_key(self, key: Key, version: int | None = None) -> Any:
        _, ref = self._version(key, version)
        return serialization.load_der_public_key(self.provider(key.provider).get_public_key(ref))

    def _rsa_encrypt(self, key: Key, entry: AuditEntry, plaintext: bytes, algorithm: str) -> dict[str, Any]:
        alg = self._rsa_algorithm(key, algorithm)
        public = self._public_key(key)
        max_len = public.key_size // 8 - 2 * _HASHES[_oaep_hash(alg)].digest_size - 2
        if len(plaintext) > max_len:
            raise errors.ValidationError(f"Plaintext must be at most {max_len} bytes for this key and algorithm")
        entry.key_version = key.primary_version
        blob = public.encrypt(plaintext, _oaep(alg))
        return {"CiphertextBlob": blob, "KeyId": key.key_id, "EncryptionAlgorithm": alg.value}

    def _rsa_decrypt(self, key: Key, entry: AuditEntry, blob: bytes, algorithm: str) -> dict[str, Any]:
        alg = self._rsa_algorithm(key, algorithm)
        self._require_usable(key)
        self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "Decrypt")
        number, ref = self._version(key)
        entry.key_version = number
        plaintext = self.provider(key.provider).asymmetric_decrypt(ref, blob, alg)
        return {"Plaintext": plaintext, "KeyId": key.key_id, "EncryptionAlgorithm": alg.value}

    def _rsa_algorithm(self, key: Key, algorithm: str) -> EncryptionAlgorithm:
        if algorithm not in (EncryptionAlgorithm.RSAES_OAEP_SHA_1, EncryptionAlgorithm.RSAES_OAEP_SHA_256):
            raise errors.ValidationError("EncryptionAlgorithm must be RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256")
        alg = EncryptionAlgorithm(algorithm)
        if alg not in self._encryption_algorithms(key):
            # refused before anything is encrypted: data must never be sealed in a form its provider cannot open
            raise errors.Unsupported(f"provider {key.provider!r} does not offer {alg.value}")
        return alg

    @staticmethod
    def _digest(message: bytes, message_type: str, algorithm: SigningAlgorithm) -> bytes:
        if message_type == "DIGEST":
            expected = _HASHES[algorithm.hash_name].digest_size
            if len(message) != expected:
                raise errors.ValidationError(f"a {algorithm.hash_name} digest is {expected} bytes")
            return message
        if message_type != "RAW":
            raise errors.ValidationError("MessageType must be RAW or DIGEST")
        return hashlib.new(algorithm.hash_name, message).digest()

    def _signing_setup(self, call: Call, operation_name: str, message: Any, message_type: str,
                       algorithm: str) -> tuple[Key, SigningAlgorithm, bytes]:
        message = check_bytes(message, "Message")
        key = call.key()
        self._require_usable(key)
        self._require_usage(key, KeyUsage.SIGN_VERIFY, operation_name)
        try:
            alg = SigningAlgorithm(algorithm)
        except ValueError:
            raise errors.ValidationError(f"SigningAlgorithm {algorithm!r} is not valid") from None
        if alg not in signing_algorithms_for(key.spec):
            raise errors.InvalidKeyUsage(f"{alg.value} cannot be used with a {key.spec.value} key")
        if alg not in self._signing_algorithms(key):
            raise errors.Unsupported(f"provider {key.provider!r} does not offer {alg.value}")
        call.entry.key_version = key.primary_version
        return key, alg, self._digest(message, message_type, alg)

    @operation("kms:Sign", Need("kms:Sign", with_facts(key_arg("key_ref"), _SIGNING)))
    def sign(self, call: Call, key_ref: str, message: bytes, algorithm: str,
             message_type: str = "RAW") -> dict[str, Any]:
        key, alg, digest = self._signing_setup(call, "Sign", message, message_type, algorithm)
        _, ref = self._version(key)
        signature = self.provider(key.provider).sign(ref, digest, alg)
        return {"Signature": signature, "KeyId": key.key_id, "SigningAlgorithm": alg.value}

    @operation("kms:Verify", Need("kms:Verify", with_facts(key_arg("key_ref"), _SIGNING)))
    def verify(self, call: Call, key_ref: str, message: bytes, signature: bytes, algorithm: str,
               message_type: str = "RAW") -> dict[str, Any]:
        key, alg, digest = self._signing_setup(call, "Verify", message, message_type, algorithm)
        signature = check_bytes(signature, "Signature", high=1024)
        public = self._public_key(key)
        h = _HASHES[alg.hash_name]()
        try:
            if alg.is_ecdsa:
                public.verify(signature, digest, ec.ECDSA(Prehashed(h)))
            elif alg.is_pss:
                public.verify(signature, digest, padding.PSS(padding.MGF1(h), h.digest_size), Prehashed(h))
            else:
                public.verify(signature, digest, padding.PKCS1v15(), Prehashed(h))
        except CryptoInvalidSignature:
            raise errors.InvalidSignature("the signature is not valid") from None
        return {"SignatureValid": True, "KeyId": key.key_id, "SigningAlgorithm": alg.value}

    @operation("kms:GetPublicKey", Need("kms:GetPublicKey", key_arg("key_ref")))
    def get_public_key(self, call: Call, key_ref: str) -> dict[str, Any]:
        key = call.key()
        self._require_usable(key)
        if not key.spec.is_asymmetric:
            raise errors.Unsupported("GetPublicKey needs an asymmetric key")
        call.entry.key_version = key.primary_version
        public = self._public_key(key).public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        meta = self._metadata(key)
        out = {"KeyId": key.key_id, "PublicKey": public, "KeySpec": key.spec.value, "KeyUsage": key.usage.value}
        for name in ("EncryptionAlgorithms", "SigningAlgorithms"):
            if name in meta:
                out[name] = meta[name]
        return out

    # =========================================================================================== MAC

    def _mac_setup(self, call: Call, operation_name: str, message: Any,
                   algorithm: str) -> tuple[Key, MacAlgorithm, bytes, ProviderKeyRef]:
        message = check_bytes(message, "Message")
        key = call.key()
        self._require_usable(key)
        self._require_usage(key, KeyUsage.GENERATE_VERIFY_MAC, operation_name)
        try:
            alg = MacAlgorithm(algorithm)
        except ValueError:
            raise errors.ValidationError(f"MacAlgorithm {algorithm!r} is not valid") from None
        if alg not in mac_algorithms_for(key.spec):
            raise errors.InvalidKeyUsage(f"{alg.value} cannot be used with a {key.spec.value} key")
        number, ref = self._version(key)
        call.entry.key_version = number
        return key, alg, message, ref

    @operation("kms:GenerateMac", Need("kms:GenerateMac", with_facts(key_arg("key_ref"), _MAC)))
    def generate_mac(self, call: Call, key_ref: str, message: bytes, algorithm: str) -> dict[str, Any]:
        key, alg, message, ref = self._mac_setup(call, "GenerateMac", message, algorithm)
        return {"Mac": self.provider(key.provider).generate_mac(ref, message, alg), "KeyId": key.key_id,
                "MacAlgorithm": alg.value}

    @operation("kms:VerifyMac", Need("kms:VerifyMac", with_facts(key_arg("key_ref"), _MAC)))
    def verify_mac(self, call: Call, key_ref: str, message: bytes, mac: bytes, algorithm: str) -> dict[str, Any]:
        key, alg, message, ref = self._mac_setup(call, "VerifyMac", message, algorithm)
        mac = check_bytes(mac, "Mac", high=64)
        expected = self.provider(key.provider).generate_mac(ref, message, alg)
        if not hmac.compare_digest(expected, mac):
            raise errors.InvalidMac("the MAC is not valid")
        return {"MacValid": True, "KeyId": key.key_id, "MacAlgorithm": alg.value}

    # =========================================================================================== aliases, tags
    # As in AWS: creating an alias needs the right on the alias and on its key; re-pointing one needs it on the
    # alias, the key it points at now and the new key; deleting one, on the alias and its key.
    # Tags and aliases are also what attribute-based policies test (kms:ResourceTag/…, alias/… resources): a change
    # that could give its author an action it does not hold on the key now is refused (no escalation).

    def _keep_within(self, call: Call, key: Key, *, tags: Mapping[str, str | None] | None = None,
                     add_alias: str | None = None, drop_alias: str | None = None) -> None:
        if call.principal.is_root:
            return
        after: dict[str, list[str]] = {f"kms:ResourceTag/{k}": [] if v is None else [v] for k, v in (tags or {}).items()}
        if add_alias or drop_alias:
            current = self.store.get_key(key.key_id)
            aliases = (set(current.aliases) if current else set()) | ({add_alias} if add_alias else set())
            after["kms:ResourceAliases"] = sorted(aliases - {drop_alias})
        gained = call.widened_by(key, after)
        if gained:
            raise errors.AccessDenied(f"{call.principal.name} may not change the tags or aliases of {key.key_id} in a "
                                      f"way that would let it {', '.join(gained[:5])}: it does not hold that now")

    @operation("kms:CreateAlias", Need("kms:CreateAlias", resource(_alias_resource)),
               Need("kms:CreateAlias", key_arg("target_key_ref")), mutates=True)
    def create_alias(self, call: Call, alias: str, target_key_ref: str) -> None:
        self._keep_within(call, call.key("target_key_ref"), add_alias=alias)
        try:
            self.store.create_alias(alias, call.key("target_key_ref").key_id, _now())
        except Conflict:
            raise errors.AlreadyExists(f"alias {alias} already exists") from None

    @operation("kms:UpdateAlias", Need("kms:UpdateAlias", resource(_alias_resource)),
               Need("kms:UpdateAlias", _alias_current_key), Need("kms:UpdateAlias", key_arg("target_key_ref")),
               mutates=True)
    def update_alias(self, call: Call, alias: str, target_key_ref: str) -> None:
        current, new = call.key("alias"), call.key("target_key_ref")
        call.entry.extra["previous_key_id"] = current.key_id
        call.entry.key_id, call.entry.provider = new.key_id, new.provider
        if current.key_id != new.key_id:
            self._keep_within(call, current, drop_alias=alias)
            self._keep_within(call, new, add_alias=alias)
        if not self.store.update_alias(alias, new.key_id, _now()):
            raise errors.NotFound(f"alias {alias} not found")

    @operation("kms:DeleteAlias", Need("kms:DeleteAlias", resource(_alias_resource)),
               Need("kms:DeleteAlias", _alias_current_key), mutates=True)
    def delete_alias(self, call: Call, alias: str) -> None:
        self._keep_within(call, call.key("alias"), drop_alias=alias)
        self.store.delete_alias(alias)

    @operation("kms:ListAliases", Need("kms:ListAliases", key_arg("key_ref", optional=True)))
    def list_aliases(self, call: Call, key_ref: str | None = None) -> dict[str, Any]:
        key = call.target("key_ref").key
        rows = self.store.list_aliases(key.key_id if key else None)
        return {"Aliases": [{"AliasName": name, "TargetKeyId": kid, "CreationDate": created.isoformat(),
                             "AliasArn": f"arn:kms-broker:kms:local:000000000000:{name}"}
                            for name, kid, created in rows], "Truncated": False}

    @operation("kms:TagResource", Need("kms:TagResource", with_facts(key_arg("key_ref", details=True), more=request_tags)),
               mutates=True)
    def tag_resource(self, call: Call, key_ref: str, tags: Any) -> None:
        tags = check_tags(tags)
        key = call.key()
        if len({**key.tags, **tags}) > 50:
            raise errors.LimitExceeded("a key has at most 50 tags")
        self._keep_within(call, key, tags=tags)
        self.store.set_tags(key.key_id, tags)

    @operation("kms:UntagResource", Need("kms:UntagResource", with_facts(key_arg("key_ref"), {"aws:TagKeys": "tag_keys"})),
               mutates=True)
    def untag_resource(self, call: Call, key_ref: str, tag_keys: Any) -> None:
        if not isinstance(tag_keys, list) or len(tag_keys) > 50 or not all(isinstance(k, str) for k in tag_keys):
            raise errors.ValidationError("TagKeys must be a list of at most 50 strings")
        names = [valid_text(k, "TagKey") for k in tag_keys]
        self._keep_within(call, call.key(), tags=dict.fromkeys(names))
        self.store.remove_tags(call.key().key_id, names)

    @operation("kms:ListResourceTags", Need("kms:ListResourceTags", key_arg("key_ref", details=True)))
    def list_resource_tags(self, call: Call, key_ref: str) -> dict[str, Any]:
        tags = call.key().tags
        return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in sorted(tags.items())], "Truncated": False}

    # =========================================================================================== rotation

    @staticmethod
    def _check_rotatable(key: Key) -> None:
        if key.spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise errors.Unsupported("only symmetric encryption keys rotate (as in AWS KMS)")
        if key.origin is Origin.EXTERNAL:
            raise errors.Unsupported("keys with imported material do not rotate automatically")

    def _check_rotates_alone(self, key: Key) -> None:
        """A key that is part of a replicated key rotates only with it (through the replicated-key operation)."""
        whole = self.rotated_by(key)
        if whole is not None:
            raise errors.InvalidState(f"key {key.key_id} is part of replicated key {whole}: rotate that one "
                                      "(every copy gets the new version together)")

    @operation("kms:EnableKeyRotation", Need("kms:EnableKeyRotation", with_facts(
        key_arg("key_ref"), {"kms:RotationPeriodInDays": "period_days"})), mutates=True)
    def enable_key_rotation(self, call: Call, key_ref: str, period_days: int = 365) -> None:
        key = call.key()
        if not isinstance(period_days, int) or isinstance(period_days, bool) or not 90 <= period_days <= 2560:
            raise errors.ValidationError("RotationPeriodInDays must be 90 to 2560")
        self._check_rotates_alone(key)
        self._check_rotatable(key)
        self._require_usable(key)
        self.store.update_key(key.key_id, rotation_period_days=period_days,
                              next_rotation_at=_now() + timedelta(days=period_days))

    @operation("kms:DisableKeyRotation", Need("kms:DisableKeyRotation", key_arg("key_ref")), mutates=True)
    def disable_key_rotation(self, call: Call, key_ref: str) -> None:
        key = call.key()
        self._check_rotatable(key)
        self.store.update_key(key.key_id, rotation_period_days=None, next_rotation_at=None)

    @operation("kms:GetKeyRotationStatus", Need("kms:GetKeyRotationStatus", key_arg("key_ref")))
    def get_key_rotation_status(self, call: Call, key_ref: str) -> dict[str, Any]:
        key = call.key()
        out: dict[str, Any] = {"KeyId": key.key_id, "KeyRotationEnabled": key.rotation_period_days is not None}
        if key.rotation_period_days:
            out["RotationPeriodInDays"] = key.rotation_period_days
            out["NextRotationDate"] = key.next_rotation_at.isoformat()
        return out

    @operation("kms:RotateKeyOnDemand", Need("kms:RotateKeyOnDemand", key_arg("key_ref")), mutates=True)
    def rotate_key_on_demand(self, call: Call, key_ref: str) -> dict[str, Any]:
        key = call.key()
        self._check_rotates_alone(key)
        self._check_rotatable(key)
        self._require_usable(key)
        call.entry.key_version = self._add_version(key, "ON_DEMAND")
        return {"KeyId": key.key_id, "KeyVersion": call.entry.key_version}

    def _add_version(self, key: Key, rotation_type: str) -> int:
        """Create material for version N+1 and make it primary, unless another process rotated first."""
        backend = self.provider(key.provider)
        _, current = self._version(key)
        ref = backend.create_version(current, key.spec, key.usage, label=key.key_id)
        number = key.primary_version + 1
        try:
            added = self.store.add_version(key.key_id, KeyVersion(number, ref.to_dict(), _now(),
                                                                  rotation_type=rotation_type),
                                           expected_primary=key.primary_version)
        except Conflict:
            added = False
        if not added:
            backend.destroy(ref)
            raise errors.InvalidState("the key was rotated concurrently; retry")
        return number

    @operation("kms:ListKeyRotations", Need("kms:ListKeyRotations", key_arg("key_ref")))
    def list_key_rotations(self, call: Call, key_ref: str) -> dict[str, Any]:
        key = call.key()
        versions = self.store.list_versions(key.key_id)
        rotations = []
        for v in versions[1:]:
            entry: dict[str, Any] = {"KeyId": key.key_id, "KeyVersion": v.version,
                                     "RotationDate": v.created_at.isoformat()}
            if v.rotation_type:
                entry["RotationType"] = v.rotation_type
            rotations.append(entry)
        return {"Rotations": rotations, "Truncated": False}

    @operation("kms:ListKeyVersions", Need("kms:ListKeyVersions", key_arg("key_ref")))
    def list_key_versions(self, call: Call, key_ref: str) -> dict[str, Any]:
        key = call.key()
        return {"KeyId": key.key_id, "PrimaryVersion": key.primary_version,
                "Versions": [{"KeyVersion": v.version, "CreationDate": v.created_at.isoformat(), "State": v.state}
                             for v in self.store.list_versions(key.key_id)]}

    # =========================================================================================== import

    @operation("kms:GetParametersForImport", Need("kms:GetParametersForImport", with_facts(key_arg("key_ref"), {
        "kms:WrappingAlgorithm": "wrapping_algorithm", "kms:WrappingKeySpec": "wrapping_key_spec"})), mutates=True)
    def get_parameters_for_import(self, call: Call, key_ref: str, wrapping_algorithm: str,
                                  wrapping_key_spec: str = "RSA_2048") -> dict[str, Any]:
        key = call.key()
        if key.origin is not Origin.EXTERNAL:
            raise errors.Unsupported("the key's Origin is not EXTERNAL")
        if key.state not in (KeyState.PENDING_IMPORT, KeyState.ENABLED, KeyState.DISABLED):
            raise errors.InvalidState(f"key is {key.state.value}")
        if wrapping_key_spec != "RSA_2048":
            raise errors.ValidationError("WrappingKeySpec must be RSA_2048")
        backend = self.provider(key.provider)
        params = backend.begin_import(key.spec, ref=self._imported_ref(key))
        if wrapping_algorithm not in params.wrapping_algorithms:
            backend.discard_import(params.handle)
            raise errors.ValidationError(
                f"WrappingAlgorithm must be one of {', '.join(params.wrapping_algorithms)} for this provider")
        token_id = secrets.token_hex(24)
        expires = _now() + IMPORT_TOKEN_TTL
        self.store.add_import_token(token_id, key.key_id, dict(params.handle), wrapping_algorithm, expires)
        return {"KeyId": key.key_id, "ImportToken": token_id.encode(), "PublicKey": params.public_key_der,
                "ParametersValidTo": expires.isoformat()}

    @operation("kms:ImportKeyMaterial", Need("kms:ImportKeyMaterial", with_facts(key_arg("key_ref"), {
        "kms:ExpirationModel": lambda a: "KEY_MATERIAL_DOES_NOT_EXPIRE"})), mutates=True)  # the only one served
    def import_key_material(self, call: Call, key_ref: str, import_token: bytes,
                            encrypted_key_material: bytes) -> dict[str, Any]:
        key = call.key()
        check_transition(key.state, "import")
        token = self.store.get_import_token(bytes(import_token or b"")[:256].decode(errors="replace"))
        if token is None or token[0] != key.key_id:
            raise errors.InvalidImportToken("the import token is not valid for this key")
        _, handle, algorithm, expires = token
        if expires <= _now():
            raise errors.ExpiredImportToken("the import token has expired; call GetParametersForImport again")
        material = check_bytes(encrypted_key_material, "EncryptedKeyMaterial", high=8192)
        backend = self.provider(key.provider)
        existing = self.store.get_version(key.key_id, 1)
        try:
            # the provider imports into the key's own backend key and refuses material other than it held
            ref = backend.finish_import(handle, key.spec, key.usage, material, algorithm, label=key.key_id,
                                        ref=self._imported_ref(key, existing))
        except pb.ProviderInvalidCiphertext:
            raise errors.IncorrectKeyMaterial("the key material could not be unwrapped with this import token") from None
        except pb.ProviderInvalidInput as exc:
            raise errors.IncorrectKeyMaterial(str(exc)) from None
        if existing is None:
            self.store.add_version(key.key_id, KeyVersion(1, ref.to_dict(), _now()))
        else:
            self.store.set_version_ref(key.key_id, 1, ref.to_dict(), "Enabled")
        for stale in self.store.delete_import_tokens(key.key_id):
            backend.discard_import(stale)
        if key.state is KeyState.PENDING_IMPORT:
            self.store.update_key(key.key_id, state=KeyState.ENABLED)
        call.entry.key_version = 1
        return {"KeyId": key.key_id}

    @operation("kms:DeleteImportedKeyMaterial", Need("kms:DeleteImportedKeyMaterial", key_arg("key_ref")),
               mutates=True)
    def delete_imported_key_material(self, call: Call, key_ref: str) -> None:
        key = call.key()
        if key.origin is not Origin.EXTERNAL:
            raise errors.Unsupported("the key's Origin is not EXTERNAL")
        check_transition(key.state, "delete_imported")
        backend = self.provider(key.provider)
        for kv in self.store.list_versions(key.key_id):
            if kv.state == "Enabled":
                kept = backend.delete_imported_material(ProviderKeyRef.from_dict(kv.provider_ref))
                self.store.set_version_ref(key.key_id, kv.version, kept.to_dict(), "Destroyed")
        self.store.update_key(key.key_id, state=KeyState.PENDING_IMPORT)

    def _imported_ref(self, key: Key, existing: KeyVersion | None = None) -> ProviderKeyRef | None:
        """The ref of the key's imported material (version 1), material deleted or not; None before the first
        import. A re-import goes to the same backend key through it."""
        existing = existing or self.store.get_version(key.key_id, 1)
        return ProviderKeyRef.from_dict(existing.provider_ref) if existing is not None else None

    def _destroy_versions(self, key: Key) -> None:
        backend = self.provider(key.provider)
        for kv in self.store.list_versions(key.key_id):
            if kv.state == "Enabled":
                ref = ProviderKeyRef.from_dict(kv.provider_ref)
                backend.destroy(ref)
                self.store.set_version_ref(key.key_id, kv.version, backend.destroyed_ref(ref).to_dict(), "Destroyed")

    # =========================================================================================== browsing
    # Read models for browsing front doors (the console): one audited operation per page instead of one per key,
    # and only what the caller may see — each part is included when the caller holds the action that reads it.

    @operation("kms:ListKeys", Need("kms:ListKeys"))
    def find_keys(self, call: Call, query: KeyQuery, *, limit: int = 50, marker: str | None = None,
                  max_scan: int = 2000) -> KeyPage:
        """Keys matching `query` that the caller may describe, in key-id order, at most `limit` of them."""
        if not 1 <= limit <= 500 or (marker is not None and (not isinstance(marker, str) or len(marker) > 64)):
            raise errors.ValidationError("limit must be 1 to 500 and marker a key id")
        found: list[KeySummary] = []
        after, scanned, exhausted = marker, 0, False
        while len(found) < limit and scanned < max_scan and not exhausted:
            batch = self.store.list_keys(100, after)
            exhausted = len(batch) < 100
            for key in batch:
                after, scanned = key.key_id, scanned + 1
                if key.state is KeyState.DESTROYED:
                    continue
                full = self.store.get_key(key.key_id, details=True) or key
                if call.holds("kms:DescribeKey", full) and query.matches(full):
                    found.append(summary_of(full))
                    if len(found) == limit:
                        exhausted = exhausted and key is batch[-1]
                        break
        return KeyPage(found, None if exhausted else after, scanned)

    @operation("kms:DescribeKey", Need("kms:DescribeKey", key_arg("key_ref", details=True)))
    def key_detail(self, call: Call, key_ref: str) -> KeyDetail:
        """One key with what the caller may read about it, and which key actions the caller holds on it."""
        key = call.key()
        may = {a: call.holds(a, key) for a in KEY_ACTIONS + ("kms:ListKeyVersions", "kms:GetKeyRotationStatus",
                                                           "kms:ListResourceTags", "kms:ListAliases")}
        versions = [KeyVersionInfo(v.version, v.created_at.isoformat(timespec="seconds"), v.state,
                                   v.version == key.primary_version)
                    for v in self.store.list_versions(key.key_id)] if may["kms:ListKeyVersions"] else []
        summary = summary_of(key)
        if not may["kms:ListResourceTags"] or not may["kms:ListAliases"]:
            summary = dataclasses.replace(summary, tags=summary.tags if may["kms:ListResourceTags"] else {},
                                          aliases=summary.aliases if may["kms:ListAliases"] else ())
        rotation = may["kms:GetKeyRotationStatus"]
        meta = self._metadata(key)
        return KeyDetail(
            summary=summary, origin=key.origin.value, primary_version=key.primary_version,
            deletion_date=key.deletion_date.isoformat(timespec="seconds") if key.deletion_date else None,
            rotation_period_days=key.rotation_period_days if rotation else None,
            next_rotation=key.next_rotation_at.isoformat(timespec="seconds") if rotation and key.next_rotation_at
            else None,
            versions=versions,
            algorithms=meta.get("EncryptionAlgorithms") or meta.get("SigningAlgorithms") or meta.get("MacAlgorithms")
            or [],
            allowed={a: may[a] for a in KEY_ACTIONS})

    @operation("kms:DescribeCustomKeyStores", Need("kms:DescribeCustomKeyStores"))
    def describe_key_stores(self, call: Call) -> list[KeyStoreInfo]:
        """Each provider as a key store: the specs (and usages) its capabilities allow, and whether the caller may
        create keys there — what a create form offers."""
        out = []
        for name, provider in sorted(self.providers.items()):
            caps = provider.capabilities
            specs = {spec.value: sorted(u.value for u in ALLOWED_USAGES[spec]) for spec in KeySpec
                     if caps.missing_for(spec) is None}
            out.append(KeyStoreInfo(name, specs, call.holds("kms:CreateKey", resource=f"provider/{name}"),
                                    caps.import_material))
        return out

    @operation("kms:DescribeCustomKeyStores", Need("kms:DescribeCustomKeyStores", fixed("custom-key-store/*")))
    def describe_custom_key_stores(self, call: Call, store: str | None = None) -> list[tuple[str, bool]]:
        """The providers as custom key stores: (name, healthy), one name or all. NotFound for an unknown name."""
        names = sorted(self.providers)
        if store is not None:
            if store not in self.providers:
                raise errors.NotFound(f"custom key store {store[:128]!r} does not exist")
            names = [store]
        health = self.readiness()
        return [(name, health.get(name) == "ok") for name in names]

    @internal
    def has_key_store(self, name: str) -> bool:
        """Whether a provider of that name is configured (names are public: DescribeCustomKeyStores lists them)."""
        return name in self.providers

    # =========================================================================================== background jobs

    @internal
    def run_due_jobs(self, ctx: RequestContext, now: datetime | None = None) -> dict[str, list[str]]:
        """Destroy keys whose deletion window passed; rotate keys whose period passed. Safe in many processes.

        Not an operation itself: it only lists what is due; each key's step is a declared operation run as `ctx`.
        """
        now = now or _now()
        destroyed, rotated = [], []
        # A key whose backend fails is audited as an error and retried on the next run; it must not stop the others.
        for key_id in self.store.keys_due_for_deletion(now):
            with _job_step():
                if self.destroy_due_key(ctx, key_id, now=now):
                    destroyed.append(key_id)
        for key_id in self.store.keys_due_for_rotation(now):
            with _job_step():
                if self.rotate_due_key(ctx, key_id, now=now):
                    rotated.append(key_id)
        return {"destroyed": destroyed, "rotated": rotated}

    @operation("broker:DestroyKey", Need("broker:DestroyKey", key_arg("key_id")), mutates=True)
    def destroy_due_key(self, call: Call, key_id: str, *, now: datetime | None = None) -> bool:
        key = call.key("key_id")
        if key.state is not KeyState.PENDING_DELETION or key.deletion_date is None \
                or key.deletion_date > (now or _now()):
            return False
        self._destroy_versions(key)
        for name, _, _ in self.store.list_aliases(key.key_id):
            self.store.delete_alias(name)
        self.store.update_key(key.key_id, state=KeyState.DESTROYED)
        return True

    @operation("broker:RotateKey", Need("broker:RotateKey", key_arg("key_id")), mutates=True)
    def rotate_due_key(self, call: Call, key_id: str, *, now: datetime | None = None) -> bool:
        key = call.key("key_id")
        now = now or _now()
        if key.rotation_period_days is None or key.next_rotation_at is None or key.next_rotation_at > now:
            return False
        self._check_rotates_alone(key)  # a schedule set before the key became part of a replicated key
        try:
            call.entry.key_version = self._add_version(key, "AUTOMATIC")
        except errors.InvalidState:
            return False  # another process rotated it
        self.store.update_key(key.key_id, next_rotation_at=now + timedelta(days=key.rotation_period_days))
        return True

    @internal
    def readiness(self) -> dict[str, str]:
        """Each provider's health, for /v1/ready. Never raises; names no key."""
        status = {}
        for name, provider in self.providers.items():
            try:
                provider.check_health()
                status[name] = "ok"
            except pb.ProviderError as exc:
                status[name] = f"unavailable: {exc}"
        return status

    @internal
    def dependencies(self) -> dict[str, str]:
        """Whether a request could complete now, beside the providers (for /v1/ready): the audit log can make a
        record durable (a full disk fails every key operation) and the store answers. Never raises; names no key."""
        try:
            self.store.ping()
            store = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure: not ready, named by its type only
            store = f"unavailable: {type(exc).__name__}"
        return {"audit": self.audit.health(), "store": store}

    @operation("broker:ReadMetrics", Need("broker:ReadMetrics", fixed("metrics/node")))
    def metrics(self, call: Call) -> tuple[bytes, str]:
        """This node's Prometheus metrics (every worker's, in the exposition format) and their content type. The
        health gauges are measured now, as /v1/ready does; no metric names a key, principal or context."""
        from broker import metrics

        return metrics.exposition(self.readiness(), self.root_provider_name(), self.dependencies())

    @internal
    def root_provider_name(self) -> str:
        """The name of the provider instance that is the root of trust (a name, nothing secret)."""
        for name, provider in self.providers.items():
            offered = getattr(provider, "root_of_trust", None)
            if self.root is not None and callable(offered) and offered() is self.root:
                return name
        return ""

    # =========================================================================================== sibling doors
    # The only way other services reach key material, providers or the catalog: each takes the caller's Call and
    # refuses unless that call authorized a fitting action on the key (or provider) it touches. Provider refs cross
    # this line only inside `Provisioned`, opaque to the sibling (it journals them; it never reads them).

    @within(*_ENCRYPTING)
    def seal_under(self, call: Call, key: Key, plaintext: bytes, context: Mapping[str, str]) -> tuple[bytes, int]:
        """A broker ciphertext of `plaintext` under `key`'s primary version (for multi-key wraps)."""
        self._require_usable(key)
        self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "Encrypt")
        if key.spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise errors.InvalidKeyUsage(f"key {key.key_id} is not a symmetric encryption key")
        return self._seal(key, plaintext, context)

    @within(*_DECRYPTING)
    def open_under(self, call: Call, key: Key, blob: bytes, context: Mapping[str, str]) -> tuple[bytes, int]:
        """The plaintext of a broker ciphertext made under `key`, and the version that made it."""
        entry = AuditEntry(call.action)
        return self._open(key, blob, context, entry), entry.key_version or 0

    @within("kms:DescribeKey", "kms:CreateKey", "kms:Encrypt", "kms:Decrypt", "kms:RotateKeyOnDemand")
    def metadata_of(self, call: Call, key: Key) -> dict[str, Any]:
        """KeyMetadata of a key the caller may see."""
        return self._metadata(key)

    @within("broker:EscrowRelease")
    def escrow_wrap(self, call: Call, key: Key, recipient_der: bytes) -> list[dict[str, Any]]:
        """Every enabled version's material wrapped (RSA-OAEP + RFC 5649, inside the HSM) for a recipient public key:
        the escrow release an approved quorum executes. Only material the root of trust holds can be released."""
        backend = self.provider(key.provider)
        offered = getattr(backend, "root_of_trust", None)
        if self.root is None or not callable(offered) or offered() is not self.root:
            raise errors.Unsupported(f"key {key.key_id} is not held by the root of trust: it cannot be escrowed")
        out = []
        for kv in self.store.list_versions(key.key_id):
            if kv.state == "Enabled":
                wrapped = self.root.wrap_for_import(ProviderKeyRef.from_dict(kv.provider_ref), recipient_der,
                                                    "RSA_AES_KEY_WRAP_SHA_1")
                out.append({"KeyVersion": kv.version, "WrappedKeyMaterial": wrapped,
                            "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_1"})
        call.entry.key_id, call.entry.provider = key.key_id, key.provider
        return out

    @within("broker:DestroyKeyNow")
    def destroy_now(self, call: Call, key: Key) -> None:
        """Destroy every version of a key at once, without the deletion window (an approved quorum executes it)."""
        self._destroy_versions(key)
        for name, _, _ in self.store.list_aliases(key.key_id):
            self.store.delete_alias(name)
        self.store.update_key(key.key_id, state=KeyState.DESTROYED)
        call.entry.key_id, call.entry.provider = key.key_id, key.provider

    @internal
    def caller_keys(self, call: Call, action: str, refs: list[Any]) -> list[Key]:
        """Resolve key refs and keep those the caller may use for `action` (for sibling services' fallbacks)."""
        out = []
        for ref in refs:
            key = self.resolve_key(ref)
            if call.holds(action, key):
                out.append(key)
        return out

    @internal
    def provider_names(self) -> list[str]:
        """The configured provider instances, the default first (names only: what a plan or a form offers)."""
        return [self.default_provider, *sorted(n for n in self.providers if n != self.default_provider)]

    @internal
    def capabilities_of(self, name: str) -> pb.Capabilities:
        """What provider `name` can do (public facts; ValidationError for an unknown name)."""
        return self.provider(name).capabilities

    # -- the catalog, for a sync plan (the call authorized kms:ListKeys)

    @within("kms:ListKeys", resource=lambda a: "*")
    def keys_tagged(self, call: Call, tag_key: str, value_prefix: str) -> list[Key]:
        """Keys (with tags and aliases) whose tag `tag_key` starts with `value_prefix`."""
        return self.store.keys_tagged(tag_key, value_prefix)

    @within("kms:ListKeys", resource=lambda a: "*")
    def known_key_ids(self, call: Call, ids: list[str]) -> set[str]:
        """Which of `ids` name keys of the catalog (in any state)."""
        return self.store.known_key_ids(ids)

    @within("kms:ListKeys", resource=lambda a: f"provider/{a['provider']}")
    def inventory_of(self, call: Call, provider: str) -> list[pb.InventoryItem]:
        """Every key provider `provider` holds, whether the broker made it or not (drift, crash cleanup)."""
        backend = self.provider(provider)
        if not backend.capabilities.inventory:
            raise errors.Unsupported(f"provider {provider!r} lacks inventory")
        return list(backend.inventory())

    @within("kms:EnableKey", "kms:DisableKey")
    def mirror_state(self, call: Call, key: Key) -> None:
        """Put the broker's enabled state back onto the provider (someone changed it there)."""
        if key.state not in (KeyState.ENABLED, KeyState.DISABLED):
            raise errors.InvalidState(f"key {key.key_id} is {key.state.value}")
        backend = self.provider(key.provider)
        for kv in self.store.list_versions(key.key_id):
            if kv.state == "Enabled":
                backend.set_enabled(ProviderKeyRef.from_dict(kv.provider_ref), key.state is KeyState.ENABLED)

    # -- material made in two steps (journaled by the sibling between them, so a crash can be settled)

    @within("kms:CreateKey", resource=lambda a: f"provider/{a['provider']}")
    def provision_key(self, call: Call, provider: str, spec: KeySpec, usage: KeyUsage, *,
                      label: str) -> Provisioned:
        """New material on `provider` for a key the catalog does not have yet (`register_key` adds it)."""
        backend = self.provider(provider)
        missing = backend.capabilities.missing_for(spec)
        if missing:
            raise errors.Unsupported(f"provider {provider!r} lacks {missing}; cannot create this key there")
        return Provisioned(provider, label, backend.create_key(spec, usage, label=label).to_dict(), call)

    @within("kms:RotateKeyOnDemand")
    def provision_version(self, call: Call, key: Key) -> Provisioned:
        """New material for `key` that is not a version of it yet (`append_version` adds it): a replicated key
        imports it into every copy first, so all of them move to the new version together."""
        self._check_rotatable(key)
        self._require_usable(key)
        _, current = self._version(key)
        ref = self.provider(key.provider).create_version(current, key.spec, key.usage, label=key.key_id)
        return Provisioned(key.provider, key.key_id, ref.to_dict(), call)

    @within("kms:ReplicateKey", key_arg="source")
    def replicate_version(self, call: Call, source: Key, target: str, *, label: str,
                          version: int | None = None) -> Provisioned:
        """`source`'s material (its primary version by default) imported into `target` through that provider's
        own import protocol, wrapped inside the source's backend: it never exists in clear outside it. A disabled
        source may be copied (its copies are disabled next); one pending deletion may not."""
        if source.state not in (KeyState.ENABLED, KeyState.DISABLED):
            raise errors.InvalidState(f"key {source.key_id} is {source.state.value}")
        _, ref = self._version(source, version)
        return self._import_copy(source.provider, ref, source.spec, source.usage, target, label, call)

    @internal
    def replicate_provisioned(self, call: Call, source: Provisioned, spec: KeySpec, usage: KeyUsage, target: str,
                              *, label: str) -> Provisioned:
        """Like `replicate_version`, for material this same call provisioned (authorized when it was made;
        anything else is refused)."""
        if source.owner is not call:
            raise errors.AccessDenied(f"{call.principal.name} did not provision this material")
        return self._import_copy(source.provider, ProviderKeyRef.from_dict(source.ref), spec, usage, target, label,
                                 call)

    def _import_copy(self, source_provider: str, ref: ProviderKeyRef, spec: KeySpec, usage: KeyUsage, target: str,
                     label: str, call: Call) -> Provisioned:
        root = self.root
        if root is None or not self.provider(source_provider).capabilities.wrap_for_import:
            raise errors.Unsupported(f"provider {source_provider!r} cannot wrap its material for another's import")
        self.check_replica_target(target, spec, source=source_provider)
        backend = self.provider(target)
        copy = backend.byok_import(spec, usage, lambda der, alg: root.wrap_for_import(ref, der, alg), label=label)
        return Provisioned(target, label, copy.to_dict(), call)

    @internal
    def check_replica_target(self, target: str, spec: KeySpec, *, source: str) -> None:
        """Refuse (ValidationError / Unsupported, naming the reason) a provider that cannot hold a copy."""
        backend = self.provider(target)
        if target == source:
            raise errors.ValidationError("the source provider holds the primary; targets are the other providers")
        exact = self.provider(source).capabilities.wrap_specs
        if exact is not None and spec not in exact:
            raise errors.Unsupported(f"provider {source!r} cannot wrap {spec.value} material exactly for another's "
                                     "import (its HSM pads the private key's encoding before AES key wrap, and "
                                     "importers refuse the padded key)")
        if not backend.capabilities.byok_import:
            raise errors.Unsupported(f"provider {target!r} lacks byok_import; it cannot hold a replicated copy")
        missing = backend.capabilities.missing_for(spec)
        if missing:
            raise errors.Unsupported(f"provider {target!r} lacks {missing}")

    @within("kms:CreateKey", resource=lambda a: f"provider/{a['material'].provider}")
    def register_key(self, call: Call, material: Provisioned, *, key_id: str, spec: KeySpec, usage: KeyUsage,
                     origin: Origin = Origin.BROKER, description: str = "",
                     tags: Mapping[str, str] | None = None) -> Key:
        """The catalog row for provisioned material: an enabled key whose version 1 it is."""
        key = Key(key_id=key_id, provider=material.provider, spec=spec, usage=usage, state=KeyState.ENABLED,
                  origin=origin, description=check_description(description), created_at=_now(),
                  tags=check_tags(dict(tags or {})))
        self.store.add_key(key, KeyVersion(1, dict(material.ref), _now()))
        with self._registered_lock:
            self._registered.setdefault(call, set()).add(key_id)
        return key

    @internal
    def registered_metadata(self, call: Call, key: Key) -> dict[str, Any]:
        """KeyMetadata of a key this same call registered (what CreateKey answers, whatever the caller may
        describe); AccessDenied for any other key."""
        with self._registered_lock:
            mine = key.key_id in self._registered.get(call, ())
        if not mine:
            raise errors.AccessDenied(f"{call.principal.name} did not create {key.key_id} here")
        return self._metadata(key)

    @within("kms:RotateKeyOnDemand")
    def append_version(self, call: Call, key: Key, material: Provisioned, *, expected_primary: int | None = None,
                       rotation_type: str = "ON_DEMAND") -> int | None:
        """Add provisioned material as version N+1 of `key` and make it primary; None when `expected_primary` is
        given and another process rotated first. `rotation_type` is what ListKeyRotations reports for it."""
        if material.provider != key.provider:
            raise errors.ValidationError(f"material on {material.provider!r} cannot be a version of a key on "
                                         f"{key.provider!r}")
        number = key.primary_version + 1
        try:
            added = self.store.add_version(key.key_id, KeyVersion(number, dict(material.ref), _now(),
                                                                  rotation_type=rotation_type),
                                           expected_primary=expected_primary)
        except Conflict:
            added = False
        return number if added else None

    @within("kms:CreateKey", "broker:DestroyKey", resource=lambda a: f"provider/{a['provider']}")
    def restore_provisioned(self, call: Call, provider: str, label: str, ref: Mapping[str, Any]) -> Provisioned:
        """Provisioned material a crashed run journaled (`Provisioned.journal`), for this call to register or
        discard."""
        self.provider(provider)
        return Provisioned(provider, label, dict(ref), call)

    @internal
    def discard(self, call: Call, material: Provisioned) -> bool:
        """Destroy provisioned material nobody registered (best effort; False if the provider refused). Only the
        call that provisioned or restored it may."""
        if material.owner is not call:
            raise errors.AccessDenied(f"{call.principal.name} did not provision this material")
        try:
            self.provider(material.provider).discard(ProviderKeyRef.from_dict(material.ref))
            return True
        except pb.ProviderError:
            return False

    @within("kms:ListKeys", resource=lambda a: f"provider/{a['provider']}")
    def strays(self, call: Call, provider: str, found: Mapping[str, list[pb.InventoryItem]]) -> Strays:
        """Of the provider's keys labelled with the id of a catalog key (`found`: key id -> the items labelled
        with it), those that are no version's material: a create the provider's SDK retried after its first
        attempt had landed (the answer lost) made a second cloud key with the same label (see `_strays_of`); and
        the live versions inside a key's own cloud key that none of its versions is (a version create retried the
        same way; `Provider.stray_versions`). Key ids the catalog does not hold are left out. One catalog read
        per 500 keys; the provider reads only versions the catalog's refs show to be missing."""
        held = self.store.versions_of(sorted(found))
        backend = self.provider(provider)
        out = Strays()
        for key_id, items in found.items():
            on, versions = held.get(key_id, ("", []))
            if on != provider:
                continue
            extra = _strays_of(backend, versions, items)
            if extra:
                out.keys[key_id] = extra
            inside = sorted(backend.stray_versions(ProviderKeyRef.from_dict(v.provider_ref) for v in versions))
            if inside:
                out.versions[key_id] = inside
        return out

    @within("broker:DestroyKey", resource=lambda a: f"provider/{a['provider']}")
    def discard_stray_version(self, call: Call, provider: str, key_id: str, name: str) -> bool:
        """Destroy the version `name` inside key `key_id`'s cloud key if it is (still) one of its stray versions,
        checked against the catalog now: never a version the catalog holds, never one made after its latest.
        -> whether it was discarded."""
        held = self.store.versions_of([key_id])
        on, versions = held.get(key_id, ("", []))
        if on != provider:
            raise errors.InvalidState(f"key {key_id} is not on provider {provider!r}")
        backend = self.provider(provider)
        ref = backend.stray_versions(ProviderKeyRef.from_dict(v.provider_ref) for v in versions).get(name)
        if ref is None:
            return False
        backend.discard(ref)
        return True

    @within("broker:DestroyKey", resource=lambda a: f"provider/{a['provider']}")
    def discard_unregistered(self, call: Call, provider: str, label: str,
                             items: list[pb.InventoryItem]) -> list[str]:
        """Destroy the provider's keys labelled `label` that are no catalog version's material: all of them when the
        catalog has no key `label` (a create that crashed before its ref was journaled, or landed after its intent
        was aborted), else its strays (`strays`). -> the provider's ids of what was discarded."""
        backend = self.provider(provider)
        mine = [i for i in items if i.label is not None and i.label.lower() == label.lower()]
        held = self.store.versions_of([label])
        if label in held:
            on, versions = held[label]
            if on != provider:
                raise errors.InvalidState(f"key {label} is not on provider {provider!r}")
            mine = _strays_of(backend, versions, mine)
        elif self.store.known_key_ids([label]):  # a key without versions (pending import): nothing is a stray
            return []
        out = []
        for item in mine:
            backend.discard(backend.ref_of(item))
            out.append(item.key_id)
        return out


def _strays_of(backend: Provider, versions: list[KeyVersion], items: list[pb.InventoryItem]) -> list[pb.InventoryItem]:
    """The items that are none of `versions`' material and were made before the latest version was registered.
    A key made later may be a rotation in flight (its cloud key made, its version not registered yet): it is
    never taken for a stray. Items without a creation time are never strays either."""
    if not versions:
        return []
    held = {ProviderKeyRef.from_dict(v.provider_ref).key_id for v in versions}
    latest = max(_aware(v.created_at) for v in versions)
    return [i for i in items if backend.ref_of(i).key_id not in held
            and i.created_at is not None and _aware(i.created_at) <= latest]


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _offered_root(providers: Mapping[str, Provider], default: str) -> RootOfTrust | None:
    make = getattr(providers[default], "root_of_trust", None)
    return make() if callable(make) else None


@contextmanager
def _job_step() -> Iterator[None]:
    """One key of a background job: its failure is already audited and is retried on the next run. An audit log
    that cannot be written (NotReady) still stops the job."""
    try:
        yield
    except errors.NotReady:
        raise
    except errors.BrokerError:
        pass


def _oaep_hash(alg: EncryptionAlgorithm) -> str:
    return "sha1" if alg is EncryptionAlgorithm.RSAES_OAEP_SHA_1 else "sha256"


def _oaep(alg: EncryptionAlgorithm) -> padding.OAEP:
    h = _HASHES[_oaep_hash(alg)]()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def _generate_pair(spec: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    if spec.startswith("RSA_"):
        return rsa.generate_private_key(65537, int(spec.split("_")[1]))
    curves: dict[str, Callable[[], ec.EllipticCurve]] = {
        "ECC_NIST_P256": ec.SECP256R1, "ECC_NIST_P384": ec.SECP384R1, "ECC_NIST_P521": ec.SECP521R1,
        "ECC_SECG_P256K1": ec.SECP256K1,
    }
    return ec.generate_private_key(curves[spec]())

