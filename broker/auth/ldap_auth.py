"""LDAP login (ldap3): bind as the user, then read group membership and map groups to policies.

Two ways to find the user's DN: a template (`uid={username},ou=people,…`, the username escaped as an RDN value) or
search-then-bind (a service account searches `user_search_base` for `(user_attr=<escaped username>)`, exactly one
entry must match). Groups come from a search (`group_filter` with `{userdn}`/`{username}`, both filter-escaped) or
from the user's `memberOf` values. An empty password is refused before any network traffic: an LDAP "simple bind"
with a DN and no password is an *unauthenticated* bind that many servers accept as anonymous.
"""

from __future__ import annotations

import math
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import ldap3
from ldap3.core import exceptions as lx
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from broker.auth import text
from broker.auth.config import LdapSettings
from broker.errors import DependencyFailure, DependencyTimeout, Unauthenticated, ValidationError

MAX_USERNAME = 256
MAX_PASSWORD = 1024


@dataclass(frozen=True)
class LdapIdentity:
    username: str
    dn: str
    groups: list[str]
    policies: list[str]
    attributes: dict[str, str] = field(default_factory=dict)


def _refused() -> Unauthenticated:
    return Unauthenticated("ldap login refused: invalid username or password")


def _first_rdn_value(dn: str, attr: str) -> str | None:
    try:
        parts = parse_dn(dn, escape=False)
    except (lx.LDAPInvalidDnError, ValueError, IndexError):
        return None
    if parts and parts[0][0].lower() == attr.lower():
        return parts[0][1]
    return None


