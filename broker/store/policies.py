"""Repository of policy documents, key policies and grants."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import bindparam, delete, select

from broker.store import Store, _utc
from broker.store.tables import GrantRow, KeyPolicyRow, PolicyRow

_GRANTS = GrantRow.__table__
_GRANTS_BY_KEY = select(_GRANTS).where(_GRANTS.c.key_id == bindparam("key_id"))
_KEY_POLICY = select(KeyPolicyRow.__table__).where(KeyPolicyRow.__table__.c.key_id == bindparam("key_id"))
_POLICY = select(PolicyRow.__table__).where(PolicyRow.__table__.c.name == bindparam("name"))


def _grant_dict(row) -> dict:
    return {"GrantId": row.grant_id, "KeyId": row.key_id, "Name": row.name, "GranteePrincipal": row.grantee,
            "RetiringPrincipal": row.retiring, "Operations": json.loads(row.operations),
            "Constraints": json.loads(row.constraints), "CreationDate": _utc(row.created_at).isoformat()}


class PolicyRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    # named identity policies
    def put_policy(self, name: str, document: dict, now: datetime) -> None:
        with self._store.session() as s:
            s.merge(PolicyRow(name=name, document=json.dumps(document), updated_at=now))

    def get_policy(self, name: str) -> dict | None:
        row = self._store.first(_POLICY, {"name": name})
        return json.loads(row.document) if row else None

    def list_policies(self) -> list[str]:
        with self._store.session() as s:
            return list(s.scalars(select(PolicyRow.name).order_by(PolicyRow.name)))

    def delete_policy(self, name: str) -> bool:
        with self._store.session() as s:
            return s.execute(delete(PolicyRow).where(PolicyRow.name == name)).rowcount > 0

    # key policies: the text exactly as written (GetKeyPolicy gives back the same bytes)
    def put_key_policy(self, key_id: str, text: str, now: datetime) -> None:
        with self._store.session() as s:
            s.merge(KeyPolicyRow(key_id=key_id, document=text, updated_at=now))

    def get_key_policy_text(self, key_id: str) -> str | None:
        row = self._store.first(_KEY_POLICY, {"key_id": key_id})
        return row.document if row else None

    def get_key_policy(self, key_id: str) -> dict | None:
        text = self.get_key_policy_text(key_id)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {"Statement": None}  # unreadable: the engine decides it as "deny everything" and logs it

    # grants
    def add_grant(self, row: GrantRow) -> None:
        with self._store.session() as s:
            s.add(row)

    def grants_for_key(self, key_id: str) -> list[dict]:
        with self._store.engine.connect() as conn:
            return [_grant_dict(r) for r in conn.execute(_GRANTS_BY_KEY, {"key_id": key_id})]

    def grants_retirable_by(self, principal: str) -> list[dict]:
        with self._store.session() as s:
            return [_grant_dict(r) for r in s.scalars(select(GrantRow).where(GrantRow.retiring == principal))]

    def find_grant(self, grant_id: str | None = None, token_hash: str | None = None) -> dict | None:
        with self._store.session() as s:
            q = select(GrantRow).where(GrantRow.grant_id == grant_id) if grant_id else \
                select(GrantRow).where(GrantRow.token_hash == token_hash)
            row = s.scalars(q).first()
            return _grant_dict(row) if row else None

    def delete_grant(self, grant_id: str) -> bool:
        with self._store.session() as s:
            return s.execute(delete(GrantRow).where(GrantRow.grant_id == grant_id)).rowcount > 0
