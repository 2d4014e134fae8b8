"""Key rotation policies: ISO 8601 durations and the validation Key Vault applies to a policy document."""

from __future__ import annotations

import re
from typing import Any

from .errors import BadParameter

_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_UNIT_SECONDS = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)
MIN_EXPIRY_SECONDS = 28 * 86400
MIN_ROTATE_AFTER_CREATE = 7 * 86400


def duration_seconds(text: Any) -> int:
    """Seconds in an ISO 8601 duration such as P90D, P1Y2M or PT12H (months as 30 days, years as 365)."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise BadParameter(f"Invalid ISO 8601 duration '{text}'.")
    return sum(int(g or 0) * unit for g, unit in zip(m.groups(), _UNIT_SECONDS, strict=True))


def default_policy(policy_id: str) -> dict[str, Any]:
    """What Key Vault reports for a key that never had a policy: notify 30 days before expiry."""
    return {"id": policy_id,
            "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
            "attributes": {}}


def validate_policy(body: Any, policy_id: str, created: int, now: int) -> dict[str, Any]:
    """A normalised copy of a policy PUT body, or BadParameter naming what is wrong."""
    if not isinstance(body, dict):
        raise BadParameter("The rotation policy must be a JSON object.")
    actions = body.get("lifetimeActions") or []
    if not isinstance(actions, list):
        raise BadParameter("Property 'lifetimeActions' must be an array.")
    attrs = body.get("attributes") or {}
    expiry = attrs.get("expiryTime")
    if expiry is not None and duration_seconds(expiry) < MIN_EXPIRY_SECONDS:
        raise BadParameter("Property 'expiryTime' must be at least 28 days (P28D).")
    out_actions = []
    kinds = set()
    for action in actions:
        trigger, act = (action or {}).get("trigger") or {}, (action or {}).get("action") or {}
        kind = str(act.get("type", "")).capitalize()
        if kind not in ("Rotate", "Notify"):
            raise BadParameter(f"Invalid lifetime action type '{act.get('type')}': use Rotate or Notify.")
        if kind in kinds:
            raise BadParameter(f"Only one '{kind}' lifetime action is allowed.")
        kinds.add(kind)
        after, before = trigger.get("timeAfterCreate"), trigger.get("timeBeforeExpiry")
        if (after is None) == (before is None):
            raise BadParameter("Each trigger needs exactly one of 'timeAfterCreate' and 'timeBeforeExpiry'.")
        if after is not None and kind == "Rotate" and duration_seconds(after) < MIN_ROTATE_AFTER_CREATE:
            raise BadParameter("A Rotate action's 'timeAfterCreate' must be at least 7 days (P7D).")
        if before is not None:
            if expiry is None:
                raise BadParameter("'timeBeforeExpiry' needs the policy's 'expiryTime'.")
            if duration_seconds(before) >= duration_seconds(expiry):
                raise BadParameter("'timeBeforeExpiry' must be shorter than 'expiryTime'.")
        out_actions.append({"trigger": {"timeAfterCreate": after} if after else {"timeBeforeExpiry": before},
                            "action": {"type": kind}})
    out_attrs: dict[str, Any] = {"created": created, "updated": now}
    if expiry is not None:
        out_attrs["expiryTime"] = expiry
    return {"id": policy_id, "lifetimeActions": out_actions, "attributes": out_attrs}