class LdapAuth:
    def __init__(self, cfg: LdapSettings) -> None:
        self._cfg = cfg
        tls = None
        if cfg.url.startswith("ldaps://") or cfg.starttls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if cfg.tls_verify else ssl.CERT_NONE,
                            ca_certs_file=cfg.ca_file, version=ssl.PROTOCOL_TLS_CLIENT)
        self._server = ldap3.Server(cfg.url, use_ssl=cfg.url.startswith("ldaps://"), tls=tls,
                                    connect_timeout=cfg.timeout, get_info=ldap3.NONE)

    def __repr__(self) -> str:
        return f"LdapAuth(url={self._cfg.url!r})"

    @property
    def token_ttl(self) -> str | int | None:
        """The TTL of the tokens an LDAP login hands out."""
        return self._cfg.token_ttl

    def _service_password(self) -> str:
        cfg = self._cfg
        if cfg.bind_password is not None:
            return cfg.bind_password.get_secret_value()
        if cfg.bind_password_file:
            return Path(cfg.bind_password_file).read_text().strip()
        if cfg.bind_password_env:
            return os.environ.get(cfg.bind_password_env, "")
        return ""

    def _connect(self, dn: str | None, password: str | None) -> ldap3.Connection:
        """A bound connection (StartTLS first when configured). Raises lx.LDAPBindError on bad credentials."""
        cfg = self._cfg
        conn = ldap3.Connection(self._server, user=dn, password=password, auto_bind=ldap3.AUTO_BIND_NONE,
                                receive_timeout=max(1, math.ceil(cfg.timeout)), raise_exceptions=False, read_only=True,
                                auto_referrals=False,  # never replay the user's password to a server a referral names
                                authentication=ldap3.SIMPLE if dn else ldap3.ANONYMOUS)
        try:
            conn.open()  # returns None; raises on failure
            if conn.closed:
                raise lx.LDAPSocketOpenError("open failed")
            if cfg.starttls and not conn.start_tls():
                raise lx.LDAPStartTLSError("StartTLS failed")
            if not conn.bind():
                raise lx.LDAPBindError("bind failed")
        except Exception:
            conn.unbind()
            raise
        return conn

    def login(self, username: str, password: str) -> LdapIdentity:
        username = text.text(username, "username", high=MAX_USERNAME)
        if not username.strip():
            raise ValidationError("username is required")
        password = text.text(password, "password", high=MAX_PASSWORD, low=0)
        if password == "":
            raise _refused()  # never attempt an unauthenticated (anonymous) bind
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username) or username != username.strip():
            raise _refused()  # LDAP matching ignores insignificant spaces: " alice" would be an alias of alice
        cfg = self._cfg
        try:
            user_dn, user_attrs = self._find_user(username)
            conn = self._connect(user_dn, password)
        except lx.LDAPBindError:
            raise _refused() from None
        except (lx.LDAPSocketOpenError, lx.LDAPSocketReceiveError, lx.LDAPStartTLSError,
                lx.LDAPCommunicationError, lx.LDAPSessionTerminatedByServerError, OSError) as exc:
            raise DependencyTimeout(f"ldap server unavailable ({type(exc).__name__})") from None
        except lx.LDAPException as exc:
            raise DependencyFailure(f"ldap error ({type(exc).__name__})") from None
        try:
            if user_attrs is None:
                user_attrs = self._read_user(conn, user_dn)
            groups = self._groups(conn, user_dn, username, user_attrs)
        except lx.LDAPException as exc:
            raise DependencyFailure(f"ldap error while reading groups ({type(exc).__name__})") from None
        finally:
            conn.unbind()
        policies = list(cfg.policies)
        lowered = {g.lower() for g in groups}
        for group, mapped in cfg.group_policies.items():
            if group.lower() in lowered:
                policies.extend(p for p in mapped if p not in policies)
        # The directory's own spelling (uid matching is case-insensitive: "ALICE" binds as alice).
        canonical = [str(v) for v in user_attrs.get(cfg.user_attr, [])]
        username = next((v for v in canonical if v.lower() == username.lower()), username)
        attributes: dict[str, str] = {}
        for ldap_attr, key in cfg.user_attributes.items():
            values = user_attrs.get(ldap_attr) or []
            if values:
                attributes[key] = ",".join(str(v) for v in values)[:512]
        attributes["username"] = username  # set last: a directory attribute never poses as another user
        return LdapIdentity(username, user_dn, sorted(groups), policies, attributes)

    def _find_user(self, username: str) -> tuple[str, dict | None]:
        cfg = self._cfg
        if cfg.userdn_template:
            return cfg.userdn_template.replace("{username}", escape_rdn(username)), None
        conn = self._connect(cfg.bind_dn, self._service_password()) if cfg.bind_dn else self._connect(None, None)
        try:
            flt = f"(&{cfg.user_filter}({cfg.user_attr}={escape_filter_chars(username)}))"
            conn.search(cfg.user_search_base, flt, search_scope=ldap3.SUBTREE,
                        attributes=[*cfg.user_attributes, cfg.user_attr, "memberOf"], size_limit=2)
            entries = list(conn.entries)
        finally:
            conn.unbind()
        if len(entries) != 1:
            raise lx.LDAPBindError("user not found or ambiguous")
        entry = entries[0]
        return entry.entry_dn, {a: list(entry[a].values) for a in entry.entry_attributes}

    def _read_user(self, conn: ldap3.Connection, user_dn: str) -> dict:
        wanted = [*self._cfg.user_attributes, self._cfg.user_attr, "memberOf"]
        if not conn.search(user_dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=wanted):
            return {}
        entry = conn.entries[0]
        return {a: list(entry[a].values) for a in entry.entry_attributes}

    def _groups(self, conn: ldap3.Connection, user_dn: str, username: str, user_attrs: dict) -> list[str]:
        cfg = self._cfg
        names: list[str] = []
        if cfg.use_member_of:
            for dn in user_attrs.get("memberOf", []):
                value = _first_rdn_value(str(dn), cfg.group_attr)
                if value:
                    names.append(value)
        if cfg.group_search_base:
            flt = (cfg.group_filter.replace("{userdn}", escape_filter_chars(user_dn))
                   .replace("{username}", escape_filter_chars(username)))
            conn.search(cfg.group_search_base, flt, search_scope=ldap3.SUBTREE, attributes=[cfg.group_attr])
            for entry in conn.entries:
                if cfg.group_attr in entry.entry_attributes:
                    names.extend(str(v) for v in entry[cfg.group_attr].values)
        return list(dict.fromkeys(names))
