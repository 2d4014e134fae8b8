"""Verify an audit log: the chain, the signed checkpoints, the intents, the HSM's mark and (with the store) the tail.

The verifier reports EVERY problem it finds, each with its position (line in the file and the record's seq) and what
it looks like: edited, deleted, inserted, reordered, a forged checkpoint, a missing checkpoint, a cut tail, a deleted
or re-forged chain. After a break it re-synchronises on the records that follow, so one manipulation is reported
once and the records after it are still checked.

What a crash leaves is not tampering, and is reported apart (`crash`): a torn last line the store never had, records
the file holds and the store copy does not yet (not mirrored yet, or a crash), intents without an outcome. The next start
reconciles each of them (broker.audit.log), and the records it writes for that (`broker:ReconcileAudit`,
`interrupted` outcomes) are checked like any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from broker.audit.chain import GENESIS, key_fingerprint, record_hash, signature_valid, spki_of
from broker.audit.mark import Mark

MAX_PROBLEMS = 200
_CHECKPOINTS = ("checkpoint", "checkpoint-deferred")


@dataclass(frozen=True)
class Problem:
    """One finding that a crash does not explain."""

    message: str
    line: int | None = None
    seq: int | None = None
    kind: str = "tampered"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "seq": self.seq, "kind": self.kind, "message": self.message}


@dataclass
class Report:
    records: int = 0          # records whose chain held (events + checkpoints)
    events: int = 0
    checkpoints: int = 0
    deferred: int = 0         # checkpoints written unsigned while the HSM was unavailable
    intents: int = 0
    interrupted: int = 0      # intents closed by a reconciliation after their writer died
    problems: list[Problem] = field(default_factory=list)
    crash: list[str] = field(default_factory=list)   # what a crash explains (reconciled on the next start)
    notes: list[str] = field(default_factory=list)
    head: tuple[int, str] | None = None  # (seq, hash) of the last good record
    signed_seq: int | None = None        # seq of the last checkpoint whose signature was checked and held
    open_intents: list[int] = field(default_factory=list)
    torn_line: int | None = None         # a last line without its end (a crash, unless the store shows a cut)
    omitted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problem(self) -> str | None:
        return self.problems[0].message if self.problems else None

    @property
    def line(self) -> int | None:
        return self.problems[0].line if self.problems else None

    @property
    def seq(self) -> int | None:
        return self.problems[0].seq if self.problems else None

    def fail(self, line: int | None, message: str, seq: int | None = None, kind: str = "tampered") -> Report:
        if len(self.problems) >= MAX_PROBLEMS:
            self.omitted += 1
        else:
            self.problems.append(Problem(message, line, seq, kind))
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "events": self.events, "checkpoints": self.checkpoints,
                "deferred": self.deferred, "intents": self.intents, "interrupted": self.interrupted,
                "problem": self.problem, "line": self.line, "seq": self.seq,
                "problems": [p.as_dict() for p in self.problems], "omitted": self.omitted, "crash": self.crash,
                "open_intents": self.open_intents, "notes": self.notes,
                "head_seq": self.head[0] if self.head else None, "signed_seq": self.signed_seq}


def _time(record: dict) -> float | None:
    try:
        return datetime.fromisoformat(record["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _where(line: int, record: dict | None) -> str:
    seq = record.get("seq") if isinstance(record, dict) else None
    return f"line {line}" + (f" (seq {seq})" if seq is not None else "")


def parse_lines(data: bytes) -> tuple[list[dict | None], bool]:
    """The records of a JSON-lines log (None for a line that is not a JSON object), and whether the last line has
    no line end."""
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
    return records, cut_last


def verify_lines(data: bytes, public_key: ec.EllipticCurvePublicKey | None = None, *,
                 expect_checkpoints: bool | None = None, every_records: int = 1000,
                 every_seconds: float = 60.0, mark: Mark | None = None) -> Report:
    """Check the bytes of a JSON-lines audit log. `expect_checkpoints` defaults to: a public key was given. `mark`
    is the HSM's high-water mark: the chain must hold that signed checkpoint."""
    records, cut_last = parse_lines(data)
    return _Verifier(records, cut_last, public_key, expect_checkpoints, every_records, every_seconds, mark).run()


