"""Audit: one record per request, hash-chained, signed checkpoints, durable before the response.

Records never carry secrets: values that must be findable (encryption-context values, token accessors) are
HMAC-SHA-256'd with a key held in the HSM. See log.py (writer, group commit, fail closed), chain.py (hashes and
checkpoints), sinks.py (file, store, stdout, syslog), verify.py (`kms-broker audit verify`), query.py (the API).
"""

from __future__ import annotations

from broker.audit.chain import GENESIS, record_hash
from broker.audit.log import PUBLIC_KEY_NAME, AuditLog
from broker.audit.verify import Report, verify_file, verify_lines, verify_path

__all__ = ["GENESIS", "PUBLIC_KEY_NAME", "AuditLog", "Report", "record_hash", "verify_file", "verify_lines",
           "verify_path"]
