"""Vault state and the Key Vault rules for keys: versions, attributes, soft-delete, backup, rotation, crypto.

Pure of HTTP: methods take decoded parameters and return plain dicts shaped like the REST bodies; errors are
`errors.KeyVaultError` subclasses. One lock guards the whole vault (an emulator values simplicity over throughput).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from emulator_state.snapshot import JsonDocument
from emulator_state.writebehind import WriteBehind

from . import algorithms as algs
from . import byok
from .errors import BadParameter, Conflict, Forbidden, KeyNotFound
from .jwk import CURVES, EC_TYPES, OCT_TYPES, RSA_TYPES, b64d, b64e, load_key, private_jwk, public_fields
from .rotation import default_policy, duration_seconds, validate_policy

NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export")
DEFAULT_OPS = {
    "RSA": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
    "EC": ["sign", "verify"],
    "oct": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
}
RSA_SIZES = (2048, 3072, 4096)
OCT_SIZES = (128, 192, 256)
RECOVERABLE_DAYS = 90
RECOVERY_LEVEL = "Recoverable+Purgeable"
BACKUP_MAGIC = b"AKVEMU1"
MAX_PAGE = 25


def _family(kty: str) -> str:
    return "RSA" if kty in RSA_TYPES else "EC" if kty in EC_TYPES else "oct"


@dataclass
class KeyVersion:
    """One version: its material (stored as JWK fields) and its own attributes, as Key Vault keeps them."""

    version: str
    kty: str
    material: dict[str, str] = field(repr=False)
    key_ops: list[str]
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    created: int = 0
    updated: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    exportable: bool = False


@dataclass
class Key:
    name: str
    versions: list[KeyVersion] = field(default_factory=list)
    rotation_policy: dict[str, Any] | None = None
    deleted: dict[str, int] | None = None  # deletedDate / scheduledPurgeDate while soft-deleted

    @property
    def latest(self) -> KeyVersion:
        return self.versions[-1]


def _now() -> int:
    return int(time.time())


class Vault:
    """All keys of one emulated vault."""

    def __init__(self, vault_url: str, state_file: str | None = None) -> None:
        self.vault_url = vault_url.rstrip("/")
        self.state_file = state_file
        self._lock = threading.RLock()
        self._keys: dict[str, Key] = {}
        self._backup_key = AESGCM.generate_key(256)
        self._cache: dict[tuple[str, str], Any] = {}
        if state_file and os.path.exists(state_file):
            self._load(state_file)
        self._doc: JsonDocument | None = None
        self._writer: WriteBehind | None = None
        if state_file:
            self._doc = JsonDocument(state_file, {"keys": "list"})
            self._doc.mark_all("keys", self._keys)
            self._writer = WriteBehind(self._write)

    # ------------------------------------------------------------------ persistence
    def _load(self, path: str) -> None:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        self._backup_key = b64d(data["backup_key"], "backup_key")
        for raw in data["keys"]:
            versions = [KeyVersion(**v) for v in raw.pop("versions")]
            self._keys[raw["name"]] = Key(versions=versions, **{k: v for k, v in raw.items() if k != "name"},
                                          name=raw["name"])

    def _save(self, name: str) -> None:
        """Called under the lock after every change of key `name`: the writer thread saves soon after
        (writebehind.py), rendering only the keys changed since its last save."""
        if self._doc is not None and self._writer is not None:
            self._doc.mark("keys", name)
            self._writer.changed()

    def flush(self) -> None:
        """Save pending changes now (shutdown)."""
        if self._writer is not None:
            self._writer.flush()

    def _render(self, table: str, name: str) -> str | None:
        key = self._keys.get(name)
        return None if key is None else json.dumps(asdict(key))

    def _write(self) -> None:
        """Temp file + rename (mode 0600: private keys in clear), written outside the lock."""
        assert self._doc is not None
        self._doc.save(self._lock, self._render, lambda: {"backup_key": b64e(self._backup_key)})

    # ------------------------------------------------------------------ lookups
    def _kid(self, name: str, version: str | None = None) -> str:
        return f"{self.vault_url}/keys/{name}" + (f"/{version}" if version else "")

    def _live(self, name: str) -> Key:
        key = self._keys.get(name)
        if key is None or key.deleted is not None:
            raise KeyNotFound(f"A key with (name/id) {name} was not found in this key vault. If you recently "
                              "deleted this key you may be able to recover it using the correct recovery command.")
        return key

    def _deleted(self, name: str) -> Key:
        key = self._keys.get(name)
        if key is None or key.deleted is None:
            raise KeyNotFound(f"Deleted Key not found: {name}")
        return key

    def _version(self, name: str, version: str | None) -> KeyVersion:
        key = self._live(name)
        if not version:
            return key.latest
        for v in key.versions:
            if v.version == version:
                return v
        raise KeyNotFound(f"A key with (name/id) {name}/{version} was not found in this key vault.")

    def _key_object(self, name: str, kv: KeyVersion) -> Any:
        cached = self._cache.get((name, kv.version))
        if cached is None:
            cached = self._cache[(name, kv.version)] = load_key(kv.kty, kv.material)
        return cached

    # ------------------------------------------------------------------ rendering
    def _attributes(self, kv: KeyVersion) -> dict[str, Any]:
        attrs: dict[str, Any] = {"enabled": kv.enabled, "created": kv.created, "updated": kv.updated,
                                 "recoveryLevel": RECOVERY_LEVEL, "recoverableDays": RECOVERABLE_DAYS}
        if kv.nbf is not None:
            attrs["nbf"] = kv.nbf
        if kv.exp is not None:
            attrs["exp"] = kv.exp
        if kv.exportable:
            attrs["exportable"] = True
        return attrs

    def bundle(self, name: str, kv: KeyVersion, *, with_key_ops: bool = True) -> dict[str, Any]:
        jwk: dict[str, Any] = {"kid": self._kid(name, kv.version), "kty": kv.kty}
        if with_key_ops:
            jwk["key_ops"] = list(kv.key_ops)
        jwk.update(public_fields(kv.kty, kv.material))
        out: dict[str, Any] = {"key": jwk, "attributes": self._attributes(kv)}
        if kv.tags:
            out["tags"] = dict(kv.tags)
        return out

    def _deleted_fields(self, key: Key) -> dict[str, Any]:
        assert key.deleted is not None
        return {"recoveryId": f"{self.vault_url}/deletedkeys/{key.name}", **key.deleted}

    def _item(self, name: str, kv: KeyVersion, with_version: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"kid": self._kid(name, kv.version if with_version else None),
                                "attributes": self._attributes(kv)}
        if kv.tags:
            item["tags"] = dict(kv.tags)
        return item

    # ------------------------------------------------------------------ validation helpers
    @staticmethod
    def _check_name(name: str) -> None:
        if not NAME_RE.match(name or ""):
            raise BadParameter(f"The key name '{name}' is invalid: use 1-127 letters, digits and dashes.")

    @staticmethod
    def _check_ops(ops: Any) -> list[str]:
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise BadParameter("Property 'key_ops' must be an array of strings.")
        bad = [o for o in ops if o not in KEY_OPS]
        if bad:
            raise BadParameter(f"Invalid key operation(s): {', '.join(bad)}.")
        return list(dict.fromkeys(ops))

    @staticmethod
    def _check_tags(tags: Any) -> dict[str, str]:
        if tags is None:
            return {}
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise BadParameter("Property 'tags' must be an object of strings.")
        if len(tags) > 15:
            raise BadParameter("A key may have at most 15 tags.")
        return dict(tags)

    @staticmethod
    def _apply_attributes(kv: KeyVersion, attrs: Any) -> None:
        if attrs is None:
            return
        if not isinstance(attrs, dict):
            raise BadParameter("Property 'attributes' must be an object.")
        if "enabled" in attrs and attrs["enabled"] is not None:
            if not isinstance(attrs["enabled"], bool):
                raise BadParameter("Property 'attributes.enabled' must be a boolean.")
            kv.enabled = attrs["enabled"]
        for f in ("nbf", "exp"):
            if f in attrs:
                value = attrs[f]
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise BadParameter(f"Property 'attributes.{f}' must be a Unix time in seconds.")
                setattr(kv, f, value)
        if kv.nbf is not None and kv.exp is not None and kv.nbf > kv.exp:
            raise BadParameter("The 'nbf' attribute must not be later than 'exp'.")
        if attrs.get("exportable"):
            kv.exportable = True

    def _refuse_if_deleted(self, name: str) -> None:
        key = self._keys.get(name)
        if key is not None and key.deleted is not None:
            raise Conflict(f"Key {name} is currently in a deleted but recoverable state, and its name cannot be "
                           "reused; in this state, the key can only be recovered or purged.",
                           inner_code="ObjectIsDeletedButRecoverable")

    def _add_version(self, name: str, kty: str, material: dict[str, str], ops: list[str], attrs: Any,
                     tags: dict[str, str]) -> KeyVersion:
        now = _now()
        kv = KeyVersion(uuid.uuid4().hex, kty, material, ops, created=now, updated=now, tags=tags)
        self._apply_attributes(kv, attrs)
        self._keys.setdefault(name, Key(name)).versions.append(kv)
        return kv

    # ------------------------------------------------------------------ key management
    def create_key(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check_name(name)
        kty = body.get("kty")
        material = self._generate(kty, body)
        ops = self._check_ops(body["key_ops"]) if body.get("key_ops") is not None else DEFAULT_OPS[_family(kty)]
        tags = self._check_tags(body.get("tags"))
        with self._lock:
            self._refuse_if_deleted(name)
            kv = self._add_version(name, kty, material, ops, body.get("attributes"), tags)
            self._save(name)
            return self.bundle(name, kv)

    @staticmethod
    def _generate(kty: Any, body: dict[str, Any]) -> dict[str, str]:
        size = body.get("key_size")
        if kty in RSA_TYPES:
            size = size or 2048
            if size not in RSA_SIZES:
                raise BadParameter(f"Invalid key size {size} for RSA: use 2048, 3072 or 4096.")
            exponent = body.get("public_exponent") or 65537
            if exponent not in (3, 65537):
                raise BadParameter("Invalid public exponent: use 65537.")
            return private_jwk(rsa.generate_private_key(exponent, size))
        if kty in EC_TYPES:
            crv = body.get("crv") or "P-256"
            if crv not in CURVES:
                raise BadParameter(f"Invalid curve '{crv}': use P-256, P-384, P-521 or P-256K.")
            return private_jwk(ec.generate_private_key(CURVES[crv]()))
        if kty == "oct-HSM":
            size = size or 256
            if size not in OCT_SIZES:
                raise BadParameter(f"Invalid key size {size} for oct-HSM: use 128, 192 or 256.")
            return private_jwk(os.urandom(size // 8))
        raise BadParameter(f"Invalid or unsupported key type '{kty}': use RSA, RSA-HSM, EC, EC-HSM or oct-HSM.")

    def import_key(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check_name(name)
        jwk = body.get("key")
        if not isinstance(jwk, dict):
            raise BadParameter("Property 'key' (a JSON Web Key) is required.")
        kty = jwk.get("kty")
        if kty in ("RSA", "RSA-HSM", "EC", "EC-HSM"):
            kty = kty.split("-")[0] + ("-HSM" if body.get("Hsm") or kty.endswith("-HSM") else "")
        elif kty in OCT_TYPES:
            kty = "oct-HSM"
        else:
            raise BadParameter(f"Invalid or unsupported key type '{kty}'.")
        if jwk.get("key_hsm"):
            kty = kty if kty.endswith("HSM") else kty + "-HSM"
            material = self._unwrap_transfer_blob(jwk["key_hsm"], kty)
        else:
            material = private_jwk(load_key(kty, jwk))
        if kty == "oct-HSM" and len(b64d(material["k"])) * 8 not in OCT_SIZES:
            raise BadParameter("An oct-HSM key must be 128, 192 or 256 bits.")
        ops = self._check_ops(jwk["key_ops"]) if jwk.get("key_ops") else DEFAULT_OPS[_family(kty)]
        tags = self._check_tags(body.get("tags"))
        with self._lock:
            self._refuse_if_deleted(name)
            kv = self._add_version(name, kty, material, ops, body.get("attributes"), tags)
            self._save(name)
            return self.bundle(name, kv)

    def _unwrap_transfer_blob(self, blob: Any, kty: str) -> dict[str, str]:
        """BYOK: the blob names an import-only KEK in this vault; its private key opens the blob."""
        kid, scheme, ciphertext = byok.parse(blob)
        prefix = f"{self.vault_url}/keys/"
        if not kid.startswith(prefix):
            raise BadParameter("The key exchange key must be a key of this vault.")
        kek_name, _, kek_version = kid[len(prefix):].partition("/")
        with self._lock:
            kek = self._version(kek_name, kek_version or None)
            if "import" not in kek.key_ops:
                raise BadParameter("The key exchange key must be created with key_ops ['import'].")
            kek_key = self._key_object(kek_name, kek)
        return byok.unwrap(kek_key, scheme, ciphertext, kty)

    def get_key(self, name: str, version: str | None, *, with_key_ops: bool = True) -> dict[str, Any]:
        with self._lock:
            return self.bundle(name, self._version(name, version), with_key_ops=with_key_ops)

    def update_key(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            kv = self._version(name, version)
            ops = self._check_ops(body["key_ops"]) if body.get("key_ops") is not None else kv.key_ops
            tags = self._check_tags(body["tags"]) if body.get("tags") is not None else kv.tags
            saved = (kv.enabled, kv.nbf, kv.exp, kv.exportable)
            try:
                self._apply_attributes(kv, body.get("attributes"))
            except BadParameter:
                kv.enabled, kv.nbf, kv.exp, kv.exportable = saved
                raise
            kv.key_ops, kv.tags, kv.updated = ops, tags, _now()
            self._save(name)
            return self.bundle(name, kv)

    @staticmethod
    def _page(items: list[Any], skip: int, top: int | None, next_url: str,
              render: Callable[[Any], dict[str, Any]] = lambda item: item) -> dict[str, Any]:
        """One page of `items`; only the page is rendered (a listing of n keys is n/25 pages: rendering every key
        for each page made it quadratic)."""
        top = MAX_PAGE if top is None else top
        if not 1 <= top <= MAX_PAGE:
            raise BadParameter(f"Invalid maxresults {top}: must be between 1 and {MAX_PAGE}.")
        page = [render(item) for item in items[skip:skip + top]]
        more = skip + top < len(items)
        return {"value": page,
                "nextLink": f"{next_url}&$skiptoken={b64e(str(skip + top).encode())}&maxresults={top}" if more else None}

    @staticmethod
    def parse_skiptoken(token: str | None) -> int:
        if not token:
            return 0
        try:
            value = int(b64d(token, "$skiptoken").decode())
        except (ValueError, UnicodeDecodeError):
            raise BadParameter("Invalid $skiptoken.") from None
        if value < 0:
            raise BadParameter("Invalid $skiptoken.")
        return value

    def list_keys(self, skip: int, top: int | None, api_version: str) -> dict[str, Any]:
        with self._lock:
            names = sorted(name for name, k in self._keys.items() if k.deleted is None)
            return self._page(names, skip, top, f"{self.vault_url}/keys?api-version={api_version}",
                              lambda name: self._item(name, self._keys[name].latest, False))

    def list_versions(self, name: str, skip: int, top: int | None, api_version: str) -> dict[str, Any]:
        with self._lock:
            key = self._live(name)
            items = [self._item(name, v, True) for v in key.versions]
        return self._page(items, skip, top, f"{self.vault_url}/keys/{name}/versions?api-version={api_version}")

    # ------------------------------------------------------------------ soft-delete
    def delete_key(self, name: str) -> dict[str, Any]:
        with self._lock:
            key = self._live(name)
            now = _now()
            key.deleted = {"deletedDate": now, "scheduledPurgeDate": now + RECOVERABLE_DAYS * 86400}
            self._save(name)
            return {**self.bundle(name, key.latest), **self._deleted_fields(key)}

    def get_deleted_key(self, name: str) -> dict[str, Any]:
        with self._lock:
            key = self._deleted(name)
            return {**self.bundle(name, key.latest), **self._deleted_fields(key)}

    def list_deleted_keys(self, skip: int, top: int | None, api_version: str) -> dict[str, Any]:
        with self._lock:
            names = sorted(name for name, k in self._keys.items() if k.deleted is not None)
            return self._page(names, skip, top, f"{self.vault_url}/deletedkeys?api-version={api_version}",
                              lambda name: {**self._item(name, self._keys[name].latest, False),
                                            **self._deleted_fields(self._keys[name])})

    def recover_key(self, name: str) -> dict[str, Any]:
        with self._lock:
            key = self._deleted(name)
            key.deleted = None
            self._save(name)
            return self.bundle(name, key.latest)

    def purge_key(self, name: str) -> None:
        with self._lock:
            key = self._deleted(name)
            del self._keys[name]
            for v in key.versions:
                self._cache.pop((name, v.version), None)
            self._save(name)

    # ------------------------------------------------------------------ backup / restore
    def backup_key(self, name: str) -> dict[str, str]:
        """An opaque blob (AES-GCM under a per-vault key) that only this vault's state can restore."""
        with self._lock:
            key = self._live(name)
            plain = json.dumps(asdict(key)).encode()
            nonce = os.urandom(12)
            blob = BACKUP_MAGIC + nonce + AESGCM(self._backup_key).encrypt(nonce, plain, BACKUP_MAGIC)
            return {"value": b64e(blob)}

    def restore_key(self, body: dict[str, Any]) -> dict[str, Any]:
        blob = b64d(body.get("value"), "value")
        if not blob.startswith(BACKUP_MAGIC) or len(blob) < len(BACKUP_MAGIC) + 28:
            raise BadParameter("Backup blob contains invalid or corrupt version.")
        nonce, sealed = blob[len(BACKUP_MAGIC):len(BACKUP_MAGIC) + 12], blob[len(BACKUP_MAGIC) + 12:]
        try:
            raw = json.loads(AESGCM(self._backup_key).decrypt(nonce, sealed, BACKUP_MAGIC))
        except Exception:  # noqa: BLE001 - any failure means the blob is not ours
            raise BadParameter("Backup blob contains invalid or corrupt version.") from None
        name = raw["name"]
        with self._lock:
            self._refuse_if_deleted(name)
            if name in self._keys:
                raise Conflict(f"Key {name} already exists; a backup can only be restored under a name that is free.")
            key = Key(name=name, versions=[KeyVersion(**v) for v in raw["versions"]],
                      rotation_policy=raw.get("rotation_policy"))
            self._keys[name] = key
            self._save(name)
            return self.bundle(name, key.latest)

    # ------------------------------------------------------------------ rotation
    def rotate_key(self, name: str) -> dict[str, Any]:
        with self._lock:
            key = self._live(name)
            cur = key.latest
            body: dict[str, Any] = {"kty": cur.kty}
            if cur.kty in RSA_TYPES:
                body["key_size"] = len(b64d(cur.material["n"])) * 8
            elif cur.kty in EC_TYPES:
                body["crv"] = cur.material["crv"]
            else:
                body["key_size"] = len(b64d(cur.material["k"])) * 8
            material = self._generate(cur.kty, body)
            attrs: dict[str, Any] = {}
            expiry = (key.rotation_policy or {}).get("attributes", {}).get("expiryTime")
            if expiry:
                attrs["exp"] = _now() + duration_seconds(expiry)
            kv = self._add_version(name, cur.kty, material, list(cur.key_ops), attrs, dict(cur.tags))
            self._save(name)
            return self.bundle(name, kv)

    def get_rotation_policy(self, name: str) -> dict[str, Any]:
        with self._lock:
            key = self._live(name)
            return key.rotation_policy or default_policy(self._kid(name) + "/rotationpolicy")

    def set_rotation_policy(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            key = self._live(name)
            created = (key.rotation_policy or {}).get("attributes", {}).get("created", _now())
            key.rotation_policy = validate_policy(body, self._kid(name) + "/rotationpolicy", created, _now())
            self._save(name)
            return key.rotation_policy

    # ------------------------------------------------------------------ cryptography
    def _usable(self, name: str, version: str | None, op: str) -> tuple[KeyVersion, Any]:
        kv = self._version(name, version)
        if not kv.enabled:
            raise Forbidden(f"Operation {op} is not allowed on a disabled key.", inner_code="KeyDisabled")
        now = _now()
        if kv.nbf is not None and now < kv.nbf:
            raise Forbidden(f"Operation {op} is not allowed: the key is not yet valid (nbf).",
                            inner_code="KeyNotYetValid")
        if kv.exp is not None and now >= kv.exp:
            raise Forbidden(f"Operation {op} is not allowed: the key has expired (exp).", inner_code="KeyExpired")
        if op not in kv.key_ops:
            raise Forbidden(f"Operation {op} is not permitted on this key.", inner_code="OperationNotAllowed")
        return kv, self._key_object(name, kv)

    @staticmethod
    def _alg(body: dict[str, Any]) -> str:
        alg = body.get("alg")
        if not isinstance(alg, str) or not alg:
            raise BadParameter("Property 'alg' is required.")
        return alg

    def _result(self, name: str, kv: KeyVersion, value: bytes, **extra: bytes | None) -> dict[str, Any]:
        out = {"kid": self._kid(name, kv.version), "value": b64e(value)}
        out.update({k: b64e(v) for k, v in extra.items() if v is not None})
        return out

    def encrypt(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        alg = self._alg(body)
        plaintext = b64d(body.get("value"), "value")
        with self._lock:
            kv, key = self._usable(name, version, "encrypt")
        if alg in algs.RSA_ENCRYPTION:
            return self._result(name, kv, algs.rsa_encrypt(key, alg, plaintext))
        if alg in algs.AES_GCM:
            if body.get("iv"):
                raise BadParameter("The 'iv' parameter must not be set for AES-GCM encryption: the service generates it.")
            aad = b64d(body["aad"], "aad") if body.get("aad") else None
            ct, iv, tag = algs.gcm_encrypt(key, alg, plaintext, aad)
            return self._result(name, kv, ct, iv=iv, tag=tag, aad=aad)
        raise BadParameter(f"Unsupported encryption algorithm '{alg}'.")

    def decrypt(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        alg = self._alg(body)
        ciphertext = b64d(body.get("value"), "value")
        with self._lock:
            kv, key = self._usable(name, version, "decrypt")
        if alg in algs.RSA_ENCRYPTION:
            return self._result(name, kv, algs.rsa_decrypt(key, alg, ciphertext))
        if alg in algs.AES_GCM:
            opt = {f: (b64d(body[f], f) if body.get(f) else None) for f in ("iv", "tag", "aad")}
            return self._result(name, kv, algs.gcm_decrypt(key, alg, ciphertext, opt["iv"], opt["tag"], opt["aad"]))
        raise BadParameter(f"Unsupported encryption algorithm '{alg}'.")

    def wrap_key(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        alg = self._alg(body)
        value = b64d(body.get("value"), "value")
        with self._lock:
            kv, key = self._usable(name, version, "wrapKey")
        if alg in algs.RSA_ENCRYPTION:
            return self._result(name, kv, algs.rsa_encrypt(key, alg, value))
        if alg in algs.AES_KW:
            return self._result(name, kv, algs.aes_wrap(key, alg, value))
        raise BadParameter(f"Unsupported key wrap algorithm '{alg}'.")

    def unwrap_key(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        alg = self._alg(body)
        value = b64d(body.get("value"), "value")
        with self._lock:
            kv, key = self._usable(name, version, "unwrapKey")
        if alg in algs.RSA_ENCRYPTION:
            return self._result(name, kv, algs.rsa_decrypt(key, alg, value))
        if alg in algs.AES_KW:
            return self._result(name, kv, algs.aes_unwrap(key, alg, value))
        raise BadParameter(f"Unsupported key wrap algorithm '{alg}'.")

    def sign(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        alg = self._alg(body)
        digest = b64d(body.get("value"), "value")
        with self._lock:
            kv, key = self._usable(name, version, "sign")
        return self._result(name, kv, algs.sign(key, alg, digest))

    def verify(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        alg = self._alg(body)
        digest = b64d(body.get("digest"), "digest")
        signature = b64d(body.get("value"), "value")
        with self._lock:
            _, key = self._usable(name, version, "verify")
        return {"value": algs.verify(key, alg, digest, signature)}

    @staticmethod
    def random_bytes(body: dict[str, Any]) -> dict[str, str]:
        count = body.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 128:
            raise BadParameter("Property 'count' must be an integer between 1 and 128.")
        return {"value": b64e(os.urandom(count))}
