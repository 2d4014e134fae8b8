"""Multi-keys (envelope keyrings): one data key wrapped under every member key, on as many providers as you like.

A multi-key lists broker keys (symmetric, ENCRYPT_DECRYPT) in decrypt-priority order. Encrypt / GenerateDataKey
draws one fresh 256-bit data key, AEADs the data locally and wraps the data key under **every** member (each wrap is
itself a broker ciphertext made through KeyService's `seal_under` door, so it goes through that member's provider).
The result is a ciphertext of scheme 3 (broker/ciphertext.py). It fails if any member fails, unless the multi-key
has an explicit quorum, in which case at least `quorum` wraps must succeed and the missing members are named in the
response.

Decrypt tries the wraps in priority order, skipping (until last) providers the circuit breaker holds unhealthy, with
a short timeout per provider, and succeeds as soon as one member unwraps a data key that matches the ciphertext's
key commitment. The response and the audit record name the member that answered.

Authorization (declared on the gate): kms:Encrypt / kms:GenerateDataKey[WithoutPlaintext] on every member that wraps
(checked for all of them before anything is wrapped), kms:Decrypt on the member that answers (a member the caller
may not use is skipped, the next one is tried); rewrap needs kms:ReEncryptFrom on the answering member and
kms:ReEncryptTo on every member it wraps for. Managing multi-keys is kms:CreateKey / kms:DescribeKey / kms:ListKeys /
kms:UpdateKeyDescription / kms:ScheduleKeyDeletion on the resource "multikey/<name>".
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
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker import ciphertext as ct
from broker import errors
from broker.gate import (
    Call,
    Need,
    Service,
    Target,
    check_context,
    internal,
    operation,
    provider_error,
    valid_text,
)
from broker.model import Key, KeySpec, KeyUsage
from broker.replication.repo import MultiKey, ReplicationRepo, now
from broker.service import KeyService, check_bytes, data_key_size
from providers import base as pb

NAME_RE = re.compile(r"^[a-zA-Z0-9/_.-]{1,200}$")
MAX_REF = 256
MAX_MULTI_CIPHERTEXT = 64 * 1024
_COMMIT_LABEL = b"kmsb-multiwrap-commit"
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="kmsb-multikey")
_UNAVAILABLE = ("DependencyTimeoutException", "DependencyFailureException", "ThrottlingException")


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

    def trip(self, provider: str) -> None:
        """Open at once: the provider's endpoint refused a connection (nothing listens; no need to wait for a
        second failure to know it)."""
        with self._lock:
            self._failures[provider] = max(self._failures.get(provider, 0) + 1, self.threshold)
            self._open_until[provider] = time.monotonic() + self.cooldown

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            t = time.monotonic()
            return {p: ("open" if until > t else "half-open") for p, until in self._open_until.items()}


class _Unreachable(errors.DependencyTimeout):
    """A member's provider refused the connection: answered at once, without waiting out the timeout."""


def _commitment(data_key: bytes, header: bytes) -> bytes:
    return hmac.new(data_key, _COMMIT_LABEL + header, hashlib.sha256).digest()


def _broker_error(exc: BaseException) -> errors.BrokerError | None:
    if isinstance(exc, errors.BrokerError):
        return exc
    if isinstance(exc, pb.ProviderError):
        return provider_error(exc)
    return None