class _Verifier:
    def __init__(self, records: list[dict | None], cut_last: bool, public_key: ec.EllipticCurvePublicKey | None,
                 expect_checkpoints: bool | None, every_records: int, every_seconds: float,
                 mark: Mark | None) -> None:
        self.records = records
        self.cut_last = cut_last
        self.key = public_key
        self.key_id = key_fingerprint(spki_of(public_key)) if public_key is not None else None
        self.expect_checkpoints = public_key is not None if expect_checkpoints is None else expect_checkpoints
        self.mark = mark
        self.report = Report()
        self.by_hash = {r.get("hash"): i for i, r in enumerate(records) if r and isinstance(r.get("hash"), str)}
        self.seqs = {r.get("seq"): i for i, r in enumerate(records) if r and isinstance(r.get("seq"), int)}
        self.limits = self._limits(every_records, every_seconds)
        self.prev_hash, self.prev_seq = GENESIS, 0
        self.run_start: float | None = None   # time of the first event after the last checkpoint
        self.run_events = 0
        self.intents: dict[int, dict] = {}    # open intents by seq
        self.closed: dict[int, str] = {}      # intent seq -> outcome that closed it
        self.failed_lines: set[int] = set()

    def _limits(self, every_records: int, every_seconds: float) -> list[tuple[int, float]]:
        """A run of events is checked against the limits of the checkpoint that closes it (the writer's settings
        then); the open run at the end against the last checkpoint's (or the given) limits."""
        records = self.records
        limits: list[tuple[int, float]] = [(every_records, every_seconds)] * len(records)
        current = (every_records, every_seconds)
        last_cp = None
        for i in range(len(records) - 1, -1, -1):
            r = records[i]
            if r and r.get("type") in _CHECKPOINTS:
                current = (int(r.get("every_records") or every_records), float(r.get("every_seconds") or every_seconds))
                last_cp = i if last_cp is None else last_cp
            limits[i] = current
        if last_cp is not None:
            tail = limits[last_cp]
            for i in range(last_cp + 1, len(records)):
                limits[i] = tail
        return limits

    def fail(self, line: int, message: str, seq: int | None = None, kind: str = "tampered") -> None:
        if line in self.failed_lines:
            return  # one finding per line: the first says what happened there
        self.failed_lines.add(line)
        self.report.fail(line, message, seq, kind)

    # ------------------------------------------------------------------------------------------ the walk

    def run(self) -> Report:
        records, report = self.records, self.report
        i = 0
        while i < len(records):
            record, line = records[i], i + 1
            if record is None:
                if i == len(records) - 1 and self.cut_last:
                    report.torn_line = line
                    self.fail(line, f"line {line}: the last record is cut off (truncated file)", kind="torn")
                else:
                    self.fail(line, f"line {line}: not a valid JSON record (edited)")
                i += 1
                continue
            seq = record.get("seq", line)
            body = {k: v for k, v in record.items() if k != "hash"}
            if record_hash(str(record.get("prev_hash")), body) != record.get("hash"):
                self.fail(line, f"{_where(line, record)}: content does not match its hash (edited)", seq)
                self._accept(record, seq)  # the next record links to the hash it claims
                i += 1
                continue
            if record.get("prev_hash") != self.prev_hash or seq != self.prev_seq + 1:
                step = self._broken(i)
                if step is not None:
                    i = step
                    continue
            self._check(i, record, seq)
            self._accept(record, seq)
            i += 1
        self._finish()
        return report

    def _accept(self, record: dict, seq: Any) -> None:
        self.prev_hash = record.get("hash")
        self.prev_seq = seq if isinstance(seq, int) else self.prev_seq + 1
        self.report.records += 1
        self.report.head = (self.prev_seq, str(self.prev_hash))

    def _broken(self, i: int) -> int | None:
        """A chain break at records[i]: report what it looks like; return where to continue (None: check
        records[i] as the new link)."""
        records = self.records
        record = records[i]
        assert record is not None
        line, seq = i + 1, record.get("seq")
        expected, prev_hash = self.prev_seq + 1, self.prev_hash
        nxt = records[i + 1] if i + 1 < len(records) else None
        if isinstance(seq, int) and seq > expected and expected in self.seqs and self.seqs[expected] > i:
            j = self.seqs[expected]
            self.fail(line, f"{_where(line, record)}: records are out of order (seq {expected} comes later, at line "
                            f"{j + 1}) (reordered)", seq)
            block = [r for r in records[i:j + 1] if r is not None]
            block_seqs = sorted(r.get("seq") for r in block if isinstance(r.get("seq"), int))
            if block_seqs == list(range(expected, expected + len(block))):
                last = max(block, key=lambda r: r["seq"])
                for r in block:
                    self._count(r)
                self._accept(last, last["seq"])
                self.report.records += len(block) - 1
                return j + 1
            return None
        if nxt is not None and nxt.get("prev_hash") == prev_hash:  # the next one links past records[i]
            self.fail(line, f"{_where(line, record)}: record was inserted (the next record links past it)", seq)
            return i + 1
        linked_to = self.by_hash.get(record.get("prev_hash"))
        if linked_to == i - 2 and i >= 2:  # records[i] links to the one two back: records[i-1] was inserted
            before = records[i - 1]
            self.fail(i, f"{_where(i, before)}: record was inserted (the next record links past it)",
                      before.get("seq") if before else None)
            return None
        if isinstance(seq, int) and seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
            self.fail(line, f"line {line}: record {missing} before this line was deleted", expected)
            return None
        if isinstance(seq, int) and seq < expected:
            if linked_to is not None and linked_to > i:
                self.fail(line, f"{_where(line, record)}: records are out of order (reordered)", seq)
            else:
                self.fail(line, f"{_where(line, record)}: record repeats an earlier position (inserted or reordered)",
                          seq)
            return i + 1 if seq in self.seqs and self.seqs[seq] != i else None
        self.fail(line, f"{_where(line, record)}: chain broken (previous record edited, deleted or reordered)", seq)
        return None

    def _count(self, record: dict) -> None:
        kind = record.get("type")
        if kind == "checkpoint":
            self.report.checkpoints += 1
        elif kind == "checkpoint-deferred":
            self.report.deferred += 1
        else:
            self.report.events += 1

    def _check(self, i: int, record: dict, seq: Any) -> None:
        """What one linked record must satisfy: checkpoints describe and sign what precedes them, a checkpoint
        closes every run before it overflows, outcomes close intents that exist."""
        line, report = i + 1, self.report
        kind = record.get("type")
        if kind == "checkpoint-deferred":  # the signer was down: closes the run, proves nothing
            if record.get("head_hash") != self.prev_hash or record.get("count") != self.prev_seq:
                self.fail(line, f"{_where(line, record)}: deferred checkpoint does not describe the records before "
                                "it (forged)", seq)
            report.deferred += 1
            self.run_start, self.run_events = None, 0
        elif kind == "checkpoint":
            if record.get("head_hash") != self.prev_hash or record.get("count") != self.prev_seq:
                self.fail(line, f"{_where(line, record)}: checkpoint does not describe the records before it (forged "
                                "checkpoint)", seq)
            elif self.key is None:
                if not any("no public key" in n for n in report.notes):
                    report.notes.append("no public key: checkpoint signatures were not checked")
            elif record.get("key_id") != self.key_id or not signature_valid(self.key, record):
                self.fail(line, f"{_where(line, record)}: checkpoint signature is not valid for the audit signing "
                                "key (forged checkpoint)", seq)
            else:
                report.signed_seq = seq
            report.checkpoints += 1
            self.run_start, self.run_events = None, 0
        else:
            if self.expect_checkpoints and "type" in record:
                self._run_rule(line, record, seq)
            self._intent_rule(line, record, seq)
            report.events += 1

    def _run_rule(self, line: int, record: dict, seq: Any) -> None:
        max_records, max_seconds = self.limits[line - 1]
        t = _time(record)
        due = None
        if self.run_events >= max_records:
            due = f"after {max_records} records"
        elif self.run_events and self.run_start is not None and t is not None and t - self.run_start >= max_seconds:
            due = f"the run would span {max_seconds:g}s or more"
        if due is not None:
            self.fail(line, f"{_where(line, record)}: a checkpoint was due before this record ({due}) and is missing "
                            "(deleted)", seq)
            self.run_start, self.run_events = None, 0  # as if it were there: the next runs are checked on their own
        self.run_events += 1
        if self.run_start is None:
            self.run_start = t

    def _intent_rule(self, line: int, record: dict, seq: Any) -> None:
        if record.get("phase") == "intent":
            self.report.intents += 1
            if isinstance(seq, int):
                self.intents[seq] = record
            return
        named = record.get("intent_seq")
        if named is None:
            return
        intent = self.intents.pop(named, None) if isinstance(named, int) else None
        outcome = record.get("outcome")
        if outcome == "interrupted":
            self.report.interrupted += 1
        if intent is None:
            if named in self.closed:
                if self.closed[named] == "interrupted" and outcome != "interrupted":
                    self.report.notes.append(f"{_where(line, record)}: intent seq {named} was closed as interrupted, "
                                             "then by its own outcome (its writer's lease was removed while it ran)")
                    return
                self.fail(line, f"{_where(line, record)}: closes intent seq {named} a second time (inserted)", seq)
            else:
                self.fail(line, f"{_where(line, record)}: names intent seq {named}, which is no open intent (forged)",
                          seq)
            return
        self.closed[named] = str(outcome)
        if (intent.get("action"), intent.get("request_id")) != (record.get("action"), record.get("request_id")):
            self.fail(line, f"{_where(line, record)}: the outcome of intent seq {named} names another operation "
                            "(forged)", seq)

    # ------------------------------------------------------------------------------------------ the end

    def _finish(self) -> None:
        report = self.report
        if self.intents:
            report.open_intents = sorted(self.intents)
            report.crash.append(f"{len(self.intents)} intent(s) without an outcome (seq "
                                f"{_seq_list(report.open_intents)}): in flight, or interrupted by a crash (the next "
                                "start closes them as interrupted)")
        if report.interrupted:
            report.notes.append(f"{report.interrupted} operation(s) were interrupted by a crash; their effect may or "
                                "may not have happened")
        if report.deferred:
            report.notes.append(f"{report.deferred} checkpoint(s) were deferred (unsigned) while the HSM was "
                                "unavailable")
        if self.expect_checkpoints and self.run_events:
            # The writer closes a run when the next event would overflow it, when it idles and at a clean shutdown:
            # records after the last checkpoint are what a cut can take unseen (unless the store copy shows it).
            report.notes.append(f"{self.run_events} record(s) after the last checkpoint are covered by the chain only")
        if self.mark is not None:
            self._mark_rule(self.mark)

    def _mark_rule(self, mark: Mark) -> None:
        """The HSM pinned checkpoint `mark`: the chain must hold exactly that record."""
        records = self.records
        last = max((r["seq"] for r in records if r and isinstance(r.get("seq"), int)), default=0)
        index = self.seqs.get(mark.seq)
        if not any(records):
            self.report.fail(None, f"the audit chain is gone (deleted): the HSM pinned its checkpoint seq {mark.seq}",
                             mark.seq, "deleted-chain")
        elif index is None and last < mark.seq:
            self.report.fail(len(records) + 1, f"the log ends at seq {last} but the HSM pinned checkpoint seq "
                             f"{mark.seq}: records {last + 1}..{mark.seq} at least were cut off (truncated tail)",
                             last + 1, "cut-tail")
        elif index is None or records[index].get("hash") != mark.hash \
                or records[index].get("type") != "checkpoint":
            line = index + 1 if index is not None else None
            self.report.fail(line, f"the record at seq {mark.seq} is not the checkpoint the HSM pinned: the chain "
                             "was replaced (re-forged)", mark.seq, "reforged")
        else:
            self.report.notes.append(f"holds the checkpoint the HSM pinned (seq {mark.seq})")


