"""KMS state and rules (keys, versions, aliases, tags, import tokens): pure Python, no HTTP.

Times are epoch seconds from an injectable clock so the lifecycle rules can be driven deterministically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from emulator_state.deadlines import Deadlines

from . import crypto
from . import errors as err

ENCRYPT_DECRYPT = "ENCRYPT/DECRYPT"
SIGN_VERIFY = "SIGN/VERIFY"
ORIGINS = {"Aliyun_KMS", "EXTERNAL"}
UNSUPPORTED_SPECS = {"EC_SM2", "EC_P256K", "Aliyun_AES_128", "Aliyun_AES_192"}
ALLOWED_USAGES = {
    "Aliyun_AES_256": {ENCRYPT_DECRYPT},
    "Aliyun_SM4": {ENCRYPT_DECRYPT},
    "RSA_2048": {ENCRYPT_DECRYPT, SIGN_VERIFY},
    "RSA_3072": {ENCRYPT_DECRYPT, SIGN_VERIFY},
    "EC_P256": {SIGN_VERIFY},
}
MAX_PLAINTEXT = 6 * 1024
BLOB_VERSION = 1
ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9:/_-]{1,248}$")
INTERVAL_RE = re.compile(r"^(\d+)([dhms])$")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
PUNCTUATION = string.punctuation


def iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def canonical_context(context: dict | None) -> bytes:
    """The encryption context as bound into the AEAD: sorted, compact JSON (empty when absent)."""
    if not context:
        return b""
    return json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_interval(value: str) -> int:
    """'7d' / '604800s' → seconds, within Aliyun's 7–730 day range."""
    match = INTERVAL_RE.match(value or "")
    if not match:
        raise err.invalid_parameter(f"RotationInterval '{value}' must look like 7d or 604800s.")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if not 7 * 86400 <= seconds <= 730 * 86400:
        raise err.invalid_parameter("RotationInterval must be between 7 and 730 days.")
    return seconds


@dataclass
class KeyVersion:
    key_version_id: str
    creation_date: float
    material: bytes | None  # symmetric key bytes or PKCS#8 DER; None until imported (EXTERNAL)

    def describe(self, key_id: str) -> dict:
        return {"KeyId": key_id, "KeyVersionId": self.key_version_id, "CreationDate": iso(self.creation_date)}


@dataclass
class Key:
    key_id: str
    arn: str
    spec: str
    usage: str
    origin: str
    protection_level: str
    description: str
    creator: str
    creation_date: float
    state: str
    versions: list[KeyVersion] = field(default_factory=list)
    primary_version_id: str | None = None
    delete_date: float | None = None
    state_before_deletion: str | None = None
    auto_rotation: bool = False
    rotation_interval: int | None = None
    last_rotation_date: float | None = None
    next_rotation_date: float | None = None
    material_expire: float | None = None
    material_fingerprint: str | None = None
    material_expired: bool = False
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def symmetric(self) -> bool:
        return self.spec in crypto.SYMMETRIC_SPECS

    def version(self, version_id: str) -> KeyVersion:
        for v in self.versions:
            if v.key_version_id == version_id:
                return v
        raise err.version_not_found(version_id)

    def primary(self) -> KeyVersion:
        return self.version(self.primary_version_id or "")

    def metadata(self) -> dict:
        meta = {
            "KeyId": self.key_id, "Arn": self.arn, "KeySpec": self.spec, "KeyUsage": self.usage,
            "KeyState": self.state, "Origin": self.origin, "ProtectionLevel": self.protection_level,
            "Description": self.description, "Creator": self.creator, "CreationDate": iso(self.creation_date),
            "PrimaryKeyVersion": self.primary_version_id or "", "DeletionProtection": "Disabled",
            "AutomaticRotation": "Enabled" if self.auto_rotation else "Disabled",
        }
        optional = {
            "DeleteDate": iso(self.delete_date), "LastRotationDate": iso(self.last_rotation_date),
            "NextRotationDate": iso(self.next_rotation_date) if self.auto_rotation else None,
            "RotationInterval": f"{self.rotation_interval}s" if self.rotation_interval else None,
            "MaterialExpireTime": iso(self.material_expire),
        }
        meta.update({k: v for k, v in optional.items() if v is not None})
        return meta


