"""Store access for the replication tables (multi-keys, replicas, sync journal): the only SQL of this package.

Keys themselves are KeyService's: this repository never reads or writes the key tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from broker.store import Store
from broker.store.tables import MultiKeyRow, ReplicaRow, SyncJournalRow

_JOURNAL = SyncJournalRow.__table__
# Prebuilt statements (executed with parameters): an apply writes three journal rows' worth per key
_JOURNAL_INSERT = insert(_JOURNAL)
_JOURNAL_SET = update(_JOURNAL).where(_JOURNAL.c.id == bindparam("jid")).values(
    state=bindparam("new_state"), updated_at=bindparam("at"))
_JOURNAL_SET_REF = _JOURNAL_SET.values(provider_ref=bindparam("ref"))


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MultiKey:
    multikey_id: str
    name: str
    description: str
    members: tuple[str, ...]
    quorum: int | None
    generation: int
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict:
        return {"MultiKeyId": self.multikey_id, "Name": self.name, "Description": self.description,
                "Members": list(self.members), "Quorum": self.quorum, "Generation": self.generation,
                "CreationDate": self.created_at.isoformat(), "UpdateDate": self.updated_at.isoformat()}


def _mk(row: MultiKeyRow) -> MultiKey:
    return MultiKey(row.multikey_id, row.name, row.description, tuple(json.loads(row.members)), row.quorum,
                    row.generation, row.created_at, row.updated_at)


@dataclass
class JournalEntry:
    id: int
    manifest: str
    entry: str
    target: str
    key_id: str
    action: str
    state: str
    provider_ref: dict | None


class ReplicationRepo:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- multi-keys
    def add_multikey(self, mk: MultiKey) -> bool:
        try:
            with self.store.session() as s:
                s.add(MultiKeyRow(multikey_id=mk.multikey_id, name=mk.name, description=mk.description,
                                  members=json.dumps(list(mk.members)), quorum=mk.quorum, generation=mk.generation,
                                  created_at=mk.created_at, updated_at=mk.updated_at))
            return True
        except IntegrityError:
            return False

    def get_multikey(self, ref: str) -> MultiKey | None:
        with self.store.session() as s:
            row = s.get(MultiKeyRow, ref) or s.scalars(select(MultiKeyRow).where(MultiKeyRow.name == ref)).first()
            return _mk(row) if row is not None else None

    def list_multikeys(self) -> list[MultiKey]:
        with self.store.session() as s:
            return [_mk(r) for r in s.scalars(select(MultiKeyRow).order_by(MultiKeyRow.name))]

    def update_multikey(self, multikey_id: str, expected_generation: int, *, members: list[str],
                        quorum: int | None) -> bool:
        """Compare-and-set on the generation: two concurrent membership changes cannot both win."""
        with self.store.session() as s:
            res = s.execute(update(MultiKeyRow).where(MultiKeyRow.multikey_id == multikey_id,
                                                      MultiKeyRow.generation == expected_generation)
                            .values(members=json.dumps(members), quorum=quorum, generation=expected_generation + 1,
                                    updated_at=now()))
            return res.rowcount == 1

    def delete_multikey(self, multikey_id: str) -> bool:
        with self.store.session() as s:
            row = s.get(MultiKeyRow, multikey_id)
            if row is None:
                return False
            s.delete(row)
            return True

    # -- replicas
    def add_replica(self, primary: str, target: str, replica: str) -> None:
        with self.store.session() as s:
            s.add(ReplicaRow(primary_key_id=primary, target=target, replica_key_id=replica, created_at=now()))

    def replicas(self, primary: str) -> dict[str, str]:
        with self.store.session() as s:
            rows = s.scalars(select(ReplicaRow).where(ReplicaRow.primary_key_id == primary))
            return {r.target: r.replica_key_id for r in rows}

    # -- sync journal (Core statements: an apply writes three journal rows' worth per key, and the ORM's unit of
    # work cost more than the statements themselves)
    def journal_intent(self, manifest: str, entry: str, target: str, key_id: str, action: str) -> int:
        at = now()
        with self.store.engine.begin() as conn:
            result = conn.execute(_JOURNAL_INSERT, {"manifest": manifest, "entry": entry, "target": target,
                                                    "key_id": key_id, "action": action, "state": "intent",
                                                    "provider_ref": "", "created_at": at, "updated_at": at})
            return int(result.inserted_primary_key[0])

    def journal_set(self, journal_id: int, state: str, provider_ref: dict | None = None) -> None:
        params: dict = {"jid": journal_id, "new_state": state, "at": now()}
        if provider_ref is not None:
            params["ref"] = json.dumps(provider_ref)
        with self.store.engine.begin() as conn:
            conn.execute(_JOURNAL_SET if provider_ref is None else _JOURNAL_SET_REF, params)

    def journal_done(self, journal_ids: list[int]) -> None:
        """Close many entries at once (their keys are registered)."""
        at = now()
        for i in range(0, len(journal_ids), 500):
            with self.store.engine.begin() as conn:
                conn.execute(update(_JOURNAL).where(_JOURNAL.c.id.in_(journal_ids[i:i + 500]))
                             .values(state="done", updated_at=at))

    def journal_open(self, manifest: str) -> list[JournalEntry]:
        return self._journal(select(_JOURNAL).where(_JOURNAL.c.manifest == manifest,
                                                    _JOURNAL.c.state.in_(("intent", "created"))))

    def journal_aborted(self, manifest: str) -> list[JournalEntry]:
        """Intents a resumed run settled as never finished: a cloud key labelled with one of their key ids is a
        stray, whenever it shows up (a create the killed run sent may land after the resume looked)."""
        return self._journal(select(_JOURNAL).where(_JOURNAL.c.manifest == manifest,
                                                    _JOURNAL.c.state == "aborted"))

    def journal_all(self, manifest: str) -> list[JournalEntry]:
        return self._journal(select(_JOURNAL).where(_JOURNAL.c.manifest == manifest))

    def _journal(self, query) -> list[JournalEntry]:  # noqa: ANN001 - a select of the journal table
        with self.store.engine.connect() as conn:
            return [JournalEntry(r.id, r.manifest, r.entry, r.target, r.key_id, r.action, r.state,
                                 json.loads(r.provider_ref) if r.provider_ref else None)
                    for r in conn.execute(query.order_by(_JOURNAL.c.id))]

    def journal_owned(self, manifest: str) -> set[str]:
        """The key ids this manifest's runs made or adopted (any journal entry names them): the proof of ownership
        a tag alone is not (anyone who may tag a key could tag it into a manifest's scope)."""
        with self.store.engine.connect() as conn:
            return set(conn.scalars(select(_JOURNAL.c.key_id).where(_JOURNAL.c.manifest == manifest,
                                                                    _JOURNAL.c.state != "aborted")))