def _seq_list(seqs: list[int], shown: int = 10) -> str:
    text = ", ".join(str(s) for s in seqs[:shown])
    return text + (f", … ({len(seqs) - shown} more)" if len(seqs) > shown else "")


def verify_path(path: Path, public_key: ec.EllipticCurvePublicKey | None = None, **kwargs: Any) -> Report:
    return verify_lines(Path(path).read_bytes(), public_key, **kwargs)


def verify_file(path: Path) -> tuple[int, str | None]:
    """Chain only (no signatures): (records checked, first problem or None). Kept for simple callers."""
    report = verify_lines(Path(path).read_bytes(), None, expect_checkpoints=False)
    return report.records, report.problem


def verify_sources(data: bytes | None, store_rows: list[tuple[int, str, str]] | None,
                   public_key: ec.EllipticCurvePublicKey | None, mark: Mark | None, *, every_records: int = 1000,
                   every_seconds: float = 60.0) -> Report:
    """Verify one chain from what the broker keeps of it: the file's bytes (None: no file sink) and the store's rows
    `(seq, hash, record JSON)` (None: no store sink), against the signing key and the HSM's mark."""
    every = {"every_records": every_records, "every_seconds": every_seconds}
    if data is None:
        data = b"".join(text.encode() + b"\n" for _, _, text in store_rows or [])
        return verify_lines(data, public_key, expect_checkpoints=public_key is not None, mark=mark, **every)
    report = verify_lines(data, public_key, expect_checkpoints=public_key is not None, mark=mark, **every)
    if store_rows is not None:
        check_store_rows(report, store_rows)
        records, _ = parse_lines(data)
        file_records = [(r["seq"], r["hash"]) for r in records
                        if r and isinstance(r.get("seq"), int) and isinstance(r.get("hash"), str)]
        compare_with_store(report, file_records, [(seq, digest) for seq, digest, _ in store_rows])
    return report


