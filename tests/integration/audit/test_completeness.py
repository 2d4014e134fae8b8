"""What `audit verify` can prove about completeness, case by case, against an attacker who holds the data folder and
the database but not the HSM's PIN — and the documented limits (docs/audit.md): the uncovered window after the last
checkpoint, and an attacker who holds the PIN.

In process: the session's SoftHSM is the authority verify asks (key and high-water mark), as `--data-dir` does."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from broker.audit.chain import checkpoint_message, load_public_key, public_key_pem, seal_record
from broker.audit.mark import Mark, RootMarks
from broker.audit.sinks import chain_id, encode
from broker.audit.verify import Report, verify_sources
from broker.policy import PolicyEngine
from broker.service import KeyService
from broker.store import Store
from tests.integration.audit.conftest import CHECKPOINT_EVERY, make_audit


class Chain:
    """One broker's audit chain (file + store copy) and what an attacker with the folder and the database can do."""

    def __init__(self, data: Path, store: Store, provider) -> None:
        self.data, self.store, self.provider = data, store, provider
        self.path = data / "audit" / "audit.jsonl"
        self.root = provider.root_of_trust()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_bytes().splitlines()] if self.path.exists() else []

    def rows(self) -> list[tuple[int, str, str]]:
        with self.store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("select seq, hash, record from audit_events order by seq"))]

    def mark(self) -> Mark | None:
        return RootMarks(self.root).read(chain_id(self.path))

    def verify(self) -> Report:
        key = load_public_key(public_key_pem(self.root.audit_public_key()))  # the HSM's key, never the PEM file
        data = self.path.read_bytes() if self.path.exists() else b""
        return verify_sources(data, self.rows(), key, self.mark(), every_records=CHECKPOINT_EVERY,
                              every_seconds=3600.0)

    # ------------------------------------------------------------------------------------------ the attacker

    def replace(self, records: list[dict]) -> None:
        """Write `records` as both the file and the store copy (the attacker holds both)."""
        self.path.write_bytes(b"".join(encode(r) for r in records))
        with self.store.engine.begin() as conn:
            conn.execute(text("delete from audit_events"))
        if records:
            from broker.audit.sinks import row_of

            with self.store.engine.begin() as conn:
                from broker.store.tables import AuditEventRow

                conn.execute(AuditEventRow.__table__.insert(),
                             [row_of(r, encode(r), chain_id(self.path)) for r in records])
        (self.path.parent / "audit.jsonl.lock").unlink(missing_ok=True)

    def cut(self, keep: int) -> None:
        self.replace(self.records()[:keep])

    def delete(self) -> None:
        self.replace([])
        self.path.unlink()
        (self.path.parent / "audit-signing.pub.pem").unlink()


def rechain(records: list[dict]) -> list[dict]:
    out, prev = [], "0" * 64
    for seq, record in enumerate(records, 1):
        body = {k: v for k, v in record.items() if k not in ("hash", "prev_hash")}
        body["seq"] = seq
        out.append(seal_record(body, prev))
        prev = out[-1]["hash"]
    return out


@pytest.fixture
def chain(tmp_path: Path, hsm_provider, root_ctx):
    """CreateKey + 12 Encrypt (checkpoints every 5 events), then a clean shutdown (which covers the tail)."""
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    audit = make_audit(data, hsm_provider, store)
    svc = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    key = svc.create_key(root_ctx)["KeyId"]
    for i in range(12):
        svc.encrypt(root_ctx, key, b"%d" % i)
    audit.close(checkpoint=True)
    yield Chain(data, store, hsm_provider)
    store.dispose()


def kinds(report: Report) -> list[str]:
    return [p.kind for p in report.problems]


def test_a_clean_shutdown_covers_the_tail_and_pins_it_in_the_hsm(chain: Chain) -> None:
    records = chain.records()
    assert records[-1]["type"] == "checkpoint" and records[-1]["count"] == len(records) - 1
    assert chain.mark() == Mark(records[-1]["seq"], records[-1]["hash"], records[-1]["key_id"], records[-1]["time"])
    report = chain.verify()
    assert report.ok and not report.crash, report.problems
    assert any("holds the checkpoint the HSM pinned" in n for n in report.notes)


def test_a_tail_cut_from_both_file_and_store_is_detected(chain: Chain) -> None:
    records = chain.records()
    earlier = max(i for i, r in enumerate(records[:-1]) if r["type"] == "checkpoint")
    chain.cut(earlier + 1)  # back to an earlier checkpoint: a perfectly valid, shorter, signed chain
    report = chain.verify()
    assert kinds(report) == ["cut-tail"], report.problems
    assert f"HSM pinned checkpoint seq {records[-1]['seq']}" in report.problem


def test_a_deleted_chain_is_detected(chain: Chain) -> None:
    chain.delete()  # the file, every store row, the public key file
    report = chain.verify()
    assert kinds(report) == ["deleted-chain"] and "gone" in report.problem


