"""Typed read models of keys for browsing front doors (the console): a filtered page of key summaries, one key's
detail, the key stores a caller may create keys in. Pure values and the filter; KeyService fills them."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.model import Key

# What a detail view asks "may the caller …?" about, so a front door can offer only what the gate would allow.
KEY_ACTIONS = (
    "kms:EnableKey", "kms:DisableKey", "kms:RotateKeyOnDemand", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
    "kms:EnableKeyRotation", "kms:DisableKeyRotation", "kms:UpdateKeyDescription", "kms:TagResource",
    "kms:UntagResource", "kms:CreateAlias", "kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:ListGrants",
    "kms:CreateGrant", "kms:Encrypt", "kms:Decrypt",
)


@dataclass(frozen=True)
class KeyQuery:
    """Filters of a key list; empty fields match everything. `text` matches id, description, alias or tag."""

    text: str = ""
    provider: str = ""
    state: str = ""
    spec: str = ""
    tag: str = ""      # "name" or "name=value"
    alias: str = ""

    def matches(self, key: Key) -> bool:
        if self.provider and key.provider != self.provider:
            return False
        if self.state and key.state.value != self.state:
            return False
        if self.spec and key.spec.value != self.spec:
            return False
        if self.tag:
            name, _, value = self.tag.partition("=")
            if name not in key.tags or ("=" in self.tag and key.tags[name] != value):
                return False
        if self.alias and not any(self.alias.lower() in a.lower() for a in key.aliases):
            return False
        if self.text:
            needle = self.text.lower()
            haystack = [key.key_id, key.description, *key.aliases, *key.tags, *key.tags.values()]
            if not any(needle in h.lower() for h in haystack):
                return False
        return True


@dataclass(frozen=True)
class KeySummary:
    key_id: str
    provider: str
    spec: str
    usage: str
    state: str
    description: str
    created: str
    aliases: tuple[str, ...]
    tags: dict[str, str]


@dataclass(frozen=True)
class KeyPage:
    keys: list[KeySummary]
    next_marker: str | None
    scanned: int


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    created: str
    state: str
    primary: bool


@dataclass(frozen=True)
class KeyDetail:
    summary: KeySummary
    origin: str
    primary_version: int
    deletion_date: str | None
    rotation_period_days: int | None
    next_rotation: str | None
    versions: list[KeyVersionInfo]
    algorithms: list[str]
    allowed: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyStoreInfo:
    """A provider as a key store: the specs it can create keys for and whether the caller may create there."""

    provider: str
    specs: dict[str, list[str]]          # spec -> usages
    may_create: bool
    import_material: bool


def summary_of(key: Key) -> KeySummary:
    return KeySummary(key.key_id, key.provider, key.spec.value, key.usage.value, key.state.value, key.description,
                      key.created_at.isoformat(timespec="seconds"), tuple(key.aliases), dict(key.tags))
