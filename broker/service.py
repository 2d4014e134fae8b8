"""KeyService: the KMS semantics, provider-agnostic, and the one choke point every front door goes through.

Every public operation runs inside `operation`: resolve key → authorize (broker.policy) → provider op →
audit (broker.audit). No front door talks to a provider or the store directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker import ciphertext as ct
from broker import errors
from broker.audit import AuditLog
from broker.auth import Principal
from broker.model import (
    ALLOWED_USAGES,
    EncryptionAlgorithm,
    InvalidTransition,
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
from broker.store import Conflict, Store
from providers import base as pb
from providers.base import Provider, ProviderKeyRef

MAX_PLAINTEXT = 4096
MAX_CIPHERTEXT = 6144
IMPORT_TOKEN_TTL = timedelta(hours=24)
ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512, "sha1": hashes.SHA1}
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
_KEY_PAIR_SPECS = {"RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
                   "ECC_SECG_P256K1"}


@dataclass
class RequestContext:
    """Who asks, from where; filled by the front door, read by policy and audit."""

    principal: Principal
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    source_ip: str = ""
    front_door: str = "rest"
    audited: bool = False


@dataclass
class AuditEntry:
    """What the audit record of one operation will say; filled as the operation proceeds."""

    action: str
    key_id: str | None = None
    key_version: int | None = None
    provider: str | None = None
    context: Mapping[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(UTC)


def _provider_errors(exc: pb.ProviderError) -> errors.BrokerError:
    """The one mapping from provider failures to the broker's error model."""
    msg = str(exc) or type(exc).__name__
    mapping: list[tuple[type, type[errors.BrokerError]]] = [
        (pb.ProviderUnavailable, errors.DependencyTimeout),
        (pb.ProviderNotFound, errors.NotFound),
        (pb.ProviderAccessDenied, errors.AccessDenied),
        (pb.ProviderThrottled, errors.Throttled),
        (pb.ProviderInvalidState, errors.InvalidState),
        (pb.ProviderInvalidCiphertext, errors.InvalidCiphertext),
        (pb.ProviderIntegrityError, errors.DependencyFailure),
        (pb.ProviderUnsupported, errors.Unsupported),
        (pb.ProviderInvalidInput, errors.ValidationError),
    ]
    for provider_cls, broker_cls in mapping:
        if isinstance(exc, provider_cls):
            return broker_cls(f"provider: {msg}")
    return errors.DependencyFailure(f"provider: {msg}")


_SECRET_WORDS = ("token", "secret", "password", "passwd", "plaintext", "ciphertext", "pin", "private")