@dataclass
class ImportParams:
    key_id: str
    private_der: bytes
    algorithm: str
    expires: float


@dataclass
class Page:
    items: list
    total: int
    number: int
    size: int


class KmsBackend:
    """One region of one account. Every public method takes the lock: the server is threaded."""

    def __init__(self, region: str = "cn-hangzhou", account_id: str = "1234567890123456",
                 clock: Callable[[], float] = time.time, import_token_ttl: float = 86400.0,
                 on_change: Callable[[KmsBackend], None] | None = None) -> None:
        self.region = region
        self.account_id = account_id
        self.clock = clock
        self.import_token_ttl = import_token_ttl
        self.on_change = on_change
        self.keys: dict[str, Key] = {}
        self.aliases: dict[str, str] = {}
        self.import_params: dict[str, ImportParams] = {}
        self.lock = threading.RLock()
        self._aliases_of: dict[str, set[str]] = {}  # key id -> its aliases (a purge drops them without a scan)
        self._indexed: dict[str, str] = {}  # alias -> the key id `_aliases_of` files it under
        self.deadlines = Deadlines()  # ("delete" | "expire" | "rotate", key id) -> epoch seconds
        self.mark: Callable[[str, str], None] | None = None  # persistence: (table, id) changed, under the lock

    # ---- helpers -------------------------------------------------------------------------------------------
    def _changed(self, key: Key | None = None, alias: str | None = None) -> None:
        """After a change of `key` (its deadlines follow its fields) or of `alias`: mark it for the state file."""
        if key is not None:
            self._schedule(key)
            if self.mark is not None:
                self.mark("keys", key.key_id)
        if alias is not None:
            self._index_alias(alias)
            if self.mark is not None:
                self.mark("aliases", alias)
        if self.on_change:
            self.on_change(self)

    def _schedule(self, key: Key) -> None:
        """The key's current deadlines (a rotation only counts while the key is Enabled: enabling it re-arms one
        that came while it was not, as the full scan did)."""
        kid = key.key_id
        self.deadlines.set(("delete", kid), key.delete_date if key.state == "PendingDeletion" else None)
        self.deadlines.set(("expire", kid), key.material_expire)
        rotating = key.auto_rotation and key.state == "Enabled" and key.rotation_interval
        self.deadlines.set(("rotate", kid), key.next_rotation_date if rotating else None)

    def _index_alias(self, alias: str) -> None:
        """Keep `_aliases_of` in step with `aliases[alias]` (set, moved or deleted)."""
        old, new = self._indexed.get(alias), self.aliases.get(alias)
        if old == new:
            return
        if old is not None:
            self._aliases_of.get(old, set()).discard(alias)
            del self._indexed[alias]
        if new is not None:
            self._aliases_of.setdefault(new, set()).add(alias)
            self._indexed[alias] = new

    def sweep(self) -> None:
        """Apply the time-driven rules whose deadline has come: purge keys past their deletion date, expire
        material, auto-rotate. A heap of deadlines, not a scan of every key; each due entry is re-checked
        against its key, so a deadline moved or cancelled since it was set does nothing."""
        now = self.clock()
        for rule, key_id in list(self.deadlines.due(now)):
            key = self.keys.get(key_id)
            if key is None:
                continue
            if rule == "delete":
                if key.state == "PendingDeletion" and key.delete_date is not None and now >= key.delete_date:
                    del self.keys[key_id]
                    for alias in list(self._aliases_of.get(key_id, ())):
                        del self.aliases[alias]
                        self._changed(alias=alias)
                    self._aliases_of.pop(key_id, None)
                    if self.mark is not None:
                        self.mark("keys", key_id)
                    if self.on_change:
                        self.on_change(self)
                    continue
            elif rule == "expire":
                if key.material_expire is not None and now >= key.material_expire:
                    for v in key.versions:
                        v.material = None
                    key.material_expire = None
                    key.material_expired = True
                    if key.state != "PendingDeletion":
                        key.state = "PendingImport"
            elif (key.auto_rotation and key.state == "Enabled" and key.next_rotation_date is not None
                    and now >= key.next_rotation_date and key.rotation_interval):
                self._add_version(key, now)
                key.next_rotation_date = now + key.rotation_interval
            self._changed(key)  # saves what changed and re-arms the key's later deadlines

    def _arn(self, kind: str, name: str) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:{kind}/{name}"

    def resolve(self, key_id: str) -> Key:
        """KeyId may be an id, an alias name, or either's ARN."""
        if not key_id:
            raise err.missing("KeyId")
        ref = key_id
        if ref.startswith("acs:kms:"):
            ref = ref.split(":", 5)[-1]
            if ref.startswith("key/"):
                ref = ref[4:]
        if ref.startswith("alias/"):
            if ref not in self.aliases:
                raise err.alias_not_found(ref)
            ref = self.aliases[ref]
        key = self.keys.get(ref)
        if key is None:
            raise err.key_not_found(key_id)
        return key

    @staticmethod
    def _require_usable(key: Key) -> None:
        """The state check shared by every cryptographic operation."""
        if key.state == "Enabled":
            return
        if key.state == "Disabled":
            raise err.disabled(key.key_id)
        if key.state == "PendingDeletion":
            raise err.pending_deletion(key.key_id)
        if key.state == "PendingImport" and key.material_expired:
            raise err.expired(f"key material of {key.key_id}")
        raise err.unexpected_state(key.key_id, key.state)

    def _usable(self, key_id: str, usage: str, symmetric: bool | None = None) -> Key:
        key = self.resolve(key_id)
        self._require_usable(key)
        if key.usage != usage:
            raise err.unsupported(f"The key usage {key.usage} does not allow this action.")
        if symmetric is not None and key.symmetric != symmetric:
            kind = "symmetric" if symmetric else "asymmetric"
            raise err.unsupported(f"This action needs a {kind} key; {key.key_id} is {key.spec}.")
        return key

    def _add_version(self, key: Key, now: float, material: bytes | None = None) -> KeyVersion:
        if material is None and key.origin == "Aliyun_KMS":
            material = (crypto.new_symmetric_key(key.spec) if key.symmetric else crypto.new_private_key(key.spec))
        version = KeyVersion(str(uuid.uuid4()), now, material)
        key.versions.append(version)
        key.primary_version_id = version.key_version_id
        if len(key.versions) > 1:
            key.last_rotation_date = now
        return version

    @staticmethod
    def _page(items: list, page_number: int, page_size: int) -> Page:
        start = (page_number - 1) * page_size
        return Page(items[start:start + page_size], len(items), page_number, page_size)

    # ---- key lifecycle -------------------------------------------------------------------------------------
    def create_key(self, spec: str = "Aliyun_AES_256", usage: str = ENCRYPT_DECRYPT, origin: str = "Aliyun_KMS",
                   description: str = "", protection_level: str = "SOFTWARE", auto_rotation: bool = False,
                   rotation_interval: str | None = None, tags: dict[str, str] | None = None) -> Key:
        with self.lock:
            if spec in UNSUPPORTED_SPECS:
                raise err.invalid_parameter(f"KeySpec {spec} is not supported by this emulator.")
            if spec not in ALLOWED_USAGES:
                raise err.invalid_parameter(f"KeySpec '{spec}' is invalid.")
            if usage not in ALLOWED_USAGES[spec]:
                raise err.invalid_parameter(f"KeyUsage '{usage}' is not valid for KeySpec {spec}.")
            if origin not in ORIGINS:
                raise err.invalid_parameter(f"Origin '{origin}' is invalid.")
            if protection_level not in {"SOFTWARE", "HSM"}:
                raise err.invalid_parameter(f"ProtectionLevel '{protection_level}' is invalid.")
            if origin == "EXTERNAL" and spec not in crypto.SYMMETRIC_SPECS:
                raise err.unsupported("Only symmetric keys can have EXTERNAL key material.")
            interval = parse_interval(rotation_interval) if rotation_interval else None
            if auto_rotation and (origin == "EXTERNAL" or spec not in crypto.SYMMETRIC_SPECS):
                raise err.unsupported("Automatic rotation needs a symmetric key with Aliyun_KMS material.")
            if auto_rotation and interval is None:
                interval = 365 * 86400
            now = self.clock()
            key_id = str(uuid.uuid4())
            key = Key(key_id=key_id, arn=self._arn("key", key_id), spec=spec, usage=usage, origin=origin,
                      protection_level=protection_level, description=description, creator=self.account_id,
                      creation_date=now, state="PendingImport" if origin == "EXTERNAL" else "Enabled",
                      tags=dict(tags or {}))
            self._add_version(key, now)
            if auto_rotation:
                key.auto_rotation, key.rotation_interval = True, interval
                key.next_rotation_date = now + (interval or 0)
            self.keys[key_id] = key
            self._changed(key)
            return key

    def describe_key(self, key_id: str) -> Key:
        with self.lock:
            self.sweep()
            return self.resolve(key_id)

    def list_keys(self, page_number: int, page_size: int) -> Page:
        with self.lock:
            self.sweep()
            keys = sorted(self.keys.values(), key=lambda k: k.creation_date)
            return self._page(keys, page_number, page_size)

    def enable_key(self, key_id: str) -> None:
        self._set_enabled(key_id, True)

    def disable_key(self, key_id: str) -> None:
        self._set_enabled(key_id, False)

    def _set_enabled(self, key_id: str, enabled: bool) -> None:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            if key.state not in {"Enabled", "Disabled"}:
                raise err.unexpected_state(key.key_id, key.state)
            key.state = "Enabled" if enabled else "Disabled"
            self._changed(key)

    def schedule_key_deletion(self, key_id: str, pending_window_days: int) -> None:
        with self.lock:
            self.sweep()
            if not 7 <= pending_window_days <= 366:
                raise err.invalid_parameter("PendingWindowInDays must be between 7 and 366.")
            key = self.resolve(key_id)
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            key.state_before_deletion = key.state
            key.state = "PendingDeletion"
            key.delete_date = self.clock() + pending_window_days * 86400
            self._changed(key)

    def cancel_key_deletion(self, key_id: str) -> None:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            if key.state != "PendingDeletion":
                raise err.unexpected_state(key.key_id, key.state)
            key.state = key.state_before_deletion or "Enabled"
            key.delete_date = key.state_before_deletion = None
            self._changed(key)

    # ---- versions and rotation -----------------------------------------------------------------------------
    def create_key_version(self, key_id: str) -> KeyVersion:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            self._require_usable(key)
            if not key.symmetric or key.origin != "Aliyun_KMS":
                raise err.unsupported("Only symmetric keys with Aliyun_KMS material can have new versions.")
            version = self._add_version(key, self.clock())
            self._changed(key)
            return version

    def list_key_versions(self, key_id: str, page_number: int, page_size: int) -> Page:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            return self._page(key.versions, page_number, page_size)

    def describe_key_version(self, key_id: str, version_id: str) -> KeyVersion:
        with self.lock:
            self.sweep()
            return self.resolve(key_id).version(version_id)

    def update_rotation_policy(self, key_id: str, enable: bool, interval: str | None) -> None:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            if not key.symmetric or key.origin != "Aliyun_KMS":
                raise err.unsupported("Automatic rotation needs a symmetric key with Aliyun_KMS material.")
            if enable:
                if not interval:
                    raise err.missing("RotationInterval")
                key.rotation_interval = parse_interval(interval)
                key.auto_rotation = True
                key.next_rotation_date = (key.last_rotation_date or key.creation_date) + key.rotation_interval
            else:
                key.auto_rotation = False
                key.next_rotation_date = None
            self._changed(key)

    # ---- symmetric cryptography ----------------------------------------------------------------------------
    def _seal(self, key: Key, plaintext: bytes, context: dict | None) -> tuple[str, str]:
        version = key.primary()
        header = self._blob_header(key.key_id, version.key_version_id)
        sealed = crypto.aead_encrypt(key.spec, version.material, plaintext, header + canonical_context(context))
        return base64.b64encode(header + sealed).decode(), version.key_version_id

    @staticmethod
    def _blob_header(key_id: str, version_id: str) -> bytes:
        kid, vid = key_id.encode(), version_id.encode()
        return bytes([BLOB_VERSION, len(kid)]) + kid + bytes([len(vid)]) + vid

    def _unseal(self, blob: str, context: dict | None) -> tuple[Key, KeyVersion, bytes]:
        """The blob names its key and version in a header that is itself part of the AAD."""
        try:
            raw = base64.b64decode(blob, validate=True)
            if raw[0] != BLOB_VERSION:
                raise ValueError("version")
            klen = raw[1]
            key_id = raw[2:2 + klen].decode()
            vlen = raw[2 + klen]
            version_id = raw[3 + klen:3 + klen + vlen].decode()
            header_len = 3 + klen + vlen
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise err.invalid_ciphertext() from exc
        key = self.keys.get(key_id)
        if key is None:
            raise err.key_not_found(key_id)
        self._require_usable(key)
        version = key.version(version_id)
        try:
            plaintext = crypto.aead_decrypt(key.spec, version.material, raw[header_len:],
                                             raw[:header_len] + canonical_context(context))
        except crypto.CryptoFailure as exc:
            raise err.invalid_ciphertext() from exc
        return key, version, plaintext

    def encrypt(self, key_id: str, plaintext: bytes, context: dict | None) -> tuple[Key, str, str]:
        with self.lock:
            self.sweep()
            if len(plaintext) > MAX_PLAINTEXT:
                raise err.invalid_parameter("Plaintext must be at most 6 KB.")
            key = self._usable(key_id, ENCRYPT_DECRYPT, symmetric=True)
            blob, version_id = self._seal(key, plaintext, context)
            return key, version_id, blob

    def decrypt(self, blob: str, context: dict | None) -> tuple[Key, str, bytes]:
        with self.lock:
            self.sweep()
            key, version, plaintext = self._unseal(blob, context)
            return key, version.key_version_id, plaintext

    def re_encrypt(self, blob: str, destination_key_id: str, source_context: dict | None,
                   destination_context: dict | None, source_key_id: str | None = None,
                   source_version_id: str | None = None, source_algorithm: str | None = None) -> dict:
        """Symmetric source: the blob names its key. Asymmetric source: SourceKeyId/VersionId/Algorithm given,
        and the recovered bytes are carried on as their base64 text (the way data keys travel)."""
        with self.lock:
            self.sweep()
            if source_key_id:
                if not source_version_id or not source_algorithm:
                    raise err.missing("SourceKeyVersionId" if not source_version_id else "SourceEncryptionAlgorithm")
                raw = base64.b64decode(blob) if _is_b64(blob) else None
                if raw is None:
                    raise err.invalid_ciphertext()
                _, _, recovered = self._asym_decrypt(source_key_id, source_version_id,
                                                                 source_algorithm, raw)
                plaintext = base64.b64encode(recovered)
            else:
                _, _, plaintext = self._unseal(blob, source_context)
            dest = self._usable(destination_key_id, ENCRYPT_DECRYPT, symmetric=True)
            new_blob, dest_version = self._seal(dest, plaintext, destination_context)
            return {"CiphertextBlob": new_blob, "KeyId": dest.key_id, "KeyVersionId": dest_version}

    def generate_data_key(self, key_id: str, key_spec: str | None, number_of_bytes: int | None,
                          context: dict | None) -> tuple[Key, str, str, bytes]:
        """Returns (key, version id, blob, raw data key). The blob seals the key's base64 text, so Decrypt
        returns the same Plaintext string GenerateDataKey did."""
        with self.lock:
            self.sweep()
            size = _data_key_size(key_spec, number_of_bytes)
            key = self._usable(key_id, ENCRYPT_DECRYPT, symmetric=True)
            data_key = secrets.token_bytes(size)
            blob, version_id = self._seal(key, base64.b64encode(data_key), context)
            return key, version_id, blob, data_key

    # ---- asymmetric cryptography ---------------------------------------------------------------------------
    def _asym_key(self, key_id: str, version_id: str, usage: str) -> tuple[Key, KeyVersion]:
        if not version_id:
            raise err.missing("KeyVersionId")
        key = self._usable(key_id, usage, symmetric=False)
        return key, key.version(version_id)

    def _asym_decrypt(self, key_id: str, version_id: str, algorithm: str, data: bytes) -> tuple[Key, KeyVersion, bytes]:
        key, version = self._asym_key(key_id, version_id, ENCRYPT_DECRYPT)
        _check_algorithm(algorithm, crypto.RSA_ENCRYPTION_ALGORITHMS)
        try:
            return key, version, crypto.rsa_decrypt(version.material, algorithm, data)
        except crypto.CryptoFailure as exc:
            raise err.invalid_ciphertext("The CiphertextBlob cannot be decrypted with this key and algorithm.") from exc

    def asymmetric_encrypt(self, key_id: str, version_id: str, algorithm: str, plaintext: bytes) -> tuple[Key, KeyVersion, bytes]:
        with self.lock:
            self.sweep()
            key, version = self._asym_key(key_id, version_id, ENCRYPT_DECRYPT)
            _check_algorithm(algorithm, crypto.RSA_ENCRYPTION_ALGORITHMS)
            public = crypto.load_private(version.material).public_key()
            try:
                return key, version, crypto.rsa_encrypt(public, algorithm, plaintext)
            except crypto.CryptoFailure as exc:
                raise err.invalid_parameter(str(exc)) from exc

    def asymmetric_decrypt(self, key_id: str, version_id: str, algorithm: str, data: bytes) -> tuple[Key, KeyVersion, bytes]:
        with self.lock:
            self.sweep()
            return self._asym_decrypt(key_id, version_id, algorithm, data)

    def asymmetric_sign(self, key_id: str, version_id: str, algorithm: str, digest: bytes) -> tuple[Key, KeyVersion, bytes]:
        with self.lock:
            self.sweep()
            key, version = self._asym_key(key_id, version_id, SIGN_VERIFY)
            _check_algorithm(algorithm, crypto.SIGNING_ALGORITHMS[key.spec])
            _check_digest(digest)
            return key, version, crypto.sign_digest(version.material, algorithm, digest)

    def asymmetric_verify(self, key_id: str, version_id: str, algorithm: str, digest: bytes,
                          signature: bytes) -> tuple[Key, KeyVersion, bool]:
        with self.lock:
            self.sweep()
            key, version = self._asym_key(key_id, version_id, SIGN_VERIFY)
            _check_algorithm(algorithm, crypto.SIGNING_ALGORITHMS[key.spec])
            _check_digest(digest)
            return key, version, crypto.verify_digest(version.material, algorithm, digest, signature)

    def get_public_key(self, key_id: str, version_id: str) -> tuple[Key, KeyVersion, str]:
        with self.lock:
            self.sweep()
            if not version_id:
                raise err.missing("KeyVersionId")
            key = self.resolve(key_id)
            self._require_usable(key)
            if key.symmetric:
                raise err.unsupported("GetPublicKey needs an asymmetric key.")
            version = key.version(version_id)
            return key, version, crypto.public_pem(version.material)

    # ---- aliases -------------------------------------------------------------------------------------------
    def create_alias(self, alias: str, key_id: str) -> None:
        with self.lock:
            self.sweep()
            _check_alias(alias)
            if alias in self.aliases:
                raise err.KmsError("EntityAlreadyExists.Alias", f"The alias {alias} already exists.", 400)
            key = self.resolve(key_id)
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            self.aliases[alias] = key.key_id
            self._changed(alias=alias)

    def update_alias(self, alias: str, key_id: str) -> None:
        with self.lock:
            self.sweep()
            if alias not in self.aliases:
                raise err.alias_not_found(alias)
            key = self.resolve(key_id)
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            self.aliases[alias] = key.key_id
            self._changed(alias=alias)

    def delete_alias(self, alias: str) -> None:
        with self.lock:
            if alias not in self.aliases:
                raise err.alias_not_found(alias)
            del self.aliases[alias]
            self._changed(alias=alias)

    def list_aliases(self, page_number: int, page_size: int, key_id: str | None = None) -> Page:
        with self.lock:
            self.sweep()
            target = self.resolve(key_id).key_id if key_id else None
            rows = [{"AliasName": a, "AliasArn": self._arn("alias", a[len("alias/"):]), "KeyId": k}
                    for a, k in sorted(self.aliases.items()) if target is None or k == target]
            return self._page(rows, page_number, page_size)

    # ---- tags ----------------------------------------------------------------------------------------------
    def tag_resource(self, key_id: str, tags: dict[str, str]) -> None:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            for tag_key in tags:
                if not tag_key or tag_key.lower().startswith(("acs:", "aliyun")):
                    raise err.invalid_parameter(f"TagKey '{tag_key}' is not allowed.")
            if len({**key.tags, **tags}) > 20:
                raise err.invalid_parameter("A key can have at most 20 tags.")
            key.tags.update(tags)
            self._changed(key)

    def untag_resource(self, key_id: str, tag_keys: list[str]) -> None:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            for tag_key in tag_keys:
                key.tags.pop(tag_key, None)
            self._changed(key)

    def list_resource_tags(self, key_id: str) -> Key:
        with self.lock:
            self.sweep()
            return self.resolve(key_id)

    # ---- BYOK ----------------------------------------------------------------------------------------------
    def get_parameters_for_import(self, key_id: str, algorithm: str, wrapping_spec: str) -> tuple[Key, str, bytes, float]:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            if key.origin != "EXTERNAL":
                raise err.unsupported("GetParametersForImport needs a key whose Origin is EXTERNAL.")
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            _check_algorithm(algorithm, crypto.WRAPPING_ALGORITHMS, "WrappingAlgorithm")
            if wrapping_spec != "RSA_2048":
                raise err.invalid_parameter(f"WrappingKeySpec '{wrapping_spec}' is invalid.")
            private_der = crypto.new_private_key("RSA_2048")
            token = secrets.token_urlsafe(48)
            expires = self.clock() + self.import_token_ttl
            self.import_params[token] = ImportParams(key.key_id, private_der, algorithm, expires)
            return key, token, crypto.public_der(private_der), expires

    def import_key_material(self, key_id: str, encrypted_material: bytes, token: str, expire_unix: int) -> None:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            params = self.import_params.get(token)
            if params is None or params.key_id != key.key_id:
                raise err.invalid_parameter("The ImportToken is invalid for this key.")
            if self.clock() >= params.expires:
                raise err.expired("ImportToken")
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            if expire_unix and expire_unix <= self.clock():
                raise err.invalid_parameter("KeyMaterialExpireUnix must be in the future (or 0 for never).")
            try:
                material = crypto.rsa_decrypt(params.private_der, params.algorithm, encrypted_material)
            except crypto.CryptoFailure as exc:
                raise err.invalid_parameter("EncryptedKeyMaterial cannot be decrypted with the import parameters.") from exc
            if len(material) != crypto.SYMMETRIC_SPECS[key.spec]:
                raise err.invalid_parameter(f"Key material for {key.spec} must be {crypto.SYMMETRIC_SPECS[key.spec] * 8} bits.")
            fingerprint = hashlib.sha256(key.key_id.encode() + material).hexdigest()
            if key.material_fingerprint and fingerprint != key.material_fingerprint:
                raise err.invalid_parameter("The key material differs from the material imported before.")
            key.material_fingerprint = fingerprint
            key.versions[0].material = material
            key.material_expire = float(expire_unix) if expire_unix else None
            key.material_expired = False
            if key.state == "PendingImport":
                key.state = "Enabled"
            self._changed(key)

    def delete_key_material(self, key_id: str) -> None:
        with self.lock:
            self.sweep()
            key = self.resolve(key_id)
            if key.origin != "EXTERNAL":
                raise err.unsupported("DeleteKeyMaterial needs a key whose Origin is EXTERNAL.")
            if key.state == "PendingDeletion":
                raise err.pending_deletion(key.key_id)
            for v in key.versions:
                v.material = None
            key.material_expire = None
            key.state = "PendingImport"
            self._changed(key)

    # ---- persistence ---------------------------------------------------------------------------------------
    @staticmethod
    def _key_dict(key: Key) -> dict:
        d = asdict(key)
        for v in d["versions"]:
            v["material"] = base64.b64encode(v["material"]).decode() if v["material"] else None
        return d

    def to_dict(self) -> dict:
        """The whole state (the state file's shape)."""
        with self.lock:
            return {"keys": [self._key_dict(key) for key in self.keys.values()], "aliases": dict(self.aliases)}

    def render(self, table: str, ident: str) -> str | None:
        """One object of the state file as JSON text, None once it is gone (call under the lock)."""
        if table == "keys":
            key = self.keys.get(ident)
            return None if key is None else json.dumps(self._key_dict(key))
        target = self.aliases.get(ident)
        return None if target is None else json.dumps(target)

    def load_dict(self, data: dict) -> None:
        with self.lock:
            for d in data.get("keys", []):
                versions = [KeyVersion(v["key_version_id"], v["creation_date"],
                                       base64.b64decode(v["material"]) if v["material"] else None)
                            for v in d.pop("versions")]
                key = Key(**d, versions=versions)
                self.keys[key.key_id] = key
                self._schedule(key)
            self.aliases.update(data.get("aliases", {}))
            for alias in self.aliases:
                self._index_alias(alias)


