"""Azure Key Vault / Managed HSM provider (azure-keyvault-keys).

Standard vault: RSA and EC keys natively; a broker symmetric key is an RSA key that only wraps data keys
(RSA-OAEP-256) and the service composes the AEAD. Managed HSM (`managed_hsm = true`): symmetric keys are
`oct-HSM` AES-256 keys with native AES-GCM.

Deletion follows the broker's window: `schedule_destruction` soft-deletes the Key Vault key, `cancel_destruction`
recovers it, `destroy` purges it. Key Vault cannot delete one version of a live key, so destroying a single version
(e.g. a losing concurrent rotation) disables it and tags it instead.

A create, rotation (a create of the key's name: a new version) or import is sent once and tagged with a nonce: Key
Vault makes a version for every such request that lands, so after a lost answer the provider takes the version
carrying its nonce instead of sending it again (`_made_once`).

Settings: `vault_url`, `token` (static bearer token, for the local emulator; otherwise azure-identity's
DefaultAzureCredential), `ca_bundle`, `managed_hsm`, `timeout` (seconds), `retries`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy
from azure.core.rest import HttpRequest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyType
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    KeyWrapAlgorithm,
)
from azure.keyvault.keys.crypto import (
    EncryptionAlgorithm as AzEnc,
)
from azure.keyvault.keys.crypto import (
    SignatureAlgorithm as AzSig,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from broker.model import EncryptionAlgorithm, KeySpec, KeyUsage, SigningAlgorithm
from providers.base import (
    Capabilities,
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
)

T = TypeVar("T")
_NAME_BAD = re.compile(r"[^0-9a-zA-Z-]")
_TAG_LABEL, _TAG_SPEC, _TAG_USAGE, _TAG_DESTROYED = ("kms-broker-label", "kms-broker-spec", "kms-broker-usage",
                                                      "kms-broker-destroyed")
_TAG_MADE_BY = "kms-broker-made-by"  # a nonce per create/import call: the version it made, after a lost answer
_STATE_CODES = {"KeyDisabled", "KeyExpired", "KeyNotYetValid"}
_GCM_IV, _GCM_TAG = 12, 16
_SIGN_ALGS = {
    SigningAlgorithm.RSASSA_PSS_SHA_256: AzSig.ps256, SigningAlgorithm.RSASSA_PSS_SHA_384: AzSig.ps384,
    SigningAlgorithm.RSASSA_PSS_SHA_512: AzSig.ps512, SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256: AzSig.rs256,
    SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_384: AzSig.rs384, SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_512: AzSig.rs512,
    SigningAlgorithm.ECDSA_SHA_256: AzSig.es256, SigningAlgorithm.ECDSA_SHA_384: AzSig.es384,
}
_DECRYPT_ALGS = {EncryptionAlgorithm.RSAES_OAEP_SHA_1: AzEnc.rsa_oaep,
                 EncryptionAlgorithm.RSAES_OAEP_SHA_256: AzEnc.rsa_oaep_256}
_ASYMMETRIC = {
    KeySpec.RSA_2048: {"key_type": KeyType.rsa, "size": 2048},
    KeySpec.RSA_3072: {"key_type": KeyType.rsa, "size": 3072},
    KeySpec.RSA_4096: {"key_type": KeyType.rsa, "size": 4096},
    KeySpec.ECC_NIST_P256: {"key_type": KeyType.ec, "curve": "P-256"},
    KeySpec.ECC_NIST_P384: {"key_type": KeyType.ec, "curve": "P-384"},
}
_WRAPPING_RSA_BITS = 3072


class StaticTokenCredential:
    """A fixed bearer token (the local emulator accepts any, or the one it was started with)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self._token, int(time.time()) + 3600)

    def __repr__(self) -> str:
        return "StaticTokenCredential(<redacted>)"


