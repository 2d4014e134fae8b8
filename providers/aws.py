"""AWS KMS provider (boto3): broker key versions backed by AWS KMS keys, over the wire to AWS, LocalStack or moto.

Rotation — one AWS key per broker version. `create_version` creates a fresh AWS KMS key and the broker keeps
the old version's ref, so every ciphertext still names (through the broker header) the version, hence the AWS key,
that decrypts it. We do not use RotateKeyOnDemand / automatic rotation because AWS rotates only symmetric keys
with AWS-born material: RSA, ECC, HMAC and imported keys cannot be rotated in place, and one scheme for every spec
keeps the broker's versions uniform (each version can also be disabled or destroyed on its own).

Encryption context — the broker hands us AAD bytes (its canonical encryption context plus header). AWS wants a
string map, so the AAD travels as `{"kmsb-aad": base64(aad)}` (or its SHA-256 when longer than 3 KiB, to stay
inside AWS's context size limit). Either way AWS binds it as AAD; nothing about it is stored in the blob.

Errors — every botocore failure becomes a `providers.base` error (see `_map_error`); endpoint down, timeouts and
5xx are ProviderUnavailable after boto3's own retries ("standard" mode: exponential backoff with jitter).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from broker.model import (
    ALLOWED_USAGES,
    EncryptionAlgorithm,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
)
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

AAD_CONTEXT_KEY = "kmsb-aad"
AAD_HASH_CONTEXT_KEY = "kmsb-aad-sha256"
MAX_INLINE_AAD = 3072
LABEL_TAG = "kmsb:key-id"
INSTANCE_TAG = "kmsb:instance"
PREVIOUS_TAG = "kmsb:previous-version"

# Wrapping algorithms: the SHA-1 variants, the only OAEP the broker's HSM (SoftHSM) can do, and the broker API's
# default. AWS binds one algorithm to each GetParametersForImport, and begin_import is not told which one the
# caller asked for, so caller-wrapped imports use the same ones (symmetric/HMAC: OAEP; private keys: OAEP + KWP).
BYOK_WRAP = {"small": "RSAES_OAEP_SHA_1", "asymmetric": "RSA_AES_KEY_WRAP_SHA_1"}
CALLER_WRAP = BYOK_WRAP


class KeyDisabled(ProviderInvalidState):
    """AWS DisabledException: the key exists but is disabled (a ProviderInvalidState, kept distinguishable)."""


_UNAVAILABLE_CODES = {"KMSInternalException", "DependencyTimeoutException", "ServiceUnavailable",
                      "ServiceUnavailableException", "InternalFailure", "InternalError"}
_THROTTLE_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
                   "SlowDown"}
_DENIED_CODES = {"AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidClientTokenId",
                 "InvalidSignatureException", "IncompleteSignature", "ExpiredTokenException", "MissingAuthenticationToken"}
_INPUT_CODES = {"ValidationException", "InvalidParameterValue", "IncorrectKeyMaterialException",
                "InvalidImportTokenException", "ExpiredImportTokenException", "InvalidKeyUsageException",
                "InvalidGrantTokenException", "MalformedPolicyDocumentException", "InvalidAliasNameException"}
_CONNECTION_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)


def _no_retry_when_refused(caught_exception: BaseException | None = None, **_: Any) -> None:
    """botocore's first `needs-retry` handler: a refused connection ends the call at once (re-raised here, which
    is how a handler vetoes the retry). Everything else goes on to the configured retry mode."""
    if isinstance(caught_exception, EndpointConnectionError) and connection_refused(caught_exception):
        raise caught_exception


def _map_error(op: str, err: Exception) -> ProviderError:
    """botocore failure → the broker's provider error. Messages carry the AWS code, never request data."""
    if isinstance(err, EndpointConnectionError) and connection_refused(err):
        return ProviderUnreachable(f"AWS KMS {op}: endpoint refused the connection")
    if isinstance(err, _CONNECTION_ERRORS):
        return ProviderUnavailable(f"AWS KMS {op}: endpoint unreachable ({type(err).__name__})")
    if isinstance(err, NoCredentialsError):
        return ProviderAccessDenied(f"AWS KMS {op}: no credentials found")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        meta = err.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        msg = f"AWS KMS {op}: {code or status}"
        if code == "NotFoundException":
            return ProviderNotFound(msg)
        if code == "DisabledException":
            return KeyDisabled(msg)
        if code in ("KMSInvalidStateException", "KeyUnavailableException"):
            return ProviderInvalidState(msg)
        if code in ("InvalidCiphertextException", "IncorrectKeyException"):
            return ProviderInvalidCiphertext(msg)
        if code in _THROTTLE_CODES or status == 429:
            retry_after = (meta.get("HTTPHeaders") or {}).get("retry-after")
            try:
                seconds = float(retry_after) if retry_after is not None else None
            except ValueError:
                seconds = None
            return ProviderThrottled(msg, retry_after=seconds)
        if code in _DENIED_CODES or status == 403:
            return ProviderAccessDenied(msg)
        if code in ("UnsupportedOperationException", "CustomKeyStoreInvalidStateException"):
            return ProviderUnsupported(msg)
        if code in _INPUT_CODES:
            return ProviderInvalidInput(msg)
        if code in _UNAVAILABLE_CODES or status >= 500:
            return ProviderUnavailable(msg)
        return ProviderError(msg)
    if isinstance(err, BotoCoreError):
        return ProviderUnavailable(f"AWS KMS {op}: {type(err).__name__}")
    return ProviderError(f"AWS KMS {op}: {type(err).__name__}")


