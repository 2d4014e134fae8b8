"""The gate: the one place that authorizes, audits and runs an operation.

Every public method of every service is a *declared operation*: `@operation(action, Need(...), ...)` states the
audit action, and for each check the policy action and how its resource derives from the request. The decorator is
the only way into the body, and it does, in order:

1. refuse at once if the audit log cannot take a record (fail closed, nothing happens);
2. derive every declared resource from the arguments (resolve a key, read a ciphertext's header, name a keyring
   entry) and ask the policy engine for each (default deny);
3. for an operation that changes state (`mutates=True`), make an *intent* record durable before the body runs, so a
   crash at any instant leaves either no effect or a record of it (the next start closes an intent left without an
   outcome as `interrupted`); an operation that creates a key (`creates_key=True`) gets its id before the intent,
   which names it;
4. run the body with a `Call`: who asks, the resolved targets, the audit entry, and — for the few operations whose
   resource is only known inside (a multi-key's answering member) — `require` for the actions it declared `dynamic`;
5. write the outcome record (durable before anything is returned), whatever happened; it names its intent
   (`intent_seq`). A read-only operation writes only this one record.

Services subclass `Service`; a public method that is neither an `operation` nor marked `within`/`internal` fails at
import, so a new operation without a declared authorization cannot exist. Methods marked `within(actions)` are the
only doors between sibling services: they take the caller's `Call` and refuse unless that call already authorized
one of the actions on the key they touch.

No escalation is decided in one place too: `Call.holds` (may this caller do this?), `Call.policies_beyond` (are these
policy names within the caller's?), `Call.covers` (does the caller hold these actions on every resource a glob
names?) and `Call.widened_by` (would changing a key's tags/aliases give the caller more?) are what every surface that
creates something for someone uses.
"""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from broker import errors, metrics
from broker.audit import AuditLog
from broker.auth import Principal
from broker.model import InvalidTransition, Key
from broker.policy import Decision, PolicyDocument, PolicyEngine
from broker.policy.document import KMS_ACTIONS
from broker.store import unavailable as store_unavailable
from providers import base as pb

MAX_CONTEXT_PAIRS = 64
MAX_CONTEXT_BYTES = 8192
_SECRET_WORDS = ("token", "secret", "password", "passwd", "plaintext", "ciphertext", "pin", "private")


# ================================================================================================ request side


@dataclass
class RequestContext:
    """Who asks, from where; filled by the front door, read by the gate (policy and audit)."""

    principal: Principal
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    source_ip: str = ""
    front_door: str = "rest"
    audited: bool = False


