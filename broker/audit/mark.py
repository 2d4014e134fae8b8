"""The high-water mark: the last signed checkpoint of a chain, kept where the data folder cannot reach (the HSM).

Signatures prove that a checkpoint is genuine, not that it is the *last* one: whoever can write the data folder and
the database can cut the file and the store copy back to an earlier checkpoint, or delete both, and the shorter chain
still verifies. So after each signed checkpoint is durable, the writer records `{seq, hash}` of it in the HSM (a
private token object, written only with the user PIN). `audit verify` asks the HSM and requires that checkpoint in
the chain: a chain cut before it, deleted, or re-forged (a different record at that seq) fails.

The mark only moves forward, and only from a chain that still holds the previous mark: a writer that finds the
pinned checkpoint missing (the chain was cut under it) leaves the mark where it is, so the evidence stays.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Mark:
    seq: int
    hash: str
    key_id: str | None = None
    time: str | None = None

    def dump(self, chain: str) -> bytes:
        return json.dumps({"v": 1, "chain": chain, "seq": self.seq, "hash": self.hash, "key_id": self.key_id,
                           "time": self.time}, sort_keys=True).encode()

    @classmethod
    def load(cls, raw: bytes, chain: str) -> Mark | None:
        """A stored mark, or None if it is not one for `chain` (unreadable values never count as a mark)."""
        try:
            data = json.loads(raw)
            if data.get("chain") != chain or not isinstance(data.get("seq"), int) \
                    or not isinstance(data.get("hash"), str):
                return None
            return cls(data["seq"], data["hash"], data.get("key_id"), data.get("time"))
        except (ValueError, AttributeError, TypeError):
            return None


class MarkStore(Protocol):
    """Where marks live; the root of trust implements it (`audit_marks`, `replace_audit_mark`)."""

    def read(self, chain: str) -> Mark | None: ...

    def write(self, chain: str, mark: Mark) -> None: ...


def mark_slot(chain: str) -> bytes:
    """The object id a chain's mark is stored under (chain names are long host:path strings)."""
    return hashlib.sha256(b"kms-broker audit mark\n" + chain.encode()).digest()[:16]


class RootMarks:
    """Marks kept by the root of trust: a provider with `audit_marks(slot)` and `replace_audit_mark(slot, value)`."""

    def __init__(self, root: Any) -> None:
        self._root = root

    def read(self, chain: str) -> Mark | None:
        values = self._root.audit_marks(mark_slot(chain))
        marks = [m for m in (Mark.load(v, chain) for v in values) if m is not None]
        return max(marks, key=lambda m: m.seq, default=None)  # a crash between create and delete leaves two

    def write(self, chain: str, mark: Mark) -> None:
        self._root.replace_audit_mark(mark_slot(chain), mark.dump(chain))