def check_name(name: Any) -> str:
    """A multi-key name: `[a-zA-Z0-9/_.-]{1,200}`, no empty, "." or ".." segment (a name never reads as a path
    into another resource), not shaped like an id ("mk-...")."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise errors.ValidationError("Name must match [a-zA-Z0-9/_.-]{1,200}")
    if any(seg in ("", ".", "..") for seg in name.split("/")):
        raise errors.ValidationError("Name must not have empty, '.' or '..' segments")
    if name.startswith("mk-"):
        raise errors.ValidationError("Name must not start with mk- (multi-key ids do)")
    return name


def _multikey_resource(host: MultiKeys, args: Mapping[str, Any]) -> Target:
    """Management actions are checked on "multikey/<name>" (the multi-key named by id or name)."""
    return Target(resource=f"multikey/{host.get(args['ref']).name}")


def _new_multikey_resource(args: Mapping[str, Any]) -> str:
    return f"multikey/{check_name(args['name'])}"


@dataclass
class _Job:
    """One provider call on the shared pool; `started` is set when a worker picks it up (timeouts count from
    there: time spent queued behind other requests is not the provider's)."""

    provider: str
    future: Future
    started: float | None = None


class MultiKeys(Service):
    """Multi-key operations, each a declared operation of the gate; keys are reached only through KeyService's
    `seal_under` / `open_under` doors."""

    def __init__(self, keys: KeyService, repo: ReplicationRepo, *, timeout: float = 3.0,
                 breaker: CircuitBreaker | None = None, pool: ThreadPoolExecutor | None = None) -> None:
        self.keys = keys
        self.gate = keys.gate
        self.repo = repo
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()
        self._pool = pool or _POOL

    # ---------------------------------------------------------------------------------------- lookups

    def _lookup(self, ref: Any) -> MultiKey:
        if not isinstance(ref, str) or not ref:
            raise errors.ValidationError("MultiKeyId is required")
        if len(ref) > MAX_REF:
            raise errors.ValidationError(f"MultiKeyId is at most {MAX_REF} characters")
        mk = self.repo.get_multikey(valid_text(ref, "MultiKeyId"))
        if mk is None:
            raise errors.NotFound(f"multi-key {ref} not found")
        return mk

    @internal
    def get(self, ref: Any) -> MultiKey:
        """The multi-key named by id or name, for the gate's resolver (which then checks "multikey/<name>")."""
        return self._lookup(ref)

    def _members(self, call: Call, members: Any) -> list[Key]:
        """Member refs -> keys the caller may describe, each a symmetric encryption key, none twice."""
        if not isinstance(members, list) or not 1 <= len(members) <= ct.MULTI_WRAP_MAX:
            raise errors.ValidationError(f"Members must be a list of 1..{ct.MULTI_WRAP_MAX} key ids")
        keys: list[Key] = []
        for ref in members:
            key = self.keys.resolve_key(ref)
            call.require("kms:DescribeKey", key)
            if key.spec is not KeySpec.SYMMETRIC_DEFAULT or key.usage is not KeyUsage.ENCRYPT_DECRYPT:
                raise errors.ValidationError(f"member {key.key_id} must be a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key")
            if any(k.key_id == key.key_id for k in keys):
                raise errors.ValidationError(f"member {key.key_id} is listed twice")
            keys.append(key)
        return keys

    @staticmethod
    def _check_quorum(quorum: Any, n: int) -> int | None:
        if quorum is None:
            return None
        if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= n:
            raise errors.ValidationError(f"Quorum must be 1..{n} (the number of members) or absent")
        return quorum

    def _describe(self, call: Call, mk: MultiKey) -> dict[str, Any]:
        """The multi-key, with each member's provider, state and health where the caller may describe it."""
        out = mk.as_dict()
        out["Members"] = []
        for i, key_id in enumerate(mk.members):
            member: dict[str, Any] = {"KeyId": key_id, "Priority": i + 1}
            try:
                key = self.keys.resolve_key(key_id)
            except errors.NotFound:
                member.update(Provider=None, KeyState="Missing", Health="ok")
            else:
                if call.holds("kms:DescribeKey", key):
                    member.update(Provider=key.provider, KeyState=key.state.value,
                                  Health="ok" if self.breaker.healthy(key.provider) else "unhealthy")
            out["Members"].append(member)
        return out

    # ---------------------------------------------------------------------------------------- provider calls

    def _submit(self, provider: str, fn: Callable[[], Any]) -> _Job:
        """Run fn() on the shared pool. Never called from a pool thread: a task that submits to its own pool and
        waits starves it as soon as every worker does the same."""
        job = _Job(provider, Future())

        def run() -> Any:
            job.started = time.monotonic()
            return fn()

        job.future = self._pool.submit(run)
        return job

    def _await(self, job: _Job) -> Any:
        """The job's result, within this multi-key's per-provider timeout (counted from when it started); feeds
        the circuit breaker."""
        queued_until = time.monotonic() + 10 * self.timeout
        while True:
            started = job.started
            wait = self.timeout if started is None else started + self.timeout - time.monotonic()
            try:
                result = job.future.result(timeout=max(wait, 0.0))
                break
            except FutureTimeout:
                if job.started is not None and time.monotonic() >= job.started + self.timeout:
                    self.breaker.failure(job.provider)
                    raise errors.DependencyTimeout(
                        f"provider {job.provider!r} did not answer within {self.timeout:g}s") from None
                if job.started is None and time.monotonic() >= queued_until and job.future.cancel():
                    raise errors.DependencyTimeout("the broker is too busy to reach the provider; retry") from None
            except BaseException as exc:
                if isinstance(exc, pb.ProviderUnreachable):
                    self.breaker.trip(job.provider)
                    raise _Unreachable(f"provider {job.provider!r} refused the connection") from None
                mapped = _broker_error(exc)
                if mapped is None:
                    raise
                if mapped.code in _UNAVAILABLE:
                    self.breaker.failure(job.provider)
                raise mapped from None
        self.breaker.success(job.provider)
        return result

    def _wrap_all(self, call: Call, keys: list[Key], data_key: bytes, context: Mapping[str, str],
                  quorum: int | None) -> tuple[dict[str, bytes], list[dict]]:
        """Wrap `data_key` under every key, in parallel (authorized already) -> ({key id: wrap}, failures)."""
        jobs = [(key, self._submit(key.provider, lambda k=key: self.keys.seal_under(call, k, data_key, context)[0]))
                for key in keys]
        wraps: dict[str, bytes] = {}
        failures: list[dict] = []
        for key, job in jobs:
            try:
                wraps[key.key_id] = self._await(job)
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

    @operation("kms:CreateKey", Need("kms:CreateKey", lambda host, a: Target(resource=_new_multikey_resource(a))),
               dynamic=("kms:DescribeKey",), mutates=True)
    def create(self, call: Call, *, name: str, members: Any, description: str = "",
               quorum: Any = None) -> dict[str, Any]:
        if not isinstance(description, str) or len(description) > 8192:
            raise errors.ValidationError("Description must be a string of at most 8192 characters")
        valid_text(description, "Description")
        keys = self._members(call, members)
        quorum = self._check_quorum(quorum, len(keys))
        t = now()
        mk = MultiKey(f"mk-{uuid.uuid4()}", name, description, tuple(k.key_id for k in keys), quorum, 1, t, t)
        if not self.repo.add_multikey(mk):
            raise errors.AlreadyExists(f"a multi-key named {name} already exists")
        call.entry.key_id, call.entry.provider = mk.multikey_id, "multikey"
        return {"MultiKey": self._describe(call, mk)}

    @operation("kms:DescribeKey", Need("kms:DescribeKey", _multikey_resource))
    def describe(self, call: Call, ref: str) -> dict[str, Any]:
        mk = self._lookup(ref)
        call.entry.key_id, call.entry.provider = mk.multikey_id, "multikey"
        return {"MultiKey": self._describe(call, mk)}

    @operation("kms:ListKeys", dynamic=("kms:ListKeys",))
    def list_multikeys(self, call: Call) -> dict[str, Any]:
        """The multi-keys the caller may list (kms:ListKeys on "multikey/<name>"); refused when that is none and
        the caller may not list "multikey/*" either."""
        visible = []
        for mk in self.repo.list_multikeys():
            resource_name = f"multikey/{mk.name}"
            if call.holds("kms:ListKeys", resource=resource_name):
                call.require("kms:ListKeys", resource=resource_name)
                visible.append(mk.as_dict())
        if not visible:
            call.require("kms:ListKeys", resource="multikey/*")
        return {"MultiKeys": visible}

    @operation("kms:UpdateKeyDescription", Need("kms:UpdateKeyDescription", _multikey_resource),
               dynamic=("kms:DescribeKey",), mutates=True)
    def update(self, call: Call, ref: str, *, members: Any = None, quorum: Any = ...) -> dict[str, Any]:
        """Change members and/or quorum (`quorum=None` clears it, `...` keeps it). Existing ciphertexts keep
        working through the members they were wrapped for (while those keys live); `rewrap` brings a blob to the
        new membership."""
        mk = self._lookup(ref)
        call.entry.key_id, call.entry.provider = mk.multikey_id, "multikey"
        ids = [k.key_id for k in self._members(call, members)] if members is not None else list(mk.members)
        q = mk.quorum if quorum is ... else self._check_quorum(quorum, len(ids))
        if q is not None and q > len(ids):
            raise errors.ValidationError("Quorum is larger than the number of members")
        if not self.repo.update_multikey(mk.multikey_id, mk.generation, members=ids, quorum=q):
            raise errors.InvalidState("the multi-key changed concurrently; retry")
        return {"MultiKey": self._describe(call, self._lookup(mk.multikey_id))}

    @operation("kms:ScheduleKeyDeletion", Need("kms:ScheduleKeyDeletion", _multikey_resource), mutates=True)
    def delete(self, call: Call, ref: str) -> None:
        """Forget the multi-key. Its ciphertexts stay decryptable through their member keys (wraps name them)."""
        mk = self._lookup(ref)
        call.entry.key_id, call.entry.provider = mk.multikey_id, "multikey"
        self.repo.delete_multikey(mk.multikey_id)

    # ---------------------------------------------------------------------------------------- crypto

    def _context(self, call: Call, context: Any) -> dict[str, str]:
        checked = check_context(context)
        call.entry.context = checked
        return checked

    def _seal_multi(self, call: Call, mk: MultiKey, plaintext: bytes,
                    context: Mapping[str, str]) -> tuple[bytes, list[str], list[dict]]:
        """Authorize the call's action on every member first (all or nothing), then wrap under each."""
        call.entry.key_id, call.entry.provider = mk.multikey_id, "multikey"
        keys: list[Key] = []
        missing: list[dict] = []
        for key_id in mk.members:
            try:
                keys.append(self.keys.resolve_key(key_id))
            except errors.NotFound:
                missing.append({"KeyId": key_id, "Provider": None, "Error": errors.NotFound.code})
        for key in keys:
            call.require(call.action, key, context=context)
        if missing and (mk.quorum is None or len(keys) < mk.quorum):
            raise errors.InvalidState(f"member {missing[0]['KeyId']} no longer exists; update the multi-key")
        header = ct.Header(ct.Scheme.MULTI_WRAP, mk.multikey_id, ct.MULTI_WRAP_BODY_VERSION).pack()
        data_key = AESGCM.generate_key(bit_length=256)
        wraps, failures = self._wrap_all(call, keys, data_key, context, mk.quorum)
        failures = missing + failures
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(data_key).encrypt(nonce, plaintext, header + ct.canonical_context(context))
        wrapped = [k.key_id for k in keys if k.key_id in wraps]
        blob = header + ct.pack_multi_wrap([wraps[k] for k in wrapped], _commitment(data_key, header), sealed)
        call.entry.extra.update({"multikey": mk.multikey_id, "wrapped_by": wrapped,
                                 "missing": [f["KeyId"] for f in failures]})
        return blob, wrapped, failures

    @operation("kms:Encrypt", dynamic=("kms:Encrypt",))
    def encrypt(self, call: Call, ref: str, plaintext: bytes, *, context: Any = None) -> dict[str, Any]:
        plaintext = check_bytes(plaintext, "Plaintext")
        context = self._context(call, context)
        mk = self._lookup(ref)
        blob, wrapped, failures = self._seal_multi(call, mk, plaintext, context)
        return {"CiphertextBlob": blob, "MultiKeyId": mk.multikey_id, "WrappedBy": wrapped, "Missing": failures}

    def _data_key(self, call: Call, ref: str, number_of_bytes: int | None, key_spec: str | None, context: Any,
                  include_plaintext: bool) -> dict[str, Any]:
        size = data_key_size(key_spec, number_of_bytes)
        context = self._context(call, context)
        mk = self._lookup(ref)
        plaintext = os.urandom(size)
        blob, wrapped, failures = self._seal_multi(call, mk, plaintext, context)
        out = {"CiphertextBlob": blob, "MultiKeyId": mk.multikey_id, "WrappedBy": wrapped, "Missing": failures}
        if include_plaintext:
            out["Plaintext"] = plaintext
        return out

    @operation("kms:GenerateDataKey", dynamic=("kms:GenerateDataKey",))
    def generate_data_key(self, call: Call, ref: str, *, number_of_bytes: int | None = None,
                          key_spec: str | None = None, context: Any = None) -> dict[str, Any]:
        return self._data_key(call, ref, number_of_bytes, key_spec, context, True)

    @operation("kms:GenerateDataKeyWithoutPlaintext", dynamic=("kms:GenerateDataKeyWithoutPlaintext",))
    def generate_data_key_without_plaintext(self, call: Call, ref: str, *, number_of_bytes: int | None = None,
                                            key_spec: str | None = None, context: Any = None) -> dict[str, Any]:
        return self._data_key(call, ref, number_of_bytes, key_spec, context, False)

    def _parse(self, blob: Any) -> ct.Ciphertext:
        blob = check_bytes(blob, "CiphertextBlob", high=MAX_MULTI_CIPHERTEXT)
        try:
            parsed = ct.unpack(blob)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        if parsed.header.scheme is not ct.Scheme.MULTI_WRAP:
            raise errors.InvalidCiphertext("not a multi-key ciphertext (scheme 3); use /v1/decrypt")
        return parsed

    def _unwrap(self, call: Call, parsed: ct.Ciphertext, context: Mapping[str, str],
                action: str) -> tuple[bytes, list[bytes], Key, list[dict]]:
        """-> (data key, wraps, answering member, attempts). Tries members in priority order, healthy providers
        first; a member the caller may not use for `action` is skipped (and named in the attempts)."""
        try:
            wraps, commitment, _ = ct.unpack_multi_wrap(parsed.body)
        except ct.MalformedCiphertext as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        mk = self.repo.get_multikey(parsed.header.key_id)
        priority = {k: i for i, k in enumerate(mk.members)} if mk else {}
        candidates: list[tuple[tuple[bool, int], bytes, str, Key | None]] = []
        for i, wrap in enumerate(wraps):
            try:
                key_id = ct.unpack(wrap).header.key_id
            except ct.MalformedCiphertext:
                continue
            try:
                key: Key | None = self.keys.resolve_key(key_id)
            except (errors.NotFound, errors.ValidationError):
                key = None
            healthy = key is not None and self.breaker.healthy(key.provider)
            candidates.append(((not healthy, priority.get(key_id, len(priority) + i)), wrap, key_id, key))
        candidates.sort(key=lambda c: c[0])
        attempts: list[dict] = []
        denied = False
        for (circuit_open, _), wrap, key_id, key in candidates:
            attempt: dict[str, Any] = {"KeyId": key_id}
            if key is None:
                attempts.append({**attempt, "Outcome": errors.InvalidCiphertext.code})
                continue
            try:
                call.require(action, key, context=context)
            except errors.AccessDenied:
                denied = True
                attempts.append({**attempt, "Outcome": errors.AccessDenied.code})
                continue
            attempt["Provider"] = key.provider
            if circuit_open:
                attempt["CircuitOpen"] = True
            job = self._submit(key.provider, lambda k=key, w=wrap: self.keys.open_under(call, k, w, context)[0])
            try:
                data_key = self._await(job)
            except errors.BrokerError as exc:
                attempts.append({**attempt, "Outcome": exc.code,
                                 **({"Unreachable": True} if isinstance(exc, _Unreachable) else {})})
                continue
            if not hmac.compare_digest(_commitment(data_key, parsed.header_bytes), commitment):
                attempts.append({**attempt, "Outcome": "CommitmentMismatch"})
                continue
            attempts.append({**attempt, "Outcome": "ok"})
            return data_key, wraps, key, attempts
        call.entry.extra["attempts"] = attempts
        if denied:
            raise errors.AccessDenied(f"{call.principal.name} may not {action} with any member that could answer")
        if attempts and all(a["Outcome"] in _UNAVAILABLE for a in attempts):
            raise errors.DependencyTimeout("no member's provider answered")
        raise errors.InvalidCiphertext("no member could unwrap the data key")

    @staticmethod
    def _open_data(parsed: ct.Ciphertext, data_key: bytes, context: Mapping[str, str]) -> bytes:
        _, _, sealed = ct.unpack_multi_wrap(parsed.body)
        try:
            return AESGCM(data_key).decrypt(sealed[:12], sealed[12:], parsed.aad(context))
        except Exception:  # noqa: BLE001 - cryptography raises InvalidTag; any failure is a bad ciphertext
            raise errors.InvalidCiphertext("ciphertext failed authentication") from None

    def _answered(self, call: Call, parsed: ct.Ciphertext, key: Key, attempts: list[dict]) -> dict[str, Any]:
        call.entry.key_id, call.entry.provider, call.entry.key_version = parsed.header.key_id, "multikey", None
        call.entry.extra.update({"multikey": parsed.header.key_id, "answered_by": key.key_id,
                                 "answered_provider": key.provider, "attempts": attempts})
        return {"MultiKeyId": parsed.header.key_id, "AnsweredBy": {"KeyId": key.key_id, "Provider": key.provider},
                "Attempts": attempts}

    @operation("kms:Decrypt", dynamic=("kms:Decrypt",))
    def decrypt(self, call: Call, blob: Any, *, context: Any = None) -> dict[str, Any]:
        context = self._context(call, context)
        parsed = self._parse(blob)
        call.entry.key_id, call.entry.provider = parsed.header.key_id, "multikey"
        data_key, _, key, attempts = self._unwrap(call, parsed, context, "kms:Decrypt")
        plaintext = self._open_data(parsed, data_key, context)
        return {"Plaintext": plaintext, **self._answered(call, parsed, key, attempts)}

    @operation("kms:ReEncrypt", dynamic=("kms:ReEncryptFrom", "kms:ReEncryptTo"))
    def rewrap(self, call: Call, blob: Any, *, context: Any = None, refresh: bool = False) -> dict[str, Any]:
        """Bring a blob to the multi-key's current members: wraps of removed members go, missing members get a
        wrap (all members with `refresh`, e.g. after rotations). The data is not re-encrypted: header, commitment
        and sealed data are kept byte for byte."""
        context = self._context(call, context)
        if not isinstance(refresh, bool):
            raise errors.ValidationError("Refresh must be a boolean")
        parsed = self._parse(blob)
        mk = self._lookup(parsed.header.key_id)
        call.entry.key_id, call.entry.provider = mk.multikey_id, "multikey"
        data_key, wraps, key, attempts = self._unwrap(call, parsed, context, "kms:ReEncryptFrom")
        self._open_data(parsed, data_key, context)  # only a blob that authenticates under this context is rewrapped
        _, commitment, sealed = ct.unpack_multi_wrap(parsed.body)
        existing = {}
        for w in wraps:
            try:
                existing[ct.unpack(w).header.key_id] = w
            except ct.MalformedCiphertext:
                continue  # a wrap that does not parse is dropped (the one that answered was sound)
        members = [self.keys.resolve_key(k) for k in mk.members]
        todo = [k for k in members if refresh or k.key_id not in existing]
        for k in todo:
            call.require("kms:ReEncryptTo", k, context=context)
        made, failures = self._wrap_all(call, todo, data_key, context, None if mk.quorum is None else 0) \
            if todo else ({}, [])
        out_wraps = [w for w in (made.get(k.key_id) or existing.get(k.key_id) for k in members) if w is not None]
        if mk.quorum is not None and len(out_wraps) < mk.quorum or not out_wraps:
            raise errors.DependencyFailure("too few members could wrap; the blob was not rewrapped")
        if mk.quorum is None and failures:
            raise errors.DependencyFailure(f"{len(failures)} member(s) failed to wrap; the blob was not rewrapped")
        new_blob = parsed.header_bytes + ct.pack_multi_wrap(out_wraps, commitment, sealed)
        result = self._answered(call, parsed, key, attempts)
        kept = [ct.unpack(w).header.key_id for w in out_wraps]
        removed = sorted(set(existing) - set(kept))
        call.entry.extra.update({"wrapped_by": kept, "added": sorted(made), "removed": removed})
        return {"CiphertextBlob": new_blob, **result, "WrappedBy": kept, "Added": sorted(made), "Removed": removed,
                "Missing": failures}
