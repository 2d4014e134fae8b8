"""An audit log with the awkward values (non-ASCII, DEL, controls, floats json writes with an exponent, NaN,
infinities, ints beyond 64 bits, nested values) and signed checkpoints, for the byte-identity tests of
broker/canonical_json.py. `tests/unit/data/audit-json-encoder.jsonl` was written by this script with the writer of
commit c15a68f (json's encoder only), from that tree:

    PYTHONPATH=. python3.11 -m tests.support.audit_fixture tests/unit/data/audit-json-encoder.jsonl
"""

from __future__ import annotations

import hashlib
import hmac
import math
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.audit import AuditLog

SIGNING_KEY = ec.derive_private_key(0x5EED, ec.SECP256R1())  # a test key, fixed so the fixture's key id is too
PUBLIC_DER = SIGNING_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
FLOATS = [1.234, 0.0, 1e-05, 9.999e-05, 1e16, 123456789.125, math.nan, math.inf, -0.0, 5e-324]
TEXTS = ["plain", "zoë", "日本", "\x7f", "\x00\x1f\n\"\\/", "\U0001f600", "\u2028"]


def bodies(count: int = 24) -> Iterator[dict]:
    for i in range(count):
        yield {"time": f"2024-01-01T00:00:{i:02d}.000000+00:00", "request_id": f"r{i}",
               "principal": TEXTS[i % len(TEXTS)], "auth_method": "token", "source_ip": "127.0.0.1",
               "front_door": "native", "action": "kms:Encrypt", "key_id": "k1",
               "key_version": [1, 2**70, -(2**63) - 1][i % 3], "provider": "hsm",
               "encryption_context": {TEXTS[(i + 1) % len(TEXTS)]: "hmac-sha256:ab", "b": TEXTS[i % len(TEXTS)]},
               "outcome": "allowed", "error_code": None, "latency_ms": FLOATS[i % len(FLOATS)],
               "extra": [FLOATS[(i + 3) % len(FLOATS)], {"n": i, "t": (TEXTS[(i + 2) % len(TEXTS)],)}]}


def write_log(folder: Path) -> bytes:
    """The bytes of an audit file holding `bodies()` and a signed checkpoint after each (they are 1 s apart)."""
    log = AuditLog(folder / "audit.jsonl", lambda b: hmac.new(b"k", b, hashlib.sha256).digest(),
                   signer=lambda m: SIGNING_KEY.sign(m, ec.ECDSA(hashes.SHA256())), public_key=PUBLIC_DER,
                   checkpoint_records=4, checkpoint_seconds=0.25)
    for body in bodies():
        log.write(body)
    log.close(checkpoint=True)
    return (folder / "audit.jsonl").read_bytes()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        Path(sys.argv[1]).write_bytes(write_log(Path(folder)))
