"""Google Cloud KMS provider (google-cloud-kms), over gRPC (default) or REST.

One broker key = one CryptoKey in the configured key ring; a broker key version = a CryptoKeyVersion
(`ProviderKeyRef.key_id` = the CryptoKey name, `version` = the version number). Rotation creates a version and,
for symmetric keys, makes it primary. Symmetric encryption is native (AES-256-GCM with AAD); decryption needs no
version because Cloud KMS ciphertexts name their own.

Integrity: every request carries the CRC32C of its data and every response is checked the way Google's docs tell
clients to (the `verified_*` flags, the `*_crc32c` of returned data and the returned resource name); a mismatch
raises ProviderIntegrityError.

A GCP key version has exactly one algorithm, so an RSA signing key does one padding+hash (`rsa_sign_padding`,
SHA-256, or SHA-512 for RSA-4096 with `rsa_sign_hash = "SHA512"`) and an RSA decryption key one OAEP hash
(`rsa_decrypt_hash`); other algorithms raise ProviderUnsupported.

Destruction: keys are created with `destroy_scheduled_duration = destroy_scheduled_days` (default 30, the longest
broker window). `schedule_destruction(days)` schedules Cloud KMS destruction at once when that period covers the
broker's window (so `cancel_destruction` can always restore), otherwise it only disables the version and
`destroy` schedules it later. Cloud KMS never destroys immediately; `destroy` is final once scheduled.

Settings: `transport` (grpc|rest), `grpc_target` / `rest_endpoint` (local emulator; unset = Google's endpoints with
application default credentials), `token` (static bearer token for the emulator), `project`, `location`,
`key_ring`, `protection_level` (SOFTWARE|HSM), `rsa_sign_padding` (PSS|PKCS1), `rsa_sign_hash`, `rsa_decrypt_hash`
(SHA256|SHA1), `import_method`, `destroy_scheduled_days`, `timeout` (seconds), `retries`.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import google_crc32c
import grpc
import requests
from cryptography.hazmat.primitives import serialization
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.auth import exceptions as auth_exc
from google.auth.credentials import Credentials
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport
from google.protobuf import field_mask_pb2

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
    ProviderIntegrityError,
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
State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")
# Cloud KMS has no P-521 key; its secp256k1 keys (EC_SIGN_SECP256K1_SHA256) exist at HSM protection only and are
# not mapped here (the pkcs11 provider, aws and real AWS KMS hold both).
_SPECS = frozenset(KeySpec) - {KeySpec.ECC_NIST_P521, KeySpec.ECC_SECG_P256K1}
# Cloud KMS import method -> the broker's (AWS) wrapping algorithm names it accepts.
_IMPORT_METHODS = {
    "RSA_OAEP_3072_SHA1_AES_256": ("RSA_AES_KEY_WRAP_SHA_1",),
    "RSA_OAEP_4096_SHA1_AES_256": ("RSA_AES_KEY_WRAP_SHA_1",),
    "RSA_OAEP_3072_SHA256_AES_256": ("RSA_AES_KEY_WRAP_SHA_256",),
    "RSA_OAEP_4096_SHA256_AES_256": ("RSA_AES_KEY_WRAP_SHA_256",),
}
_BYOK_METHOD = "RSA_OAEP_3072_SHA1_AES_256"  # the broker's HSM does OAEP with SHA-1 only


def _crc(data: bytes) -> int:
    return int(google_crc32c.value(bytes(data)))


class StaticToken(Credentials):
    """A fixed bearer token for the emulator's REST side; refresh() is a no-op so a 401 surfaces as an error."""

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self.token = token

    def refresh(self, request: object) -> None:
        return None

    @property
    def expired(self) -> bool:
        return False

    @property
    def valid(self) -> bool:
        return True

    def apply(self, headers: dict, token: str | None = None) -> None:
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"