def _audit_safe(audit: AuditLog, name: str, value: Any) -> Any:
    """Extras named like a secret are HMAC'd unless the caller did it already: they never reach a record in clear."""
    if isinstance(value, bytes | bytearray):
        return audit.hmac_value(bytes(value))
    if any(word in name.lower() for word in _SECRET_WORDS) and not (
            isinstance(value, str) and value.startswith("hmac-sha256:")):
        return audit.hmac_value(str(value))
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class KeyService:
    def __init__(self, store: Store, providers: Mapping[str, Provider], default_provider: str,
                 policy: PolicyEngine, audit: AuditLog) -> None:
        if default_provider not in providers:
            raise ValueError(f"default provider {default_provider!r} is not configured")
        self.store = store
        self.providers = dict(providers)
        self.default_provider = default_provider
        self.policy = policy
        self.audit = audit
        self._refs: dict[tuple[str, int], ProviderKeyRef] = {}

    # =========================================================================================== choke point

    @contextmanager
    def operation(self, ctx: RequestContext, action: str) -> Iterator[AuditEntry]:
        """Audit exactly once, after the outcome is known and before anything is returned to the caller.

        Fail closed, in two steps. (1) Before the body runs, `audit.precheck()` asks every durable audit sink whether
        it can take a record now; if one cannot (file unwritable, store failing), the body never runs: no key is
        resolved, no provider is called, nothing is stored, and the caller gets NotReady (503). (2) The record itself
        is written in `finally` and `audit.write` blocks until it is durable (group commit); if that fails, the
        caller gets 503 too. Only a sink that starts failing between (1) and (2) can leave a performed operation
        answered with 503 (its record is then in no durable sink: a batch lands in all of them or is undone).
        """
        entry = AuditEntry(action)
        started = time.perf_counter()
        outcome, code = "allowed", None
        try:
            self.audit.precheck()
            yield entry
        except errors.BrokerError as exc:
            outcome, code = ("denied" if isinstance(exc, errors.AccessDenied) else "error"), exc.code
            raise
        except pb.ProviderError as exc:
            mapped = _provider_errors(exc)
            outcome, code = "error", mapped.code
            raise mapped from None
        except InvalidTransition as exc:
            outcome, code = "error", errors.InvalidState.code
            raise errors.InvalidState(str(exc)) from None
        except BaseException:
            # anything unexpected is an error in the record too (never "allowed"); the front door answers 500
            outcome, code = "error", errors.BrokerError.code
            raise
        finally:
            self._write_audit(ctx, entry, outcome, code, time.perf_counter() - started)

    def _write_audit(self, ctx: RequestContext, entry: AuditEntry, outcome: str, code: str | None,
                     latency: float) -> None:
        context = entry.context or {}
        record = {
            **{k: _audit_safe(self.audit, k, v) for k, v in entry.extra.items()},
            "time": _now().isoformat(timespec="microseconds"),
            "request_id": ctx.request_id,
            "principal": ctx.principal.name,
            "auth_method": ctx.principal.auth_method,
            "source_ip": ctx.source_ip,
            "front_door": ctx.front_door,
            "action": entry.action,
            "key_id": entry.key_id,
            "key_version": entry.key_version,
            "provider": entry.provider,
            "encryption_context": {k: self.audit.hmac_value(v) for k, v in sorted(context.items())},
            "outcome": outcome,
            "error_code": code,
            "latency_ms": round(latency * 1000, 3),
        }
        self.audit.write(record)
        ctx.audited = True

    def audit_rejected(self, ctx: RequestContext, action: str, code: str, denied: bool) -> None:
        """Audit a request a front door refused before it reached an operation (bad token, bad body, …)."""
        self._write_audit(ctx, AuditEntry(action), "denied" if denied else "error", code, 0.0)

    def authorize(self, ctx: RequestContext, entry: AuditEntry, action: str, key: Key | None,
                  context: Mapping[str, str] | None = None, *, resource: str | None = None) -> None:
        """Ask the one policy engine. `resource` names non-key resources (e.g. "keyring/<mount>/<id>")."""
        if key is not None:
            entry.key_id, entry.provider = key.key_id, key.provider
        elif resource is not None:
            entry.extra.setdefault("resource", resource)
        self.policy.authorize(ctx.principal, action, key, dict(context or {}), resource=resource,
                              source_ip=ctx.source_ip)

    # =========================================================================================== helpers

    def _provider(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise errors.ValidationError(f"unknown provider {name!r}") from None

    def resolve_key(self, key_ref: str, *, details: bool = False) -> Key:
        if not isinstance(key_ref, str) or not key_ref:
            raise errors.ValidationError("KeyId is required")
        key_id = key_ref
        if key_ref.startswith("alias/"):
            key_id = self.store.resolve_alias(key_ref)
            if key_id is None:
                raise errors.NotFound(f"alias {key_ref} not found")
        elif key_ref.startswith("arn:"):
            key_id = key_ref.rsplit("/", 1)[-1]
        key = self.store.get_key(key_id, details=details) if len(key_id) <= 64 else None
        if key is None or key.state is KeyState.DESTROYED:
            raise errors.NotFound(f"key {key_ref} not found")
        return key

    @staticmethod
    def _require_usable(key: Key) -> None:
        if key.state is KeyState.DISABLED:
            raise errors.Disabled(f"key {key.key_id} is disabled")
        if key.state is not KeyState.ENABLED:
            raise errors.InvalidState(f"key {key.key_id} is {key.state.value}")

    @staticmethod
    def _require_usage(key: Key, usage: KeyUsage, operation: str) -> None:
        if key.usage is not usage:
            raise errors.InvalidKeyUsage(f"key {key.key_id} has usage {key.usage.value}; {operation} needs {usage.value}")

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

    @staticmethod
    def check_context(context: Any) -> dict[str, str]:
        if context is None:
            return {}
        if not isinstance(context, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in context.items()):
            raise errors.ValidationError("EncryptionContext must be an object of string values")
        return dict(context)

    @staticmethod
    def _check_bytes(value: Any, name: str, *, low: int = 1, high: int = MAX_PLAINTEXT) -> bytes:
        if not isinstance(value, bytes | bytearray):
            raise errors.ValidationError(f"{name} is required")
        if not low <= len(value) <= high:
            raise errors.ValidationError(f"{name} must be {low} to {high} bytes")
        return bytes(value)

    def _encryption_algorithms(self, key: Key) -> list[EncryptionAlgorithm]:
        offered = self.providers[key.provider].capabilities.encryption_algorithms if key.provider in self.providers \
            else None
        return [a for a in encryption_algorithms_for(key.spec)
                if a is EncryptionAlgorithm.SYMMETRIC_DEFAULT or offered is None or a in offered]

    def _signing_algorithms(self, key: Key) -> list[SigningAlgorithm]:
        offered = self.providers[key.provider].capabilities.signing_algorithms if key.provider in self.providers \
            else None
        return [a for a in signing_algorithms_for(key.spec) if offered is None or a in offered]

    def describe(self, key: Key) -> dict[str, Any]:
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

    def create_key(self, ctx: RequestContext, *, key_spec: str = "SYMMETRIC_DEFAULT", key_usage: str | None = None,
                   description: str = "", tags: Mapping[str, str] | None = None, origin: str = "AWS_KMS",
                   provider: str | None = None) -> dict[str, Any]:
        with self.operation(ctx, "kms:CreateKey") as entry:
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
            if not isinstance(description, str) or len(description) > 8192:
                raise errors.ValidationError("Description must be a string of at most 8192 characters")
            tags = self._check_tags(tags)
            provider_name = provider or self.default_provider
            backend = self._provider(provider_name)
            entry.provider = provider_name
            self.authorize(ctx, entry, "kms:CreateKey", None, resource=f"provider/{provider_name}")
            missing = backend.capabilities.missing_for(spec)
            if missing:
                raise errors.Unsupported(f"provider {provider_name!r} lacks {missing}; cannot create this key there")
            if origin_value is Origin.EXTERNAL and not backend.capabilities.import_material:
                raise errors.Unsupported(f"provider {provider_name!r} lacks key material import")
            key_id = str(uuid.uuid4())
            entry.key_id = key_id
            now = _now()
            first = None
            state = KeyState.PENDING_IMPORT
            if origin_value is Origin.BROKER:
                ref = backend.create_key(spec, usage, label=key_id)
                first = KeyVersion(1, ref.to_dict(), now)
                state = KeyState.ENABLED
            key = Key(key_id=key_id, provider=provider_name, spec=spec, usage=usage, state=state,
                      origin=origin_value, description=description, created_at=now, tags=tags)
            self.store.add_key(key, first)
            return self.describe(key)

    @staticmethod
    def _check_tags(tags: Any) -> dict[str, str]:
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
        return dict(tags)

    def describe_key(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:DescribeKey") as entry:
            key = self.resolve_key(key_ref, details=True)
            self.authorize(ctx, entry, "kms:DescribeKey", key)
            return self.describe(key)

    def list_keys(self, ctx: RequestContext, *, limit: int = 100, marker: str | None = None) -> dict[str, Any]:
        with self.operation(ctx, "kms:ListKeys") as entry:
            if not isinstance(limit, int) or not 1 <= limit <= 1000:
                raise errors.ValidationError("Limit must be 1 to 1000")
            self.authorize(ctx, entry, "kms:ListKeys", None)
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
                "Keys": [{"KeyId": k.key_id, "KeyArn": self.describe(k)["Arn"], "Provider": k.provider} for k in page],
                "Truncated": len(keys) > limit,
            }
            if len(keys) > limit:
                out["NextMarker"] = page[-1].key_id
            return out

    def update_key_description(self, ctx: RequestContext, key_ref: str, description: str) -> None:
        with self.operation(ctx, "kms:UpdateKeyDescription") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:UpdateKeyDescription", key)
            if not isinstance(description, str) or len(description) > 8192:
                raise errors.ValidationError("Description must be a string of at most 8192 characters")
            self.store.update_key(key.key_id, description=description)

    def _set_enabled(self, ctx: RequestContext, key_ref: str, enabled: bool) -> None:
        action = "kms:EnableKey" if enabled else "kms:DisableKey"
        with self.operation(ctx, action) as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, action, key)
            check_transition(key.state, "enable" if enabled else "disable")
            backend = self._provider(key.provider)
            for kv in self.store.list_versions(key.key_id):
                if kv.state == "Enabled":
                    backend.set_enabled(ProviderKeyRef.from_dict(kv.provider_ref), enabled)
            self.store.update_key(key.key_id, state=KeyState.ENABLED if enabled else KeyState.DISABLED)

    def enable_key(self, ctx: RequestContext, key_ref: str) -> None:
        self._set_enabled(ctx, key_ref, True)

    def disable_key(self, ctx: RequestContext, key_ref: str) -> None:
        self._set_enabled(ctx, key_ref, False)

    def schedule_key_deletion(self, ctx: RequestContext, key_ref: str, pending_days: int = 30) -> dict[str, Any]:
        with self.operation(ctx, "kms:ScheduleKeyDeletion") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:ScheduleKeyDeletion", key)
            if not isinstance(pending_days, int) or isinstance(pending_days, bool) or not 7 <= pending_days <= 30:
                raise errors.ValidationError("PendingWindowInDays must be 7 to 30")
            check_transition(key.state, "schedule_deletion")
            when = _now() + timedelta(days=pending_days)
            backend = self._provider(key.provider)
            for kv in self.store.list_versions(key.key_id):
                if kv.state == "Enabled":
                    backend.schedule_destruction(ProviderKeyRef.from_dict(kv.provider_ref), pending_days)
            self.store.update_key(key.key_id, state=KeyState.PENDING_DELETION, deletion_date=when)
            return {"KeyId": key.key_id, "DeletionDate": when.isoformat(), "KeyState": KeyState.PENDING_DELETION.value,
                    "PendingWindowInDays": pending_days}

    def cancel_key_deletion(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:CancelKeyDeletion") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:CancelKeyDeletion", key)
            check_transition(key.state, "cancel_deletion")
            backend = self._provider(key.provider)
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

    def encrypt(self, ctx: RequestContext, key_ref: str, plaintext: bytes, *, context: Any = None,
                algorithm: str = "SYMMETRIC_DEFAULT") -> dict[str, Any]:
        with self.operation(ctx, "kms:Encrypt") as entry:
            plaintext = self._check_bytes(plaintext, "Plaintext")
            context = self.check_context(context)
            entry.context = context
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:Encrypt", key, context)
            self._require_usable(key)
            self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "Encrypt")
            if key.spec.is_rsa:
                return self._rsa_encrypt(key, entry, plaintext, algorithm)
            if algorithm != "SYMMETRIC_DEFAULT":
                raise errors.ValidationError("EncryptionAlgorithm must be SYMMETRIC_DEFAULT for a symmetric key")
            blob, version = self._seal(key, plaintext, context)
            entry.key_version = version
            return {"CiphertextBlob": blob, "KeyId": key.key_id, "KeyVersion": version,
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def _seal(self, key: Key, plaintext: bytes, context: Mapping[str, str]) -> tuple[bytes, int]:
        """Encrypt under the key's primary version: natively, or composed as an envelope (rule 3)."""
        version, ref = self._version(key)
        backend = self._provider(key.provider)
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

    def _open(self, blob: bytes, context: Mapping[str, str], expected_key: Key | None,
              entry: AuditEntry, ctx: RequestContext, action: str) -> tuple[bytes, Key]:
        """Decrypt a broker ciphertext: the header names key and version; AAD = header ‖ context."""
        try:
            parsed = ct.unpack(blob)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        try:
            key = self.resolve_key(parsed.header.key_id)
        except errors.NotFound:
            raise errors.InvalidCiphertext("the ciphertext refers to a key that does not exist") from None
        if expected_key is not None and expected_key.key_id != key.key_id:
            raise errors.IncorrectKey("the ciphertext was not encrypted under the key you named")
        entry.key_version = parsed.header.key_version
        self.authorize(ctx, entry, action, key, context)
        self._require_usable(key)
        self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "Decrypt")
        _, ref = self._version(key, parsed.header.key_version)
        backend = self._provider(key.provider)
        caps = backend.capabilities
        if not (caps.native_symmetric if parsed.header.scheme is ct.Scheme.PROVIDER_AEAD else caps.wrap_data_key):
            # a header naming a scheme this key's provider never produces: tampered, not an unsupported operation
            raise errors.InvalidCiphertext("the ciphertext's scheme does not match its key")
        aad = parsed.aad(context)
        if parsed.header.scheme is ct.Scheme.PROVIDER_AEAD:
            return backend.decrypt(ref, parsed.body, aad), key
        try:
            wrapped, sealed = ct.unpack_envelope(parsed.body)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        data_key = backend.unwrap_data_key(ref, wrapped)
        try:
            return AESGCM(data_key).decrypt(sealed[:12], sealed[12:], aad), key
        except Exception:  # noqa: BLE001 - cryptography raises InvalidTag; any failure is a bad ciphertext
            raise errors.InvalidCiphertext("ciphertext failed authentication") from None

    def decrypt(self, ctx: RequestContext, blob: bytes, *, key_ref: str | None = None, context: Any = None,
                algorithm: str = "SYMMETRIC_DEFAULT") -> dict[str, Any]:
        with self.operation(ctx, "kms:Decrypt") as entry:
            blob = self._check_bytes(blob, "CiphertextBlob", high=MAX_CIPHERTEXT)
            context = self.check_context(context)
            entry.context = context
            expected = self.resolve_key(key_ref) if key_ref else None
            if expected is not None:
                entry.key_id, entry.provider = expected.key_id, expected.provider
            if expected is not None and expected.spec.is_rsa:
                self.authorize(ctx, entry, "kms:Decrypt", expected, context)
                return self._rsa_decrypt(expected, entry, blob, algorithm)
            plaintext, key = self._open(blob, context, expected, entry, ctx, "kms:Decrypt")
            return {"Plaintext": plaintext, "KeyId": key.key_id, "KeyVersion": entry.key_version,
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def re_encrypt(self, ctx: RequestContext, blob: bytes, destination_key_ref: str, *, source_context: Any = None,
                   destination_context: Any = None, source_key_ref: str | None = None) -> dict[str, Any]:
        """Decrypt and re-encrypt inside the broker; the plaintext never leaves this function."""
        with self.operation(ctx, "kms:ReEncrypt") as entry:
            blob = self._check_bytes(blob, "CiphertextBlob", high=MAX_CIPHERTEXT)
            source_context = self.check_context(source_context)
            destination_context = self.check_context(destination_context)
            entry.context = destination_context
            expected = self.resolve_key(source_key_ref) if source_key_ref else None
            plaintext, source = self._open(blob, source_context, expected, entry, ctx, "kms:ReEncryptFrom")
            source_version = entry.key_version
            destination = self.resolve_key(destination_key_ref)
            self.authorize(ctx, entry, "kms:ReEncryptTo", destination, destination_context)
            self._require_usable(destination)
            self._require_usage(destination, KeyUsage.ENCRYPT_DECRYPT, "ReEncrypt")
            if destination.spec is not KeySpec.SYMMETRIC_DEFAULT:
                raise errors.Unsupported("ReEncrypt to an asymmetric key is not supported")
            new_blob, version = self._seal(destination, plaintext, destination_context)
            entry.key_version = version
            entry.extra["source_key_id"] = source.key_id
            entry.extra["source_key_version"] = source_version
            return {"CiphertextBlob": new_blob, "SourceKeyId": source.key_id, "KeyId": destination.key_id,
                    "KeyVersion": version, "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                    "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def generate_data_key(self, ctx: RequestContext, key_ref: str, *, key_spec: str | None = None,
                          number_of_bytes: int | None = None, context: Any = None,
                          include_plaintext: bool = True) -> dict[str, Any]:
        action = "kms:GenerateDataKey" if include_plaintext else "kms:GenerateDataKeyWithoutPlaintext"
        with self.operation(ctx, action) as entry:
            size = self._data_key_size(key_spec, number_of_bytes)
            context = self.check_context(context)
            entry.context = context
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, action, key, context)
            self._require_usable(key)
            self._require_usage(key, KeyUsage.ENCRYPT_DECRYPT, "GenerateDataKey")
            if key.spec is not KeySpec.SYMMETRIC_DEFAULT:
                raise errors.InvalidKeyUsage("GenerateDataKey needs a symmetric key")
            data_key = secrets.token_bytes(size)
            blob, version = self._seal(key, data_key, context)
            entry.key_version = version
            out: dict[str, Any] = {"CiphertextBlob": blob, "KeyId": key.key_id, "KeyVersion": version}
            if include_plaintext:
                out["Plaintext"] = data_key
            return out

    @staticmethod
    def _data_key_size(key_spec: str | None, number_of_bytes: int | None) -> int:
        if (key_spec is None) == (number_of_bytes is None):
            raise errors.ValidationError("give exactly one of KeySpec (AES_128, AES_256) or NumberOfBytes")
        if key_spec is not None:
            if key_spec not in _DATA_KEY_SPECS:
                raise errors.ValidationError("KeySpec must be AES_128 or AES_256")
            return _DATA_KEY_SPECS[key_spec]
        if not isinstance(number_of_bytes, int) or isinstance(number_of_bytes, bool) or not 1 <= number_of_bytes <= 1024:
            raise errors.ValidationError("NumberOfBytes must be 1 to 1024")
        return number_of_bytes

    def generate_data_key_pair(self, ctx: RequestContext, key_ref: str, key_pair_spec: str, *, context: Any = None,
                               include_plaintext: bool = True) -> dict[str, Any]:
        action = "kms:GenerateDataKeyPair" if include_plaintext else "kms:GenerateDataKeyPairWithoutPlaintext"
        with self.operation(ctx, action) as entry:
            if key_pair_spec not in _KEY_PAIR_SPECS:
                raise errors.ValidationError(f"KeyPairSpec must be one of {sorted(_KEY_PAIR_SPECS)}")
            context = self.check_context(context)
            entry.context = context
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, action, key, context)
            self._require_usable(key)
            if key.spec is not KeySpec.SYMMETRIC_DEFAULT:
                raise errors.InvalidKeyUsage("GenerateDataKeyPair needs a symmetric encryption key")
            private = _generate_pair(key_pair_spec)
            private_der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
            public_der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
            blob, version = self._seal(key, private_der, context)
            entry.key_version = version
            out: dict[str, Any] = {"PrivateKeyCiphertextBlob": blob, "PublicKey": public_der, "KeyId": key.key_id,
                                   "KeyPairSpec": key_pair_spec, "KeyVersion": version}
            if include_plaintext:
                out["PrivateKeyPlaintext"] = private_der
            return out

    def generate_random(self, ctx: RequestContext, number_of_bytes: int, *, provider: str | None = None) -> dict:
        with self.operation(ctx, "kms:GenerateRandom") as entry:
            if not isinstance(number_of_bytes, int) or isinstance(number_of_bytes, bool) or not 1 <= number_of_bytes <= 1024:
                raise errors.ValidationError("NumberOfBytes must be 1 to 1024")
            name = provider or self.default_provider
            backend = self._provider(name)
            entry.provider = name
            self.authorize(ctx, entry, "kms:GenerateRandom", None, resource=f"provider/{name}")
            if not backend.capabilities.random:
                raise errors.Unsupported(f"provider {name!r} lacks random generation")
            return {"Plaintext": backend.random(number_of_bytes)}

    # =========================================================================================== asymmetric

    def _public_key(self, key: Key, version: int | None = None) -> Any:
        _, ref = self._version(key, version)
        return serialization.load_der_public_key(self._provider(key.provider).get_public_key(ref))

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
        plaintext = self._provider(key.provider).asymmetric_decrypt(ref, blob, alg)
        return {"Plaintext": plaintext, "KeyId": key.key_id, "EncryptionAlgorithm": alg.value}

    def _rsa_algorithm(self, key: Key, algorithm: str) -> EncryptionAlgorithm:
        if algorithm not in (EncryptionAlgorithm.RSAES_OAEP_SHA_1, EncryptionAlgorithm.RSAES_OAEP_SHA_256):
            raise errors.ValidationError("EncryptionAlgorithm must be RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256")
        alg = EncryptionAlgorithm(algorithm)
        if alg not in self._encryption_algorithms(key):
            # refused before anything is encrypted: data must never be sealed in a form its provider cannot open
            raise errors.Unsupported(f"provider {key.provider!r} does not offer {alg.value}")
        return alg

    def _digest(self, message: bytes, message_type: str, algorithm: SigningAlgorithm) -> bytes:
        if message_type == "DIGEST":
            expected = _HASHES[algorithm.hash_name].digest_size
            if len(message) != expected:
                raise errors.ValidationError(f"a {algorithm.hash_name} digest is {expected} bytes")
            return message
        if message_type != "RAW":
            raise errors.ValidationError("MessageType must be RAW or DIGEST")
        return hashlib.new(algorithm.hash_name, message).digest()

    def _signing_setup(self, ctx: RequestContext, entry: AuditEntry, action: str, key_ref: str, message: Any,
                       message_type: str, algorithm: str) -> tuple[Key, SigningAlgorithm, bytes]:
        message = self._check_bytes(message, "Message")
        key = self.resolve_key(key_ref)
        self.authorize(ctx, entry, action, key)
        self._require_usable(key)
        self._require_usage(key, KeyUsage.SIGN_VERIFY, action.split(":")[1])
        try:
            alg = SigningAlgorithm(algorithm)
        except ValueError:
            raise errors.ValidationError(f"SigningAlgorithm {algorithm!r} is not valid") from None
        if alg not in signing_algorithms_for(key.spec):
            raise errors.InvalidKeyUsage(f"{alg.value} cannot be used with a {key.spec.value} key")
        if alg not in self._signing_algorithms(key):
            raise errors.Unsupported(f"provider {key.provider!r} does not offer {alg.value}")
        entry.key_version = key.primary_version
        return key, alg, self._digest(message, message_type, alg)

    def sign(self, ctx: RequestContext, key_ref: str, message: bytes, algorithm: str,
             message_type: str = "RAW") -> dict[str, Any]:
        with self.operation(ctx, "kms:Sign") as entry:
            key, alg, digest = self._signing_setup(ctx, entry, "kms:Sign", key_ref, message, message_type, algorithm)
            _, ref = self._version(key)
            signature = self._provider(key.provider).sign(ref, digest, alg)
            return {"Signature": signature, "KeyId": key.key_id, "SigningAlgorithm": alg.value}

    def verify(self, ctx: RequestContext, key_ref: str, message: bytes, signature: bytes, algorithm: str,
               message_type: str = "RAW") -> dict[str, Any]:
        with self.operation(ctx, "kms:Verify") as entry:
            key, alg, digest = self._signing_setup(ctx, entry, "kms:Verify", key_ref, message, message_type,
                                                   algorithm)
            signature = self._check_bytes(signature, "Signature", high=1024)
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

    def get_public_key(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:GetPublicKey") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:GetPublicKey", key)
            self._require_usable(key)
            if not key.spec.is_asymmetric:
                raise errors.Unsupported("GetPublicKey needs an asymmetric key")
            entry.key_version = key.primary_version
            public = self._public_key(key).public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
            meta = self.describe(key)
            out = {"KeyId": key.key_id, "PublicKey": public, "KeySpec": key.spec.value, "KeyUsage": key.usage.value}
            for name in ("EncryptionAlgorithms", "SigningAlgorithms"):
                if name in meta:
                    out[name] = meta[name]
            return out

    # =========================================================================================== MAC

    def _mac_setup(self, ctx: RequestContext, entry: AuditEntry, action: str, key_ref: str, message: Any,
                   algorithm: str) -> tuple[Key, MacAlgorithm, bytes, ProviderKeyRef]:
        message = self._check_bytes(message, "Message")
        key = self.resolve_key(key_ref)
        self.authorize(ctx, entry, action, key)
        self._require_usable(key)
        self._require_usage(key, KeyUsage.GENERATE_VERIFY_MAC, action.split(":")[1])
        try:
            alg = MacAlgorithm(algorithm)
        except ValueError:
            raise errors.ValidationError(f"MacAlgorithm {algorithm!r} is not valid") from None
        if alg not in mac_algorithms_for(key.spec):
            raise errors.InvalidKeyUsage(f"{alg.value} cannot be used with a {key.spec.value} key")
        number, ref = self._version(key)
        entry.key_version = number
        return key, alg, message, ref

    def generate_mac(self, ctx: RequestContext, key_ref: str, message: bytes, algorithm: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:GenerateMac") as entry:
            key, alg, message, ref = self._mac_setup(ctx, entry, "kms:GenerateMac", key_ref, message, algorithm)
            return {"Mac": self._provider(key.provider).generate_mac(ref, message, alg), "KeyId": key.key_id,
                    "MacAlgorithm": alg.value}

    def verify_mac(self, ctx: RequestContext, key_ref: str, message: bytes, mac: bytes,
                   algorithm: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:VerifyMac") as entry:
            key, alg, message, ref = self._mac_setup(ctx, entry, "kms:VerifyMac", key_ref, message, algorithm)
            mac = self._check_bytes(mac, "Mac", high=64)
            expected = self._provider(key.provider).generate_mac(ref, message, alg)
            if not hmac.compare_digest(expected, mac):
                raise errors.InvalidMac("the MAC is not valid")
            return {"MacValid": True, "KeyId": key.key_id, "MacAlgorithm": alg.value}

    # =========================================================================================== aliases, tags

    def create_alias(self, ctx: RequestContext, alias: str, target_key_ref: str) -> None:
        with self.operation(ctx, "kms:CreateAlias") as entry:
            self._check_alias(alias)
            key = self.resolve_key(target_key_ref)
            self.authorize(ctx, entry, "kms:CreateAlias", key)
            try:
                self.store.create_alias(alias, key.key_id, _now())
            except Conflict:
                raise errors.AlreadyExists(f"alias {alias} already exists") from None

    def update_alias(self, ctx: RequestContext, alias: str, target_key_ref: str) -> None:
        with self.operation(ctx, "kms:UpdateAlias") as entry:
            self._check_alias(alias)
            key = self.resolve_key(target_key_ref)
            self.authorize(ctx, entry, "kms:UpdateAlias", key)
            if not self.store.update_alias(alias, key.key_id, _now()):
                raise errors.NotFound(f"alias {alias} not found")

    def delete_alias(self, ctx: RequestContext, alias: str) -> None:
        with self.operation(ctx, "kms:DeleteAlias") as entry:
            self._check_alias(alias)
            key_id = self.store.resolve_alias(alias)
            if key_id is None:
                raise errors.NotFound(f"alias {alias} not found")
            self.authorize(ctx, entry, "kms:DeleteAlias", self.store.get_key(key_id))
            self.store.delete_alias(alias)

    def list_aliases(self, ctx: RequestContext, key_ref: str | None = None) -> dict[str, Any]:
        with self.operation(ctx, "kms:ListAliases") as entry:
            key = self.resolve_key(key_ref) if key_ref else None
            self.authorize(ctx, entry, "kms:ListAliases", key)
            rows = self.store.list_aliases(key.key_id if key else None)
            return {"Aliases": [{"AliasName": name, "TargetKeyId": kid, "CreationDate": created.isoformat(),
                                 "AliasArn": f"arn:kms-broker:kms:local:000000000000:{name}"}
                                for name, kid, created in rows], "Truncated": False}

    @staticmethod
    def _check_alias(alias: Any) -> None:
        if not isinstance(alias, str) or not ALIAS_RE.match(alias) or alias.startswith("alias/aws/"):
            raise errors.ValidationError("AliasName must match alias/[a-zA-Z0-9/_-]+ and not start with alias/aws/")

    def tag_resource(self, ctx: RequestContext, key_ref: str, tags: Any) -> None:
        with self.operation(ctx, "kms:TagResource") as entry:
            tags = self._check_tags(tags)
            key = self.resolve_key(key_ref, details=True)
            self.authorize(ctx, entry, "kms:TagResource", key)
            if len({**key.tags, **tags}) > 50:
                raise errors.LimitExceeded("a key has at most 50 tags")
            self.store.set_tags(key.key_id, tags)

    def untag_resource(self, ctx: RequestContext, key_ref: str, tag_keys: Any) -> None:
        with self.operation(ctx, "kms:UntagResource") as entry:
            if not isinstance(tag_keys, list) or not all(isinstance(k, str) for k in tag_keys):
                raise errors.ValidationError("TagKeys must be a list of strings")
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:UntagResource", key)
            self.store.remove_tags(key.key_id, tag_keys)

    def list_resource_tags(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:ListResourceTags") as entry:
            key = self.resolve_key(key_ref, details=True)
            self.authorize(ctx, entry, "kms:ListResourceTags", key)
            return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in sorted(key.tags.items())], "Truncated": False}

    # =========================================================================================== rotation

    def _check_rotatable(self, key: Key) -> None:
        if key.spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise errors.Unsupported("only symmetric encryption keys rotate (as in AWS KMS)")
        if key.origin is Origin.EXTERNAL:
            raise errors.Unsupported("keys with imported material do not rotate automatically")

    def enable_key_rotation(self, ctx: RequestContext, key_ref: str, period_days: int = 365) -> None:
        with self.operation(ctx, "kms:EnableKeyRotation") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:EnableKeyRotation", key)
            if not isinstance(period_days, int) or isinstance(period_days, bool) or not 90 <= period_days <= 2560:
                raise errors.ValidationError("RotationPeriodInDays must be 90 to 2560")
            self._check_rotatable(key)
            self._require_usable(key)
            self.store.update_key(key.key_id, rotation_period_days=period_days,
                                  next_rotation_at=_now() + timedelta(days=period_days))

    def disable_key_rotation(self, ctx: RequestContext, key_ref: str) -> None:
        with self.operation(ctx, "kms:DisableKeyRotation") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:DisableKeyRotation", key)
            self._check_rotatable(key)
            self.store.update_key(key.key_id, rotation_period_days=None, next_rotation_at=None)

    def get_key_rotation_status(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:GetKeyRotationStatus") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:GetKeyRotationStatus", key)
            out: dict[str, Any] = {"KeyId": key.key_id, "KeyRotationEnabled": key.rotation_period_days is not None}
            if key.rotation_period_days:
                out["RotationPeriodInDays"] = key.rotation_period_days
                out["NextRotationDate"] = key.next_rotation_at.isoformat()
            return out

    def rotate_key_on_demand(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:RotateKeyOnDemand") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:RotateKeyOnDemand", key)
            self._check_rotatable(key)
            self._require_usable(key)
            entry.key_version = self._add_version(key)
            return {"KeyId": key.key_id, "KeyVersion": entry.key_version}

    def _add_version(self, key: Key) -> int:
        """Create material for version N+1 and make it primary, unless another process rotated first."""
        backend = self._provider(key.provider)
        _, current = self._version(key)
        ref = backend.create_version(current, key.spec, key.usage, label=key.key_id)
        number = key.primary_version + 1
        try:
            added = self.store.add_version(key.key_id, KeyVersion(number, ref.to_dict(), _now()),
                                           expected_primary=key.primary_version)
        except Conflict:
            added = False
        if not added:
            backend.destroy(ref)
            raise errors.InvalidState("the key was rotated concurrently; retry")
        return number

    def list_key_rotations(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:ListKeyRotations") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:ListKeyRotations", key)
            versions = self.store.list_versions(key.key_id)
            return {"Rotations": [{"KeyId": key.key_id, "KeyVersion": v.version, "RotationDate": v.created_at.isoformat()}
                                  for v in versions if v.version > 1], "Truncated": False}

    def list_key_versions(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.operation(ctx, "kms:ListKeyVersions") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:ListKeyVersions", key)
            return {"KeyId": key.key_id, "PrimaryVersion": key.primary_version,
                    "Versions": [{"KeyVersion": v.version, "CreationDate": v.created_at.isoformat(), "State": v.state}
                                 for v in self.store.list_versions(key.key_id)]}

    # =========================================================================================== import

    def get_parameters_for_import(self, ctx: RequestContext, key_ref: str, wrapping_algorithm: str,
                                  wrapping_key_spec: str = "RSA_2048") -> dict[str, Any]:
        with self.operation(ctx, "kms:GetParametersForImport") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:GetParametersForImport", key)
            if key.origin is not Origin.EXTERNAL:
                raise errors.Unsupported("the key's Origin is not EXTERNAL")
            if key.state not in (KeyState.PENDING_IMPORT, KeyState.ENABLED, KeyState.DISABLED):
                raise errors.InvalidState(f"key is {key.state.value}")
            if wrapping_key_spec != "RSA_2048":
                raise errors.ValidationError("WrappingKeySpec must be RSA_2048")
            backend = self._provider(key.provider)
            params = backend.begin_import(key.spec)
            if wrapping_algorithm not in params.wrapping_algorithms:
                backend.discard_import(params.handle)
                raise errors.ValidationError(
                    f"WrappingAlgorithm must be one of {', '.join(params.wrapping_algorithms)} for this provider")
            token_id = secrets.token_hex(24)
            expires = _now() + IMPORT_TOKEN_TTL
            self.store.add_import_token(token_id, key.key_id, dict(params.handle), wrapping_algorithm, expires)
            return {"KeyId": key.key_id, "ImportToken": token_id.encode(), "PublicKey": params.public_key_der,
                    "ParametersValidTo": expires.isoformat()}

    def import_key_material(self, ctx: RequestContext, key_ref: str, import_token: bytes,
                            encrypted_key_material: bytes) -> dict[str, Any]:
        with self.operation(ctx, "kms:ImportKeyMaterial") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:ImportKeyMaterial", key)
            check_transition(key.state, "import")
            token = self.store.get_import_token(bytes(import_token or b"").decode(errors="replace"))
            if token is None or token[0] != key.key_id:
                raise errors.InvalidImportToken("the import token is not valid for this key")
            _, handle, algorithm, expires = token
            if expires <= _now():
                raise errors.ExpiredImportToken("the import token has expired; call GetParametersForImport again")
            material = self._check_bytes(encrypted_key_material, "EncryptedKeyMaterial", high=8192)
            backend = self._provider(key.provider)
            try:
                ref = backend.finish_import(handle, key.spec, key.usage, material, algorithm, label=key.key_id)
            except pb.ProviderInvalidCiphertext:
                raise errors.IncorrectKeyMaterial("the key material could not be unwrapped with this import token") from None
            except pb.ProviderInvalidInput as exc:
                raise errors.IncorrectKeyMaterial(str(exc)) from None
            existing = self.store.get_version(key.key_id, 1)
            held = existing.provider_ref.get("material") if existing is not None else None
            if held is not None and held != ref.to_dict().get("material"):
                # The key still has material (AES key wrap under the root KEK is deterministic, so the same
                # material gives the same blob): replacing it would make every existing ciphertext undecryptable.
                backend.destroy(ref)
                raise errors.IncorrectKeyMaterial("the key already has different key material; import the same material")
            if existing is None:
                self.store.add_version(key.key_id, KeyVersion(1, ref.to_dict(), _now()))
            else:
                self.store.set_version_ref(key.key_id, 1, ref.to_dict(), "Enabled")
            for stale in self.store.delete_import_tokens(key.key_id):
                backend.discard_import(stale)
            if key.state is KeyState.PENDING_IMPORT:
                self.store.update_key(key.key_id, state=KeyState.ENABLED)
            entry.key_version = 1
            return {"KeyId": key.key_id}

    def delete_imported_key_material(self, ctx: RequestContext, key_ref: str) -> None:
        with self.operation(ctx, "kms:DeleteImportedKeyMaterial") as entry:
            key = self.resolve_key(key_ref)
            self.authorize(ctx, entry, "kms:DeleteImportedKeyMaterial", key)
            if key.origin is not Origin.EXTERNAL:
                raise errors.Unsupported("the key's Origin is not EXTERNAL")
            check_transition(key.state, "delete_imported")
            self._destroy_versions(key)
            self.store.update_key(key.key_id, state=KeyState.PENDING_IMPORT)

    def _destroy_versions(self, key: Key) -> None:
        backend = self._provider(key.provider)
        for kv in self.store.list_versions(key.key_id):
            if kv.state == "Enabled":
                ref = ProviderKeyRef.from_dict(kv.provider_ref)
                backend.destroy(ref)
                gone = {k: v for k, v in kv.provider_ref.items() if k != "material"}
                self.store.set_version_ref(key.key_id, kv.version, gone, "Destroyed")

    # =========================================================================================== background jobs

    def run_due_jobs(self, ctx: RequestContext, now: datetime | None = None) -> dict[str, list[str]]:
        """Destroy keys whose deletion window passed; rotate keys whose period passed. Safe in many processes."""
        now = now or _now()
        destroyed, rotated = [], []
        # A key whose backend fails is audited as an error and retried on the next run; it must not stop the others.
        for key_id in self.store.keys_due_for_deletion(now):
            with _job_step(), self.operation(ctx, "broker:DestroyKey") as entry:
                key = self.store.get_key(key_id)
                if key is None or key.state is not KeyState.PENDING_DELETION:
                    continue
                entry.key_id, entry.provider = key.key_id, key.provider
                self._destroy_versions(key)
                for name, _, _ in self.store.list_aliases(key.key_id):
                    self.store.delete_alias(name)
                self.store.update_key(key.key_id, state=KeyState.DESTROYED)
                destroyed.append(key_id)
        for key_id in self.store.keys_due_for_rotation(now):
            with _job_step(), self.operation(ctx, "broker:RotateKey") as entry:
                key = self.store.get_key(key_id)
                if key is None or key.rotation_period_days is None or key.next_rotation_at > now:
                    continue
                entry.key_id, entry.provider = key.key_id, key.provider
                try:
                    entry.key_version = self._add_version(key)
                except errors.InvalidState:
                    continue  # another process rotated it
                self.store.update_key(key.key_id, next_rotation_at=now + timedelta(days=key.rotation_period_days))
                rotated.append(key_id)
        return {"destroyed": destroyed, "rotated": rotated}

    def readiness(self) -> dict[str, str]:
        """Each provider's health, for /readyz. Never raises."""
        status = {}
        for name, provider in self.providers.items():
            try:
                provider.check_health()
                status[name] = "ok"
            except pb.ProviderError as exc:
                status[name] = f"unavailable: {exc}"
        return status


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
    if spec.startswith("RSA_"):
        return rsa.generate_private_key(65537, int(spec.split("_")[1]))
    curves: dict[str, Callable[[], ec.EllipticCurve]] = {
        "ECC_NIST_P256": ec.SECP256R1, "ECC_NIST_P384": ec.SECP384R1, "ECC_NIST_P521": ec.SECP521R1,
        "ECC_SECG_P256K1": ec.SECP256K1,
    }
    return ec.generate_private_key(curves[spec]())
