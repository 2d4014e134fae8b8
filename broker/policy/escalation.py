"""The no-escalation rule for documents a principal writes: what a new policy would grant beyond its writer.

Pure: the caller passes the two questions the gate answers about the writer (`Call.holds`, `Call.covers`), so
"may the writer do this?" is decided in one place, by the policy engine, exactly as for a real request.

* **Key policy** (applies to one key): every action an Allow statement names (NotAction: every other action of the
  language) must be one the writer may perform on that key now. Principals, conditions and resources of the written
  statement are not needed: they can only narrow it, and the key policy is consulted for that key alone. This reads
  AWS statements the same way: an `AWS` principal (a user, a role, the account root, `*`), a `NotPrincipal` (every
  principal but some) or a `NotResource` narrows at most; a `kms:` action that does not exist adds nothing.
* **Identity policy** (applies to whoever holds its name, on any resource): every action an Allow statement names
  must be held by the writer, through its own identity policies and unconditionally, on every resource the
  statement's Resource patterns can name ("key/ab*" is checked as "everything under key/ab", a variable as the
  whole part before it; a NotResource statement as "*").

Deny statements are never checked: they only take rights away. What the rule does not bound is *restoring* rights
by removing a restriction (a Deny, a disabled key): those rights were granted by someone else's policy.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.policy.document import PolicyDocument


def key_policy_excess(document: PolicyDocument, holds: Callable[[str], bool]) -> list[str]:
    """The actions `document`'s Allow statements grant on its key that the writer does not hold there (sorted)."""
    wanted: set[str] = set()
    for st in document.statements:
        if st.effect == "Allow":
            wanted |= st.action_names()
    return sorted(a for a in wanted if not holds(a))


def identity_policy_excess(document: PolicyDocument, covers: Callable[[str, str], bool]) -> list[str]:
    """"<action> on <pattern>" for each action and resource of an Allow statement the writer does not cover."""
    missing: list[str] = []
    for st in document.statements:
        if st.effect != "Allow":
            continue
        # NotResource names everything but its patterns: checked as "*"
        for pattern in ("*",) if st.not_resources else st.resources:
            scope = _scope(pattern)
            missing += [f"{a} on {pattern}" for a in sorted(st.action_names()) if not covers(a, scope)]
    return sorted(set(missing))


def _scope(pattern: str) -> str:
    """What covers() is asked for a resource pattern: itself if literal, else its literal part followed by "*"."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?[$"), default=None)
    return pattern if cut is None else pattern[:cut] + "*"
