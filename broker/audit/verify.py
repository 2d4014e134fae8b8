"""Verify an audit log: the chain, the signed checkpoints, and (with the store) the tail.

The verifier needs only the public half of the HSM's audit signing key. It stops at the FIRST problem and names its
position (line number in the file and the record's seq), saying what it looks like: edited, deleted, inserted,
reordered, a forged checkpoint, a missing checkpoint, or a truncated tail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from broker.audit.chain import GENESIS, key_fingerprint, record_hash, signature_valid, spki_of


@dataclass
class Report:
    records: int = 0          # records whose chain held (events + checkpoints)
    events: int = 0
    checkpoints: int = 0
    deferred: int = 0         # checkpoints written unsigned while the HSM was unavailable
    problem: str | None = None
    line: int | None = None   # 1-based line of the first problem
    seq: int | None = None
    notes: list[str] = field(default_factory=list)
    head: tuple[int, str] | None = None  # (seq, hash) of the last good record

    @property
    def ok(self) -> bool:
        return self.problem is None

    def fail(self, line: int | None, message: str, seq: int | None = None) -> Report:
        self.problem, self.line, self.seq = message, line, seq
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "events": self.events, "checkpoints": self.checkpoints,
                "deferred": self.deferred, "problem": self.problem, "line": self.line, "seq": self.seq, "notes": self.notes}


def _time(record: dict) -> float | None:
    try:
        return datetime.fromisoformat(record["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _where(line: int, record: dict | None) -> str:
    seq = record.get("seq") if isinstance(record, dict) else None
    return f"line {line}" + (f" (seq {seq})" if seq is not None else "")


def verify_lines(data: bytes, public_key: ec.EllipticCurvePublicKey | None = None, *,
                 expect_checkpoints: bool | None = None, every_records: int = 1000,
                 every_seconds: float = 60.0) -> Report:
    """Check the bytes of a JSON-lines audit log. `expect_checkpoints` defaults to: a public key was given."""
    report = Report()
    if expect_checkpoints is None:
        expect_checkpoints = public_key is not None
    key_id = key_fingerprint(spki_of(public_key)) if public_key is not None else None
    raw_lines = data.split(b"\n")
    cut_last = bool(data) and not data.endswith(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    records: list[dict | None] = []
    for raw in raw_lines:
        try:
            value = json.loads(raw)
            records.append(value if isinstance(value, dict) else None)
        except ValueError:
            records.append(None)
    by_hash = {r.get("hash"): i for i, r in enumerate(records) if r and isinstance(r.get("hash"), str)}
    seqs = {r.get("seq"): i for i, r in enumerate(records) if r and isinstance(r.get("seq"), int)}

    # A run of events is checked against the limits of the checkpoint that closes it (the writer's settings then);
    # the open run at the end against the last checkpoint's (or the given) limits.
    limits: list[tuple[int, float]] = [(every_records, every_seconds)] * len(records)
    current = (every_records, every_seconds)
    for i in range(len(records) - 1, -1, -1):
        r = records[i]
        if r and r.get("type") in ("checkpoint", "checkpoint-deferred"):
            current = (int(r.get("every_records") or every_records), float(r.get("every_seconds") or every_seconds))
        limits[i] = current
    last_cp = next((r for r in reversed(records) if r and r.get("type") in ("checkpoint", "checkpoint-deferred")),
                   None)
    if last_cp is not None:
        tail_limits = (int(last_cp.get("every_records") or every_records),
                       float(last_cp.get("every_seconds") or every_seconds))
        for i in range(len(records) - 1, -1, -1):
            if records[i] is last_cp:
                break
            limits[i] = tail_limits
    prev_hash, prev_seq = GENESIS, 0
    run_start: float | None = None   # time of the first event after the last checkpoint
    run_events = 0
    for i, record in enumerate(records):
        line = i + 1
        if record is None:
            if i == len(records) - 1 and cut_last:
                return report.fail(line, f"line {line}: the last record is cut off (truncated file)")
            return report.fail(line, f"line {line}: not a valid JSON record (edited)")
        body = {k: v for k, v in record.items() if k != "hash"}
        seq = record.get("seq", line)
        if record_hash(str(record.get("prev_hash")), body) != record.get("hash"):
            return report.fail(line, f"{_where(line, record)}: content does not match its hash (edited)", seq)
        if record.get("prev_hash") != prev_hash or seq != prev_seq + 1:
            return report.fail(*_classify(i, records, by_hash, seqs, prev_seq, prev_hash))
        if record.get("type") == "checkpoint-deferred":  # the signer was down: closes the run, proves nothing
            if record.get("head_hash") != prev_hash or record.get("count") != prev_seq:
                return report.fail(line, f"{_where(line, record)}: deferred checkpoint does not describe the records "
                                         "before it (forged)", seq)
            report.deferred += 1
            run_start, run_events = None, 0
        elif record.get("type") == "checkpoint":
            if record.get("head_hash") != prev_hash or record.get("count") != prev_seq:
                return report.fail(line, f"{_where(line, record)}: checkpoint does not describe the records before "
                                         "it (forged checkpoint)", seq)
            if public_key is None:
                if "no public key" not in " ".join(report.notes):
                    report.notes.append("no public key: checkpoint signatures were not checked")
            elif record.get("key_id") != key_id or not signature_valid(public_key, record):
                return report.fail(line, f"{_where(line, record)}: checkpoint signature is not valid for the audit "
                                         "signing key (forged checkpoint)", seq)
            report.checkpoints += 1
            run_start, run_events = None, 0
        else:
            if expect_checkpoints and "type" in record:
                max_records, max_seconds = limits[i]
                t = _time(record)
                if run_events >= max_records:
                    return report.fail(line, f"{_where(line, record)}: a checkpoint was due before this record (after "
                                             f"{max_records} records) and is missing (deleted)", seq)
                if run_events and run_start is not None and t is not None and t - run_start >= max_seconds:
                    return report.fail(line, f"{_where(line, record)}: a checkpoint was due before this record (the "
                                             f"run would span {max_seconds:g}s or more) and is missing (deleted)", seq)
                run_events += 1
                if run_start is None:
                    run_start = t
            report.events += 1
        prev_hash, prev_seq = record["hash"], seq
        report.records += 1
        report.head = (seq, prev_hash)
    if cut_last:
        return report.fail(len(records), f"line {len(records)}: the last record has no line end (truncated file)")
    if report.deferred:
        report.notes.append(f"{report.deferred} checkpoint(s) were deferred (unsigned) while the HSM was unavailable")
    if expect_checkpoints and run_events:
        # The writer closes a run only when the next event would overflow it: a tail shorter than the limits is
        # normal, so records cut off after the last checkpoint are found by comparing with the store (--data-dir).
        report.notes.append(f"{run_events} record(s) after the last checkpoint are covered by the chain only")
    return report


def _classify(i: int, records: list[dict | None], by_hash: dict, seqs: dict, prev_seq: int,
              prev_hash: str) -> tuple[int, str, int | None]:
    """Name what a chain break at records[i] looks like, and the first tampered line."""
    record = records[i]
    assert record is not None
    line, seq = i + 1, record.get("seq")
    expected = prev_seq + 1
    nxt = records[i + 1] if i + 1 < len(records) else None
    if isinstance(seq, int) and seq > expected and expected in seqs and seqs[expected] > i:
        return line, (f"{_where(line, record)}: records are out of order (seq {expected} comes later, at line "
                      f"{seqs[expected] + 1}) (reordered)"), seq
    # records[i] does not fit, but the next one links to the record before it: records[i] was inserted.
    if nxt is not None and nxt.get("prev_hash") == prev_hash:
        return line, f"{_where(line, record)}: record was inserted (the next record links past it)", seq
    linked_to = by_hash.get(record.get("prev_hash"))
    if linked_to == i - 2 and i >= 2:  # records[i] links to the one two back: records[i-1] was inserted
        before = records[i - 1]
        return i, f"{_where(i, before)}: record was inserted (the next record links past it)", \
            before.get("seq") if before else None
    if isinstance(seq, int) and seq > expected:
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        return line, f"line {line}: record {missing} before this line was deleted", expected
    if isinstance(seq, int) and seq < expected:
        if linked_to is not None and linked_to > i:
            return line, f"{_where(line, record)}: records are out of order (reordered)", seq
        return line, f"{_where(line, record)}: record repeats an earlier position (inserted or reordered)", seq
    return line, f"{_where(line, record)}: chain broken (previous record edited, deleted or reordered)", seq


def verify_path(path: Path, public_key: ec.EllipticCurvePublicKey | None = None, **kwargs: Any) -> Report:
    return verify_lines(Path(path).read_bytes(), public_key, **kwargs)


def verify_file(path: Path) -> tuple[int, str | None]:
    """Chain only (no signatures): (records checked, first problem or None). Kept for simple callers."""
    report = verify_lines(Path(path).read_bytes(), None, expect_checkpoints=False)
    return report.records, report.problem


def compare_with_store(report: Report, file_records: list[tuple[int, str]], store_rows: list[tuple[int, str]]
                       ) -> Report:
    """The store holds every record too: a file that ends early was truncated; a different hash was rewritten."""
    if not report.ok:
        return report
    file_map = dict(file_records)
    for seq, digest in store_rows:
        if seq not in file_map:
            last = file_records[-1][0] if file_records else 0
            return report.fail(len(file_records) + 1, (
                f"line {len(file_records) + 1}: the file ends at seq {last} but the store's audit head is seq "
                f"{store_rows[-1][0]}: records {last + 1}..{store_rows[-1][0]} were cut off (truncated tail)"),
                last + 1)
        if file_map[seq] != digest:
            line = next(n for n, (s, _) in enumerate(file_records, 1) if s == seq)
            return report.fail(line, f"line {line} (seq {seq}): the record differs from the store's copy (rewritten)",
                               seq)
    store_seqs = {s for s, _ in store_rows}
    first_stored = min(store_seqs, default=0)
    extra = [s for s, _ in file_records if s not in store_seqs and s >= first_stored]
    if extra and store_rows:
        line = next(n for n, (s, _) in enumerate(file_records, 1) if s == extra[0])
        return report.fail(line, f"line {line} (seq {extra[0]}): record is not in the store (inserted)", extra[0])
    report.notes.append(f"file and store agree up to seq {store_rows[-1][0] if store_rows else 0}")
    return report
