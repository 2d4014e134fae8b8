"""The sync manifest (YAML): the keys a team wants, declared once, reconciled by `kms-broker sync apply`.

    manifest: payments              # the manifest's id: scopes the keys it owns (tag kmsb:sync=<manifest>/<name>)
    prune: false                    # true: keys this manifest made and no longer lists are scheduled for deletion
    concurrency: 4                  # operations in flight per provider
    rate: {aws: 5}                  # optional: at most N key creations/imports per second on a provider
    defaults: {targets: [hsm], spec: SYMMETRIC_DEFAULT, enabled: true}
    keys:
      - name: orders-db
        targets: [aws, gcp]         # provider instances; one broker key per target
        spec: SYMMETRIC_DEFAULT
        usage: ENCRYPT_DECRYPT      # optional; the spec's default otherwise
        replicate: false            # true: material born in the HSM, imported into each target (symmetric only)
        rotation_days: 365          # null: no automatic rotation
        aliases: [alias/orders-db]  # on the first target; other targets get <alias>/<target>
        tags: {team: payments}
        enabled: true
        description: orders database
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker.model import ALLOWED_USAGES, KeySpec, KeyUsage

NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,100}$")
ALIAS = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,200}$")
PRIMARY = "@primary"  # the target name of a replicated entry's HSM primary
SYNC_TAG, TARGET_TAG = "kmsb:sync", "kmsb:target"


class ManifestError(ValueError):
    """The manifest is not valid; the message names the element."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyEntry(_Model):
    name: str
    targets: list[str] = Field(default_factory=list)
    spec: str = "SYMMETRIC_DEFAULT"
    usage: str | None = None
    replicate: bool = False
    rotation_days: int | None = None
    aliases: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must match [a-zA-Z0-9_.-]{1,100}")
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        for a in v:
            if not ALIAS.match(a) or a.startswith("alias/aws/"):
                raise ValueError(f"alias {a!r} must match alias/[a-zA-Z0-9/_-]+ (not alias/aws/)")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if any(k.startswith("kmsb:") for k in v):
            raise ValueError("tag keys starting with kmsb: are the broker's own")
        if len(v) > 40:
            raise ValueError("at most 40 tags")
        return v

    @model_validator(mode="after")
    def _check(self) -> KeyEntry:
        try:
            spec = KeySpec(self.spec)
        except ValueError:
            raise ValueError(f"spec {self.spec!r} is not one of {[s.value for s in KeySpec]}") from None
        if self.usage is not None:
            try:
                usage = KeyUsage(self.usage)
            except ValueError:
                raise ValueError(f"usage {self.usage!r} is not valid") from None
            if usage not in ALLOWED_USAGES[spec]:
                raise ValueError(f"usage {self.usage} is not valid for spec {self.spec}")
        if not self.targets:
            raise ValueError("targets: at least one provider")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("targets: listed twice")
        if self.rotation_days is not None and not 90 <= self.rotation_days <= 2560:
            raise ValueError("rotation_days must be 90..2560 or null")
        if self.rotation_days is not None and spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise ValueError("only SYMMETRIC_DEFAULT keys rotate")
        if self.replicate and spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise ValueError("replicate: symmetric keys only (SoftHSM pads asymmetric PKCS#8 before AES-KWP, which "
                             "strict importers reject)")
        return self

    @property
    def key_spec(self) -> KeySpec:
        return KeySpec(self.spec)

    @property
    def key_usage(self) -> KeyUsage:
        if self.usage:
            return KeyUsage(self.usage)
        allowed = ALLOWED_USAGES[self.key_spec]
        return next(iter(allowed)) if len(allowed) == 1 else KeyUsage.ENCRYPT_DECRYPT

    def aliases_for(self, target: str) -> list[str]:
        if target == PRIMARY:
            return []
        first = self.targets[0]
        return list(self.aliases) if target == first else [f"{a}/{target}" for a in self.aliases]


class Manifest(_Model):
    manifest: str
    prune: bool = False
    concurrency: int = Field(default=4, ge=1, le=64)
    rate: dict[str, float] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)
    keys: list[KeyEntry] = Field(default_factory=list)

    @field_validator("manifest")
    @classmethod
    def _id(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must match [a-zA-Z0-9_.-]{1,100}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("defaults"), dict) and isinstance(data.get("keys"), list):
            data = {**data, "keys": [{**data["defaults"], **k} if isinstance(k, dict) else k for k in data["keys"]]}
        return data

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        names = [k.name for k in self.keys]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"key names listed twice: {sorted(dup)}")
        return self


def parse_manifest(text: str) -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError("not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a YAML mapping")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(f"{where}: {first['msg']}") from None


def load_manifest(path: Path | str) -> Manifest:
    return parse_manifest(Path(path).read_text())