class _BearerMetadata(grpc.UnaryUnaryClientInterceptor):
    """`authorization: Bearer T` on every call of an insecure channel (gRPC call credentials need TLS)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201 - grpc's API
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self._token}")]
        return continuation(details._replace(metadata=metadata), request)


def build_client(transport: str, *, grpc_target: str | None = None, rest_endpoint: str | None = None,
                 token: str | None = None) -> kms_v1.KeyManagementServiceClient:
    """An official client for a local emulator (target/endpoint given) or for Google itself (ADC)."""
    if transport == "grpc":
        if not grpc_target:
            return kms_v1.KeyManagementServiceClient()
        channel = grpc.insecure_channel(grpc_target)
        if token:
            channel = grpc.intercept_channel(channel, _BearerMetadata(token))
        return kms_v1.KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(channel=channel))
    if transport == "rest":
        if not rest_endpoint:
            return kms_v1.KeyManagementServiceClient(transport="rest")
        return kms_v1.KeyManagementServiceClient(credentials=StaticToken(token), transport="rest",
                                                 client_options={"api_endpoint": rest_endpoint})
    raise ValueError(f"transport must be 'grpc' or 'rest', not {transport!r}")


def _status(err: gexc.GoogleAPICallError) -> str:
    """The google.rpc status name: from gRPC, or from the REST error body (REST maps several codes onto 400)."""
    response = err.response
    if isinstance(response, requests.Response):
        try:
            return str(response.json()["error"]["status"])
        except (ValueError, KeyError, TypeError):
            pass
    code = err.grpc_status_code
    if code is not None:
        return code.name
    return {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(
        int(err.code or 0), "UNKNOWN")


def _retryable(err: Exception) -> bool:
    """What the client retries: unavailable and deadline exceeded, except a refused connection (the channel
    says "Connection refused" at once; retrying it until the deadline only delays whoever can go elsewhere)."""
    return isinstance(err, gexc.ServiceUnavailable | gexc.DeadlineExceeded) and not connection_refused(err)


def _map_error(err: Exception, *, decrypting: bool = False) -> ProviderError:
    """Client exception -> provider error. Messages carry statuses and resource names, never data."""
    if isinstance(err, ProviderError):
        return err
    if connection_refused(err) and isinstance(err, requests.RequestException | auth_exc.TransportError
                                              | gexc.ServiceUnavailable):
        return ProviderUnreachable("gcp kms: endpoint refused the connection")
    if isinstance(err, requests.RequestException | auth_exc.TransportError | gexc.RetryError):
        return ProviderUnavailable(f"gcp kms unreachable: {type(err).__name__}")
    if isinstance(err, auth_exc.GoogleAuthError):
        return ProviderAccessDenied(f"gcp kms credentials: {type(err).__name__}")
    if not isinstance(err, gexc.GoogleAPICallError):
        return ProviderError(f"gcp kms: {type(err).__name__}")
    status = _status(err)
    text = f"gcp kms: {status}: {err.message}"
    if status == "NOT_FOUND":
        return ProviderNotFound(text)
    if status in ("FAILED_PRECONDITION", "ALREADY_EXISTS"):
        return ProviderInvalidState(text)
    if status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return ProviderAccessDenied(text)
    if status == "RESOURCE_EXHAUSTED":
        return ProviderThrottled(text)
    if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "ABORTED"):
        return ProviderUnavailable(text)
    if status == "UNIMPLEMENTED":
        return ProviderUnsupported(text)
    if status == "INVALID_ARGUMENT":
        if "checksum" in (err.message or "").lower():
            return ProviderIntegrityError(text)
        return ProviderInvalidCiphertext(text) if decrypting else ProviderInvalidInput(text)
    return ProviderError(text)


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ProviderIntegrityError(f"gcp kms: {what} failed its integrity check; discard and retry")


class GcpProvider(Provider):
    kind = "gcp"

    def __init__(self, name: str, *, client: kms_v1.KeyManagementServiceClient, project: str, location: str,
                 key_ring: str, protection_level: str = "SOFTWARE", rsa_sign_padding: str = "PSS",
                 rsa_sign_hash: str = "SHA256", rsa_decrypt_hash: str = "SHA256",
                 import_method: str = _BYOK_METHOD, destroy_scheduled_days: int = 30, timeout: float = 10.0,
                 retries: int = 2) -> None:
        super().__init__(name)
        if protection_level not in ("SOFTWARE", "HSM"):
            raise ValueError("protection_level must be SOFTWARE or HSM")
        if rsa_sign_padding not in ("PSS", "PKCS1") or rsa_sign_hash not in ("SHA256", "SHA512"):
            raise ValueError("rsa_sign_padding must be PSS|PKCS1 and rsa_sign_hash SHA256|SHA512")
        if rsa_decrypt_hash not in ("SHA256", "SHA1", "SHA512"):
            raise ValueError("rsa_decrypt_hash must be SHA256, SHA1 or SHA512")
        if import_method not in _IMPORT_METHODS:
            raise ValueError(f"import_method must be one of {', '.join(_IMPORT_METHODS)}")
        if not 1 <= destroy_scheduled_days <= 120:
            raise ValueError("destroy_scheduled_days must be 1 to 120")
        self._client = client
        self.location_name = f"projects/{project}/locations/{location}"
        self.key_ring_name = f"{self.location_name}/keyRings/{key_ring}"
        self.protection_level = protection_level
        self.rsa_sign_padding, self.rsa_sign_hash, self.rsa_decrypt_hash = rsa_sign_padding, rsa_sign_hash, \
            rsa_decrypt_hash
        self.import_method = import_method
        self.destroy_scheduled = timedelta(days=destroy_scheduled_days)
        self.timeout = timeout
        self._retry = None if retries <= 0 else gretry.Retry(
            predicate=_retryable,
            initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout)
        self._ring_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> GcpProvider:
        transport = str(config.get("transport", "grpc"))
        if not config.get("project"):
            raise ValueError(f"provider {name!r}: 'project' is required")
        client = build_client(transport, grpc_target=config.get("grpc_target"),
                              rest_endpoint=config.get("rest_endpoint"), token=config.get("token"))
        return cls(name, client=client, project=str(config["project"]), location=str(config.get("location", "global")),
                   key_ring=str(config.get("key_ring", "kms-broker")),  # created on first use
                   protection_level=str(config.get("protection_level", "SOFTWARE")),
                   rsa_sign_padding=str(config.get("rsa_sign_padding", "PSS")),
                   rsa_sign_hash=str(config.get("rsa_sign_hash", "SHA256")),
                   rsa_decrypt_hash=str(config.get("rsa_decrypt_hash", "SHA256")),
                   import_method=str(config.get("import_method", _BYOK_METHOD)),
                   destroy_scheduled_days=int(config.get("destroy_scheduled_days", 30)),
                   timeout=float(config.get("timeout", 10.0)), retries=int(config.get("retries", 2)))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(key_specs=_SPECS, native_symmetric=True, asymmetric_decrypt=True, sign=True, mac=True,
                            import_material=True, byok_import=True, random=True, inventory=True,
                            encryption_algorithms=self._offered_decryption(), signing_algorithms=self._offered_signing())

    def _offered_decryption(self) -> frozenset[EncryptionAlgorithm]:
        """A GCP version decrypts with one OAEP hash, the one configured (SHA-512 has no AWS-style name)."""
        return frozenset({"SHA1": {EncryptionAlgorithm.RSAES_OAEP_SHA_1},
                          "SHA256": {EncryptionAlgorithm.RSAES_OAEP_SHA_256}}.get(self.rsa_decrypt_hash, set()))

    def _offered_signing(self) -> frozenset[SigningAlgorithm]:
        """The configured RSA padding with SHA-256 (and SHA-512 for RSA-4096 when configured), ECDSA per curve."""
        padding = "PSS" if self.rsa_sign_padding == "PSS" else "PKCS1_V1_5"
        rsa = {SigningAlgorithm(f"RSASSA_{padding}_SHA_256")}
        if self.rsa_sign_hash == "SHA512":
            rsa.add(SigningAlgorithm(f"RSASSA_{padding}_SHA_512"))
        return frozenset(rsa | {SigningAlgorithm.ECDSA_SHA_256, SigningAlgorithm.ECDSA_SHA_384})

    # ------------------------------------------------------------------ plumbing
    def _rpc(self, method: str, request: Mapping[str, Any], *, decrypting: bool = False) -> Any:
        """One client call with our deadline and retry policy; every failure becomes a provider error."""
        fn: Callable[..., Any] = getattr(self._client, method)
        try:
            return fn(request=request, retry=self._retry, timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - mapped, never swallowed
            raise _map_error(err, decrypting=decrypting) from None

    def _ensure_ring(self) -> None:
        if self._ring_ready:
            return
        with self._lock:
            if self._ring_ready:
                return
            try:
                self._rpc("get_key_ring", {"name": self.key_ring_name})
            except ProviderNotFound:
                try:
                    self._rpc("create_key_ring", {"parent": self.location_name,
                                                  "key_ring_id": self.key_ring_name.rsplit("/", 1)[1]})
                except ProviderInvalidState:
                    pass  # created concurrently by another broker process
            self._ring_ready = True

    def check_health(self) -> None:
        """One real round trip every time (a cached ring must not hide an outage)."""
        if self._ring_ready:
            self._rpc("get_key_ring", {"name": self.key_ring_name})
        else:
            self._ensure_ring()

    def close(self) -> None:
        self._client.transport.close()

    @staticmethod
    def _version_name(ref: ProviderKeyRef) -> str:
        if not ref.version:
            raise ProviderInvalidInput("gcp key ref has no version")
        return f"{ref.key_id}/cryptoKeyVersions/{ref.version}"

    def _ref(self, version: kms_v1.CryptoKeyVersion, spec: KeySpec) -> ProviderKeyRef:
        key_name, number = version.name.rsplit("/cryptoKeyVersions/", 1)
        return ProviderKeyRef(key_id=key_name, version=number,
                              extra={"spec": spec.value, "algorithm": version.algorithm.name})

    def _wait_ready(self, version: kms_v1.CryptoKeyVersion) -> kms_v1.CryptoKeyVersion:
        """HSM and asymmetric versions start PENDING_GENERATION on the real service."""
        deadline = time.monotonic() + max(self.timeout, 30.0)
        while version.state in (State.PENDING_GENERATION, State.PENDING_IMPORT):
            if time.monotonic() > deadline:
                raise ProviderUnavailable(f"gcp kms: {version.name} still {version.state.name}")
            time.sleep(0.2)
            version = self._rpc("get_crypto_key_version", {"name": version.name})
        if version.state in (State.GENERATION_FAILED, State.IMPORT_FAILED):
            raise ProviderError(f"gcp kms: {version.name} is {version.state.name}")
        return version

    # ------------------------------------------------------------------ algorithms
    def _algorithm(self, spec: KeySpec, usage: KeyUsage) -> tuple[str, str]:
        """(purpose, algorithm) for a broker spec/usage."""
        if spec is KeySpec.SYMMETRIC_DEFAULT:
            return "ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION"
        if spec.is_hmac:
            return "MAC", f"HMAC_SHA{spec.hmac_bits}"
        if spec is KeySpec.ECC_NIST_P256:
            return "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256"
        if spec is KeySpec.ECC_NIST_P384:
            return "ASYMMETRIC_SIGN", "EC_SIGN_P384_SHA384"
        if spec.is_rsa:
            bits = spec.rsa_bits
            if usage is KeyUsage.SIGN_VERIFY:
                h = self.rsa_sign_hash if bits == 4096 else "SHA256"
                return "ASYMMETRIC_SIGN", f"RSA_SIGN_{self.rsa_sign_padding}_{bits}_{h}"
            h = self.rsa_decrypt_hash if (bits == 4096 or self.rsa_decrypt_hash != "SHA512") else "SHA256"
            return "ASYMMETRIC_DECRYPT", f"RSA_DECRYPT_OAEP_{bits}_{h}"
        raise ProviderUnsupported(f"key spec {spec.value}")

    @staticmethod
    def _gcp_algorithm(ref: ProviderKeyRef) -> str:
        return str(ref.extra.get("algorithm", ""))

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def _key_id(label: str) -> str:
        return f"kmsb-{_ID_BAD.sub('-', label)[:40]}-{uuid.uuid4().hex[:10]}"

    def _labels(self, label: str, spec: KeySpec, usage: KeyUsage) -> dict[str, str]:
        def clean(value: str) -> str:
            return _LABEL_BAD.sub("-", value.lower())[:63]
        return {"kms-broker-label": clean(label), "kms-broker-spec": clean(spec.value),
                "kms-broker-usage": clean(usage.value)}

    def _create_crypto_key(self, spec: KeySpec, usage: KeyUsage, label: str, *, import_only: bool) -> kms_v1.CryptoKey:
        """A new CryptoKey under an id this call chose (random suffix). The client retries a create whose answer
        was lost (UNAVAILABLE, DEADLINE_EXCEEDED) with the same id: when the first attempt had landed, Cloud KMS
        answers ALREADY_EXISTS, and that key is the one this call made (checked: the labels and purpose it asked
        for), not a failure."""
        self._ensure_ring()
        purpose, algorithm = self._algorithm(spec, usage)
        key_id, labels = self._key_id(label), self._labels(label, spec, usage)
        try:
            return self._client.create_crypto_key(request={
                "parent": self.key_ring_name, "crypto_key_id": key_id, "skip_initial_version_creation": import_only,
                "crypto_key": {"purpose": purpose, "import_only": import_only, "labels": labels,
                               "destroy_scheduled_duration": self.destroy_scheduled,
                               "version_template": {"algorithm": algorithm,
                                                    "protection_level": self.protection_level}}},
                retry=self._retry, timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - mapped, never swallowed
            if not (isinstance(err, gexc.GoogleAPICallError) and _status(err) == "ALREADY_EXISTS"):
                raise _map_error(err) from None
        name = f"{self.key_ring_name}/cryptoKeys/{key_id}"
        key = self._rpc("get_crypto_key", {"name": name})
        if dict(key.labels) != labels or key.purpose.name != purpose or bool(key.import_only) != import_only:
            raise ProviderInvalidState(f"gcp kms: {name} exists and is not the key this create made")
        return key

    def create_key(self, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        key = self._create_crypto_key(spec, usage, label, import_only=False)
        first = f"{key.name}/cryptoKeyVersions/1"
        if key.primary.name == first:  # symmetric keys come back with their primary version: no second call
            return self._ref(self._wait_ready(key.primary), spec)
        return self._ref(self._wait_ready(self._rpc("get_crypto_key_version", {"name": first})), spec)

    def _make_primary(self, version: kms_v1.CryptoKeyVersion, spec: KeySpec) -> None:
        if spec is KeySpec.SYMMETRIC_DEFAULT:
            key_name, number = version.name.rsplit("/cryptoKeyVersions/", 1)
            self._rpc("update_crypto_key_primary_version", {"name": key_name, "crypto_key_version_id": number})

    def create_version(self, ref: ProviderKeyRef, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        """Rotation: a new CryptoKeyVersion; symmetric keys make it primary (the broker's latest)."""
        version = self._wait_ready(self._rpc("create_crypto_key_version",
                                             {"parent": ref.key_id, "crypto_key_version": {}}))
        self._make_primary(version, spec)
        return self._ref(version, spec)

    def _get_version(self, ref: ProviderKeyRef) -> kms_v1.CryptoKeyVersion:
        return self._rpc("get_crypto_key_version", {"name": self._version_name(ref)})

    def set_enabled(self, ref: ProviderKeyRef, enabled: bool) -> None:
        target = State.ENABLED if enabled else State.DISABLED
        if self._get_version(ref).state == target:
            return
        self._rpc("update_crypto_key_version", {
            "crypto_key_version": {"name": self._version_name(ref), "state": target},
            "update_mask": field_mask_pb2.FieldMask(paths=["state"])})

    def schedule_destruction(self, ref: ProviderKeyRef, days: int) -> None:
        """Schedule in Cloud KMS only when its destruction period outlasts the broker's window; else disable."""
        version = self._get_version(ref)
        if version.state in (State.DESTROY_SCHEDULED, State.DESTROYED):
            return
        key = self._rpc("get_crypto_key", {"name": ref.key_id})
        if key.destroy_scheduled_duration >= timedelta(days=days):
            self._rpc("destroy_crypto_key_version", {"name": version.name})
        else:
            self.set_enabled(ref, False)

    def cancel_destruction(self, ref: ProviderKeyRef) -> None:
        """Back to DISABLED, as the broker's cancelled keys are."""
        version = self._get_version(ref)
        if version.state == State.DESTROY_SCHEDULED:
            self._rpc("restore_crypto_key_version", {"name": version.name})
        elif version.state == State.DESTROYED:
            raise ProviderInvalidState(f"gcp kms: {version.name} is already destroyed")

    def destroy(self, ref: ProviderKeyRef) -> None:
        try:
            version = self._get_version(ref)
        except ProviderNotFound:
            return
        if version.state in (State.ENABLED, State.DISABLED):
            self._rpc("destroy_crypto_key_version", {"name": version.name})

    def stray_versions(self, held: Iterable[ProviderKeyRef]) -> dict[str, ProviderKeyRef]:
        """Cloud KMS numbers a key's versions 1, 2, 3, ...: a number the catalog skips below its highest is a
        version made and never registered (CreateCryptoKeyVersion is not idempotent: a retry after an answer lost
        on the wire makes a second version, and the catalog registers the one the retry answered). Only those
        numbers are read; a version above the highest may be a rotation in flight and is not looked at."""
        numbers: dict[str, set[int]] = {}
        for ref in held:
            if ref.version and ref.version.isdigit():
                numbers.setdefault(ref.key_id, set()).add(int(ref.version))
        out = {}
        for key_name, have in numbers.items():
            for number in range(1, max(have)):
                if number in have:
                    continue
                ref = ProviderKeyRef(key_id=key_name, version=str(number))
                try:
                    version = self._get_version(ref)
                except ProviderNotFound:
                    continue
                if version.state in (State.ENABLED, State.DISABLED):
                    out[version.name] = ref
        return out

    def discard(self, ref: ProviderKeyRef) -> None:
        """Cloud KMS destroys versions, not keys: a ref without a version (an inventoried key the broker never
        registered) names the key's first and only version."""
        super().discard(ref if ref.version else ProviderKeyRef(key_id=ref.key_id, version="1", extra=dict(ref.extra)))

    # ------------------------------------------------------------------ symmetric
    def encrypt(self, ref: ProviderKeyRef, plaintext: bytes, aad: bytes) -> bytes:
        name = self._version_name(ref)
        resp = self._rpc("encrypt", {"name": name, "plaintext": plaintext, "plaintext_crc32c": _crc(plaintext),
                                     "additional_authenticated_data": aad,
                                     "additional_authenticated_data_crc32c": _crc(aad)})
        _require(resp.verified_plaintext_crc32c and resp.verified_additional_authenticated_data_crc32c,
                 "encrypt request")
        _require(resp.name == name, "encrypt key version")
        _require(resp.ciphertext_crc32c == _crc(resp.ciphertext), "encrypt response")
        return resp.ciphertext

    def decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, aad: bytes) -> bytes:
        resp = self._rpc("decrypt", {"name": ref.key_id, "ciphertext": ciphertext, "ciphertext_crc32c": _crc(ciphertext),
                                     "additional_authenticated_data": aad,
                                     "additional_authenticated_data_crc32c": _crc(aad)}, decrypting=True)
        _require(resp.plaintext_crc32c == _crc(resp.plaintext), "decrypt response")
        return resp.plaintext

    # ------------------------------------------------------------------ asymmetric
    def get_public_key(self, ref: ProviderKeyRef) -> bytes:
        resp = self._rpc("get_public_key", {"name": self._version_name(ref)})
        _require(resp.pem_crc32c == _crc(resp.pem.encode()), "public key")
        _require(resp.name == self._version_name(ref), "public key version")
        public = serialization.load_pem_public_key(resp.pem.encode())
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def asymmetric_decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        gcp = self._gcp_algorithm(ref)
        wanted = {EncryptionAlgorithm.RSAES_OAEP_SHA_1: "_SHA1", EncryptionAlgorithm.RSAES_OAEP_SHA_256: "_SHA256"}
        if algorithm not in wanted or not gcp.endswith(wanted[algorithm]):
            raise ProviderUnsupported(f"asymmetric_decrypt with {algorithm.value}: this version does {gcp}")
        resp = self._rpc("asymmetric_decrypt", {"name": self._version_name(ref), "ciphertext": ciphertext,
                                                "ciphertext_crc32c": _crc(ciphertext)}, decrypting=True)
        _require(resp.verified_ciphertext_crc32c, "asymmetric_decrypt request")
        _require(resp.plaintext_crc32c == _crc(resp.plaintext), "asymmetric_decrypt response")
        return resp.plaintext

    @staticmethod
    def _signing_algorithm(gcp: str) -> SigningAlgorithm | None:
        m = re.fullmatch(r"RSA_SIGN_(PSS|PKCS1)_\d+_SHA(\d+)|EC_SIGN_P\d+_SHA(\d+)", gcp)
        if not m:
            return None
        if m.group(3):
            return SigningAlgorithm(f"ECDSA_SHA_{m.group(3)}")
        return SigningAlgorithm(f"RSASSA_{'PSS' if m.group(1) == 'PSS' else 'PKCS1_V1_5'}_SHA_{m.group(2)}")

    def sign(self, ref: ProviderKeyRef, digest: bytes, algorithm: SigningAlgorithm) -> bytes:
        """Cloud KMS returns ECDSA signatures DER-encoded already, as the broker wants them."""
        gcp = self._gcp_algorithm(ref)
        if self._signing_algorithm(gcp) is not algorithm:
            raise ProviderUnsupported(f"sign with {algorithm.value}: this version does {gcp or 'no signing'}")
        name = self._version_name(ref)
        resp = self._rpc("asymmetric_sign", {"name": name, "digest": {algorithm.hash_name: digest},
                                             "digest_crc32c": _crc(digest)})
        _require(resp.verified_digest_crc32c, "sign request")
        _require(resp.name == name, "sign key version")
        _require(resp.signature_crc32c == _crc(resp.signature), "sign response")
        return resp.signature

    # ------------------------------------------------------------------ MAC
    def generate_mac(self, ref: ProviderKeyRef, message: bytes, algorithm: MacAlgorithm) -> bytes:
        gcp = self._gcp_algorithm(ref)
        if gcp != f"HMAC_{algorithm.hash_name.upper()}":
            raise ProviderUnsupported(f"generate_mac with {algorithm.value}: this version does {gcp or 'no MAC'}")
        name = self._version_name(ref)
        resp = self._rpc("mac_sign", {"name": name, "data": message, "data_crc32c": _crc(message)})
        _require(resp.verified_data_crc32c, "mac request")
        _require(resp.name == name, "mac key version")
        _require(resp.mac_crc32c == _crc(resp.mac), "mac response")
        return resp.mac

    # ------------------------------------------------------------------ import
    def _import_job(self, method: str) -> kms_v1.ImportJob:
        self._ensure_ring()
        job = self._rpc("create_import_job", {
            "parent": self.key_ring_name, "import_job_id": f"kmsb-import-{uuid.uuid4().hex[:16]}",
            "import_job": {"import_method": method, "protection_level": self.protection_level}})
        deadline = time.monotonic() + max(self.timeout, 30.0)
        while job.state == kms_v1.ImportJob.ImportJobState.PENDING_GENERATION:
            if time.monotonic() > deadline:
                raise ProviderUnavailable(f"gcp kms: import job {job.name} is still being generated")
            time.sleep(0.2)
            job = self._rpc("get_import_job", {"name": job.name})
        if job.state != kms_v1.ImportJob.ImportJobState.ACTIVE:
            raise ProviderInvalidState(f"gcp kms: import job {job.name} is {job.state.name}")
        return job

    def _params(self, job: kms_v1.ImportJob) -> ImportParameters:
        public = serialization.load_pem_public_key(job.public_key.pem.encode())
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        method = kms_v1.ImportJob.ImportMethod(job.import_method).name
        return ImportParameters(public_key_der=der, wrapping_algorithms=_IMPORT_METHODS[method],
                                handle={"import_job": job.name, "import_method": method})

    def begin_import(self, spec: KeySpec, ref: ProviderKeyRef | None = None) -> ImportParameters:
        """An import job (Cloud KMS's import parameters belong to a job, not to a key)."""
        return self._params(self._import_job(self.import_method))

    def _import_version(self, key_name: str, job_name: str, spec: KeySpec, usage: KeyUsage,
                        wrapped: bytes, *, into: str | None = None) -> kms_v1.CryptoKeyVersion:
        _, algorithm = self._algorithm(spec, usage)
        request: dict[str, Any] = {"parent": key_name, "import_job": job_name, "algorithm": algorithm,
                                   "wrapped_key": wrapped}
        if into is not None:
            request["crypto_key_version"] = into
        try:
            version = self._import_once(request)
        except ProviderInvalidInput as err:
            if "unwrap" in str(err).lower():
                raise ProviderInvalidCiphertext(str(err)) from None
            raise
        version = self._wait_ready(version)
        self._make_primary(version, spec)
        return version

    def _import_once(self, request: Mapping[str, Any]) -> kms_v1.CryptoKeyVersion:
        """ImportCryptoKeyVersion, retried like every call but never twice into one key: it is not idempotent (a
        retry after an answer lost on the wire made a second version with the same material, live and tracked by
        nobody). The import job is this call's own and Cloud KMS records it on the version it makes, so before
        each retry the key's versions are searched for one made with it: that is the version this import made."""
        deadline, delay = time.monotonic() + self.timeout, 0.1
        while True:
            try:
                return self._client.import_crypto_key_version(request=request, retry=None, timeout=self.timeout)
            except Exception as err:  # noqa: BLE001 - mapped, never swallowed
                if self._retry is None or not _retryable(err) or time.monotonic() + delay > deadline:
                    raise _map_error(err) from None
            made = self._version_imported_by(str(request["parent"]), str(request["import_job"]))
            if made is not None:
                return made
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _version_imported_by(self, key_name: str, job_name: str) -> kms_v1.CryptoKeyVersion | None:
        try:
            versions = self._client.list_crypto_key_versions(request={"parent": key_name}, retry=self._retry,
                                                             timeout=self.timeout)
            return next((v for v in versions if v.import_job == job_name), None)
        except Exception as err:  # noqa: BLE001 - mapped
            raise _map_error(err) from None

    def finish_import(self, handle: Mapping[str, Any], spec: KeySpec, usage: KeyUsage, wrapped_material: bytes,
                      wrapping_algorithm: str, *, label: str, ref: ProviderKeyRef | None = None) -> ProviderKeyRef:
        """A first import makes a new import-only CryptoKey. A re-import (`ref`) goes into the key's own version,
        which Cloud KMS allows once the version is DESTROYED and only with the same material (it checks). While
        the version is still scheduled for destruction (its key's destroy_scheduled_duration after
        DeleteImportedKeyMaterial) the material is not gone yet and nothing can prove the new material is the
        same, so the re-import is refused until then."""
        method = str(handle.get("import_method", ""))
        if wrapping_algorithm not in _IMPORT_METHODS.get(method, ()):
            raise ProviderInvalidInput(f"wrapping algorithm {wrapping_algorithm} does not match import method {method}")
        if ref is not None:
            version = self._get_version(ref)
            if version.state in (State.ENABLED, State.DISABLED):
                raise ProviderInvalidState(f"gcp kms: {version.name} still holds its material; Cloud KMS imports "
                                           "only into a destroyed version")
            if version.state == State.DESTROY_SCHEDULED:
                raise ProviderInvalidState(f"gcp kms: {version.name} is scheduled for destruction until "
                                           f"{version.destroy_time.isoformat()}; Cloud KMS re-imports into it only "
                                           "once it is destroyed")
            version = self._import_version(ref.key_id, str(handle["import_job"]), spec, usage, wrapped_material,
                                           into=version.name)
            return self._ref(version, spec)
        key = self._create_crypto_key(spec, usage, label, import_only=True)
        version = self._import_version(key.name, str(handle["import_job"]), spec, usage, wrapped_material)
        return self._ref(version, spec)

    def delete_imported_material(self, ref: ProviderKeyRef) -> ProviderKeyRef:
        """Cloud KMS's way: destroy the version (after the key's destroy_scheduled_duration); the CryptoKey and the
        version stay, to be re-imported into with the same material."""
        self.destroy(ref)
        return ref

    def byok_import(self, spec: KeySpec, usage: KeyUsage, wrap: WrapForImport, *, label: str,
                    ref: ProviderKeyRef | None = None) -> ProviderKeyRef:
        """HSM-born material through an RSA_OAEP_3072_SHA1_AES_256 import job; `wrap` runs inside the HSM."""
        params = self._params(self._import_job(_BYOK_METHOD))
        wrapped = wrap(params.public_key_der, "RSA_AES_KEY_WRAP_SHA_1")
        key_name = ref.key_id if ref is not None else self._create_crypto_key(spec, usage, label, import_only=True).name
        version = self._import_version(key_name, str(params.handle["import_job"]), spec, usage, wrapped)
        return self._ref(version, spec)

    # ------------------------------------------------------------------ misc
    def random(self, n: int) -> bytes:
        """GenerateRandomBytes serves 8..1024 bytes per call (HSM level only)."""
        out = bytearray()
        while len(out) < n:
            ask = min(max(n - len(out), 8), 1024)
            resp = self._rpc("generate_random_bytes", {"location": self.location_name, "length_bytes": ask,
                                                       "protection_level": "HSM"})
            _require(resp.data_crc32c == _crc(resp.data) and len(resp.data) == ask, "random bytes")
            out += resp.data
        return bytes(out[:n])

    def _has_enabled_version(self, key_name: str) -> bool:
        try:
            versions = self._client.list_crypto_key_versions(request={"parent": key_name}, retry=self._retry,
                                                             timeout=self.timeout)
            return any(v.state == State.ENABLED for v in versions)
        except Exception as err:  # noqa: BLE001 - mapped
            raise _map_error(err) from None

    def inventory(self) -> Iterable[InventoryItem]:
        self._ensure_ring()
        try:
            keys = list(self._client.list_crypto_keys(request={"parent": self.key_ring_name}, retry=self._retry,
                                                      timeout=self.timeout))
        except Exception as err:  # noqa: BLE001 - mapped
            raise _map_error(err) from None
        by_alg = {}
        for spec_, usages in ALLOWED_USAGES.items():
            for usage_ in usages:
                try:
                    by_alg[self._algorithm(spec_, usage_)[1]] = (spec_, usage_)
                except ProviderUnsupported:
                    continue  # a spec Cloud KMS has no algorithm for (e.g. ECC_NIST_P521) is never in its inventory
        # a key without a primary version is enabled when one of its versions is: asymmetric keys never have a
        # primary, and an import-only key a crash left between its create and its import has no version at all
        # (no material; reading it as enabled reported it as a live key forever, since Cloud KMS deletes no key)
        no_primary = [key.name for key in keys if not key.primary.name]
        live = dict(zip(no_primary, map_bounded(self._has_enabled_version, no_primary), strict=True))
        for key in keys:
            spec, usage = by_alg.get(key.version_template.algorithm.name, (None, None))
            enabled = key.primary.state == State.ENABLED if key.primary.name else live[key.name]
            yield InventoryItem(key_id=key.name, spec=spec, usage=usage, enabled=enabled, created_at=key.create_time,
                                description=dict(key.labels).get("kms-broker-label", ""), tags=dict(key.labels),
                                label=dict(key.labels).get("kms-broker-label") or None)