def test_a_reforged_chain_is_detected_without_the_public_key_file(chain: Chain) -> None:
    """Without the signing key, a forger can rewrite history only as a chain without valid checkpoints: removing the
    PEM beside the log changes nothing, verify takes the key and the mark from the HSM."""
    forged = rechain([dict(r, principal="nobody") for r in chain.records() if r["type"] == "event"][:4])
    chain.replace(forged)
    (chain.path.parent / "audit-signing.pub.pem").unlink()
    report = chain.verify()
    assert "reforged" in kinds(report) or "cut-tail" in kinds(report), report.problems
    assert not report.ok


def test_a_reforged_chain_as_long_as_the_original_is_detected(chain: Chain) -> None:
    """Same length, the pinned seq present, every hash recomputed: the record at the pinned seq is not the HSM's."""
    original = chain.records()
    forged = rechain([dict(r, principal="nobody") if r["type"] == "event" else r for r in original])
    chain.replace(forged)
    report = chain.verify()
    assert "reforged" in kinds(report) and not report.ok
    assert any("forged checkpoint" in p.message for p in report.problems)  # and every checkpoint is reported


def test_a_cut_inside_the_uncovered_window_is_not_detected(chain: Chain, hsm_provider, root_ctx) -> None:
    """THE LIMIT: records after the last checkpoint (no clean shutdown since, no run full yet) can be cut from both
    file and store by whoever holds both. verify says how many records are in that window."""
    audit = make_audit(chain.data, hsm_provider, chain.store)
    svc = KeyService(chain.store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    svc.list_keys(root_ctx)
    svc.list_keys(root_ctx)
    audit.close()  # a crash, or still running: no checkpoint after them
    report = chain.verify()
    assert report.ok and any("2 record(s) after the last checkpoint" in n for n in report.notes)
    chain.cut(len(chain.records()) - 2)
    assert chain.verify().ok  # undetectable: documented in docs/audit.md


def test_the_writer_never_moves_the_mark_past_a_cut(chain: Chain, hsm_provider, root_ctx, caplog) -> None:
    """After a cut, a restarted broker writes on (availability), but it will not move the HSM's mark over the hole:
    the evidence stays until an operator with the PIN deals with it."""
    pinned = chain.mark()
    chain.cut(6)  # back to the first checkpoint
    audit = make_audit(chain.data, hsm_provider, chain.store)
    svc = KeyService(chain.store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    try:
        assert "does not hold the checkpoint the HSM pinned" in audit.reconcile()["mark"]
        for _ in range(3 * CHECKPOINT_EVERY):  # well past the pinned seq, with checkpoints
            svc.list_keys(root_ctx)
    finally:
        audit.close(checkpoint=True)
    assert chain.records()[-1]["seq"] > pinned.seq
    assert chain.mark() == pinned
    assert "reforged" in kinds(chain.verify())


def test_an_attacker_with_the_hsm_pin_is_not_detected(chain: Chain) -> None:
    """THE OTHER LIMIT: whoever can use the HSM (its PIN) can sign checkpoints and move the mark, so a rewritten
    chain verifies. Keep the PIN out of the data folder (docs/audit.md)."""
    root = chain.root
    key_id = next(r["key_id"] for r in chain.records() if r["type"] == "checkpoint")
    forged: list[dict] = []
    prev, events = "0" * 64, 0
    for record in [r for r in chain.records() if r["type"] == "event"]:
        if events and events % CHECKPOINT_EVERY == 0:
            cp = {"type": "checkpoint", "seq": len(forged) + 1, "count": len(forged), "head_hash": prev,
                  "time": record["time"], "every_records": CHECKPOINT_EVERY, "every_seconds": 3600.0,
                  "key_id": key_id}
            cp["signature"] = base64.b64encode(root.audit_sign(checkpoint_message(cp))).decode()
            forged.append(seal_record(cp, prev))
            prev = forged[-1]["hash"]
        body = {k: v for k, v in record.items() if k not in ("hash", "prev_hash")}
        body.update(seq=len(forged) + 1, principal="nobody")
        forged.append(seal_record(body, prev))
        prev, events = forged[-1]["hash"], events + 1
    last = [r for r in forged if r["type"] == "checkpoint"][-1]
    chain.replace(forged)
    RootMarks(root).write(chain_id(chain.path), Mark(last["seq"], last["hash"], last["key_id"], last["time"]))
    assert chain.verify().ok  # undetectable with the PIN: documented


def test_every_problem_is_reported_and_checking_goes_on(chain: Chain) -> None:
    lines = chain.path.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[2])
    edited["principal"] = "mallory"
    lines[2] = json.dumps(edited).encode() + b"\n"
    del lines[14]  # an event far after it
    chain.path.write_bytes(b"".join(lines))
    report = chain.verify()
    problems = [(p.line, p.message) for p in report.problems]
    assert problems[0][0] == 3 and "edited" in problems[0][1]
    assert any(line == 15 and "deleted" in message for line, message in problems), problems
    assert report.records == len(lines)  # every record after both breaks was still checked
