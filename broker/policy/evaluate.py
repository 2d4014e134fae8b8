"""Policy evaluation: pure, no I/O. Answers allow/deny and names the statement that decided.

Combination (as AWS KMS documents it for one account):
  1. an explicit Deny in any applicable statement (identity policies or the key policy) denies;
  2. the key policy allows the principal directly → allow;
  3. the key policy allows `{"Account": "self"}` for the request and an identity policy allows it → allow
     (the default key policy does exactly that, so identity policies work on keys without a key policy);
  4. a grant on the key covers the operation and its encryption-context constraints → allow;
  5. otherwise deny (default deny). Actions on no key (CreateKey, ListKeys, …) use identity policies only.

One evaluation order whatever dialect a statement is written in (the broker's `Broker`/`Account` elements or AWS's
`AWS` principals, `NotPrincipal`, `NotResource`, AWS's condition keys): explicit deny first. Requests reach the
broker directly, never through an AWS service: `kms:ViaService` is absent, `kms:GrantIsForAWSResource` is false,
`kms:CallerAccount` is the broker's account (broker/policy/principals.py).

Grants are AWS's: the grantee is one exact principal name (never a pattern), and a grant's RetireGrant operation lets
its grantee retire *that* grant only; a grant's retiring principal may retire it too (both after explicit denies).
Resource patterns match only resources of their own type, and a variable's value is matched literally and never
spans a "/" (a principal named "*" or "kv/x" does not widen "keyring/${broker:PrincipalName}/*").
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

from broker.auth import Principal
from broker.model import Key
from broker.policy.document import (
    MULTI_VALUED_KEYS,
    Condition,
    PolicyDocument,
    Statement,
    canonical_condition_key,
    parse_document,
)
from broker.policy.principals import ACCOUNT, ACCOUNT_ROOT, user_arn

# AWS's default key policy, in the very text GetKeyPolicy answers with for a key that has no other: it hands the key
# to the identity policies of the account's principals.
DEFAULT_KEY_POLICY_TEXT = """{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "%s"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}""" % ACCOUNT_ROOT  # noqa: UP031 - the braces of the JSON text
DEFAULT_KEY_POLICY = parse_document(json.loads(DEFAULT_KEY_POLICY_TEXT), key_policy=True)
_GRANT_ACTIONS = {"kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"}

_VARIABLE = re.compile(r"\$\{([^}]+)\}")
_NO_MATCH = "\x00unresolved-variable\x00"


@dataclass(frozen=True)
class Grant:
    grant_id: str
    key_id: str
    grantee: str
    operations: tuple[str, ...]
    constraints: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    name: str = ""
    retiring: str = ""


class ContextAtLeast(dict):
    """An encryption context known only to *contain* these pairs: the uses of a grant with an
    EncryptionContextSubset constraint (or none). A decision on it holds for every context that does: a condition on
    any other context key is unknown (an Allow it guards does not apply, a Deny it guards does), and only grants whose
    own Subset constraint these pairs satisfy apply (never an EncryptionContextEquals grant)."""


@dataclass
class Facts:
    """Everything a decision may look at. Tags and aliases load lazily: most decisions never need them."""

    principal: Principal
    action: str
    key: Key | None = None
    resource: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    source_ip: str = ""
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_tags: Callable[[], Mapping[str, str]] | None = None
    load_aliases: Callable[[], Sequence[str]] | None = None
    request: Mapping[str, Sequence[str]] = field(default_factory=dict)  # condition values the service knows

    def tags(self) -> Mapping[str, str]:
        if self.key is None:
            return {}
        if self.key.tags or self.load_tags is None:
            return self.key.tags
        return self.load_tags()

    def aliases(self) -> Sequence[str]:
        if self.key is None:
            return ()
        if "kms:ResourceAliases" in self.request:  # the aliases a change would leave the key with
            return tuple(self.request["kms:ResourceAliases"])
        if self.key.aliases or self.load_aliases is None:
            return self.key.aliases
        return self.load_aliases()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    source: str  # "root" | "identity:<policy name>" | "key-policy" | "grant:<id>" | "default"
    sid: str = ""
    index: int | None = None

    @property
    def reason(self) -> str:
        where = self.source if self.index is None else f"{self.source} Statement[{self.index}]"
        sid = f" ({self.sid})" if self.sid else ""
        verdict = "allowed" if self.allowed else "denied"
        return f"{verdict} by {where}{sid}" if self.source != "default" else "denied by default (no statement allows)"

    def to_dict(self) -> dict:
        return {"Decision": "Allow" if self.allowed else "Deny", "Source": self.source, "Sid": self.sid,
                "StatementIndex": self.index, "Reason": self.reason}


# ------------------------------------------------------------------------------------------- condition values


def condition_values(key: str, facts: Facts) -> list[str] | None:
    """The request's value(s) for a condition key (canonical: documents are canonicalised when parsed, variables
    in `substitute`), or None when the key is absent."""
    ctx, k, p = facts.context, facts.key, facts.principal
    if key in facts.request:
        return list(facts.request[key]) or None
    if key.startswith("kms:EncryptionContext:"):
        # AWS: the context key in the condition key is not case-sensitive (the value is). Keys that differ only by
        # case give several values; condition_holds decides them for the worst case.
        name = key[len("kms:EncryptionContext:"):].lower()
        return [v for c, v in ctx.items() if c.lower() == name] or None
    if key == "kms:EncryptionContextKeys":
        return list(ctx) or None
    if key == "kms:ResourceAliases":
        return list(facts.aliases()) or None
    if key.startswith("kms:ResourceTag/"):
        tags = facts.tags()
        name = key[len("kms:ResourceTag/"):]
        return [tags[name]] if name in tags else None
    if key.startswith("broker:PrincipalTag/"):
        name = key[len("broker:PrincipalTag/"):]
        return [p.attributes[name]] if name in p.attributes else None
    simple = {
        "kms:KeySpec": k.spec.value if k else None,
        "kms:KeyUsage": k.usage.value if k else None,
        "kms:KeyOrigin": k.origin.value if k else None,
        "kms:MultiRegion": "false" if k else None,  # no broker key is a multi-Region key
        "kms:Provider": k.provider if k else _provider_of(facts.resource),
        "broker:SourceIp": facts.source_ip or None,
        "broker:CurrentTime": facts.now.isoformat(),
        "broker:TimeOfDay": facts.now.astimezone(UTC).strftime("%H:%M:%S"),
        "broker:PrincipalName": p.name,
        "broker:AuthMethod": p.auth_method,
        "kms:CallerAccount": ACCOUNT,
        "kms:GrantIsForAWSResource": "false" if facts.action in _GRANT_ACTIONS else None,
        "aws:EpochTime": str(int(facts.now.timestamp())),
        "aws:PrincipalArn": user_arn(p),
        "aws:PrincipalAccount": ACCOUNT,
        "aws:ViaAWSService": "false",
        "aws:PrincipalIsAWSService": "false",
    }
    value = simple.get(key)
    return [value] if value is not None else None


def _provider_of(resource: str | None) -> str | None:
    if resource and resource.startswith("provider/"):
        return resource.split("/", 2)[1]
    return None


def substitute(text: str, facts: Facts, *, glob: bool = False, segment: bool = False) -> str:
    """${condition key} variables, e.g. ${broker:PrincipalName}; an unknown one makes the value match nothing.

    glob: the text is a pattern, so the value is escaped (matched literally); segment: the value must stay within
    one path segment (a "/" in it matches nothing).
    """
    def repl(match: re.Match) -> str:
        values = condition_values(canonical_condition_key(match.group(1)) or match.group(1), facts)
        if not values or len(values) != 1 or (segment and "/" in values[0]):
            return _NO_MATCH
        return re.sub(r"([*?\[])", r"[\1]", values[0]) if glob else values[0]
    return _VARIABLE.sub(repl, text) if "${" in text else text


def parse_time_value(value: str) -> datetime | time | None:
    """ISO 8601 date-time (naive = UTC), epoch seconds (as AWS takes them), or a time of day HH:MM[:SS] (UTC)."""
    if re.fullmatch(r"\d{1,12}", value):
        return datetime.fromtimestamp(int(value), UTC)
    if re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value):
        try:
            return time.fromisoformat(value)
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _compare(base: str, request_value: str, policy_value: str) -> bool:
    if base in ("StringEquals", "StringNotEquals"):
        return request_value == policy_value
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return request_value.lower() == policy_value.lower()
    if base in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike", "ArnEquals", "ArnNotEquals"):
        return fnmatch.fnmatchcase(request_value, policy_value)  # AWS: ArnEquals takes wildcards as ArnLike does
    if base == "Bool":
        return request_value.lower() == policy_value.lower()
    if base in ("IpAddress", "NotIpAddress"):
        try:
            return ipaddress.ip_address(request_value) in ipaddress.ip_network(policy_value, strict=False)
        except ValueError:
            return False
    if base.startswith("Numeric"):
        try:
            a, b = float(request_value), float(policy_value)
        except ValueError:
            return False
        return _ordered(base[len("Numeric"):], a, b)
    if base.startswith("Date"):
        b = parse_time_value(policy_value)
        a = parse_time_value(request_value)
        if isinstance(b, time):  # a time-of-day window: compare the request's time of day
            a = a.astimezone(UTC).time().replace(tzinfo=None) if isinstance(a, datetime) else a
        if a is None or b is None or type(a) is not type(b):
            return False
        return _ordered(base[len("Date"):], a, b)
    return False


def _ordered(relation: str, a, b) -> bool:
    return {"Equals": a == b, "NotEquals": a != b, "LessThan": a < b, "LessThanEquals": a <= b,
            "GreaterThan": a > b, "GreaterThanEquals": a >= b}[relation]


_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "NotIpAddress", "NumericNotEquals",
            "DateNotEquals", "ArnNotEquals", "ArnNotLike"}
_GLOBS = {"StringLike", "StringNotLike", "ArnLike", "ArnNotLike", "ArnEquals", "ArnNotEquals"}


def condition_holds(cond: Condition, facts: Facts, *, deny: bool = False) -> bool:
    """Whether a condition holds for the request. `deny`: it guards a Deny, so a single-valued key that has several
    values (encryption-context keys differing only by case) holds if any value satisfies it; for an Allow, only
    if every value does."""
    request = condition_values(cond.key, facts)
    policy = [substitute(v, facts, glob=cond.base in _GLOBS) for v in cond.values]
    if cond.base == "Null":
        return (request is None) == (policy[0].lower() == "true")
    if request is None:
        if cond.qualifier == "ForAllValues":
            return True
        if cond.qualifier == "ForAnyValue":
            return False
        return cond.if_exists or cond.base in _NEGATED
    negated = cond.base in _NEGATED
    if cond.qualifier is None and cond.key not in MULTI_VALUED_KEYS:
        held = [(not hit) if negated else hit for hit in (any(_compare(cond.base, r, p) for p in policy)
                                                         for r in request)]
        return any(held) if deny else all(held)
    per_value = [any(_compare(cond.base, r, p) for p in policy) for r in request]
    if negated:
        per_value = [not v for v in per_value]
    return all(per_value) if cond.qualifier == "ForAllValues" else any(per_value)


# ------------------------------------------------------------------------------------------- statements


def _resource_names(facts: Facts) -> list[str]:
    if facts.key is not None:
        k = facts.key
        names = [f"key/{k.key_id}", f"provider/{k.provider}"]
        return names
    return [facts.resource or "*"]


def name_matches(name: str, pattern: str) -> bool:
    """A resource name against a canonical pattern: the type (before the first "/") literally, the rest as a glob."""
    if pattern == "*":
        return True
    kind, _, rest = pattern.partition("/")
    name_kind, slash, name_rest = name.partition("/")
    return bool(slash) and kind == name_kind and fnmatch.fnmatchcase(name_rest, rest)


def _resource_matches(statement: Statement, facts: Facts) -> bool:
    hit = _resource_named(statement, facts)
    return not hit if statement.not_resources else hit


def _resource_named(statement: Statement, facts: Facts) -> bool:
    names = None
    for pattern in statement.resources:
        pattern = substitute(pattern, facts, glob=True, segment=True)
        if pattern == "*":
            return True
        if names is None:
            names = _resource_names(facts)
        if pattern.startswith("alias/") and facts.key is not None:
            if any(name_matches(a, pattern) for a in facts.aliases()):
                return True
            continue
        if any(name_matches(n, pattern) for n in names):
            return True
    return False


def _unknown(cond: Condition, facts: Facts) -> bool:
    """Whether a condition depends on context pairs an open context (ContextAtLeast) does not fix."""
    if not isinstance(facts.context, ContextAtLeast):
        return False
    keys = [canonical_condition_key(k) or k for k in
            [cond.key] + [m.group(1) for v in cond.values for m in _VARIABLE.finditer(v)]]
    fixed = {c.lower() for c in facts.context}
    return any(k == "kms:EncryptionContextKeys" or (k.startswith("kms:EncryptionContext:")
                                                     and k[len("kms:EncryptionContext:"):].lower() not in fixed)
               for k in keys)


def statement_applies(statement: Statement, facts: Facts) -> bool:
    if not (statement.matches_action(facts.action) and _resource_matches(statement, facts)):
        return False
    for cond in statement.conditions:
        if _unknown(cond, facts):
            if statement.effect != "Deny":
                return False  # unknown: an Allow does not apply, a Deny does (the worst case of every context)
        elif not condition_holds(cond, facts, deny=statement.effect == "Deny"):
            return False
    return True


def _principal_named(statement: Statement, principal: Principal) -> bool:
    return statement.principals is not None and statement.names(principal)


def grant_allows(grant: Grant, facts: Facts) -> bool:
    """The grant's exact grantee asks for one of its operations within its constraints. (RetireGrant is not a right
    on the key: it lets the grantee retire this grant only, see `_retires_own_grant`.)"""
    operation = facts.action.split(":", 1)[1]
    if operation == "RetireGrant" or operation not in grant.operations or facts.principal.name != grant.grantee:
        return False
    subset = grant.constraints.get("EncryptionContextSubset")
    if subset and any(facts.context.get(k) != v for k, v in subset.items()):
        return False
    equals = grant.constraints.get("EncryptionContextEquals")
    if equals is not None and isinstance(facts.context, ContextAtLeast):
        return False
    return not (equals is not None and dict(facts.context) != dict(equals))


def _retires_own_grant(facts: Facts) -> bool:
    """RetireGrant on a grant the service describes (kms:RetiringPrincipal, kms:GranteePrincipal, kms:GrantOperations
    of the grant being retired): AWS lets its retiring principal, and its grantee if it holds RetireGrant, retire it."""
    if facts.action != "kms:RetireGrant" or facts.key is None:
        return False
    name = facts.principal.name
    return name in facts.request.get("kms:RetiringPrincipal", ()) or (
        name in facts.request.get("kms:GranteePrincipal", ())
        and "RetireGrant" in facts.request.get("kms:GrantOperations", ()))


def _about_context(cond: Condition) -> bool:
    keys = [canonical_condition_key(k) or k for k in
            [cond.key] + [m.group(1) for v in cond.values for m in _VARIABLE.finditer(v)]]
    return any(k.startswith("kms:EncryptionContext") for k in keys)


def _applies_in_some_context(statement: Statement, facts: Facts) -> bool:
    """Whether the statement applies to this request for some encryption context and some name the key can be called
    by (its context conditions are taken as satisfiable; kms:RequestAlias as each of the key's aliases, or none;
    everything else is decided on the facts)."""
    if not (statement.matches_action(facts.action) and _resource_matches(statement, facts)):
        return False
    if not any((canonical_condition_key(c.key) or c.key) == "kms:RequestAlias" for c in statement.conditions):
        return _conditions_satisfiable(statement, facts)
    names: list[tuple[str, ...]] = [()] + [(a,) for a in facts.aliases()]
    return any(_conditions_satisfiable(statement, dataclasses.replace(
        facts, request={**facts.request, "kms:RequestAlias": name})) for name in names)


def _conditions_satisfiable(statement: Statement, facts: Facts) -> bool:
    return all(_about_context(c) or condition_holds(c, facts, deny=statement.effect == "Deny")
               for c in statement.conditions)


def attribute_statements(principal: Principal, identity: Sequence[tuple[str, PolicyDocument]],
                         key_policy: PolicyDocument | None) -> list[Statement]:
    """The statements deciding for `principal` on a key that test the key's tags or aliases (the only ones a change
    of those can turn on or off)."""
    statements = [st for _, doc in identity for st in doc.statements]
    statements += [st for st in (key_policy or DEFAULT_KEY_POLICY).statements
                   if _principal_named(st, principal) or st.account_self]
    return [st for st in statements if _tests_attributes(st)]


def _tests_attributes(st: Statement) -> bool:
    texts = list(st.resources) + [c.key for c in st.conditions] + [v for c in st.conditions for v in c.values]
    return any(t.startswith("alias/") or any(word in t.lower() for word in _ATTRIBUTE_WORDS) for t in texts)


# Condition keys (or variables) a change of a key's tags or aliases can satisfy: kms:ResourceTag/ (aws:ResourceTag/),
# kms:ResourceAliases, and kms:RequestAlias (a new alias is a new name to call the key by).
_ATTRIBUTE_WORDS = ("resourcetag/", "resourcealiases", "requestalias")


def change_widens(before: Facts, after: Facts, statements: Sequence[Statement]) -> bool:
    """Could changing a key's attributes (its tags and aliases) from `before` to `after` allow `before.action` for
    this principal in some request that is not allowed now? Sound, statement by statement over
    `attribute_statements`: an Allow that starts to apply, or a Deny that stops applying, in some encryption
    context. (Grants never depend on tags or aliases.)"""
    for st in statements:
        was, will = _applies_in_some_context(st, before), _applies_in_some_context(st, after)
        if (st.effect == "Allow" and will and not was) or (st.effect == "Deny" and was and not will):
            return True
    return False


def evaluate(facts: Facts, identity: Sequence[tuple[str, PolicyDocument]], key_policy: PolicyDocument | None = None,
             grants: Sequence[Grant] = ()) -> Decision:
    if facts.principal.is_root:
        return Decision(True, "root")
    on_key = facts.key is not None
    kp = (key_policy or DEFAULT_KEY_POLICY) if on_key else None

    # 1. explicit deny anywhere
    for name, doc in identity:
        for st in doc.statements:
            if st.effect == "Deny" and statement_applies(st, facts):
                return Decision(False, f"identity:{name}", st.sid, st.index)
    if kp is not None:
        for st in kp.statements:
            if st.effect == "Deny" and (_principal_named(st, facts.principal) or st.account_self) \
                    and statement_applies(st, facts):
                return Decision(False, "key-policy", st.sid, st.index)

    # 2. a grant's retiring principal, or its grantee when the grant carries RetireGrant, retires that grant
    if _retires_own_grant(facts):
        return Decision(True, "grant-retirement")

    # 2./3. allows
    identity_enabled = not on_key
    if kp is not None:
        for st in kp.statements:
            if st.effect != "Allow" or not statement_applies(st, facts):
                continue
            if _principal_named(st, facts.principal):
                return Decision(True, "key-policy", st.sid, st.index)
            if st.account_self:
                identity_enabled = True
    if identity_enabled:
        for name, doc in identity:
            for st in doc.statements:
                if st.effect == "Allow" and statement_applies(st, facts):
                    return Decision(True, f"identity:{name}", st.sid, st.index)

    # 4. grants
    for grant in grants:
        if on_key and grant.key_id == facts.key.key_id and grant_allows(grant, facts):
            return Decision(True, f"grant:{grant.grant_id}", grant.name)
    return Decision(False, "default")
