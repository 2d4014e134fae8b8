"""Authorization: one engine decides every operation of every front door. Default deny.

Identity policies (named documents attached to principals), key policies and grants combine as
`broker.policy.evaluate` documents. Root short-circuits before any I/O. Documents are read from the store through a
short per-process cache (`cache_seconds`, the bound on how long a policy change takes to reach every process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from broker.auth import Principal
from broker.errors import ValidationError
from broker.model import Key
from broker.policy.builtin import builtin
from broker.policy.document import ACTION_ALIASES, ALL_ACTIONS, PolicyDocument, parse_document
from broker.policy.evaluate import (
    Decision,
    Facts,
    Grant,
    attribute_statements,
    change_widens,
    evaluate,
    name_matches,
)

__all__ = ["Decision", "PolicyDocument", "PolicyEngine"]

log = logging.getLogger("kms_broker.policy")
_GLOB = "*?[$"
# A stored document the current language refuses (written by an older version) decides as "deny everything":
# dropping it instead could drop its Deny statements, or fall back to the default key policy.
UNREADABLE = parse_document({"Statement": [{"Sid": "UnreadableStoredPolicy", "Effect": "Deny", "Action": "*",
                                            "Resource": "*"}]})
UNREADABLE_KEY_POLICY = parse_document({"Statement": [{"Sid": "UnreadableStoredPolicy", "Effect": "Deny",
                                                       "Principal": "*", "Action": "*", "Resource": "*"}]},
                                       key_policy=True)


def _pattern_covers(pattern: str, wanted: str) -> bool:
    """Whether a policy resource pattern matches every name `wanted` ("<literal prefix>*" or a literal name) names."""
    if pattern == "*" or pattern == wanted:
        return True
    if not wanted.endswith("*"):
        return "$" not in pattern and name_matches(wanted, pattern)
    head, prefix = pattern[:-1], wanted[:-1]
    return pattern.endswith("*") and not any(c in head for c in _GLOB) and prefix.startswith(head) \
        and "/" in head


class _TTLCache:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        hit = self._items.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if self.seconds > 0:
            if len(self._items) > 20_000:
                self._items.clear()
            self._items[key] = (now + self.seconds, value)
        return value

    def forget(self, key: Any) -> None:
        self._items.pop(key, None)


class PolicyEngine:
    def __init__(self, repository=None, store=None, cache_seconds: float = 1.0) -> None:
        """repository: a broker.store.policies.PolicyRepository (None: only root and built-ins exist)."""
        self.repository = repository
        self._store = store
        self._cache = _TTLCache(cache_seconds)

    # -------------------------------------------------------------------------------------- documents

    def identity_documents(self, principal: Principal) -> list[tuple[str, PolicyDocument]]:
        docs = []
        for name in principal.policies:
            doc = builtin(name) or self._cache.get(("policy", name), lambda n=name: self._load_policy(n))
            if doc is not None:
                docs.append((name, doc))
        return docs

    def _load_policy(self, name: str) -> PolicyDocument | None:
        raw = self.repository.get_policy(name) if self.repository else None
        return _parse_stored(raw, f"policy {name}", UNREADABLE) if raw else None

    def key_policy(self, key_id: str) -> PolicyDocument | None:
        def load() -> PolicyDocument | None:
            raw = self.repository.get_key_policy(key_id) if self.repository else None
            return _parse_stored(raw, f"key policy of {key_id}", UNREADABLE_KEY_POLICY, key_policy=True) \
                if raw else None
        return self._cache.get(("key-policy", key_id), load)

    def grants(self, key_id: str) -> list[Grant]:
        def load() -> list[Grant]:
            if not self.repository:
                return []
            return [Grant(g["GrantId"], g["KeyId"], g["GranteePrincipal"], tuple(g["Operations"]),
                          g["Constraints"], g["Name"], g["RetiringPrincipal"]) for g in self.repository.grants_for_key(key_id)]
        return self._cache.get(("grants", key_id), load)

    def forget(self, *keys: tuple) -> None:
        """Drop cached documents this process just changed (other processes see it within cache_seconds)."""
        for key in keys:
            self._cache.forget(key)

    # -------------------------------------------------------------------------------------- decisions

    def decide(self, principal: Principal, action: str, key: Key | None, context: dict | None = None, *,
               resource: str | None = None, source_ip: str = "", now: datetime | None = None,
               conditions: Mapping[str, Sequence[str]] | None = None,
               key_policy: PolicyDocument | None = None) -> Decision:
        """conditions: request facts only the service knows (e.g. a new grant's kms:GrantOperations).
        key_policy: decide as if the key's policy were this one (a policy about to be written)."""
        if principal.is_root:
            return Decision(True, "root")
        facts = Facts(principal=principal, action=action, key=key, resource=resource,
                      context=context if context is not None else {},
                      source_ip=source_ip, now=now or datetime.now(UTC), request=dict(conditions or {}),
                      load_tags=self._loader(key, "tags"), load_aliases=self._loader(key, "aliases"))
        on_key = key is not None
        if on_key and key_policy is None:
            key_policy = self.key_policy(key.key_id)
        return evaluate(facts, self.identity_documents(principal), key_policy,
                        self.grants(key.key_id) if on_key else ())

    def _loader(self, key: Key | None, what: str) -> Callable[[], Any] | None:
        """Reads a key's tags or aliases from the store when a decision needs them (nothing for a key that is
        not stored yet: a CreateKey's new key)."""
        if key is None or self._store is None:
            return None

        def load() -> Any:
            stored = self._store.get_key(key.key_id)
            return getattr(stored, what) if stored is not None else ({} if what == "tags" else ())
        return load

    def widened_by(self, principal: Principal, key: Key, after: Mapping[str, Sequence[str]], *,
                   source_ip: str = "") -> list[str]:
        """The actions `principal` might gain on `key` if its tags/aliases became `after` ("kms:ResourceTag/<k>":
        [value] or [] for removed, "kms:ResourceAliases": every alias it would have), in some request. Sorted."""
        if principal.is_root:
            return []
        statements = attribute_statements(principal, self.identity_documents(principal), self.key_policy(key.key_id))
        if not statements:
            return []
        load_tags, load_aliases = self._loader(key, "tags"), self._loader(key, "aliases")
        now = datetime.now(UTC)
        out = []
        for action in sorted(ALL_ACTIONS - set(ACTION_ALIASES)):
            before = Facts(principal, action, key, source_ip=source_ip, now=now, load_tags=load_tags,
                           load_aliases=load_aliases)
            after_facts = Facts(principal, action, key, source_ip=source_ip, now=now, load_tags=load_tags,
                                load_aliases=load_aliases, request=dict(after))
            if change_widens(before, after_facts, statements):
                out.append(action)
        return out

    def covers(self, principal: Principal, actions: list[str], resource_glob: str) -> bool:
        """Does `principal` hold every action on *every* resource `resource_glob` ("<literal prefix>*", or one
        literal resource name) names?

        Sound and deliberately conservative (the no-escalation rule asks it before something is handed on): an
        unconditional identity Allow whose resource pattern is "*", the glob itself, "<prefix>*" with a prefix of
        the glob's literal part (never shorter than its type, "key/"), or — for a literal name — a pattern matching
        it; any Deny statement naming one of the actions answers no.
        """
        if principal.is_root:
            return True
        if any(c in resource_glob[:-1] for c in _GLOB) or ("$" in resource_glob):
            raise ValueError("covers() takes '<literal prefix>*' or a literal resource name")
        docs = [doc for _, doc in self.identity_documents(principal)]
        for action in actions:
            held = False
            for doc in docs:
                for st in doc.statements:
                    if not st.matches_action(action):
                        continue
                    if st.effect == "Deny":
                        return False
                    if st.conditions or st.not_resources:
                        continue
                    held = held or any(_pattern_covers(p, resource_glob) for p in st.resources)
            if not held:
                return False
        return True


def _parse_stored(raw: dict, what: str, fallback: PolicyDocument, *, key_policy: bool = False) -> PolicyDocument:
    try:
        return parse_document(raw, key_policy=key_policy)
    except ValidationError as exc:
        log.error("stored %s is not valid in this version (%s): it denies everything until rewritten", what,
                  exc.message)
        return fallback
