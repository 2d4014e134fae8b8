"""Store access for the replication tables (multi-keys, replicas, sync journal): the only SQL of this package.

Keys themselves are KeyService's: this repository never reads or writes the key tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from broker.store import Store
from broker.store.tables import MultiKeyRow, ReplicaRow, SyncJournalRow


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

    # -- sync journal
    def journal_intent(self, manifest: str, entry: str, target: str, key_id: str, action: str) -> int:
        with self.store.session() as s:
            row = SyncJournalRow(manifest=manifest, entry=entry, target=target, key_id=key_id, action=action,
                                 state="intent", provider_ref="", created_at=now(), updated_at=now())
            s.add(row)
            s.flush()
            return row.id

    def journal_set(self, journal_id: int, state: str, provider_ref: dict | None = None) -> None:
        values: dict = {"state": state, "updated_at": now()}
        if provider_ref is not None:
            values["provider_ref"] = json.dumps(provider_ref)
        with self.store.session() as s:
            s.execute(update(SyncJournalRow).where(SyncJournalRow.id == journal_id).values(**values))

    def journal_open(self, manifest: str) -> list[JournalEntry]:
        with self.store.session() as s:
            rows = s.scalars(select(SyncJournalRow).where(SyncJournalRow.manifest == manifest,
                                                          SyncJournalRow.state.in_(("intent", "created")))
                             .order_by(SyncJournalRow.id))
            return [JournalEntry(r.id, r.manifest, r.entry, r.target, r.key_id, r.action, r.state,
                                 json.loads(r.provider_ref) if r.provider_ref else None) for r in rows]

    def journal_all(self, manifest: str) -> list[JournalEntry]:
        with self.store.session() as s:
            rows = s.scalars(select(SyncJournalRow).where(SyncJournalRow.manifest == manifest)
                             .order_by(SyncJournalRow.id))
            return [JournalEntry(r.id, r.manifest, r.entry, r.target, r.key_id, r.action, r.state,
                                 json.loads(r.provider_ref) if r.provider_ref else None) for r in rows]

    def journal_owned(self, manifest: str) -> set[str]:
        """The key ids this manifest's runs made or adopted (any journal entry names them): the proof of ownership
        a tag alone is not (anyone who may tag a key could tag it into a manifest's scope)."""
        with self.store.session() as s:
            return set(s.scalars(select(SyncJournalRow.key_id).where(SyncJournalRow.manifest == manifest,
                                                                     SyncJournalRow.state != "aborted")))