def aad_context(aad: bytes) -> dict[str, str]:
    """The AWS EncryptionContext that carries the broker's AAD (empty AAD → no context)."""
    if not aad:
        return {}
    if len(aad) <= MAX_INLINE_AAD:
        return {AAD_CONTEXT_KEY: base64.b64encode(aad).decode()}
    return {AAD_HASH_CONTEXT_KEY: hashlib.sha256(aad).hexdigest()}


def _wrap_kind(spec: KeySpec) -> str:
    return "asymmetric" if spec.is_asymmetric else "small"


def _default_usage(spec: KeySpec) -> KeyUsage:
    """The usage for a spec when the caller does not say (RSA: ENCRYPT_DECRYPT; see begin_import)."""
    usages = ALLOWED_USAGES[spec]
    return KeyUsage.ENCRYPT_DECRYPT if KeyUsage.ENCRYPT_DECRYPT in usages else next(iter(usages))


class AwsProvider(Provider):
    """One named AWS KMS instance: a region, an optional endpoint, credentials from settings or boto3's chain."""

    kind: ClassVar[str] = "aws"

    def __init__(self, name: str, client: Any) -> None:
        super().__init__(name)
        self._kms = client
        client.meta.events.register_first("needs-retry.kms", _no_retry_when_refused,
                                          unique_id="kmsb-no-retry-when-refused")

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> AwsProvider:
        """Keys: region, endpoint_url, access_key_id, secret_access_key, session_token, profile, max_attempts,
        connect_timeout, read_timeout. The `aws` block printed by `kms-broker stack env` is a valid config."""
        session = boto3.session.Session(profile_name=config.get("profile"))
        boto_config = Config(
            region_name=config.get("region") or session.region_name or "us-east-1",
            retries={"mode": config.get("retry_mode", "standard"),
                     "total_max_attempts": int(config.get("max_attempts", 5))},  # attempts, first one included
            connect_timeout=float(config.get("connect_timeout", 5)),
            read_timeout=float(config.get("read_timeout", 30)),
        )
        creds = {}
        if config.get("access_key_id"):
            creds = {"aws_access_key_id": config["access_key_id"],
                     "aws_secret_access_key": config.get("secret_access_key"),
                     "aws_session_token": config.get("session_token")}
        client = session.client("kms", endpoint_url=config.get("endpoint_url"), config=boto_config, **creds)
        return cls(name, client)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(key_specs=frozenset(KeySpec), native_symmetric=True, wrap_data_key=True,
                            asymmetric_decrypt=True, sign=True, mac=True, import_material=True, byok_import=True,
                            random=True, inventory=True)

    # ------------------------------------------------------------------------------------------- plumbing
    def _call(self, op: str, fn: Callable[..., T], **kwargs: Any) -> T:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise _map_error(op, e) from None

    def _tags(self, label: str, **extra: str) -> list[dict[str, str]]:
        tags = {LABEL_TAG: label, INSTANCE_TAG: self.name, **extra}
        return [{"TagKey": k, "TagValue": v} for k, v in tags.items()]

    @staticmethod
    def _ref(meta: Mapping[str, Any]) -> ProviderKeyRef:
        return ProviderKeyRef(key_id=meta["KeyId"], extra={"arn": meta.get("Arn", ""), "origin": meta.get("Origin", "")})

    def check_health(self) -> None:
        self._call("ListKeys", self._kms.list_keys, Limit=1)

    def close(self) -> None:
        self._kms.close()

    # ------------------------------------------------------------------------------------------ lifecycle
    def _create(self, spec: KeySpec, usage: KeyUsage, label: str, *, origin: str = "AWS_KMS",
                **tags: str) -> dict[str, Any]:
        if usage not in ALLOWED_USAGES[spec]:
            raise ProviderInvalidInput(f"key spec {spec.value} cannot have usage {usage.value}")
        return self._call("CreateKey", self._kms.create_key, KeySpec=spec.value, KeyUsage=usage.value,
                          Origin=origin, Description=f"kms-broker key {label}", Tags=self._tags(label, **tags),
                          )["KeyMetadata"]

    def create_key(self, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        return self._ref(self._create(spec, usage, label))

    def create_version(self, ref: ProviderKeyRef, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        """A new AWS key for the new broker version; `ref` (the old version) is left untouched and keeps working."""
        return self._ref(self._create(spec, usage, label, **{PREVIOUS_TAG: ref.key_id}))

    def set_enabled(self, ref: ProviderKeyRef, enabled: bool) -> None:
        if enabled:
            self._call("EnableKey", self._kms.enable_key, KeyId=ref.key_id)
        else:
            self._call("DisableKey", self._kms.disable_key, KeyId=ref.key_id)

    def schedule_destruction(self, ref: ProviderKeyRef, days: int) -> None:
        """AWS allows 7..30 days; shorter broker windows are clamped to 7 (destroy() then finds it pending).
        Idempotent: a key already pending deletion (a run killed between this call and its catalog write, resumed)
        is left as it is, where AWS answers KMSInvalidStateException."""
        try:
            self._call("ScheduleKeyDeletion", self._kms.schedule_key_deletion, KeyId=ref.key_id,
                       PendingWindowInDays=min(max(days, 7), 30))
        except ProviderInvalidState:
            state = self._call("DescribeKey", self._kms.describe_key, KeyId=ref.key_id)["KeyMetadata"].get("KeyState")
            if state not in ("PendingDeletion", "PendingReplicaDeletion"):
                raise

    def cancel_destruction(self, ref: ProviderKeyRef) -> None:
        """Like AWS, the key comes back *disabled*; the service enables it through set_enabled if it wants."""
        self._call("CancelKeyDeletion", self._kms.cancel_key_deletion, KeyId=ref.key_id)

    def destroy(self, ref: ProviderKeyRef) -> None:
        """Imported material is deleted at once; the AWS key itself is scheduled for the 7-day minimum."""
        try:
            meta = self._call("DescribeKey", self._kms.describe_key, KeyId=ref.key_id)["KeyMetadata"]
        except ProviderNotFound:
            return
        if meta.get("Origin") == "EXTERNAL" and meta.get("KeyState") in ("Enabled", "Disabled"):
            self._call("DeleteImportedKeyMaterial", self._kms.delete_imported_key_material, KeyId=ref.key_id)
        if meta.get("KeyState") not in ("PendingDeletion", "PendingReplicaDeletion"):
            self._call("ScheduleKeyDeletion", self._kms.schedule_key_deletion, KeyId=ref.key_id,
                       PendingWindowInDays=7)

    # ------------------------------------------------------------------------------------------ symmetric
    def encrypt(self, ref: ProviderKeyRef, plaintext: bytes, aad: bytes) -> bytes:
        return self._call("Encrypt", self._kms.encrypt, KeyId=ref.key_id, Plaintext=plaintext,
                          EncryptionContext=aad_context(aad))["CiphertextBlob"]

    def decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, aad: bytes) -> bytes:
        """KeyId is always passed, so a blob of another AWS key fails (IncorrectKey → InvalidCiphertext)."""
        return self._call("Decrypt", self._kms.decrypt, KeyId=ref.key_id, CiphertextBlob=ciphertext,
                          EncryptionContext=aad_context(aad))["Plaintext"]

    def wrap_data_key(self, ref: ProviderKeyRef, data_key: bytes) -> bytes:
        return self.encrypt(ref, data_key, b"")

    def unwrap_data_key(self, ref: ProviderKeyRef, wrapped: bytes) -> bytes:
        return self.decrypt(ref, wrapped, b"")

    # ----------------------------------------------------------------------------------------- asymmetric
    def get_public_key(self, ref: ProviderKeyRef) -> bytes:
        return self._call("GetPublicKey", self._kms.get_public_key, KeyId=ref.key_id)["PublicKey"]

    def asymmetric_decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        return self._call("Decrypt", self._kms.decrypt, KeyId=ref.key_id, CiphertextBlob=ciphertext,
                          EncryptionAlgorithm=algorithm.value)["Plaintext"]

    def sign(self, ref: ProviderKeyRef, digest: bytes, algorithm: SigningAlgorithm) -> bytes:
        return self._call("Sign", self._kms.sign, KeyId=ref.key_id, Message=digest, MessageType="DIGEST",
                          SigningAlgorithm=algorithm.value)["Signature"]

    def generate_mac(self, ref: ProviderKeyRef, message: bytes, algorithm: MacAlgorithm) -> bytes:
        return self._call("GenerateMac", self._kms.generate_mac, KeyId=ref.key_id, Message=message,
                          MacAlgorithm=algorithm.value)["Mac"]

    # --------------------------------------------------------------------------------------------- import
    def _import_parameters(self, key_id: str, algorithm: str) -> dict[str, Any]:
        return self._call("GetParametersForImport", self._kms.get_parameters_for_import, KeyId=key_id,
                          WrappingAlgorithm=algorithm, WrappingKeySpec="RSA_2048")

    def _import(self, key_id: str, token: bytes, wrapped: bytes) -> None:
        self._call("ImportKeyMaterial", self._kms.import_key_material, KeyId=key_id, ImportToken=token,
                   EncryptedKeyMaterial=wrapped, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")

    def _describe_ref(self, key_id: str) -> ProviderKeyRef:
        return self._ref(self._call("DescribeKey", self._kms.describe_key, KeyId=key_id)["KeyMetadata"])

    def begin_import(self, spec: KeySpec, ref: ProviderKeyRef | None = None) -> ImportParameters:
        """Import parameters of the key's AWS key (`ref`), or of a new EXTERNAL AWS key for a first import (AWS
        needs a key to issue a wrapping key). The protocol gives no usage here, so RSA keys are created for
        ENCRYPT_DECRYPT; finish_import refuses any other usage. AWS itself refuses material that differs from what
        its key held (IncorrectKeyMaterialException)."""
        usage = _default_usage(spec)
        key_id = ref.key_id if ref is not None else self._create(spec, usage, "pending-import",
                                                                 origin="EXTERNAL")["KeyId"]
        algorithm = CALLER_WRAP[_wrap_kind(spec)]
        params = self._import_parameters(key_id, algorithm)
        handle = {"key_id": key_id, "usage": usage.value, "wrapping_algorithm": algorithm,
                  "import_token": base64.b64encode(params["ImportToken"]).decode(), "reimport": ref is not None}
        return ImportParameters(public_key_der=params["PublicKey"], wrapping_algorithms=(algorithm,), handle=handle)

    def finish_import(
        self, handle: Mapping[str, Any], spec: KeySpec, usage: KeyUsage, wrapped_material: bytes,
        wrapping_algorithm: str, *, label: str, ref: ProviderKeyRef | None = None,
    ) -> ProviderKeyRef:
        if ref is not None and handle["key_id"] != ref.key_id:
            raise ProviderInvalidInput("the import was prepared for another key")
        if usage.value != handle["usage"]:
            raise ProviderInvalidInput(f"the import was prepared for usage {handle['usage']}, not {usage.value}")
        if wrapping_algorithm != handle["wrapping_algorithm"]:
            raise ProviderInvalidInput(f"the import expects {handle['wrapping_algorithm']}, not {wrapping_algorithm}")
        key_id = handle["key_id"]
        self._import(key_id, base64.b64decode(handle["import_token"]), wrapped_material)
        self._call("TagResource", self._kms.tag_resource, KeyId=key_id, Tags=self._tags(label))
        return self._describe_ref(key_id)

    def discard_import(self, handle: Mapping[str, Any]) -> None:
        """Schedule deletion of the AWS key made by begin_import if no material was ever imported into it (never
        the key of a re-import: it is the broker key's own AWS key, waiting for its material)."""
        if handle.get("reimport"):
            return
        try:
            meta = self._call("DescribeKey", self._kms.describe_key, KeyId=handle["key_id"])["KeyMetadata"]
        except ProviderNotFound:
            return
        if meta.get("KeyState") == "PendingImport":
            self._call("ScheduleKeyDeletion", self._kms.schedule_key_deletion, KeyId=handle["key_id"],
                       PendingWindowInDays=7)

    def delete_imported_material(self, ref: ProviderKeyRef) -> ProviderKeyRef:
        """AWS's DeleteImportedKeyMaterial: the AWS key stays (PendingImport), ready for the same material."""
        self._call("DeleteImportedKeyMaterial", self._kms.delete_imported_key_material, KeyId=ref.key_id)
        return ref

    def byok_import(
        self, spec: KeySpec, usage: KeyUsage, wrap: WrapForImport, *, label: str, ref: ProviderKeyRef | None = None,
    ) -> ProviderKeyRef:
        """HSM-born material into AWS: `wrap` (the broker's HSM) wraps it with AWS's public wrapping key.

        RSAES_OAEP_SHA_1 for symmetric/HMAC material, RSA_AES_KEY_WRAP_SHA_1 for private keys. With `ref`, the
        same material is re-imported into that AWS key (e.g. after DeleteImportedKeyMaterial or expiry)."""
        key_id = ref.key_id if ref is not None else self._create(spec, usage, label, origin="EXTERNAL")["KeyId"]
        algorithm = BYOK_WRAP[_wrap_kind(spec)]
        try:
            params = self._import_parameters(key_id, algorithm)
            self._import(key_id, params["ImportToken"], wrap(params["PublicKey"], algorithm))
        except BaseException:
            if ref is None:  # do not leave a half-made key behind
                self.discard_import({"key_id": key_id})
            raise
        return self._describe_ref(key_id)

    # ----------------------------------------------------------------------------------------------- misc
    def random(self, n: int) -> bytes:
        return self._call("GenerateRandom", self._kms.generate_random, NumberOfBytes=n)["Plaintext"]

    def inventory(self) -> Iterable[InventoryItem]:
        """Customer-managed keys in this account/region (AWS-managed keys cannot be brought under management)."""
        marker: str | None = None
        while True:
            page = self._call("ListKeys", self._kms.list_keys, **({"Marker": marker} if marker else {}))
            for item in map_bounded(self._inventory_item, [entry["KeyId"] for entry in page.get("Keys", [])]):
                if item is not None:
                    yield item
            if not page.get("Truncated"):
                return
            marker = page["NextMarker"]

    def _inventory_item(self, key_id: str) -> InventoryItem | None:
        meta = self._call("DescribeKey", self._kms.describe_key, KeyId=key_id)["KeyMetadata"]
        if meta.get("KeyManager") != "CUSTOMER":
            return None
        try:
            tags = self._call("ListResourceTags", self._kms.list_resource_tags, KeyId=key_id).get("Tags", [])
        except ProviderError:
            tags = []
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec")
        return InventoryItem(
            key_id=meta["KeyId"],
            spec=KeySpec(spec) if spec in KeySpec.__members__ else None,
            usage=KeyUsage(meta["KeyUsage"]) if meta.get("KeyUsage") in KeyUsage.__members__ else None,
            enabled=meta.get("KeyState") == "Enabled",
            created_at=meta.get("CreationDate"),
            description=meta.get("Description", ""),
            tags={t["TagKey"]: t["TagValue"] for t in tags},
            label=next((t["TagValue"] for t in tags if t["TagKey"] == LABEL_TAG), None),
            awaiting_material=meta.get("KeyState") == "PendingImport",
        )
