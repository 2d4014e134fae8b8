"""Alibaba Cloud KMS provider (API 2016-01-20, alibabacloud-kms20160120).

Symmetric keys are `Aliyun_AES_256` with native Encrypt/Decrypt; the broker's AAD travels as the
EncryptionContext, so Aliyun binds it. RSA_2048/RSA_3072 and EC_P256 keys sign and decrypt natively (SHA-256
algorithms only: that is all Aliyun offers). Rotation of a symmetric key is an Aliyun key version
(CreateKeyVersion); Aliyun cannot version asymmetric keys, so their "version" is a fresh Aliyun key with the same
spec and label. Disable / scheduled deletion are mirrored; Aliyun keeps the deletion window itself, so `destroy`
only makes sure a deletion is scheduled (or deletes imported material).

Settings: `endpoint` (default kms.<region>.aliyuncs.com; an `http://` prefix, or a bare loopback host:port as
the local emulator prints, selects plain HTTP), `region`, `protocol`, `access_key_id` / `access_key_secret`
(else ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET, else the Alibaba credentials file: `credentials_file` or
ALIBABA_CLOUD_CREDENTIALS_FILE or ~/.alibabacloud/credentials, section `profile`), `signature_algorithm`
("v2" for the legacy HMAC-SHA1 scheme), `timeout` (seconds). Credentials are never logged or shown in a repr.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alibabacloud_kms20160120 import models as km
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_util.models import RuntimeOptions
from cryptography.hazmat.primitives import serialization

from broker.model import EncryptionAlgorithm, KeySpec, KeyUsage, SigningAlgorithm
from providers.base import (
    Capabilities,
    ImportParameters,
    InventoryItem,
    Provider,
    ProviderAccessDenied,
    ProviderError,
    ProviderInvalidCiphertext,
    ProviderInvalidInput,
    ProviderInvalidState,
    ProviderKeyRef,
    ProviderNotFound,
    ProviderThrottled,
    ProviderUnavailable,
    ProviderUnreachable,
    ProviderUnsupported,
    WrapForImport,
    connection_refused,
    map_bounded,
)

T = TypeVar("T")
_SPECS = {KeySpec.SYMMETRIC_DEFAULT: "Aliyun_AES_256", KeySpec.RSA_2048: "RSA_2048", KeySpec.RSA_3072: "RSA_3072",
          KeySpec.ECC_NIST_P256: "EC_P256"}
_SPECS_BACK = {v: k for k, v in _SPECS.items()}
_USAGES = {KeyUsage.ENCRYPT_DECRYPT: "ENCRYPT/DECRYPT", KeyUsage.SIGN_VERIFY: "SIGN/VERIFY"}
_USAGES_BACK = {v: k for k, v in _USAGES.items()}
_SIGN = {SigningAlgorithm.RSASSA_PSS_SHA_256: "RSA_PSS_SHA_256",
         SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256: "RSA_PKCS1_SHA_256",
         SigningAlgorithm.ECDSA_SHA_256: "ECDSA_SHA_256"}
_DECRYPT = {EncryptionAlgorithm.RSAES_OAEP_SHA_1: "RSAES_OAEP_SHA_1",
            EncryptionAlgorithm.RSAES_OAEP_SHA_256: "RSAES_OAEP_SHA_256"}
# Aliyun binds an ImportToken and its public key to one algorithm; OAEP-SHA-1 is the one the broker's HSM wraps
# with (base.WrapForImport) and the pkcs11 provider offers, so callers see one rule everywhere.
_IMPORT_WRAPPING = "RSAES_OAEP_SHA_1"
_LABEL_TAG = "kms-broker-label"
_AAD_FIELD, _AAD_HASH_FIELD = "kmsb-aad", "kmsb-aad-sha256"  # same context keys as the aws provider
_MAX_INLINE_AAD = 3072  # longer AAD is bound through its SHA-256, keeping the EncryptionContext small
_MIN_WINDOW_DAYS = 7

_NOT_FOUND = {"Forbidden.KeyNotFound", "Forbidden.AliasNotFound", "Forbidden.ResourceNotFound",
              "EntityNotExist.Key", "InvalidKeyId.NotFound"}
_STATE = {"Rejected.Disabled", "Forbidden.KeyPendingDeletion", "Rejected.UnexpectedState",
          "Rejected.ResourceExpired", "Forbidden.KeyPendingImport"}
_DENIED = {"IncompleteSignature", "SignatureDoesNotMatch", "InvalidAccessKeyId.NotFound", "InvalidAccessKeyId",
           "InvalidAccessKeyId.Inactive", "Forbidden.RAM", "Forbidden.NoPermission", "Forbidden"}
_TRANSIENT = {"SignatureNonceUsed", "InvalidTimeStamp.Expired", "InternalFailure", "ServiceUnavailable"}


def _map_error(exc: Exception, *, decrypting: bool = False) -> ProviderError:
    """SDK exception → provider error. Only the code and status are kept: Aliyun's messages can echo the
    string-to-sign, which carries request parameters such as plaintext."""
    if not isinstance(exc, AlibabaCloudException):
        if connection_refused(exc):
            return ProviderUnreachable("aliyun kms: endpoint refused the connection")
        return ProviderUnavailable(f"aliyun kms unreachable: {type(exc).__name__}")
    code, status = exc.code or "error", exc.status_code or 0
    text = f"aliyun kms: {code} ({status})"
    if code in _DENIED:
        return ProviderAccessDenied(text)
    if code in _NOT_FOUND or status == 404:
        return ProviderNotFound(text)
    if code in _STATE:
        return ProviderInvalidState(text)
    if status in (401, 403):
        return ProviderAccessDenied(text)
    if code.startswith("Throttling") or status == 429:
        return ProviderThrottled(text, float(exc.retry_after) if getattr(exc, "retry_after", None) else None)
    if code in _TRANSIENT or status >= 500:
        return ProviderUnavailable(text)
    if code == "InvalidCiphertext" or (decrypting and code == "InvalidParameter"):
        return ProviderInvalidCiphertext(text)
    if code == "UnsupportedOperation":
        return ProviderUnsupported(text)
    if code == "InvalidParameter" or code.startswith("Missing"):
        return ProviderInvalidInput(text)
    return ProviderError(text)


class AccessKey:
    """An access key pair; the secret never appears in a repr or str."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self._secret = secret

    @property
    def secret(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return f"AccessKey(key_id={self.key_id!r}, secret=<redacted>)"

    __str__ = __repr__

    @classmethod
    def resolve(cls, config: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> AccessKey:
        """Settings first, then the environment, then the Alibaba credentials file."""
        key_id, secret = config.get("access_key_id"), config.get("access_key_secret")
        if key_id and secret:
            return cls(str(key_id), str(secret))
        key_id = environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID")
        secret = environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        if key_id and secret:
            return cls(key_id, secret)
        path = Path(config.get("credentials_file") or environ.get("ALIBABA_CLOUD_CREDENTIALS_FILE")
                    or Path.home() / ".alibabacloud" / "credentials").expanduser()
        profile = str(config.get("profile") or environ.get("ALIBABA_CLOUD_PROFILE") or "default")
        parser = configparser.ConfigParser()
        if parser.read(path) and parser.has_section(profile):
            section = parser[profile]
            if section.get("access_key_id") and section.get("access_key_secret"):
                return cls(section["access_key_id"], section["access_key_secret"])
        raise ValueError("aliyun provider: no access key in settings, environment or credentials file")


class AliyunProvider(Provider):
    kind = "aliyun"

    def __init__(self, name: str, *, endpoint: str, region: str, access_key: AccessKey, protocol: str = "https",
                 signature_algorithm: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(name)
        self.endpoint, self.region, self.protocol = endpoint, region, protocol
        config = Config(access_key_id=access_key.key_id, access_key_secret=access_key.secret, endpoint=endpoint,
                        protocol=protocol, region_id=region)
        if signature_algorithm:
            config.signature_algorithm = signature_algorithm
        self._client = Client(config)
        ms = int(timeout * 1000)
        self._runtime = RuntimeOptions(autoretry=False, max_attempts=0, connect_timeout=ms, read_timeout=ms)

    def __repr__(self) -> str:
        return f"AliyunProvider(name={self.name!r}, endpoint={self.endpoint!r}, region={self.region!r})"

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> AliyunProvider:
        region = str(config.get("region") or "cn-hangzhou")
        endpoint = str(config.get("endpoint") or f"kms.{region}.aliyuncs.com")
        protocol = config.get("protocol")
        for scheme in ("http", "https"):
            if endpoint.startswith(f"{scheme}://"):
                protocol, endpoint = scheme, endpoint[len(scheme) + 3:]
        if not protocol:  # the local emulator serves plain HTTP on loopback; Aliyun itself is HTTPS only
            protocol = "http" if _is_loopback(endpoint) else "https"
        return cls(name, endpoint=endpoint.rstrip("/"), region=region, access_key=AccessKey.resolve(config),
                   protocol=str(protocol), signature_algorithm=config.get("signature_algorithm"),
                   timeout=float(config.get("timeout", 10.0)))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(key_specs=frozenset(_SPECS), native_symmetric=True, wrap_data_key=True,
                            asymmetric_decrypt=True, sign=True,
                            import_material=True, byok_import=True, inventory=True,
                            encryption_algorithms=frozenset(_DECRYPT), signing_algorithms=frozenset(_SIGN))

    # ------------------------------------------------------------------ plumbing
    def _call(self, operation: str, *, decrypting: bool = False, **fields: Any) -> dict[str, Any]:
        """client.<operation>_with_options(<Operation>Request(**fields)) → body as a dict, errors mapped."""
        request_class = getattr(km, "".join(p.capitalize() for p in operation.split("_")) + "Request")
        try:
            response = getattr(self._client, f"{operation}_with_options")(request_class(**fields), self._runtime)
        except Exception as exc:  # noqa: BLE001 - every SDK/transport failure becomes a provider error
            raise _map_error(exc, decrypting=decrypting) from None
        return response.body.to_map()

    def _attempt(self, fn: Callable[[], T], tolerate: type[ProviderError]) -> T | None:
        try:
            return fn()
        except tolerate:
            return None

    @staticmethod
    def _ref(meta: Mapping[str, Any], version: str | None = None) -> ProviderKeyRef:
        return ProviderKeyRef(key_id=meta["KeyId"], version=version or meta.get("PrimaryKeyVersion") or None,
                              extra={"spec": meta["KeySpec"], "origin": meta.get("Origin", "Aliyun_KMS")})

    @staticmethod
    def _context(aad: bytes) -> dict[str, str] | None:
        if not aad:
            return None
        if len(aad) <= _MAX_INLINE_AAD:
            return {_AAD_FIELD: base64.b64encode(aad).decode()}
        return {_AAD_HASH_FIELD: hashlib.sha256(aad).hexdigest()}

    def check_health(self) -> None:
        self._call("list_keys", page_size=1)

    def close(self) -> None:
        """The SDK pools connections per endpoint process-wide; nothing of ours to release."""

    # ------------------------------------------------------------------ lifecycle
    def _create(self, spec: KeySpec, usage: KeyUsage, label: str, origin: str = "Aliyun_KMS") -> dict[str, Any]:
        if spec not in _SPECS or usage not in _USAGES:
            raise ProviderUnsupported(f"key spec {spec.value} / usage {usage.value}")
        tags = json.dumps([{"TagKey": _LABEL_TAG, "TagValue": label[:128]}])
        return self._call("create_key", key_spec=_SPECS[spec], key_usage=_USAGES[usage], origin=origin,
                          description=f"kms-broker {label}"[:8192], tags=tags)["KeyMetadata"]

    def create_key(self, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        return self._ref(self._create(spec, usage, label))

    def create_version(self, ref: ProviderKeyRef, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        """Symmetric: an Aliyun key version. Asymmetric: Aliyun has none, so a new key with the same label."""
        if spec is KeySpec.SYMMETRIC_DEFAULT and ref.extra.get("origin", "Aliyun_KMS") == "Aliyun_KMS":
            version = self._call("create_key_version", key_id=ref.key_id)["KeyVersion"]["KeyVersionId"]
            return ProviderKeyRef(key_id=ref.key_id, version=version, extra=dict(ref.extra))
        if spec is KeySpec.SYMMETRIC_DEFAULT:
            raise ProviderUnsupported("rotation of a key with imported material")
        return self.create_key(spec, usage, label=label)

    def set_enabled(self, ref: ProviderKeyRef, enabled: bool) -> None:
        self._call("enable_key" if enabled else "disable_key", key_id=ref.key_id)

    def _state(self, ref: ProviderKeyRef) -> str:
        return self._call("describe_key", key_id=ref.key_id)["KeyMetadata"]["KeyState"]

    def schedule_destruction(self, ref: ProviderKeyRef, days: int) -> None:
        """Idempotent: symmetric versions share one Aliyun key, so the broker calls this once per version."""
        if self._state(ref) == "PendingDeletion":
            return
        self._call("schedule_key_deletion", key_id=ref.key_id, pending_window_in_days=max(days, _MIN_WINDOW_DAYS))

    def cancel_destruction(self, ref: ProviderKeyRef) -> None:
        """The broker brings a cancelled key back Disabled (AWS semantics); Aliyun restores the earlier state,
        so the key is disabled here too and the two agree until the broker enables it."""
        state = self._state(ref)
        if state == "PendingDeletion":
            self._call("cancel_key_deletion", key_id=ref.key_id)
            state = self._state(ref)
        if state == "Enabled":
            self._call("disable_key", key_id=ref.key_id)

    def destroy(self, ref: ProviderKeyRef) -> None:
        """Aliyun deletes a key only at the end of its own (mirrored) window and never one version of a key.

        Imported material is deleted at once. An asymmetric ref is a whole Aliyun key: disabled and scheduled with
        the shortest window unless it already is. A symmetric version is never destroyed on its own: after the
        broker's window the key is already PendingDeletion here; otherwise (a losing concurrent rotation) the key
        is live and the extra version stays, unused by the broker's ciphertexts.
        """
        try:
            meta = self._call("describe_key", key_id=ref.key_id)["KeyMetadata"]
        except ProviderNotFound:
            return
        if meta["KeyState"] == "PendingDeletion":
            return
        if meta.get("Origin") == "EXTERNAL":
            if meta["KeyState"] != "PendingImport":
                self._call("delete_key_material", key_id=ref.key_id)
            return
        if meta["KeySpec"] == _SPECS[KeySpec.SYMMETRIC_DEFAULT]:
            return
        if meta["KeyState"] == "Enabled":
            self._call("disable_key", key_id=ref.key_id)
        self._call("schedule_key_deletion", key_id=ref.key_id, pending_window_in_days=_MIN_WINDOW_DAYS)

    # ------------------------------------------------------------------ symmetric
    def encrypt(self, ref: ProviderKeyRef, plaintext: bytes, aad: bytes) -> bytes:
        """Aliyun's Plaintext is text, so bytes travel as base64; the AAD is the EncryptionContext."""
        out = self._call("encrypt", key_id=ref.key_id, plaintext=base64.b64encode(plaintext).decode(),
                         encryption_context=self._context(aad))
        return base64.b64decode(out["CiphertextBlob"])

    def decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            out = self._call("decrypt", decrypting=True, ciphertext_blob=base64.b64encode(ciphertext).decode(),
                             encryption_context=self._context(aad))
        except ProviderNotFound:
            # Aliyun's Decrypt takes no key id: the key it cannot find is the one the blob names, so the blob is bad
            raise ProviderInvalidCiphertext("aliyun kms: the ciphertext names a key that does not exist") from None
        if out.get("KeyId") != ref.key_id:  # Aliyun decrypts with whatever key the blob names
            raise ProviderInvalidCiphertext("aliyun kms: the ciphertext belongs to another key")
        try:
            return base64.b64decode(out["Plaintext"], validate=True)
        except (binascii.Error, ValueError):
            raise ProviderInvalidCiphertext("aliyun kms: the ciphertext was not made by this provider") from None

    def wrap_data_key(self, ref: ProviderKeyRef, data_key: bytes) -> bytes:
        return self.encrypt(ref, data_key, b"")

    def unwrap_data_key(self, ref: ProviderKeyRef, wrapped: bytes) -> bytes:
        return self.decrypt(ref, wrapped, b"")

    # ------------------------------------------------------------------ asymmetric
    def get_public_key(self, ref: ProviderKeyRef) -> bytes:
        pem = self._call("get_public_key", key_id=ref.key_id, key_version_id=ref.version)["PublicKey"]
        public = serialization.load_pem_public_key(pem.encode())
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def asymmetric_decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        if algorithm not in _DECRYPT:
            raise ProviderUnsupported(f"asymmetric_decrypt with {algorithm.value}")
        out = self._call("asymmetric_decrypt", decrypting=True, key_id=ref.key_id, key_version_id=ref.version,
                         algorithm=_DECRYPT[algorithm], ciphertext_blob=base64.b64encode(ciphertext).decode())
        return base64.b64decode(out["Plaintext"])

    def sign(self, ref: ProviderKeyRef, digest: bytes, algorithm: SigningAlgorithm) -> bytes:
        """Aliyun signs SHA-256 digests only; ECDSA signatures come back DER-encoded, as the broker wants."""
        if algorithm not in _SIGN:
            raise ProviderUnsupported(f"sign with {algorithm.value}: Aliyun KMS offers SHA-256 algorithms only")
        out = self._call("asymmetric_sign", key_id=ref.key_id, key_version_id=ref.version, algorithm=_SIGN[algorithm],
                         digest=base64.b64encode(digest).decode())
        return base64.b64decode(out["Value"])

    # ------------------------------------------------------------------ import
    def begin_import(self, spec: KeySpec, ref: ProviderKeyRef | None = None) -> ImportParameters:
        """Aliyun hands out import parameters per key: those of the key's Aliyun key (`ref`), or of an EXTERNAL key
        created here for a first import; `finish_import` fills it, `discard_import` schedules a never-filled new
        key for deletion. Aliyun refuses material that differs from what its key held."""
        if spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise ProviderUnsupported(f"import of {spec.value}: Aliyun imports symmetric material only")
        if ref is None:
            meta = self._create(spec, KeyUsage.ENCRYPT_DECRYPT, "pending-import", origin="EXTERNAL")
            key_id, version = meta["KeyId"], meta.get("PrimaryKeyVersion", "")
        else:
            key_id, version = ref.key_id, ref.version or ""
        params = self._call("get_parameters_for_import", key_id=key_id, wrapping_algorithm=_IMPORT_WRAPPING,
                            wrapping_key_spec="RSA_2048")
        return ImportParameters(public_key_der=base64.b64decode(params["PublicKey"]),
                                wrapping_algorithms=(_IMPORT_WRAPPING,),
                                handle={"key_id": key_id, "version": version, "token": params["ImportToken"],
                                        "reimport": ref is not None})

    def finish_import(self, handle: Mapping[str, Any], spec: KeySpec, usage: KeyUsage, wrapped_material: bytes,
                      wrapping_algorithm: str, *, label: str, ref: ProviderKeyRef | None = None) -> ProviderKeyRef:
        if ref is not None and handle.get("key_id") != ref.key_id:
            raise ProviderInvalidInput("the import was prepared for another key")
        if wrapping_algorithm != _IMPORT_WRAPPING or not handle.get("token"):
            raise ProviderInvalidInput(f"wrapping algorithm {wrapping_algorithm} was not offered for this import")
        self._import(handle["key_id"], str(handle["token"]), wrapped_material)
        self._call("tag_resource", key_id=handle["key_id"],
                   tags=json.dumps([{"TagKey": _LABEL_TAG, "TagValue": label[:128]}]))
        return ProviderKeyRef(key_id=handle["key_id"], version=handle.get("version") or None,
                              extra={"spec": _SPECS[spec], "origin": "EXTERNAL"})

    def _import(self, key_id: str, token: str, wrapped: bytes) -> None:
        try:
            self._call("import_key_material", key_id=key_id, import_token=token, key_material_expire_unix=0,
                       encrypted_key_material=base64.b64encode(wrapped).decode())
        except ProviderInvalidInput as exc:
            if "differs" in str(exc):  # other material than the key held before: refused as such
                raise
            raise ProviderInvalidCiphertext(str(exc)) from None

    def discard_import(self, handle: Mapping[str, Any]) -> None:
        if handle.get("reimport"):
            return  # the broker key's own Aliyun key, waiting for its material: never deleted here
        ref = ProviderKeyRef(key_id=str(handle.get("key_id", "")))
        if ref.key_id and self._attempt(lambda: self._state(ref), ProviderNotFound) == "PendingImport":
            self._call("schedule_key_deletion", key_id=ref.key_id, pending_window_in_days=_MIN_WINDOW_DAYS)

    def delete_imported_material(self, ref: ProviderKeyRef) -> ProviderKeyRef:
        """Aliyun's DeleteKeyMaterial: the key stays (PendingImport), ready for the same material again."""
        if self._state(ref) != "PendingImport":
            self._call("delete_key_material", key_id=ref.key_id)
        return ref

    def byok_import(self, spec: KeySpec, usage: KeyUsage, wrap: WrapForImport, *, label: str,
                    ref: ProviderKeyRef | None = None) -> ProviderKeyRef:
        """Material born in the broker's HSM, wrapped there (RSAES_OAEP_SHA_1) for Aliyun's import key."""
        if spec is not KeySpec.SYMMETRIC_DEFAULT or usage is not KeyUsage.ENCRYPT_DECRYPT:
            raise ProviderUnsupported(f"import of {spec.value}: Aliyun imports symmetric material only")
        if ref is None:
            meta = self._create(spec, usage, label, origin="EXTERNAL")
            ref = ProviderKeyRef(key_id=meta["KeyId"], version=meta.get("PrimaryKeyVersion") or None,
                                 extra={"spec": meta["KeySpec"], "origin": "EXTERNAL"})
        params = self._call("get_parameters_for_import", key_id=ref.key_id, wrapping_algorithm=_IMPORT_WRAPPING,
                            wrapping_key_spec="RSA_2048")
        self._import(ref.key_id, params["ImportToken"], wrap(base64.b64decode(params["PublicKey"]), _IMPORT_WRAPPING))
        return ref

    # ------------------------------------------------------------------ misc
    def _described(self, key_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        meta = self._call("describe_key", key_id=key_id)["KeyMetadata"]
        return meta, self._call("list_resource_tags", key_id=key_id).get("Tags", {}).get("Tag", [])

    def inventory(self) -> Iterable[InventoryItem]:
        items: list[InventoryItem] = []
        page = 1
        while True:
            body = self._call("list_keys", page_number=page, page_size=100)
            rows = body.get("Keys", {}).get("Key", [])
            for meta, tags in map_bounded(self._described, [row["KeyId"] for row in rows]):
                items.append(InventoryItem(
                    key_id=meta["KeyId"], spec=_SPECS_BACK.get(meta.get("KeySpec", "")),
                    usage=_USAGES_BACK.get(meta.get("KeyUsage", "")), enabled=meta.get("KeyState") == "Enabled",
                    created_at=_parse_time(meta.get("CreationDate")), description=meta.get("Description", ""),
                    tags={t["TagKey"]: t.get("TagValue", "") for t in tags},
                    label=next((t.get("TagValue") for t in tags if t["TagKey"] == _LABEL_TAG), None) or None,
                    awaiting_material=meta.get("KeyState") == "PendingImport"))
            if page * 100 >= int(body.get("TotalCount", 0)):
                return items
            page += 1


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