class _LocalFallbackFilter(logging.Filter):
    """Drop the SDK's "Local … operation failed … does not allow" warning: going remote is what we want."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Local ") and "does not allow" in msg)


_crypto_log = logging.getLogger("azure.keyvault.keys.crypto._client")
if not any(isinstance(f, _LocalFallbackFilter) for f in _crypto_log.filters):
    _crypto_log.addFilter(_LocalFallbackFilter())


class _RefusedNotRetried(RetryPolicy):
    """The SDK's retry policy, except that a refused connection is not retried: it ends the call at once."""

    def increment(self, settings: dict[str, Any], response: Any = None, error: Exception | None = None) -> bool:
        if isinstance(error, ServiceRequestError) and connection_refused(error):
            return False
        return super().increment(settings, response=response, error=error)


def _map_error(err: AzureError, *, decrypting: bool = False) -> ProviderError:
    """Azure SDK exception -> provider error; messages carry codes and statuses, never data."""
    if isinstance(err, ServiceRequestError) and connection_refused(err):
        return ProviderUnreachable("azure key vault: endpoint refused the connection")
    if isinstance(err, ServiceRequestError | ServiceResponseError) or not isinstance(err, HttpResponseError):
        return ProviderUnavailable(f"azure key vault unreachable: {type(err).__name__}")
    status = err.status_code or 0
    code = err.error.code if err.error is not None else None
    inner_error = getattr(err.error, "innererror", None) if err.error is not None else None
    inner = inner_error.get("code") if isinstance(inner_error, dict) else None
    text = f"azure key vault: {code or 'error'} ({status})"
    if isinstance(err, ClientAuthenticationError) or status == 401:
        return ProviderAccessDenied(text)
    if isinstance(err, ResourceNotFoundError) or status == 404:
        return ProviderNotFound(text)
    if status == 403:
        message = err.error.message if err.error is not None and err.error.message else ""
        if inner in _STATE_CODES or any(w in message for w in ("disabled", "expired", "not yet valid")):
            return ProviderInvalidState(f"{text}: {message}")
        return ProviderAccessDenied(text)
    if status == 409:
        return ProviderInvalidState(text)
    if status == 429:
        retry = err.response.headers.get("Retry-After") if err.response is not None else None
        return ProviderThrottled(text, float(retry) if retry and retry.isdigit() else None)
    if status >= 500 or status in (408,):
        return ProviderUnavailable(text)
    if status == 400 and decrypting:
        return ProviderInvalidCiphertext(text)
    if status == 400:
        return ProviderInvalidInput(text)
    return ProviderError(text)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