def random_password(length: int, exclude_characters: str, exclude_lower: bool, exclude_upper: bool,
                    exclude_numbers: bool, exclude_punctuation: bool, require_each: bool) -> str:
    if not 8 <= length <= 128:
        raise err.invalid_parameter("PasswordLength must be between 8 and 128.")
    pools = [pool for pool, excluded in ((string.ascii_lowercase, exclude_lower), (string.ascii_uppercase, exclude_upper),
                                         (string.digits, exclude_numbers), (PUNCTUATION, exclude_punctuation))
             if not excluded]
    pools = [p for p in ("".join(c for c in pool if c not in exclude_characters) for pool in pools) if p]
    if not pools:
        raise err.invalid_parameter("Every character type is excluded.")
    if require_each and len(pools) > length:
        raise err.invalid_parameter("PasswordLength is too short to include every character type.")
    alphabet = "".join(pools)
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        if not require_each or all(any(c in pool for c in password) for pool in pools):
            return password


def _data_key_size(key_spec: str | None, number_of_bytes: int | None) -> int:
    if number_of_bytes is not None:
        if not 1 <= number_of_bytes <= 1024:
            raise err.invalid_parameter("NumberOfBytes must be between 1 and 1024.")
        return number_of_bytes
    sizes = {"AES_256": 32, "AES_128": 16}
    if key_spec is not None and key_spec not in sizes:
        raise err.invalid_parameter(f"KeySpec '{key_spec}' is invalid; use AES_256 or AES_128.")
    return sizes[key_spec or "AES_256"]


def _check_algorithm(algorithm: str, allowed: set[str], name: str = "Algorithm") -> None:
    if not algorithm:
        raise err.missing(name)
    if algorithm not in allowed:
        raise err.invalid_parameter(f"{name} '{algorithm}' is not valid for this key.")


def _check_digest(digest: bytes) -> None:
    if len(digest) != 32:
        raise err.invalid_parameter("Digest must be a base64-encoded SHA-256 digest (32 bytes).")


def _check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias or ""):
        raise err.invalid_parameter(f"AliasName '{alias}' must match alias/[a-zA-Z0-9:/_-]+.")


def _is_b64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True
