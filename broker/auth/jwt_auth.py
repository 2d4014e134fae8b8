"""JWT / OIDC login: verify a JWT against a role's keys (JWKS file, JWKS URL or PEM keys), then map claims.

Checks, in order: the header's algorithm is one the role allows (asymmetric only — `none` and HMAC can never pass,
so a public key can never be used as an HMAC secret); the signature; `exp` (required), `nbf`, `iat` with the role's
leeway; issuer and audience; bound claims (exact or glob). Every refusal is an `Unauthenticated` whose message says
which check failed and never contains the token or claim values.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient

from broker.auth import text
from broker.auth.config import JwtRole
from broker.errors import NotFound, Unauthenticated, ValidationError
from broker.store import Store
from broker.store.tables import JwtRoleRow

MAX_JWT = 16 * 1024
MAX_SUBJECT = 200
ROLE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class JwtIdentity:
    role: str
    subject: str
    policies: list[str]
    attributes: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"JwtIdentity(role={self.role!r}, subject={self.subject!r})"


def check_role_name(name: str) -> str:
    """Role names are one path segment of principal and resource names: no '/', no glob characters."""
    if not isinstance(name, str) or not name or len(name) > 128 or not set(name) <= ROLE_NAME_CHARS:
        raise ValidationError("role name: 1-128 characters of letters, digits, '-', '_', '.'")
    return name


def _values(claim: Any) -> list[str]:
    if isinstance(claim, list):
        return [str(v) for v in claim if isinstance(v, str | int | float | bool)]
    if isinstance(claim, str | int | float | bool):
        return [str(claim)]
    return []


def _match(pattern: str, value: str, glob: bool) -> bool:
    return fnmatch.fnmatchcase(value, pattern) if glob else value == pattern


def _claim(claims: dict, path: str) -> Any:
    """A claim by name, or a nested one by '/'-separated path (e.g. "realm_access/roles")."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.strip("/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class JwtAuth:
    """Roles from settings (read-only) and from the store (written through the API; these win on a name clash)."""

    def __init__(self, store: Store, settings_roles: dict[str, JwtRole]) -> None:
        self._store = store
        self._settings_roles = dict(settings_roles)
        self._jwk_clients: dict[str, PyJWKClient] = {}
        self._lock = threading.Lock()
        self._file_cache: dict[str, tuple[float, list[PyJWK]]] = {}

    def __repr__(self) -> str:
        return f"JwtAuth(roles={sorted(self._settings_roles)})"

    # ------------------------------------------------------------------------------------------- roles

    def role(self, name: str) -> JwtRole:
        with self._store.session() as s:
            row = s.get(JwtRoleRow, name)
            if row is not None:
                return JwtRole.model_validate(json.loads(row.config))
        if name in self._settings_roles:
            return self._settings_roles[name]
        raise NotFound("no such JWT role")

    def put_role(self, name: str, role: JwtRole) -> None:
        check_role_name(name)
        with self._store.session() as s:
            row = s.get(JwtRoleRow, name)
            config = role.model_dump_json()
            now = datetime.now(UTC)
            if row is None:
                s.add(JwtRoleRow(name=name, config=config, updated_at=now))
            else:
                row.config, row.updated_at = config, now

    def delete_role(self, name: str) -> None:
        with self._store.session() as s:
            row = s.get(JwtRoleRow, name)
            if row is None:
                raise NotFound("no such JWT role (roles from settings cannot be deleted through the API)")
            s.delete(row)

    # ------------------------------------------------------------------------------------------- keys

    def _file_keys(self, path: str) -> list[PyJWK]:
        p = Path(path)
        try:
            mtime = p.stat().st_mtime
            cached = self._file_cache.get(path)
            if cached and cached[0] == mtime:
                return cached[1]
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            raise Unauthenticated("jwt login refused: the role's JWKS file cannot be read") from None
        keys = []
        for jwk in data.get("keys", []) if isinstance(data, dict) else []:
            try:
                keys.append(PyJWK(jwk))
            except jwt.PyJWTError:
                continue  # unsupported key types in a JWKS are skipped, as OIDC clients do
        self._file_cache[path] = (mtime, keys)
        return keys

    def _signing_key(self, role: JwtRole, token: str, header: dict) -> Any:
        kid = header.get("kid")
        if role.public_keys:
            return None  # tried one by one in _decode
        if role.jwks_url:
            with self._lock:
                client = self._jwk_clients.get(role.jwks_url)
                if client is None:
                    client = self._jwk_clients[role.jwks_url] = PyJWKClient(role.jwks_url, cache_keys=True,
                                                                           lifespan=300, timeout=5)
            try:
                return client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError:
                raise Unauthenticated("jwt login refused: the role's JWKS URL cannot be fetched") from None
            except jwt.PyJWTError:
                raise Unauthenticated("jwt login refused: no key in the JWKS matches the token") from None
        keys = self._file_keys(role.jwks_file or "")
        if kid is not None:
            keys = [k for k in keys if k.key_id == kid]
        if not keys:
            raise Unauthenticated("jwt login refused: no key in the JWKS matches the token")
        return [k.key for k in keys]

    # ------------------------------------------------------------------------------------------- login

    def login(self, role_name: str, token: str) -> JwtIdentity:
        """Hostile input (not a string, not valid Unicode, oversize) is a ValidationError; every failed check of a
        well-formed request is an Unauthenticated naming the check."""
        role_name = text.text(role_name, "role", high=128)
        token = text.text(token, "jwt", high=MAX_JWT)
        try:
            role = self.role(role_name)
        except NotFound:
            raise Unauthenticated("jwt login refused: unknown role") from None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("jwt login refused: malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in role.allowed_algorithms:
            raise Unauthenticated("jwt login refused: algorithm not allowed for this role")
        claims = self._decode(role, token, header, alg)
        self._check_bound_claims(role, claims)
        subject = _values(_claim(claims, role.user_claim))
        if len(subject) != 1 or not subject[0] or len(subject[0]) > MAX_SUBJECT:
            # a long subject is refused, never cut: two subjects with one prefix would be one principal
            raise Unauthenticated(f"jwt login refused: user claim {role.user_claim!r} missing, not a single value "
                                  f"or longer than {MAX_SUBJECT} characters")
        policies = list(role.policies)
        for claim_name, mapping in role.claim_policies.items():
            for value in _values(_claim(claims, claim_name)):
                for pattern, mapped in mapping.items():
                    if fnmatch.fnmatchcase(value, pattern):
                        policies.extend(p for p in mapped if p not in policies)
        attributes: dict[str, str] = {}
        for claim_name, attr in role.claim_attributes.items():
            values = _values(_claim(claims, claim_name))
            if values:
                attributes[attr] = ",".join(values)[:512]
        attributes["role"] = role_name  # set last: a claim can never pose as another role
        return JwtIdentity(role_name, subject[0], policies, attributes)

    def _decode(self, role: JwtRole, token: str, header: dict, alg: str) -> dict:
        keys = role.public_keys if role.public_keys else self._signing_key(role, token, header)
        if not isinstance(keys, list):
            keys = [keys]
        options = {"require": ["exp"], "verify_aud": bool(role.bound_audiences)}
        last: Exception | None = None
        for key in keys:
            try:
                return jwt.decode(token, key, algorithms=[alg], audience=role.bound_audiences or None,
                                  issuer=role.bound_issuer, leeway=role.leeway, options=options)
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("jwt login refused: token expired") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("jwt login refused: token not yet valid") from None
            except jwt.InvalidAudienceError:
                raise Unauthenticated("jwt login refused: audience not accepted") from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated("jwt login refused: issuer not accepted") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(f"jwt login refused: required claim {exc.claim!r} missing") from None
            except jwt.InvalidKeyError:
                last = ValueError("key")
                continue
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                last = exc
                continue
        if isinstance(last, jwt.InvalidSignatureError):
            raise Unauthenticated("jwt login refused: signature does not verify")
        raise Unauthenticated("jwt login refused: token cannot be verified with the role's keys")

    @staticmethod
    def _check_bound_claims(role: JwtRole, claims: dict) -> None:
        glob = role.bound_claims_type == "glob"
        for name, expected in role.bound_claims.items():
            patterns = expected if isinstance(expected, list) else [expected]
            actual = _values(_claim(claims, name))
            if not any(_match(p, v, glob) for p in patterns for v in actual):
                raise Unauthenticated(f"jwt login refused: bound claim {name!r} does not match")