class AzureProvider(Provider):
    kind = "azure"

    def __init__(self, name: str, *, vault_url: str, credential: Any, ca_bundle: str | None = None,
                 managed_hsm: bool = False, timeout: float = 10.0, retries: int = 2) -> None:
        super().__init__(name)
        self.vault_url = vault_url.rstrip("/")
        self.managed_hsm = managed_hsm
        self._credential = credential
        self._kwargs: dict[str, Any] = {
            "verify_challenge_resource": not _is_local(self.vault_url), "connection_timeout": timeout,
            "read_timeout": timeout,
            "retry_policy": _RefusedNotRetried(retry_total=retries, retry_backoff_factor=0.2),
        }
        if ca_bundle:
            self._kwargs["connection_verify"] = ca_bundle
        self._keys = KeyClient(self.vault_url, credential, **self._kwargs)
        self.retries = retries
        self._crypto: dict[str, CryptographyClient] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> AzureProvider:
        vault_url = config.get("vault_url")
        if not vault_url:
            raise ValueError(f"provider {name!r}: 'vault_url' is required")
        token = config.get("token")
        if token:
            credential: Any = StaticTokenCredential(str(token))
        else:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return cls(name, vault_url=str(vault_url), credential=credential, ca_bundle=config.get("ca_bundle"),
                   managed_hsm=bool(config.get("managed_hsm", False)), timeout=float(config.get("timeout", 10.0)),
                   retries=int(config.get("retries", 2)))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            key_specs=frozenset({KeySpec.SYMMETRIC_DEFAULT, *_ASYMMETRIC}),
            native_symmetric=self.managed_hsm, wrap_data_key=True, asymmetric_decrypt=True, sign=True,
            random=True, inventory=True, byok_import=True,
        )

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _call(fn: Callable[[], T], *, decrypting: bool = False) -> T:
        try:
            return fn()
        except AzureError as err:
            raise _map_error(err, decrypting=decrypting) from None

    def _kid(self, ref: ProviderKeyRef) -> str:
        return f"{self.vault_url}/keys/{ref.key_id}/{ref.version or ''}".rstrip("/")

    def _crypto_client(self, ref: ProviderKeyRef) -> CryptographyClient:
        """One client per key version, built from the id (never from a KeyVaultKey: see the module docs)."""
        kid = self._kid(ref)
        with self._lock:
            client = self._crypto.get(kid)
            if client is None:
                client = self._crypto[kid] = CryptographyClient(kid, self._credential, **self._kwargs)
            return client

    def _is_oct(self, ref: ProviderKeyRef) -> bool:
        return str(ref.extra.get("kty", "")).startswith("oct")

    def _ref(self, key: Any, spec: KeySpec) -> ProviderKeyRef:
        return ProviderKeyRef(key_id=key.name, version=key.properties.version,
                              extra={"kty": str(key.key_type.value if hasattr(key.key_type, "value") else key.key_type),
                                     "spec": spec.value})

    def check_health(self) -> None:
        self._call(lambda: next(iter(self._keys.list_properties_of_keys(max_page_size=1).by_page()), None))

    def close(self) -> None:
        with self._lock:
            clients, self._crypto = list(self._crypto.values()), {}
        for c in clients:
            c.close()
        self._keys.close()

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def _name(label: str) -> str:
        """Key Vault names allow [0-9a-zA-Z-]{1,127}; a suffix keeps a re-used label off a soft-deleted name."""
        return f"kmsb-{_NAME_BAD.sub('-', label)[:100]}-{uuid.uuid4().hex[:8]}"

    def _create(self, name: str, spec: KeySpec, usage: KeyUsage, label: str) -> ProviderKeyRef:
        tags = {_TAG_LABEL: label[:256], _TAG_SPEC: spec.value, _TAG_USAGE: usage.value}
        if spec is KeySpec.SYMMETRIC_DEFAULT:
            if self.managed_hsm:
                kwargs: dict[str, Any] = {"key_type": KeyType.oct_hsm, "size": 256,
                                          "key_operations": ["encrypt", "decrypt", "wrapKey", "unwrapKey"]}
            else:
                kwargs = {"key_type": KeyType.rsa, "size": _WRAPPING_RSA_BITS,
                          "key_operations": ["wrapKey", "unwrapKey"]}
        elif spec in _ASYMMETRIC:
            ops = ["sign", "verify"] if usage is KeyUsage.SIGN_VERIFY else ["encrypt", "decrypt"]
            kwargs = {**_ASYMMETRIC[spec], "key_operations": ops}
        else:
            raise ProviderUnsupported(f"key spec {spec.value}")
        key = self._made_once(name, tags, lambda t, once: self._keys.create_key(name, tags=t, **kwargs, **once))
        return self._ref(key, spec)

    def _made_once(self, name: str, tags: Mapping[str, str], send: Callable[[dict[str, str], dict[str, Any]], Any]
                   ) -> Any:
        """Send a create or import of `name` (`send(tags, once)`) so that it makes one version. Key Vault makes a
        new version for every such request that lands: azure-core retried an import (a PUT) whose answer was
        lost on the wire, and the retry made a second version, live and registered by nobody (create and rotate
        are POSTs, which it does not retry: a lost answer failed the call after the version was made). So the
        SDK retries none of them after the request was sent (`once`); the call tags its version with a nonce
        and, when the answer is lost, takes the version carrying it, or sends again if there is none."""
        made_by = uuid.uuid4().hex
        for attempt in range(self.retries + 1):
            try:
                return send({**tags, _TAG_MADE_BY: made_by}, {"retry_read": 0})
            except ServiceResponseError as err:  # sent; the answer is lost: the version may be there
                made = self._version_made_by(name, made_by)
                if made is not None:
                    return made
                if attempt == self.retries:
                    raise _map_error(err) from None
            except AzureError as err:
                raise _map_error(err) from None
        raise AssertionError("unreachable")

    def _version_made_by(self, name: str, made_by: str) -> Any:
        try:
            for props in self._keys.list_properties_of_key_versions(name):
                if (props.tags or {}).get(_TAG_MADE_BY) == made_by:
                    return self._keys.get_key(name, props.version)
        except ResourceNotFoundError:
            return None
        except AzureError as err:
            raise _map_error(err) from None
        return None

    def create_key(self, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        return self._create(self._name(label), spec, usage, label)

    def create_version(self, ref: ProviderKeyRef, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        """A new Key Vault version of the same key (same type, size and key_ops): a create of the key's name, which
        Key Vault makes a version of it (RotateKey carries no tags, so a rotation whose answer was lost could not
        find the version it made)."""
        return self._create(ref.key_id, spec, usage, label)

    def set_enabled(self, ref: ProviderKeyRef, enabled: bool) -> None:
        self._call(lambda: self._keys.update_key_properties(ref.key_id, ref.version, enabled=enabled))

    def _deleted(self, name: str) -> bool:
        try:
            self._keys.get_deleted_key(name)
            return True
        except ResourceNotFoundError:
            return False

    def schedule_destruction(self, ref: ProviderKeyRef, days: int) -> None:
        """Soft-delete the whole key (every version); idempotent across the key's versions."""
        def run() -> None:
            try:
                self._keys.begin_delete_key(ref.key_id).result()
            except ResourceNotFoundError:
                if not self._deleted(ref.key_id):
                    raise
        self._call(run)

    def cancel_destruction(self, ref: ProviderKeyRef) -> None:
        def run() -> None:
            try:
                self._keys.begin_recover_deleted_key(ref.key_id).result()
            except ResourceNotFoundError:
                self._keys.get_key(ref.key_id)  # already recovered: fine; gone: NotFound
        self._call(run)

    def destroy(self, ref: ProviderKeyRef) -> None:
        """Purge a soft-deleted key; on a live key only this version can go, so disable and tag it."""
        def run() -> None:
            if self._deleted(ref.key_id):
                self._keys.purge_deleted_key(ref.key_id)
                return
            try:
                self._keys.update_key_properties(ref.key_id, ref.version, enabled=False, tags={_TAG_DESTROYED: "true"})
            except ResourceNotFoundError:
                return  # purged already (another version of the same key got there first)
        self._call(run)
        with self._lock:
            self._crypto.pop(self._kid(ref), None)

    # ------------------------------------------------------------------ symmetric
    def _remote_op(self, ref: ProviderKeyRef, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a crypto op to the service with the KeyClient pipeline (auth, retries, TLS settings).

        Not CryptographyClient, which does public-key ops locally after a GET (so a disabled or expired version
        would still wrap) and, for oct-HSM keys whose GET has no `k`, invents a random local key
        (azure-keyvault-keys 4.11). Private-key ops (unwrap, decrypt, sign) always go remote there, so they use it.
        """
        payload = {k: (_b64(v) if isinstance(v, bytes) else v) for k, v in body.items()}
        request = HttpRequest("POST", f"{self.vault_url}/keys/{ref.key_id}/{ref.version or ''}/{op}",
                              params={"api-version": self._keys.api_version}, json=payload)

        def run() -> dict[str, Any]:
            response = self._keys.send_request(request)
            if response.status_code >= 400:
                raise HttpResponseError(response=response)
            return response.json()
        result = self._call(run, decrypting=op == "decrypt")
        return {k: base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)) for k, v in result.items()
                if k in ("value", "iv", "tag")}

    def encrypt(self, ref: ProviderKeyRef, plaintext: bytes, aad: bytes) -> bytes:
        if not self._is_oct(ref):
            raise ProviderUnsupported("encrypt: this vault composes symmetric encryption from wrap_data_key")
        body: dict[str, Any] = {"alg": "A256GCM", "value": plaintext}
        if aad:
            body["aad"] = aad
        out = self._remote_op(ref, "encrypt", body)
        return out["iv"] + out["value"] + out["tag"]

    def decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, aad: bytes) -> bytes:
        if not self._is_oct(ref):
            raise ProviderUnsupported("decrypt: this vault composes symmetric encryption from wrap_data_key")
        if len(ciphertext) < _GCM_IV + _GCM_TAG:
            raise ProviderInvalidCiphertext("ciphertext too short")
        body: dict[str, Any] = {"alg": "A256GCM", "iv": ciphertext[:_GCM_IV], "value": ciphertext[_GCM_IV:-_GCM_TAG],
                                "tag": ciphertext[-_GCM_TAG:]}
        if aad:
            body["aad"] = aad
        return self._remote_op(ref, "decrypt", body)["value"]

    def wrap_data_key(self, ref: ProviderKeyRef, data_key: bytes) -> bytes:
        if self._is_oct(ref):
            return self._remote_op(ref, "wrapkey", {"alg": "A256KW", "value": data_key})["value"]
        return self._remote_op(ref, "wrapkey", {"alg": KeyWrapAlgorithm.rsa_oaep_256.value, "value": data_key})["value"]

    def unwrap_data_key(self, ref: ProviderKeyRef, wrapped: bytes) -> bytes:
        if self._is_oct(ref):
            body = {"alg": "A256KW", "value": wrapped}
            try:
                return self._remote_op(ref, "unwrapkey", body)["value"]
            except ProviderInvalidInput as err:
                raise ProviderInvalidCiphertext(str(err)) from None
        cc = self._crypto_client(ref)
        return self._call(lambda: cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key, decrypting=True)

    # ------------------------------------------------------------------ asymmetric
    def get_public_key(self, ref: ProviderKeyRef) -> bytes:
        key = self._call(lambda: self._keys.get_key(ref.key_id, ref.version))
        jwk = key.key
        if key.key_type in (KeyType.rsa, KeyType.rsa_hsm):
            public: Any = rsa.RSAPublicNumbers(_int(jwk.e), _int(jwk.n)).public_key()
        elif key.key_type in (KeyType.ec, KeyType.ec_hsm):
            curve = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}[str(getattr(jwk.crv, "value", jwk.crv))]
            public = ec.EllipticCurvePublicNumbers(_int(jwk.x), _int(jwk.y), curve()).public_key()
        else:
            raise ProviderUnsupported("get_public_key: symmetric key")
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def asymmetric_decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        alg = _DECRYPT_ALGS.get(algorithm)
        if alg is None:
            raise ProviderUnsupported(f"asymmetric_decrypt with {algorithm.value}")
        cc = self._crypto_client(ref)
        return self._call(lambda: cc.decrypt(alg, ciphertext).plaintext, decrypting=True)

    def sign(self, ref: ProviderKeyRef, digest: bytes, algorithm: SigningAlgorithm) -> bytes:
        """Key Vault returns ECDSA as JWS r‖s; the broker wants DER."""
        alg = _SIGN_ALGS[algorithm]
        cc = self._crypto_client(ref)
        signature = self._call(lambda: cc.sign(alg, digest).signature)
        if algorithm.is_ecdsa:
            half = len(signature) // 2
            return utils.encode_dss_signature(_int(signature[:half]), _int(signature[half:]))
        return signature

    # ------------------------------------------------------------------ BYOK
    def byok_import(
        self, spec: KeySpec, usage: KeyUsage, wrap: WrapForImport, *, label: str, ref: ProviderKeyRef | None = None,
    ) -> ProviderKeyRef:
        """Azure BYOK: a throwaway import-only RSA-HSM KEK, material wrapped for it by the broker's HSM
        (OAEP-SHA-1 of an ephemeral AES key ‖ RFC 5649: CKM_RSA_AES_KEY_WRAP), sent as a `key_hsm` blob.
        `ref` imports a new version of that key. The KEK is deleted and purged afterwards."""
        if spec is KeySpec.SYMMETRIC_DEFAULT and self.managed_hsm:
            kty, ops = KeyType.oct_hsm, ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
        elif spec.is_rsa:
            kty = KeyType.rsa_hsm
            ops = ["sign", "verify"] if usage is KeyUsage.SIGN_VERIFY else ["encrypt", "decrypt"]
        elif spec in _ASYMMETRIC:
            kty, ops = KeyType.ec_hsm, ["sign", "verify"]
        else:
            raise ProviderUnsupported(f"byok_import of {spec.value} on this vault")
        name = ref.key_id if ref else self._name(label)
        kek_name = f"{name[:110]}-kek-{uuid.uuid4().hex[:8]}"
        kek = self._call(lambda: self._keys.create_rsa_key(kek_name, size=_WRAPPING_RSA_BITS, hardware_protected=True,
                                                           key_operations=["import"]))
        try:
            kek_der = rsa.RSAPublicNumbers(_int(kek.key.e), _int(kek.key.n)).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            wrapped = wrap(kek_der, "RSA_AES_KEY_WRAP_SHA_1")
            blob = json.dumps({"schema_version": "1.0.0", "generator": "kms-broker",
                               "header": {"kid": kek.id, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
                               "ciphertext": _b64(wrapped)}).encode()
            tags = {_TAG_LABEL: label[:256], _TAG_SPEC: spec.value, _TAG_USAGE: usage.value}
            jwk = JsonWebKey(kty=kty, key_ops=ops, t=blob)
            if kty == KeyType.ec_hsm:
                jwk.crv = _ASYMMETRIC[spec]["curve"]
            key = self._made_once(name, tags, lambda t, once: self._keys.import_key(
                name, jwk, hardware_protected=True, tags=t, **once))
        finally:
            self._discard_kek(kek_name)
        return self._ref(key, spec)

    def _discard_kek(self, kek_name: str) -> None:
        try:
            self._keys.begin_delete_key(kek_name).result()
            self._keys.purge_deleted_key(kek_name)
        except AzureError:
            logging.getLogger(__name__).warning("could not remove BYOK key exchange key %s", kek_name)

    # ------------------------------------------------------------------ misc
    def random(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = min(128, n - len(out))
            out += self._call(lambda c=chunk: self._keys.get_random_bytes(c))
        return bytes(out)

    def inventory(self) -> Iterable[InventoryItem]:
        def run() -> list[InventoryItem]:
            items = []
            for props in self._keys.list_properties_of_keys():
                tags = dict(props.tags or {})
                spec, usage = tags.get(_TAG_SPEC), tags.get(_TAG_USAGE)
                items.append(InventoryItem(
                    key_id=props.name, spec=KeySpec(spec) if spec in KeySpec.__members__ else None,
                    usage=KeyUsage(usage) if usage in KeyUsage.__members__ else None,
                    enabled=bool(props.enabled), created_at=props.created_on or datetime.fromtimestamp(0, UTC),
                    tags=tags, label=tags.get(_TAG_LABEL) or None))
            return items
        return self._call(run)


def _is_local(url: str) -> bool:
    """Loopback vaults (the emulator) cannot pass the SDK's challenge-resource domain check."""
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")
