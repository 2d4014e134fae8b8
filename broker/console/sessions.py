"""The console's session store: which browser session stands for which broker token, server-side.

The cookie holds only a random session id; this store keys rows by its SHA-256, so a copy of the file cannot be
turned back into a cookie. A row keeps the broker token the session acts as *encrypted under a key derived from the
session id* (AES-256-GCM, HKDF-SHA256): only a request carrying the cookie can read it, so neither the file nor a
backup of it yields a usable token. Each request authenticates that token exactly as the API authenticates a token
header, so revoking or expiring it ends the session. A row also keeps the CSRF secret and the times that bound the
session (idle timeout, absolute lifetime, token expiry).

SQLite (stdlib, WAL) in the data folder, so every worker process of one host shares the sessions. Login flows that
span a redirect (OIDC state, nonce and PKCE verifier; the login form's CSRF value) live in `flows`, keyed the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FLOW_SECONDS = 600
_SCHEMA = """
create table if not exists sessions (
  id_hash text primary key, sealed_token blob not null, principal text not null, method text not null,
  csrf text not null, created real not null, seen real not null, expires real not null,
  revoke_on_logout integer not null, lang text not null default '', notice text not null default '');
create table if not exists flows (
  id_hash text primary key, kind text not null, data text not null, created real not null);
"""


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _key(sid: str) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=b"kmsb-console-session-token").derive(sid.encode()))


def _seal(sid: str, token: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + _key(sid).encrypt(nonce, token.encode(), _hash(sid).encode())


def _unseal(sid: str, sealed: bytes) -> str | None:
    try:
        return _key(sid).decrypt(sealed[:12], sealed[12:], _hash(sid).encode()).decode()
    except (InvalidTag, ValueError):
        return None


@dataclass
class Session:
    """One logged-in browser. `sid` is the cookie value (only known to the request that carries it)."""

    sid: str
    token: str = field(repr=False)
    principal: str
    method: str
    csrf: str
    created: float
    seen: float
    expires: float
    revoke_on_logout: bool
    lang: str = ""
    notice: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def csrf_ok(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(self.csrf, value or "")


def _wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch the file to WAL (kept in the file: a no-op once done). Workers booting together race for the switch
    on a new file; SQLite answers the loser 'database is locked' at once, without waiting its busy timeout (its
    shared lock could deadlock the winner's), so it is tried again."""
    for attempt in range(attempts):
        try:
            conn.execute("pragma journal_mode=wal")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01)


class SessionStore:
    def __init__(self, path: Path, *, idle_seconds: int, max_seconds: int) -> None:
        self.path = path
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.executescript(_SCHEMA)
        path.chmod(0o600)

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            _wal(conn)
            conn.execute("pragma busy_timeout=10000")
            self._local.conn = conn
        return conn

    # ------------------------------------------------------------------------------------------- sessions

    def create(self, *, token: str, principal: str, method: str, token_expires: float | None,
               revoke_on_logout: bool, lang: str = "", now: float | None = None) -> Session:
        """A brand-new session (a new id at every login: nothing a browser held before becomes logged in)."""
        now = time.time() if now is None else now
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + self.max_seconds
        if token_expires is not None:
            expires = min(expires, token_expires)
        with self._db() as db:
            db.execute("delete from sessions where expires < ? or seen < ?", (now, now - self.idle_seconds))
            db.execute("insert into sessions values (?,?,?,?,?,?,?,?,?,?,?)",
                       (_hash(sid), _seal(sid, token), principal, method, csrf, now, now, expires, int(revoke_on_logout),
                        lang, ""))
        return Session(sid, token, principal, method, csrf, now, now, expires, revoke_on_logout, lang)

    def get(self, sid: str | None, *, now: float | None = None) -> Session | None:
        """The live session for a cookie value, its idle clock restarted; None (and the row gone) if it ended."""
        if not sid or len(sid) > 128:
            return None
        now = time.time() if now is None else now
        row = self._db().execute("select * from sessions where id_hash = ?", (_hash(sid),)).fetchone()
        if row is None:
            return None
        token = _unseal(sid, row[1])
        if token is None:
            self.delete(sid)
            return None
        session = Session(sid, token, row[2], row[3], row[4], row[5], row[6], row[7], bool(row[8]), row[9], row[10])
        if now >= session.expires or now - session.seen >= self.idle_seconds:
            self.delete(sid)
            return None
        self._db().execute("update sessions set seen = ? where id_hash = ?", (now, _hash(sid)))
        session.seen = now
        return session

    def set(self, session: Session, **fields: str) -> None:
        """Change a session's language or its one-shot notice."""
        for name, value in fields.items():
            if name not in ("lang", "notice"):
                raise ValueError(name)
            self._db().execute(f"update sessions set {name} = ? where id_hash = ?", (value, _hash(session.sid)))
            setattr(session, name, value)

    def delete(self, sid: str) -> None:
        self._db().execute("delete from sessions where id_hash = ?", (_hash(sid),))

    # ------------------------------------------------------------------------------------------- login flows

    def start_flow(self, kind: str, data: dict[str, str], *, now: float | None = None) -> str:
        now = time.time() if now is None else now
        fid = secrets.token_urlsafe(32)
        with self._db() as db:
            db.execute("delete from flows where created < ?", (now - FLOW_SECONDS,))
            db.execute("insert into flows values (?,?,?,?)", (_hash(fid), kind, json.dumps(data), now))
        return fid

    def peek_flow(self, fid: str | None, kind: str, *, now: float | None = None) -> dict[str, str] | None:
        if not fid or len(fid) > 128:
            return None
        now = time.time() if now is None else now
        row = self._db().execute("select kind, data, created from flows where id_hash = ?", (_hash(fid),)).fetchone()
        if row is None or row[0] != kind or now - row[2] > FLOW_SECONDS:
            return None
        return json.loads(row[1])

    def take_flow(self, fid: str | None, kind: str, *, now: float | None = None) -> dict[str, str] | None:
        """A flow is used once: taking it removes it (a replayed callback finds nothing)."""
        data = self.peek_flow(fid, kind, now=now)
        if data is not None:
            self._db().execute("delete from flows where id_hash = ?", (_hash(fid or ""),))
        return data
