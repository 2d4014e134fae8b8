"""Multi-keys (envelope keyrings): one data key wrapped under every member key, on as many providers as you like.

A multi-key lists broker keys (symmetric, ENCRYPT_DECRYPT) in decrypt-priority order. Encrypt / GenerateDataKey
draws one fresh 256-bit data key, AEADs the data locally and wraps the data key under **every** member (each wrap is
itself a broker ciphertext made by `KeyService._seal`, so it goes through that member's provider). The result is a
ciphertext of scheme 3 (broker/ciphertext.py). It fails if any member fails, unless the multi-key has an explicit
quorum, in which case at least `quorum` wraps must succeed and the missing members are named in the response.

Decrypt tries the wraps in priority order, skipping (until last) providers the circuit breaker holds unhealthy, with
a short timeout per provider, and succeeds as soon as one member unwraps a data key that matches the ciphertext's
key commitment. The response and the audit record name the member that answered.

Authorization: the caller needs kms:Encrypt (GenerateDataKey) on every member that wraps, kms:Decrypt on the member
that answers; rewrap needs kms:ReEncryptFrom on the answering member and kms:ReEncryptTo on each new wrap.
Managing multi-keys is authorized as kms:CreateKey / kms:DescribeKey / kms:ListKeys / kms:UpdateKeyDescription /
kms:ScheduleKeyDeletion on the resource "multikey/<name>".
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker import ciphertext as ct
from broker import errors
from broker.gate import provider_error as _provider_errors
from broker.model import Key, KeySpec, KeyUsage
from broker.replication.repo import MultiKey, ReplicationRepo, now
from broker.service import AuditEntry, KeyService, RequestContext, check_bytes, data_key_size
from providers import base as pb

NAME_RE = re.compile(r"^[a-zA-Z0-9/_.-]{1,200}$")
MAX_MULTI_CIPHERTEXT = 64 * 1024
_COMMIT_LABEL = b"kmsb-multiwrap-commit"
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="kmsb-multikey")


class CircuitBreaker:
    """Per-provider health as seen by this process: `threshold` consecutive failures open it for `cooldown` s.

    A cache, not a source of truth (ARCHITECTURE rule 6): an open provider is only tried last, never refused."""

    def __init__(self, threshold: int = 2, cooldown: float = 30.0) -> None:
        self.threshold, self.cooldown = threshold, cooldown
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def healthy(self, provider: str) -> bool:
        with self._lock:
            return self._open_until.get(provider, 0.0) <= time.monotonic()

    def success(self, provider: str) -> None:
        with self._lock:
            self._failures.pop(provider, None)
            self._open_until.pop(provider, None)

    def failure(self, provider: str) -> None:
        with self._lock:
            n = self._failures.get(provider, 0) + 1
            self._failures[provider] = n
            if n >= self.threshold:
                self._open_until[provider] = time.monotonic() + self.cooldown

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            t = time.monotonic()
            return {p: ("open" if until > t else "half-open") for p, until in self._open_until.items()}


def _commitment(data_key: bytes, header: bytes) -> bytes:
    return hmac.new(data_key, _COMMIT_LABEL + header, hashlib.sha256).digest()


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, errors.DependencyTimeout | errors.DependencyFailure | pb.ProviderUnavailable
                      | FutureTimeout | errors.Throttled)


class MultiKeys:
    """Service-level multi-key operations; every one runs inside `KeyService.operation` (the choke point)."""

    def __init__(self, service: KeyService, *, timeout: float = 3.0, breaker: CircuitBreaker | None = None) -> None:
        self.service = service
        self.repo = ReplicationRepo(service.store)
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()

    # ---------------------------------------------------------------------------------------- helpers
    def _get(self, ref: Any) -> MultiKey:
        if not isinstance(ref, str) or not ref:
            raise errors.ValidationError("MultiKeyId is required")
        mk = self.repo.get_multikey(ref)
        if mk is None:
            raise errors.NotFound(f"multi-key {ref} not found")
        return mk

    def _members(self, ctx: RequestContext, entry: AuditEntry, members: Any) -> list[Key]:
        if not isinstance(members, list) or not 1 <= len(members) <= ct.MULTI_WRAP_MAX:
            raise errors.ValidationError(f"Members must be a list of 1..{ct.MULTI_WRAP_MAX} key ids")
        keys: list[Key] = []
        for ref in members:
            key = self.service.resolve_key(ref)
            self.service.authorize(ctx, entry, "kms:DescribeKey", key)
            if key.spec is not KeySpec.SYMMETRIC_DEFAULT or key.usage is not KeyUsage.ENCRYPT_DECRYPT:
                raise errors.ValidationError(f"member {ref} must be a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key")
            if any(k.key_id == key.key_id for k in keys):
                raise errors.ValidationError(f"member {ref} is listed twice")
            keys.append(key)
        return keys

    @staticmethod
    def _check_quorum(quorum: Any, n: int) -> int | None:
        if quorum is None:
            return None
        if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= n:
            raise errors.ValidationError(f"Quorum must be 1..{n} (the number of members) or absent")
        return quorum

    def _run(self, provider: str, fn: Callable[[], Any]) -> Any:
        """fn() with this multi-key's per-provider timeout; feeds the circuit breaker."""
        future = _POOL.submit(fn)
        try:
            result = future.result(timeout=self.timeout)
        except FutureTimeout:
            self.breaker.failure(provider)
            raise errors.DependencyTimeout(f"provider {provider!r} did not answer within {self.timeout:g}s") from None
        except BaseException as exc:
            if _is_unavailable(exc):
                self.breaker.failure(provider)
            raise
        self.breaker.success(provider)
        return result

    def _wrap_all(self, ctx: RequestContext, entry: AuditEntry, keys: list[Key], data_key: bytes,
                  context: Mapping[str, str], action: str, quorum: int | None) -> tuple[list[bytes], list[dict]]:
        """Wrap `data_key` under every key in parallel; -> (wraps in member order, failures)."""
        svc = self.service
        for key in keys:
            svc.authorize(ctx, entry, action, key, context)
            svc._require_usable(key)

        def wrap(key: Key) -> bytes:
            try:
                return svc._seal(key, data_key, context)[0]
            except pb.ProviderError as exc:
                raise _provider_errors(exc) from None

        futures = [(key, _POOL.submit(self._run, key.provider, lambda k=key: wrap(k))) for key in keys]
        wraps, failures = [], []
        for key, future in futures:
            try:
                wraps.append(future.result())
            except errors.BrokerError as exc:
                failures.append({"KeyId": key.key_id, "Provider": key.provider, "Error": exc.code})
        needed = len(keys) if quorum is None else quorum
        if len(wraps) < needed:
            first = failures[0]
            raise errors.DependencyFailure(
                f"{len(failures)} of {len(keys)} members failed to wrap (first: {first['KeyId']} on "
                f"{first['Provider']}: {first['Error']}); quorum {needed} not met, nothing was written")
        return wraps, failures

    # ---------------------------------------------------------------------------------------- management
    def create(self, ctx: RequestContext, *, name: str, members: Any, description: str = "",
               quorum: Any = None) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:CreateKey") as entry:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise errors.ValidationError("Name must match [a-zA-Z0-9/_.-]{1,200}")
            if not isinstance(description, str) or len(description) > 8192:
                raise errors.ValidationError("Description must be a string of at most 8192 characters")
            self.service.authorize(ctx, entry, "kms:CreateKey", None, resource=f"multikey/{name}")
            keys = self._members(ctx, entry, members)
            quorum = self._check_quorum(quorum, len(keys))
            t = now()
            mk = MultiKey(f"mk-{uuid.uuid4()}", name, description, tuple(k.key_id for k in keys), quorum, 1, t, t)
            if not self.repo.add_multikey(mk):
                raise errors.AlreadyExists(f"a multi-key named {name} already exists")
            entry.key_id, entry.provider = mk.multikey_id, "multikey"
            return {"MultiKey": self._describe(mk)}

    def _describe(self, mk: MultiKey) -> dict[str, Any]:
        out = mk.as_dict()
        out["Members"] = []
        for i, key_id in enumerate(mk.members):
            key = self.service.store.get_key(key_id, details=False)
            out["Members"].append({"KeyId": key_id, "Priority": i + 1,
                                   "Provider": key.provider if key else None,
                                   "KeyState": key.state.value if key else "Missing",
                                   "Health": "ok" if key is None or self.breaker.healthy(key.provider)
                                   else "unhealthy"})
        return out

    def describe(self, ctx: RequestContext, ref: str) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:DescribeKey") as entry:
            mk = self._get(ref)
            entry.key_id, entry.provider = mk.multikey_id, "multikey"
            self.service.authorize(ctx, entry, "kms:DescribeKey", None, resource=f"multikey/{mk.name}")
            return {"MultiKey": self._describe(mk)}

    def list(self, ctx: RequestContext) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:ListKeys") as entry:
            self.service.authorize(ctx, entry, "kms:ListKeys", None, resource="multikey/*")
            return {"MultiKeys": [mk.as_dict() for mk in self.repo.list_multikeys()]}

    def update(self, ctx: RequestContext, ref: str, *, members: Any = None, quorum: Any = ...) -> dict[str, Any]:
        """Change members and/or quorum. Existing ciphertexts keep working through the members they were wrapped
        for (while those keys live); `rewrap` brings a blob to the new membership."""
        with self.service.operation(ctx, "kms:UpdateKeyDescription") as entry:
            mk = self._get(ref)
            entry.key_id, entry.provider = mk.multikey_id, "multikey"
            self.service.authorize(ctx, entry, "kms:UpdateKeyDescription", None, resource=f"multikey/{mk.name}")
            ids = [k.key_id for k in self._members(ctx, entry, members)] if members is not None else list(mk.members)
            q = mk.quorum if quorum is ... else self._check_quorum(quorum, len(ids))
            if q is not None and q > len(ids):
                raise errors.ValidationError("Quorum is larger than the number of members")
            if not self.repo.update_multikey(mk.multikey_id, mk.generation, members=ids, quorum=q):
                raise errors.InvalidState("the multi-key changed concurrently; retry")
            entry.key_id, entry.provider = mk.multikey_id, "multikey"
            return {"MultiKey": self._describe(self._get(mk.multikey_id))}

    def delete(self, ctx: RequestContext, ref: str) -> None:
        """Forget the multi-key. Its ciphertexts stay decryptable through their member keys (wraps name them)."""
        with self.service.operation(ctx, "kms:ScheduleKeyDeletion") as entry:
            mk = self._get(ref)
            entry.key_id, entry.provider = mk.multikey_id, "multikey"
            self.service.authorize(ctx, entry, "kms:ScheduleKeyDeletion", None, resource=f"multikey/{mk.name}")
            self.repo.delete_multikey(mk.multikey_id)

    # ---------------------------------------------------------------------------------------- crypto
    def _seal_multi(self, ctx: RequestContext, entry: AuditEntry, mk: MultiKey, plaintext: bytes,
                    context: Mapping[str, str], action: str) -> tuple[bytes, list[str], list[dict]]:
        keys = [self.service.resolve_key(k) for k in mk.members]
        header = ct.Header(ct.Scheme.MULTI_WRAP, mk.multikey_id, ct.MULTI_WRAP_BODY_VERSION).pack()
        data_key = AESGCM.generate_key(bit_length=256)
        wraps, failures = self._wrap_all(ctx, entry, keys, data_key, context, action, mk.quorum)
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(data_key).encrypt(nonce, plaintext, header + ct.canonical_context(context))
        blob = header + ct.pack_multi_wrap(wraps, _commitment(data_key, header), sealed)
        failed = {f["KeyId"] for f in failures}
        wrapped = [k.key_id for k in keys if k.key_id not in failed]
        entry.key_id, entry.provider = mk.multikey_id, "multikey"
        entry.extra.update({"multikey": mk.multikey_id, "wrapped_by": wrapped,
                            "missing": [f["KeyId"] for f in failures]})
        return blob, wrapped, failures

    def encrypt(self, ctx: RequestContext, ref: str, plaintext: bytes, *, context: Any = None) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:Encrypt") as entry:
            plaintext = check_bytes(plaintext, "Plaintext")
            context = self.service.check_context(context)
            entry.context = context
            mk = self._get(ref)
            blob, wrapped, failures = self._seal_multi(ctx, entry, mk, plaintext, context, "kms:Encrypt")
            return {"CiphertextBlob": blob, "MultiKeyId": mk.multikey_id, "WrappedBy": wrapped, "Missing": failures}

    def generate_data_key(self, ctx: RequestContext, ref: str, *, number_of_bytes: int | None = None,
                          key_spec: str | None = None, context: Any = None,
                          include_plaintext: bool = True) -> dict[str, Any]:
        action = "kms:GenerateDataKey" if include_plaintext else "kms:GenerateDataKeyWithoutPlaintext"
        with self.service.operation(ctx, action) as entry:
            size = data_key_size(key_spec, number_of_bytes)
            context = self.service.check_context(context)
            entry.context = context
            mk = self._get(ref)
            plaintext = os.urandom(size)
            blob, wrapped, failures = self._seal_multi(ctx, entry, mk, plaintext, context, action)
            out = {"CiphertextBlob": blob, "MultiKeyId": mk.multikey_id, "WrappedBy": wrapped, "Missing": failures}
            if include_plaintext:
                out["Plaintext"] = plaintext
            return out

    def _unwrap(self, ctx: RequestContext, entry: AuditEntry, parsed: ct.Ciphertext, context: Mapping[str, str],
                action: str) -> tuple[bytes, list[bytes], Key, list[dict]]:
        """-> (data key, wraps, answering member, attempts). Tries members in priority order."""
        try:
            wraps, commitment, _ = ct.unpack_multi_wrap(parsed.body)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        mk = self.repo.get_multikey(parsed.header.key_id)
        priority = {k: i for i, k in enumerate(mk.members)} if mk else {}
        candidates = []
        for i, wrap in enumerate(wraps):
            try:
                inner = ct.unpack(wrap)
            except ct.MalformedCiphertext:
                continue
            key = self.service.store.get_key(inner.header.key_id, details=False)
            provider = key.provider if key else ""
            healthy = self.breaker.healthy(provider)
            candidates.append(((not healthy, priority.get(inner.header.key_id, len(priority) + i)), wrap, inner,
                               provider))
        candidates.sort(key=lambda c: c[0])
        attempts: list[dict] = []
        denied = False
        for (skipped, _), wrap, inner, provider in candidates:
            scratch = AuditEntry(action)
            attempt = {"KeyId": inner.header.key_id, "Provider": provider or None}
            if skipped:
                attempt["CircuitOpen"] = True
            try:
                data_key, key = self._run(provider, lambda w=wrap, i=inner, s=scratch: self._open_wrap(
                    ctx, s, w, i, context, action))
            except (errors.BrokerError, pb.ProviderError) as exc:
                code = exc.code if isinstance(exc, errors.BrokerError) else _provider_errors(exc).code
                denied = denied or isinstance(exc, errors.AccessDenied)
                attempts.append({**attempt, "Outcome": code})
                continue
            if not hmac.compare_digest(_commitment(data_key, parsed.header_bytes), commitment):
                attempts.append({**attempt, "Outcome": "CommitmentMismatch"})
                continue
            attempts.append({**attempt, "Outcome": "ok"})
            return data_key, wraps, key, attempts
        entry.extra["attempts"] = attempts
        if denied:
            raise errors.AccessDenied(f"{ctx.principal.name} may not {action} with any member that could answer")
        if attempts and all(a["Outcome"] in ("DependencyTimeoutException", "DependencyFailureException",
                                             "ThrottlingException") for a in attempts):
            raise errors.DependencyTimeout("no member's provider answered")
        raise errors.InvalidCiphertext("no member could unwrap the data key")

    def _open_wrap(self, ctx: RequestContext, scratch: AuditEntry, wrap: bytes, inner: ct.Ciphertext,
                   context: Mapping[str, str], action: str) -> tuple[bytes, Key]:
        try:
            key = self.service.resolve_key(inner.header.key_id)
        except errors.NotFound:
            raise errors.InvalidCiphertext("the wrap refers to a key that does not exist") from None
        self.service.authorize(ctx, scratch, action, key, context)
        return self.service._open(key, wrap, context, scratch), key

    def _parse(self, blob: Any) -> ct.Ciphertext:
        blob = check_bytes(blob, "CiphertextBlob", high=MAX_MULTI_CIPHERTEXT)
        try:
            parsed = ct.unpack(blob)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        if parsed.header.scheme is not ct.Scheme.MULTI_WRAP:
            raise errors.InvalidCiphertext("not a multi-key ciphertext (scheme 3); use /v1/decrypt")
        return parsed

    def _answered(self, entry: AuditEntry, parsed: ct.Ciphertext, key: Key, attempts: list[dict]) -> dict[str, Any]:
        entry.key_id, entry.provider, entry.key_version = parsed.header.key_id, "multikey", None
        entry.extra.update({"multikey": parsed.header.key_id, "answered_by": key.key_id,
                            "answered_provider": key.provider, "attempts": attempts})
        return {"MultiKeyId": parsed.header.key_id, "AnsweredBy": {"KeyId": key.key_id, "Provider": key.provider},
                "Attempts": attempts}

    def decrypt(self, ctx: RequestContext, blob: Any, *, context: Any = None) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:Decrypt") as entry:
            context = self.service.check_context(context)
            entry.context = context
            parsed = self._parse(blob)
            entry.key_id, entry.provider = parsed.header.key_id, "multikey"
            data_key, wraps, key, attempts = self._unwrap(ctx, entry, parsed, context, "kms:Decrypt")
            _, _, sealed = ct.unpack_multi_wrap(parsed.body)
            try:
                plaintext = AESGCM(data_key).decrypt(sealed[:12], sealed[12:], parsed.aad(context))
            except Exception:  # noqa: BLE001 - InvalidTag
                raise errors.InvalidCiphertext("ciphertext failed authentication") from None
            return {"Plaintext": plaintext, **self._answered(entry, parsed, key, attempts)}

    def rewrap(self, ctx: RequestContext, blob: Any, *, context: Any = None, refresh: bool = False) -> dict[str, Any]:
        """Bring a blob to the multi-key's current members: wraps of removed members go, missing members get a
        wrap (all members with `refresh`, e.g. after rotations). The data is not re-encrypted: header, commitment
        and sealed data are kept byte for byte."""
        with self.service.operation(ctx, "kms:ReEncrypt") as entry:
            context = self.service.check_context(context)
            entry.context = context
            parsed = self._parse(blob)
            mk = self._get(parsed.header.key_id)
            entry.key_id, entry.provider = mk.multikey_id, "multikey"
            data_key, wraps, key, attempts = self._unwrap(ctx, entry, parsed, context, "kms:ReEncryptFrom")
            _, commitment, sealed = ct.unpack_multi_wrap(parsed.body)
            try:  # only a blob that authenticates under this context gets new wraps
                AESGCM(data_key).decrypt(sealed[:12], sealed[12:], parsed.aad(context))
            except Exception:  # noqa: BLE001
                raise errors.InvalidCiphertext("ciphertext failed authentication") from None
            existing = {ct.unpack(w).header.key_id: w for w in wraps}
            members = [self.service.resolve_key(k) for k in mk.members]
            todo = [k for k in members if refresh or k.key_id not in existing]
            new, failures = self._wrap_all(ctx, entry, todo, data_key, context, "kms:ReEncryptTo",
                                           None if mk.quorum is None else 0) if todo else ([], [])
            made = dict(zip([k.key_id for k in todo if k.key_id not in {f['KeyId'] for f in failures}], new,
                            strict=True))
            out_wraps = [made.get(k.key_id) or existing.get(k.key_id) for k in members]
            out_wraps = [w for w in out_wraps if w is not None]
            if mk.quorum is not None and len(out_wraps) < mk.quorum or not out_wraps:
                raise errors.DependencyFailure("too few members could wrap; the blob was not rewrapped")
            if mk.quorum is None and failures:
                raise errors.DependencyFailure(f"{len(failures)} member(s) failed to wrap; the blob was not rewrapped")
            new_blob = parsed.header_bytes + ct.pack_multi_wrap(out_wraps, commitment, sealed)
            result = self._answered(entry, parsed, key, attempts)
            kept = [ct.unpack(w).header.key_id for w in out_wraps]
            entry.extra.update({"wrapped_by": kept, "added": sorted(made),
                                "removed": sorted(set(existing) - set(kept))})
            return {"CiphertextBlob": new_blob, **result, "WrappedBy": kept, "Added": sorted(made),
                    "Removed": sorted(set(existing) - set(kept)), "Missing": failures}
