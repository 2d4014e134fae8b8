"""Settings: one TOML file plus KMSB_* environment overrides, validated.

    data_dir = "./var"
    store_url = "sqlite:///./var/broker.db"      # or postgresql+psycopg://...
    default_provider = "hsm"
    root_of_trust = "hsm"                          # the pkcs11 provider whose root KEK wraps what the broker keeps
    audit_file = "./var/audit/audit.jsonl"
    audit_fsync = false
    [providers.hsm]
    kind = "pkcs11"
    ...
Environment: KMSB_CONFIG (path of the TOML), KMSB_DATA_DIR, KMSB_STORE_URL, KMSB_DEFAULT_PROVIDER,
KMSB_AUDIT_FILE, KMSB_AUDIT_FSYNC, KMSB_AUTH_CACHE_SECONDS, and KMSB_PROVIDERS_JSON (a JSON object of extra provider tables, e.g. the
output of `kms-broker stack env`).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.auth.config import AuthSettings

CONFIG_NAME = "broker.toml"


class SettingsError(ValueError):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path("./var")
    store_url: str = ""
    default_provider: str = "hsm"
    root_of_trust: str = "hsm"
    audit_file: Path | None = None
    audit_fsync: bool = False
    job_interval_seconds: int = Field(default=60, ge=1)
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    auth: AuthSettings = Field(default_factory=AuthSettings)  # [auth] table: tokens, jwt roles, ldap (broker/auth/config.py)

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.data_dir = self.data_dir.resolve()
        if not self.store_url:
            self.store_url = f"sqlite:///{self.data_dir / 'broker.db'}"
        if self.audit_file is None:
            self.audit_file = self.data_dir / "audit" / "audit.jsonl"
        if self.default_provider not in self.providers:
            raise ValueError(f"default_provider {self.default_provider!r} is not among the configured providers")
        if self.root_of_trust not in self.providers or self.providers[self.root_of_trust].get("kind") != "pkcs11":
            raise ValueError("root_of_trust must name a configured pkcs11 provider")
        return self


def embedded_defaults(data_dir: Path) -> dict[str, Any]:
    """The settings `kms-broker init` writes: SQLite + a SoftHSM token, all under data_dir."""
    data_dir = data_dir.resolve()
    hsm = data_dir / "hsm"
    return {
        "data_dir": str(data_dir),
        "store_url": f"sqlite:///{data_dir / 'broker.db'}",
        "default_provider": "hsm",
        "root_of_trust": "hsm",
        "providers": {
            "hsm": {"kind": "pkcs11", "token_label": "kms-broker", "softhsm_conf": str(hsm / "softhsm2.conf"),
                    "pin_file": str(hsm / "user.pin")},
        },
    }


def with_providers(settings: Settings, extra: dict[str, dict[str, Any]]) -> Settings:
    """The same settings with more provider instances (e.g. the local stack's clouds), validated again."""
    try:
        return Settings(**{**settings.model_dump(), "providers": {**settings.providers, **extra}})
    except ValidationError as exc:
        raise SettingsError(str(exc)) from None


def _env_overrides(raw: dict[str, Any]) -> dict[str, Any]:
    env = os.environ
    for key in ("data_dir", "store_url", "default_provider", "audit_file", "audit_fsync", "auth_cache_seconds"):
        value = env.get(f"KMSB_{key.upper()}")
        if value is not None:
            raw[key] = value
    if env.get("KMSB_PROVIDERS_JSON"):
        try:
            extra = json.loads(env["KMSB_PROVIDERS_JSON"])
        except ValueError:
            raise SettingsError("KMSB_PROVIDERS_JSON is not valid JSON") from None
        raw["providers"] = {**raw.get("providers", {}), **extra}
    return raw


def load_settings(data_dir: Path | None = None, config_path: Path | None = None) -> Settings:
    """Read <data_dir>/broker.toml (or KMSB_CONFIG), apply the environment, validate."""
    data_dir = Path(data_dir or os.environ.get("KMSB_DATA_DIR") or "./var")
    path = Path(config_path or os.environ.get("KMSB_CONFIG") or data_dir / CONFIG_NAME)
    if not path.is_file():
        raise SettingsError(f"no settings at {path}: run `kms-broker init --data-dir {data_dir}` first")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    try:
        return Settings(**_env_overrides(raw))
    except ValidationError as exc:
        raise SettingsError(f"{path}: {exc}") from None


def write_settings(path: Path, raw: dict[str, Any]) -> None:
    """Write a settings dict as TOML (flat keys, then one table per provider)."""
    lines = []
    for key, value in raw.items():
        if key != "providers":
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in raw.get("providers", {}).items():
        lines.append(f"\n[providers.{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")
