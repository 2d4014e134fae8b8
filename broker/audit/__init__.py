"""Audit: one record per request, hash-chained, signed checkpoints, durable before the response.

Records never carry secrets: values that must be findable (encryption-context values, token accessors) are
HMAC-SHA-256'd with a key held in the HSM. See log.py (writer, group commit, fail closed), chain.py (hashes and
checkpoints), sinks.py (file, store, stdout, syslog), verify.py (`kms-broker audit verify`), query.py (the API).
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): the writer pulls in SQLAlchemy, which a process that only verifies or reads a
# chain (the CLI) does not need.
_HOMES = {"GENESIS": "chain", "record_hash": "chain", "PUBLIC_KEY_NAME": "chain", "AuditLog": "log",
          "Report": "verify", "verify_file": "verify", "verify_lines": "verify", "verify_path": "verify"}

__all__ = ["GENESIS", "PUBLIC_KEY_NAME", "AuditLog", "Report", "record_hash", "verify_file", "verify_lines",
           "verify_path"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"broker.audit.{_HOMES[name]}"), name)