def check_store_rows(report: Report, rows: list[tuple[int, str, str]]) -> Report:
    """Each store row's JSON must still hash to its hash column (an edited row is as bad as an edited line)."""
    for seq, digest, text in rows:
        try:
            record = json.loads(text)
        except ValueError:
            report.fail(None, f"store row seq {seq}: not valid JSON (edited)", seq)
            continue
        body = {k: v for k, v in record.items() if k != "hash"}
        if record.get("hash") != digest or record_hash(str(record.get("prev_hash")), body) != digest:
            report.fail(None, f"store row seq {seq}: content does not match its hash (edited)", seq)
    return report


def compare_with_store(report: Report, file_records: list[tuple[int, str]], store_rows: list[tuple[int, str]]) -> Report:
    """The store copy holds every record too. Store records past the file's end: the file was cut. File records
    the store lacks: not copied yet if they are the file's tail and extend the store's chain (the mirror copies
    them; after a crash, the next start); deleted otherwise. A differing hash: rewritten."""
    file_map = dict(file_records)
    line_of = {s: n for n, (s, _) in enumerate(file_records, 1)}
    last_file = file_records[-1][0] if file_records else 0
    store_map = dict(store_rows)
    beyond = [s for s, _ in store_rows if s > last_file]
    if beyond:
        where = len(file_records) + 1
        report.fail(where, f"line {where}: the file ends at seq {last_file} but the store's audit head is seq "
                           f"{store_rows[-1][0]}: records {last_file + 1}..{store_rows[-1][0]} were cut off "
                           "(truncated tail)", last_file + 1, "cut-tail")
    elif report.torn_line is not None:
        # a torn last line the store never had: a crash in the middle of an append, never acknowledged
        report.problems = [p for p in report.problems if p.kind != "torn"]
        report.crash.append(f"line {report.torn_line}: a torn last write (a crash during an append; it was never "
                            "acknowledged; the next start cuts it)")
    rewritten = [s for s, digest in store_rows if s in file_map and file_map[s] != digest]
    for seq in rewritten[:20]:
        report.fail(line_of[seq], f"line {line_of[seq]} (seq {seq}): the record differs from the store's copy "
                                  "(rewritten)", seq, "rewritten")
    if len(rewritten) > 20:
        report.notes.append(f"{len(rewritten) - 20} more record(s) differ from the store's copy")
    first_stored = min(store_map, default=None)
    lacking = [s for s, _ in file_records if s not in store_map and (first_stored is None or s >= first_stored)]
    if lacking:
        tail = lacking == list(range(lacking[0], last_file + 1))
        linked = lacking[0] - 1 in store_map or lacking[0] == 1
        if tail and linked:
            report.crash.append(f"records seq {lacking[0]}..{lacking[-1]} are in the file but not yet in the store: "
                                "the mirror copies them (within a second; after a crash, at the next start)")
        elif not store_map:
            report.fail(None, "the store holds no copy of this chain (deleted)", None, "deleted-store")
        else:
            line = line_of[lacking[0]]
            report.fail(line, f"line {line} (seq {lacking[0]}): {len(lacking)} record(s) from here are not in the "
                              "store (deleted from the store, or inserted into the file)", lacking[0], "store-gap")
    if store_rows and not beyond and not rewritten:
        report.notes.append(f"file and store agree up to seq {store_rows[-1][0]}")
    if first_stored is not None and first_stored > 1:
        report.notes.append(f"the store copy starts at seq {first_stored} (the store sink was enabled later)")
    return report
