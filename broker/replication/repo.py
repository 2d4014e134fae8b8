"""Store access for the replication tables (multi-keys, replicas, sync journal)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from broker.model import Key
from broker.store import Store, _to_key
from broker.store.tables import AliasRow, KeyRow, MultiKeyRow, ReplicaRow, SyncJournalRow, TagRow


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

    # -- catalog (bulk reads for the sync)
    def keys_tagged(self, tag_key: str, value_prefix: str) -> list[Key]:
        """Every key with tag `tag_key` whose value starts with `value_prefix`, with tags and aliases, in 3 reads."""
        with self.store.session() as s:
            ids = list(s.scalars(select(TagRow.key_id).where(TagRow.tag_key == tag_key,
                                                             TagRow.tag_value.startswith(value_prefix,
                                                                                         autoescape=True))))
            if not ids:
                return []
            rows, tags, aliases = {}, {}, {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for row in s.scalars(select(KeyRow).where(KeyRow.key_id.in_(chunk))):
                    rows[row.key_id] = row
                for t in s.scalars(select(TagRow).where(TagRow.key_id.in_(chunk))):
                    tags.setdefault(t.key_id, {})[t.tag_key] = t.tag_value
                for a in s.scalars(select(AliasRow).where(AliasRow.key_id.in_(chunk)).order_by(AliasRow.name)):
                    aliases.setdefault(a.key_id, []).append(a.name)
            return [_to_key(rows[k], tags.get(k, {}), aliases.get(k, [])) for k in ids if k in rows]

    def known_key_ids(self, ids: list[str]) -> set[str]:
        out: set[str] = set()
        with self.store.session() as s:
            for i in range(0, len(ids), 500):
                out |= set(s.scalars(select(KeyRow.key_id).where(KeyRow.key_id.in_(ids[i:i + 500]))))
        return out

    def alias_targets(self, names: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self.store.session() as s:
            for i in range(0, len(names), 500):
                for a in s.scalars(select(AliasRow).where(AliasRow.name.in_(names[i:i + 500]))):
                    out[a.name] = a.key_id
        return out