@dataclass
class AuditEntry:
    """What the audit record of one operation will say; the gate fills who/what, the body adds the details."""

    action: str
    key_id: str | None = None
    key_version: int | None = None
    provider: str | None = None
    context: Mapping[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """What one check is about: a key, a named non-key resource (e.g. "keyring/kv/db1"), or nothing.

    `conditions` are request facts only the resolver knows (e.g. a new grant's `kms:GrantOperations`): condition
    keys the policy engine hands to policy conditions, as lists of values. `context`, when set, is the encryption
    context the check is decided with (CreateGrant: the new grant's constraint, as AWS decides it).
    """

    key: Key | None = None
    resource: str | None = None
    conditions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context: Mapping[str, str] | None = None

    @property
    def name(self) -> str:
        return f"key/{self.key.key_id}" if self.key is not None else (self.resource or "*")


NOTHING = Target()
Resolver = Callable[[Any, Mapping[str, Any]], Target | None]


@dataclass(frozen=True)
class Need:
    """One check a declared operation needs: `action` on the resource `on` derives from the arguments.

    `on` is None for actions on no resource (ListKeys, CreateToken, …: identity policies decide). `context` names the
    argument holding an encryption context: the gate validates it, binds the validated dict back into the arguments,
    passes it to the policy engine and puts it (HMAC'd) in the audit record.
    """

    action: str
    on: Resolver | None = None
    context: str | None = None


@dataclass(frozen=True)
class Declaration:
    action: str
    needs: tuple[Need, ...]
    dynamic: frozenset[str]
    mutates: bool
    kind: str  # "authorized" | "self" (the caller's own token) | "public" (login: no principal yet)
    qualname: str = ""
    creates_key: bool = False


DECLARED: dict[str, Declaration] = {}

# Inside an operation that changes nothing, key metadata may come from the store's bounded cache (`Store.get_key`
# `max_age`); an operation that mutates, and everything outside the gate (jobs, sync), reads it fresh, so a lifecycle
# change is always decided on the key's current state.
_READS_MAY_BE_CACHED: ContextVar[bool] = ContextVar("kmsb_reads_may_be_cached", default=False)


def reads_may_be_cached() -> bool:
    """True while the gate runs a declared operation that does not mutate (see `_READS_MAY_BE_CACHED`)."""
    return _READS_MAY_BE_CACHED.get()


# ================================================================================================ resolvers


def key_arg(name: str, *, details: bool = False, optional: bool = False) -> Resolver:
    """The key named (id, ARN or alias) by argument `name`, resolved through the service's `resolve_key`. A key
    named by an alias carries it as the condition value kms:RequestAlias."""
    def resolve(host: Any, args: Mapping[str, Any]) -> Target | None:
        ref = args.get(name)
        if ref is None and optional:
            return NOTHING
        return Target(key=host.resolve_key(ref, details=details), conditions=request_alias(ref))
    resolve.arg = name  # type: ignore[attr-defined]
    return resolve


Fact = str | Callable[[Mapping[str, Any]], Any]


def with_facts(resolve: Resolver, facts: Mapping[str, Fact] | None = None, *,
               more: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> Resolver:
    """`resolve`, plus the condition values AWS takes from a request's parameters (kms:EncryptionAlgorithm,
    kms:SigningAlgorithm, aws:RequestTag/<k>, …). Each fact is read from the argument it names — with its default
    when the caller gave none, as AWS reads a parameter's default — or computed from the arguments; `more` computes
    several at once (one per tag). None, or an empty list, leaves the key absent from the request."""
    sources = tuple((facts or {}).items())

    def resolved(host: Any, args: Mapping[str, Any]) -> Target:
        target = resolve(host, args) or NOTHING
        values = {key: source(args) if callable(source) else args.get(source) for key, source in sources}
        if more is not None:
            values.update(more(args))
        extra = request_facts(values)
        if not extra:
            return target
        return Target(target.key, target.resource, {**target.conditions, **extra}, target.context)
    if hasattr(resolve, "arg"):
        resolved.arg = resolve.arg  # type: ignore[attr-defined]
    return resolved


def request_facts(values: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Request parameters as condition values: text as is, booleans "true"/"false", integers as their digits, lists
    of text as several values. A parameter of another type is refused here (the operation would refuse it too)."""
    out: dict[str, tuple[str, ...]] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = ("true" if value else "false",)
        elif isinstance(value, int):
            out[key] = (str(value),)
        elif isinstance(value, str):
            out[key] = (value,)
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            if value:
                out[key] = tuple(value)
        else:
            raise errors.ValidationError(f"{key.partition(':')[2].split('/')[0]} is not valid")
    return out


def request_alias(ref: Any) -> dict[str, tuple[str, ...]]:
    """kms:RequestAlias for a key reference that is an alias name (what AWS's condition key is), else nothing."""
    return {"kms:RequestAlias": (ref,)} if isinstance(ref, str) and ref.startswith("alias/") else {}


def resource(render: Callable[[Mapping[str, Any]], str]) -> Resolver:
    """A non-key resource named from the arguments, e.g. `resource(lambda a: f"policy/{a['name']}")`."""
    def resolve(host: Any, args: Mapping[str, Any]) -> Target:
        return Target(resource=render(args))
    return resolve


def fixed(name: str) -> Resolver:
    """A constant non-key resource, e.g. "auth/token"."""
    def resolve(host: Any, args: Mapping[str, Any]) -> Target:
        return Target(resource=name)
    return resolve


def check_context(context: Any) -> dict[str, str]:
    """An encryption context: an object of string values, within AWS-like limits, every string valid Unicode."""
    if context is None:
        return {}
    if not isinstance(context, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in context.items()):
        raise errors.ValidationError("EncryptionContext must be an object of string values")
    if len(context) > MAX_CONTEXT_PAIRS:
        raise errors.ValidationError(f"EncryptionContext has at most {MAX_CONTEXT_PAIRS} pairs")
    size = 0
    for k, v in context.items():
        size += len(valid_text(k, "EncryptionContext key").encode()) + len(valid_text(v, "EncryptionContext value")
                                                                           .encode())
    if size > MAX_CONTEXT_BYTES:
        raise errors.ValidationError(f"EncryptionContext is at most {MAX_CONTEXT_BYTES} bytes")
    return dict(context)


def valid_text(value: str, name: str) -> str:
    """A string that encodes as UTF-8 (JSON can carry lone surrogates, which nothing downstream can store)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise errors.ValidationError(f"{name} is not valid Unicode") from None
    return value


# ================================================================================================ the call


class Call:
    """One declared operation in flight: the only authority a body has."""

    def __init__(self, gate: Gate, decl: Declaration, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.entry = AuditEntry(decl.action)
        self._gate = gate
        self._decl = decl
        self._targets: dict[str, Target] = {}
        self._granted: set[tuple[str, str]] = set()
        self._checked: set[str] = set()
        self.intent_seq: int | None = None
        self._new_key_id: str | None = None

    def __repr__(self) -> str:
        return f"Call({self._decl.action!r}, principal={self.ctx.principal.name!r})"

    @property
    def principal(self) -> Principal:
        return self.ctx.principal

    @property
    def action(self) -> str:
        return self._decl.action

    def key(self, arg: str = "key_ref") -> Key:
        """The key a declared check resolved from argument `arg`."""
        target = self._targets.get(arg)
        if target is None or target.key is None:
            raise RuntimeError(f"{self._decl.qualname} declared no key check on argument {arg!r}")
        return target.key

    @property
    def new_key_id(self) -> str:
        """The id of the key this operation creates, chosen before its intent record (which names it)."""
        if self._new_key_id is None:
            raise RuntimeError(f"{self._decl.qualname} is not declared creates_key=True")
        return self._new_key_id

    def target(self, arg: str) -> Target:
        if arg not in self._targets:
            raise RuntimeError(f"{self._decl.qualname} declared no check on argument {arg!r}")
        return self._targets[arg]

    # ------------------------------------------------------------------------------------- checks

    def require(self, action: str, key: Key | None = None, *, resource: str | None = None,
                context: Mapping[str, str] | None = None,
                conditions: Mapping[str, tuple[str, ...]] | None = None) -> None:
        """A check whose resource the body learns only as it runs; the action must be declared `dynamic`."""
        if action not in self._decl.dynamic:
            raise RuntimeError(f"{self._decl.qualname} did not declare {action} as a dynamic check")
        self._check(action, Target(key=key, resource=resource, conditions=dict(conditions or {})), context)

    def _check(self, action: str, target: Target, context: Mapping[str, str] | None) -> None:
        if target.key is not None and self.entry.key_id is None:
            self.entry.key_id, self.entry.provider = target.key.key_id, target.key.provider
        elif target.resource is not None:
            self.entry.extra.setdefault("resource", target.resource)
        self._gate.authorize(self.ctx, action, target, target.context if target.context is not None else context)
        self._granted.add((action, target.name))
        self._checked.add(action)

    def has(self, action: str, key: Key | None = None, *, resource: str | None = None) -> bool:
        """Whether this call already authorized `action` on `key` (or on the named non-key resource): what
        `within` methods ask."""
        return (action, Target(key=key, resource=resource).name) in self._granted or self.ctx.principal.is_root

    # ------------------------------------------------------------------------------------- no escalation

    def holds(self, action: str, key: Key | None = None, *, resource: str | None = None,
              context: Mapping[str, str] | None = None,
              conditions: Mapping[str, tuple[str, ...]] | None = None) -> bool:
        """May the caller do `action` on this resource? (Filtering and the no-escalation rule; never raises.)"""
        target = Target(key=key, resource=resource, conditions=dict(conditions or {}))
        return self._gate.decide(self.ctx, action, target, context).allowed

    def holds_under(self, action: str, key: Key, key_policy: PolicyDocument) -> bool:
        """Would the caller hold `action` on `key` if the key's policy were `key_policy`? (AWS's lock-out safety
        check: a key policy its writer could not change again is refused unless the writer says it means it.)"""
        return self._gate.policy.decide(self.ctx.principal, action, key, {}, source_ip=self.ctx.source_ip,
                                        key_policy=key_policy).allowed

    def widened_by(self, key: Key, after: Mapping[str, Iterable[str]]) -> list[str]:
        """The actions the caller might gain on `key` if its tags/aliases became `after` (condition values:
        "kms:ResourceTag/<k>": [v] or [] when removed, "kms:ResourceAliases": all its aliases): a change that gives
        its author more than it holds is refused like any other escalation."""
        return self._gate.policy.widened_by(self.ctx.principal, key, {k: tuple(v) for k, v in after.items()},
                                            source_ip=self.ctx.source_ip)

    def policies_beyond(self, names: Iterable[str]) -> list[str]:
        """The policy names the caller could not hand on: anything not among its own (root holds every name)."""
        if self.ctx.principal.is_root:
            return []
        own = set(self.ctx.principal.policies)
        return sorted({n for n in names if n not in own})

    def covers(self, actions: Iterable[str], resource_glob: str) -> bool:
        """Does the caller hold every action on *every* resource `resource_glob` names (e.g. "keyring/kv/*")?"""
        if self.ctx.principal.is_root:
            return True
        return self._gate.policy.covers(self.ctx.principal, list(actions), resource_glob)


# ================================================================================================ the gate


class Gate:
    """Holds the policy engine and the audit log; nothing else authorizes or audits."""

    def __init__(self, policy: PolicyEngine, audit: AuditLog, *, intents: bool = True) -> None:
        self.policy = policy
        self.audit = audit
        self.intents = intents  # off only for measuring what intent records cost

    # ------------------------------------------------------------------------------------- decisions

    def decide(self, ctx: RequestContext, action: str, target: Target,
               context: Mapping[str, str] | None = None) -> Decision:
        context = context if isinstance(context, dict) else dict(context or {})  # a dict subclass keeps its meaning
        return self.policy.decide(ctx.principal, action, target.key, context, resource=target.resource,
                                  source_ip=ctx.source_ip, conditions=target.conditions)

    def authorize(self, ctx: RequestContext, action: str, target: Target,
                  context: Mapping[str, str] | None = None) -> None:
        if not self.decide(ctx, action, target, context).allowed:
            where = f" on {target.name}" if target is not NOTHING else ""
            raise errors.AccessDenied(f"{ctx.principal.name} is not allowed to perform {action}{where}")

    # ------------------------------------------------------------------------------------- running

    def run(self, decl: Declaration, host: Any, fn: Callable, ctx: RequestContext, args: tuple,
            kwargs: dict) -> Any:
        if not isinstance(ctx, RequestContext):
            raise TypeError(f"{decl.qualname} needs a RequestContext first")
        call = Call(self, decl, ctx)
        binder = _binder(fn)
        arguments = binder.bind(host, call, args, kwargs)
        cached = _READS_MAY_BE_CACHED.set(not decl.mutates)
        try:
            return self._run(decl, call, fn, binder, arguments, host)
        finally:
            _READS_MAY_BE_CACHED.reset(cached)

    def _run(self, decl: Declaration, call: Call, fn: Callable, binder: _Binder, arguments: dict[str, Any],
             host: Any) -> Any:
        ctx = call.ctx
        with self._audited(call):
            if decl.kind == "self" and not ctx.principal.accessor:
                raise errors.ValidationError("the caller is not authenticated with a broker token")
            for need in decl.needs:
                context = None
                if need.context is not None:
                    context = arguments[need.context] = check_context(arguments[need.context])
                    call.entry.context = context
                target = need.on(host, arguments) if need.on is not None else NOTHING
                target = target or NOTHING
                if need.on is not None and hasattr(need.on, "arg"):
                    call._targets[need.on.arg] = target
                call._check(need.action, target, context)
            if decl.creates_key:
                call._new_key_id = call.entry.key_id = str(uuid.uuid4())
            if decl.mutates and self.intents:
                self._intent(call)
            result = binder.invoke(fn, arguments)
            if decl.kind == "authorized" and not call._checked:
                raise RuntimeError(f"{decl.qualname} returned without authorizing anything")
            return result

    @contextmanager
    def _audited(self, call: Call) -> Iterator[None]:
        """Write the outcome record once, after the outcome is known and before anything is returned to the caller
        (after the intent record, for an operation that changes state).

        Fail closed, in two steps: `audit.precheck()` refuses before anything happens when a durable sink cannot
        take a record; the record itself is written in `finally` and `audit.write` blocks until it is durable.
        """
        started = time.perf_counter()
        outcome, code = "allowed", None
        try:
            self.audit.precheck()
            yield
        except errors.BrokerError as exc:
            outcome, code = ("denied" if isinstance(exc, errors.AccessDenied) else "error"), exc.code
            raise
        except pb.ProviderError as exc:
            mapped = provider_error(exc)
            outcome, code = "error", mapped.code
            raise mapped from None
        except InvalidTransition as exc:
            outcome, code = "error", errors.InvalidState.code
            raise errors.InvalidState(str(exc)) from None
        except Exception as exc:
            outcome, code = "error", errors.BrokerError.code
            if store_unavailable(exc):
                code = errors.NotReady.code
                raise errors.NotReady("the store is unavailable; retry") from None
            raise
        except BaseException:
            outcome, code = "error", errors.BrokerError.code
            raise
        finally:
            self._write(call.ctx, call.entry, outcome, code, time.perf_counter() - started,
                        intent=call.intent_seq)

    def _intent(self, call: Call) -> None:
        """A state change is announced durably before it happens: a crash leaves no effect without a record. The
        intent says who asks for what on which resource (outcome "pending"); its outcome names it by `intent_seq`."""
        record = self._write(call.ctx, call.entry, "pending", None, 0.0, phase="intent")
        call.intent_seq = record["seq"]

    def _write(self, ctx: RequestContext, entry: AuditEntry, outcome: str, code: str | None, latency: float, *,
               phase: str | None = None, intent: int | None = None) -> dict:
        context = entry.context or {}
        record: dict[str, Any] = {
            **{k: self._safe(k, v) for k, v in entry.extra.items()},
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "request_id": ctx.request_id,
            "principal": ctx.principal.name,
            "auth_method": ctx.principal.auth_method,
            "source_ip": ctx.source_ip,
            "front_door": ctx.front_door,
            "action": entry.action,
            "key_id": entry.key_id,
            "key_version": entry.key_version,
            "provider": entry.provider,
            "encryption_context": {k: self.audit.hmac_context_value(v) for k, v in sorted(context.items())},
            "outcome": outcome,
            "error_code": code,
            "latency_ms": round(latency * 1000, 3),
        }
        if phase is not None:
            record["phase"] = phase
        if intent is not None:
            record["intent_seq"] = intent
        written = self.audit.write(record)
        ctx.audited = True
        metrics.observe_request(entry.action, outcome, latency)
        return written

    def _safe(self, name: str, value: Any) -> Any:
        """Extras named like a secret are HMAC'd unless already: they never reach a record in clear."""
        if isinstance(value, bytes | bytearray):
            return self.audit.hmac_value(bytes(value))
        if any(word in name.lower() for word in _SECRET_WORDS) and not (
                isinstance(value, str) and value.startswith("hmac-sha256:")):
            return self.audit.hmac_value(str(value))
        return value

    def audit_rejected(self, ctx: RequestContext, action: str, code: str, denied: bool) -> None:
        """Audit a request a front door refused before it reached an operation (bad token, bad body, …)."""
        self._write(ctx, AuditEntry(action), "denied" if denied else "error", code, 0.0)


def action_of(operation: str) -> str:
    """The audited action of a front door's operation name ("Encrypt" -> "kms:Encrypt", "CreateToken" ->
    "broker:CreateToken"), for a request refused before it reached an operation."""
    return operation if ":" in operation else ("kms:" if f"kms:{operation}" in KMS_ACTIONS else "broker:") + operation


def dependency_error(exc: BaseException) -> errors.BrokerError | None:
    """NotReady (503, retryable) when `exc` is the store out of reach rather than a bug; None otherwise. For the
    front doors' last-resort handlers, so a failure outside an operation (a token lookup) answers as one inside."""
    return errors.NotReady("the store is unavailable; retry") if store_unavailable(exc) else None


def provider_error(exc: pb.ProviderError) -> errors.BrokerError:
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


class _Binder:
    """One operation function's arguments by name (the needs read and check them, the body gets the checked ones).

    `inspect.Signature.bind` costs ~20 us a call, a tenth of a cached Encrypt's own work: the plain shape every
    operation has (positional-or-keyword and keyword-only parameters) is bound here from names worked out once; any
    other shape or a call that does not fit goes through `inspect`, which raises the TypeError a wrong call deserves.
    """

    def __init__(self, fn: Callable) -> None:
        kinds = inspect.Parameter
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.plain = all(p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY) for p in params)
        self.positional = tuple(p.name for p in params if p.kind is kinds.POSITIONAL_OR_KEYWORD)
        self.keyword_only = tuple(p.name for p in params if p.kind is kinds.KEYWORD_ONLY)
        self.defaults = {p.name: p.default for p in params if p.default is not kinds.empty}
        self.names = frozenset(self.signature.parameters)

    def bind(self, host: Any, call: Call, args: tuple, kwargs: dict) -> dict[str, Any]:
        given = (host, call, *args)
        if self.plain and len(given) <= len(self.positional):
            arguments = dict(zip(self.positional, given, strict=False))
            for name, value in kwargs.items():
                if name in arguments or name not in self.names:
                    break
                arguments[name] = value
            else:
                if len(arguments) < len(self.names):
                    for name, value in self.defaults.items():
                        arguments.setdefault(name, value)
                if len(arguments) == len(self.names):
                    return arguments
        bound = self.signature.bind(host, call, *args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def invoke(self, fn: Callable, arguments: dict[str, Any]) -> Any:
        if self.plain:
            return fn(*[arguments[name] for name in self.positional],
                      **{name: arguments[name] for name in self.keyword_only})
        bound = inspect.BoundArguments(self.signature, arguments)  # type: ignore[arg-type]
        return fn(*bound.args, **bound.kwargs)


@functools.cache
def _binder(fn: Callable) -> _Binder:
    return _Binder(fn)


# ================================================================================================ declarations


def operation(action: str, *needs: Need, dynamic: Iterable[str] = (), mutates: bool = False,
              self_service: bool = False, public: bool = False,
              creates_key: bool = False) -> Callable[[Callable], Callable]:
    """Declare a service method as an operation. Its body's second parameter is the `Call`; callers pass a
    `RequestContext` there instead, and the gate turns one into the other. `mutates`: it changes state (an intent
    record goes first); `creates_key`: it creates a key, whose id (`call.new_key_id`) its intent names."""
    kind = "public" if public else "self" if self_service else "authorized"
    dynamic = frozenset(dynamic)
    if kind == "authorized" and not needs and not dynamic:
        raise TypeError(f"operation {action} declares no authorization (give Needs, dynamic, or self_service)")
    if kind != "authorized" and (needs or dynamic):
        raise TypeError(f"operation {action}: a {kind} operation declares no policy checks")
    if creates_key and not mutates:
        raise TypeError(f"operation {action}: creating a key changes state (mutates=True)")

    def declare(fn: Callable) -> Callable:
        decl = Declaration(action, tuple(needs), dynamic, mutates, kind, fn.__qualname__, creates_key)
        DECLARED[fn.__qualname__] = decl

        @functools.wraps(fn)
        def gated(self: Service, ctx: RequestContext, *args: Any, **kwargs: Any) -> Any:
            return self.gate.run(decl, self, fn, ctx, args, kwargs)

        gated.__declaration__ = decl  # type: ignore[attr-defined]
        return gated
    return declare


def within(*actions: str, key_arg: str = "key",
           resource: Callable[[Mapping[str, Any]], str] | None = None) -> Callable[[Callable], Callable]:
    """A door between sibling services: usable only inside a call that already authorized one of `actions` on the
    key passed as `key_arg` (so a sibling cannot use it to reach a key its caller may not use) — or, with
    `resource`, on the non-key resource it names from the arguments (e.g. `lambda a: f"provider/{a['provider']}"`)."""
    wanted = frozenset(actions)

    def declare(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def guarded(self: Any, call: Call, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(call, Call):
                raise TypeError(f"{fn.__qualname__} must be called with the caller's Call")
            arguments = sig.bind(self, call, *args, **kwargs).arguments
            if resource is not None:
                name = resource(arguments)
                if not any(call.has(a, resource=name) for a in wanted):
                    raise errors.AccessDenied(f"{call.principal.name} is not allowed to use {name} here")
                return fn(self, call, *args, **kwargs)
            key = arguments[key_arg]
            if not any(call.has(a, key) for a in wanted):
                raise errors.AccessDenied(f"{call.principal.name} is not allowed to use {key.key_id} here")
            return fn(self, call, *args, **kwargs)

        guarded.__within__ = wanted  # type: ignore[attr-defined]
        return guarded
    return declare


def internal(fn: Callable) -> Callable:
    """A public method that is not an operation because it reaches nothing a caller could misuse (say why)."""
    fn.__internal__ = True  # type: ignore[attr-defined]
    return fn


class Service:
    """Base of every service. Public methods must be declared: an undeclared one fails when the class is made."""

    gate: Gate
    UNDECLARED_OK: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if name.startswith("_") or name in cls.UNDECLARED_OK:
                continue
            if isinstance(value, staticmethod | classmethod | property):
                continue
            if callable(value) and not any(hasattr(value, mark) for mark in
                                           ("__declaration__", "__within__", "__internal__")):
                raise TypeError(f"{cls.__qualname__}.{name} is public but not a declared operation "
                                "(use @operation, @within or @internal)")


def declared_actions() -> set[str]:
    """Every policy action some declared operation checks (the action-list scan compares it with the language)."""
    out: set[str] = set()
    for decl in DECLARED.values():
        out.add(decl.action)
        out.update(n.action for n in decl.needs)
        out.update(decl.dynamic)
    return out
