"""Writing a key policy (PutKeyPolicy, CreateKey with a Policy): the text as written, what it means, and the two
checks on its writer.

* The text is kept verbatim: GetKeyPolicy gives back the very bytes PutKeyPolicy took (AWS does). A document given
  as an object (the native API) is kept as its compact JSON.
* A text that is not JSON, or a document the policy language refuses, is AWS's MalformedPolicyDocumentException,
  with the JSON path of the first bad element.
* No escalation (broker/policy/escalation.py): every action an Allow statement names must be one the writer may
  perform on that key now (a new key: as the default key policy lets it).
* AWS's lock-out safety check: the new policy must still let its writer call PutKeyPolicy on the key (through the
  policy itself, or the identity policies it delegates to), unless the writer sets BypassPolicyLockoutSafetyCheck.

The checks ask the gate's `Call` (holds, holds_under), so they are decided by the one policy engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.policy.document import MAX_DOCUMENT_CHARS, PolicyDocument, parse_document
from broker.policy.escalation import key_policy_excess

if TYPE_CHECKING:
    from broker.gate import Call
    from broker.model import Key

LOCKOUT = ("The new key policy will not allow you to update the key policy in the future.")


@dataclass(frozen=True)
class KeyPolicy:
    """A key policy about to be written: its text (stored as is) and what it means."""

    text: str = field(repr=False)
    document: PolicyDocument = field(repr=False)


def read_key_policy(document: Any) -> KeyPolicy:
    """A key policy as written (a JSON text) or as an object; MalformedPolicyDocument if it is neither valid JSON
    nor a document of the language."""
    if isinstance(document, str):
        text = document
        if not text.strip():
            raise errors.MalformedPolicyDocument("the key policy is empty")
        if len(text) > MAX_DOCUMENT_CHARS:
            raise errors.MalformedPolicyDocument(f"the key policy is larger than {MAX_DOCUMENT_CHARS} characters")
        try:
            raw = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise errors.MalformedPolicyDocument("the key policy is not valid JSON") from None
    elif isinstance(document, Mapping):
        raw = dict(document)
        text = json.dumps(raw, separators=(",", ":"))
    else:
        raise errors.MalformedPolicyDocument("the key policy must be a JSON object")
    try:
        return KeyPolicy(text, parse_document(raw, key_policy=True))
    except errors.ValidationError as exc:
        raise errors.MalformedPolicyDocument(exc.message) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_writer(call: Call, key: Key, policy: KeyPolicy, *, bypass_lockout: bool = False) -> None:
    """Refuse a key policy its writer may not write (AccessDenied, naming what is beyond it) or could not change
    again (MalformedPolicyDocument, AWS's lock-out check, unless `bypass_lockout`)."""
    excess = key_policy_excess(policy.document, lambda action: call.holds(action, key))
    if excess:
        more = f" (and {len(excess) - 5} more)" if len(excess) > 5 else ""
        raise errors.AccessDenied(f"{call.principal.name} may not write a key policy allowing what it may not do on "
                                  f"{key.key_id} itself: {', '.join(excess[:5])}{more}")
    if not bypass_lockout and not call.holds_under("kms:PutKeyPolicy", key, policy.document):
        raise errors.MalformedPolicyDocument(LOCKOUT)
