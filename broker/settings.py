"""Settings: one TOML file plus KMSB_* environment overrides, validated.

    data_dir = "./var"
    store_url = "sqlite:///./var/broker.db"      # or postgresql+psycopg://...
    default_provider = "hsm"
    root_of_trust = "hsm"                          # the pkcs11 provider whose root KEK wraps what the broker keeps
    audit_file = "./var/audit/audit.jsonl"
    audit_fsync = true                             # group commit: one fsync per batch
    audit_sinks = ["file", "store"]                # + "stdout", "syslog" (best-effort copies)
    audit_checkpoint_records = 1000
    audit_checkpoint_seconds = 60
    [providers.hsm]
    kind = "pkcs11"
    ...
Environment: KMSB_CONFIG (path of the TOML), KMSB_DATA_DIR, KMSB_STORE_URL, KMSB_DEFAULT_PROVIDER,
KMSB_RSA_ENCRYPTION_PROVIDER,
KMSB_AUDIT_FILE, KMSB_AUDIT_FSYNC, KMSB_AUDIT_SINKS (comma-separated), KMSB_AUDIT_CHECKPOINT_RECORDS,
KMSB_AUDIT_CHECKPOINT_SECONDS, KMSB_AUDIT_BATCH_MS, KMSB_AUTH_CACHE_SECONDS, and KMSB_PROVIDERS_JSON (a JSON object of extra provider tables, e.g. the
output of `kms-broker stack env`).

Secrets never print: provider secrets (a cloud's `secret_access_key`, `access_key_secret`, `token`, …: see
`is_secret_field`) are held as `SecretStr`, so `repr(settings)`, dumps and logs show `**********`; the registry
hands a provider the plain values only when it builds its SDK client. Errors name the field and the problem, never
the value (pydantic's own messages would quote the whole input).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.auth.config import AuthSettings
from broker.console.config import ConsoleSettings

CONFIG_NAME = "broker.toml"


class SettingsError(ValueError):
    pass


_SECRET_NAMES = frozenset({"secret_access_key", "session_token", "access_key_secret", "token", "client_secret",
                           "password", "pin", "so_pin", "user_pin", "private_key", "api_key", "credentials_json"})
_SECRET_SUFFIXES = ("_secret", "_password", "_secret_key", "_token", "_api_key", "_private_key")


def is_secret_field(name: str) -> bool:
    """Whether a provider setting holds a secret (so it is kept as a SecretStr and never printed)."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def _provider_tables(value: Any) -> dict[str, dict[str, Any]]:
    """Provider tables: name -> {kind, …}; secret fields become SecretStr. Errors never quote a value."""
    if not isinstance(value, dict):
        raise ValueError("providers must be a table of provider tables")
    out: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValueError("a provider name is 1 to 64 characters")
        if not isinstance(table, dict):
            raise ValueError(f"provider {name!r} must be a table (e.g. [providers.{name}] with kind = ...)")
        if not isinstance(table.get("kind"), str) or not table["kind"]:
            raise ValueError(f"provider {name!r} needs kind = \"pkcs11\" | \"aws\" | \"azure\" | \"gcp\" | \"aliyun\"")
        clean: dict[str, Any] = {}
        for field, item in table.items():
            if not isinstance(field, str):
                raise ValueError(f"provider {name!r}: setting names are strings")
            if is_secret_field(field) and item is not None:
                if isinstance(item, SecretStr):
                    pass
                elif isinstance(item, str):
                    item = SecretStr(item)
                else:
                    raise ValueError(f"provider {name!r}: {field} must be a string")
            clean[field] = item
        out[name] = clean
    return out


def describe(exc: ValidationError, where: str = "settings") -> str:
    """A pydantic error as `where: field: problem` lines, without the offending input (which may hold secrets)."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return f"{where}: " + "; ".join(lines)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path("./var")
    store_url: str = ""
    default_provider: str = "hsm"
    # RSA encryption keys created without a provider go here when the default provider cannot decrypt
    # RSAES_OAEP_SHA_256 (what AWS clients default to; SoftHSM 2.6.1 cannot). None: they stay on the default.
    rsa_encryption_provider: str | None = None
    root_of_trust: str = "hsm"
    audit_file: Path | None = None
    audit_fsync: bool = True
    # Audit (broker/audit): a record is durable in the file (or, with no file sink, the store) before its request is
    # answered, else the request is refused (503). With both, the store's copy follows the file off the request path
    # within audit_mirror_seconds (and at every audit query). "stdout" and "syslog" are best-effort copies.
    # Checkpoints signed by the HSM every N records / T seconds. Records that arrive while a batch is being written
    # share the next batch's fsync (group commit); audit_batch_ms > 0 also makes a batch that follows a busy one wait
    # that long for more. 0 by default: under load the wait idles every caller of the batch (all of a worker's
    # threads, often), and batches fill anyway while the previous fsync runs (bench/http_bench.py --env
    # KMSB_AUDIT_BATCH_MS=1 to compare).
    audit_sinks: list[Literal["file", "store", "stdout", "syslog"]] = Field(default_factory=lambda: ["file", "store"])
    audit_checkpoint_records: int = Field(default=1000, ge=1, le=1_000_000)
    audit_checkpoint_seconds: float = Field(default=60.0, gt=0, le=86400)
    audit_batch_ms: float = Field(default=0.0, ge=0, le=100)
    audit_mirror_seconds: float = Field(default=0.25, gt=0, le=60)
    job_interval_seconds: int = Field(default=60, ge=1)
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # Key metadata (state, primary version) read by operations that change nothing may be this old (0: read on every
    # call). A DisableKey, deletion or rotation then reaches the other processes and hosts within it; the process
    # that made the change sees it at once, and operations that change state always read it fresh.
    key_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    auth: AuthSettings = Field(default_factory=AuthSettings)  # [auth] table: tokens, jwt roles, ldap (broker/auth/config.py)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)  # [console]: sessions, OIDC (broker/console/config.py)

    @field_validator("providers", mode="before")
    @classmethod
    def _providers(cls, value: Any) -> dict[str, dict[str, Any]]:
        return _provider_tables(value)

    def redact(self, text: str) -> str:
        """`text` with every provider secret (and the LDAP bind password) replaced by ********** (for messages
        built from exceptions a provider's SDK raised)."""
        secrets = [v.get_secret_value() for table in self.providers.values() for v in table.values()
                   if isinstance(v, SecretStr)]
        if self.auth.ldap is not None and self.auth.ldap.bind_password is not None:
            secrets.append(self.auth.ldap.bind_password.get_secret_value())
        for secret in sorted((x for x in secrets if x), key=len, reverse=True):
            text = text.replace(secret, "**********")
        return text

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
        raise SettingsError(describe(exc)) from None


def _env_overrides(raw: dict[str, Any]) -> dict[str, Any]:
    env = os.environ
    for key in ("data_dir", "store_url", "default_provider", "audit_file", "audit_fsync", "auth_cache_seconds",
                "key_cache_seconds", "rsa_encryption_provider"):
        value = env.get(f"KMSB_{key.upper()}")
        if value is not None:
            raw[key] = value
    for key in ("audit_checkpoint_records", "audit_checkpoint_seconds", "audit_batch_ms", "audit_mirror_seconds"):
        if env.get(f"KMSB_{key.upper()}") is not None:
            raw[key] = env[f"KMSB_{key.upper()}"]
    if env.get("KMSB_AUDIT_SINKS") is not None:
        raw["audit_sinks"] = [s.strip() for s in env["KMSB_AUDIT_SINKS"].split(",") if s.strip()]
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
        raise SettingsError(describe(exc, str(path))) from None


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
