"""The Provider protocol: what the broker core may ask of a key backend, and what it must declare.

The core never branches on a provider's kind. It reads `Capabilities` and composes what a backend lacks (e.g. a
symmetric key on a backend that can only wrap data keys: the service AEADs locally under a fresh data key and asks
the provider to wrap it). A provider only adds a module and a line in `registry.KINDS`.

Every provider method that touches a key takes a `ProviderKeyRef`, the provider's own pointer to one key
*version*. The broker stores refs opaquely (as `to_dict()`), so a provider is free in what it puts there — with
one rule: anything secret in a ref (e.g. pkcs11 material) must already be wrapped under the root KEK.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from broker.model import EncryptionAlgorithm, KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm

# --------------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ProviderKeyRef:
    """Where a provider keeps one key version.

    key_id:   the backend's id of the key (HSM label, AWS key id, Key Vault key name, GCP cryptoKey name, …)
    version:  the backend's id of the version, when the backend versions keys itself (None otherwise)
    material: secret material wrapped under the root KEK, for backends whose material the broker keeps
    extra:    anything else the provider needs back (strings/numbers only)
    """

    key_id: str
    version: str | None = None
    material: bytes | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key_id": self.key_id}
        if self.version is not None:
            out["version"] = self.version
        if self.material is not None:
            out["material"] = self.material.hex()
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProviderKeyRef:
        material = data.get("material")
        return cls(
            key_id=data["key_id"],
            version=data.get("version"),
            material=bytes.fromhex(material) if material else None,
            extra=dict(data.get("extra") or {}),
        )


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. The service refuses (with the missing capability named) what it cannot compose.

    key_specs:        specs the backend can create keys for. SYMMETRIC_DEFAULT is listed only when the backend
                      has either `native_symmetric` or `wrap_data_key`.
    native_symmetric: `encrypt`/`decrypt` with AAD for SYMMETRIC_DEFAULT keys
    wrap_data_key:    `wrap_data_key`/`unwrap_data_key` for SYMMETRIC_DEFAULT keys (the service composes AEAD)
    asymmetric_decrypt, sign, mac: the obvious operations for RSA / RSA+ECC / HMAC keys
    import_material:  `begin_import`/`finish_import`: the caller supplies material wrapped for this backend
    byok_import:      `byok_import`: material born in the broker's HSM imported through the backend's import API
    random:           `random`
    inventory:        `inventory`: list keys that exist in the backend (adoption, drift detection)
    wrap_for_import:  its key versions can be wrapped for another backend's `byok_import` by the broker's root of
                      trust (`RootOfTrust.wrap_for_import`, inside the HSM): a replicated key's primary lives here
    wrap_specs:       the specs whose material that wrapping reproduces exactly (None: every spec it holds); an
                      HSM that pads a private key's encoding before AES key wrap cannot hand some specs on
    encryption_algorithms, signing_algorithms: the asymmetric algorithms the backend offers; None = every one
                      the key spec allows. The service neither advertises nor accepts the others.
    """

    key_specs: frozenset[KeySpec]
    native_symmetric: bool = False
    wrap_data_key: bool = False
    asymmetric_decrypt: bool = False
    sign: bool = False
    mac: bool = False
    import_material: bool = False
    byok_import: bool = False
    random: bool = False
    inventory: bool = False
    wrap_for_import: bool = False
    wrap_specs: frozenset[KeySpec] | None = None
    encryption_algorithms: frozenset[EncryptionAlgorithm] | None = None
    signing_algorithms: frozenset[SigningAlgorithm] | None = None

    def missing_for(self, spec: KeySpec) -> str | None:
        """The capability a key of `spec` needs that this backend lacks, or None."""
        if spec not in self.key_specs:
            return f"key spec {spec.value}"
        if spec is KeySpec.SYMMETRIC_DEFAULT and not (self.native_symmetric or self.wrap_data_key):
            return "symmetric encryption or data-key wrapping"
        return None


@dataclass(frozen=True)
class ImportParameters:
    """What `begin_import` hands back: the public key to wrap material with, and a handle to finish with."""

    public_key_der: bytes
    wrapping_algorithms: tuple[str, ...]
    handle: Mapping[str, Any]


@dataclass(frozen=True)
class InventoryItem:
    """A key found in a backend, whether or not the broker manages it.

    label: the `label` the broker passed to `create_key`/`byok_import` for this key (the broker key id), read back
           from wherever the backend keeps it (a tag, a label); None for a key the broker did not create.
    awaiting_material: not enabled, yet not disabled by anyone either: it holds no material (nothing can use it)
           and stays until it is scheduled for deletion.
    """

    key_id: str
    spec: KeySpec | None
    usage: KeyUsage | None
    enabled: bool
    created_at: datetime | None = None
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    label: str | None = None
    awaiting_material: bool = False  # a key made for an import whose material never came (PendingImport)


# (wrapping public key as DER SubjectPublicKeyInfo, wrapping algorithm name) -> wrapped material.
# Algorithm names: "RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1" (OAEP-SHA-1 of an ephemeral AES key ‖ RFC 5649).
# The broker implements it inside its HSM so HSM-born material never exists in clear outside it.
WrapForImport = Callable[[bytes, str], bytes]

# ---------------------------------------------------------------------------------------------------- errors


class ProviderError(Exception):
    """Base of what providers raise. Messages must never carry key material, plaintext or credentials."""


class ProviderUnavailable(ProviderError):
    """The backend cannot be reached, timed out, or is not ready (HSM missing or locked)."""


class ProviderUnreachable(ProviderUnavailable):
    """The backend's endpoint refused the connection: nothing listens there now. Providers do not retry this inside
    their SDKs (a retry milliseconds later meets the same closed port; the SDKs' backoff turned one refusal into
    seconds), so a caller with somewhere else to go, such as a multi-key's next member, goes there at once."""


def connection_refused(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) is a refused TCP connection: ConnectionRefusedError in
    the chain, or a transport (gRPC) that only reports it in its message."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, ConnectionRefusedError):
            return True
        if "connection refused" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


INVENTORY_WORKERS = 4  # describe calls in flight while a provider reads its inventory key by key


def map_bounded(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = INVENTORY_WORKERS) -> list[Any]:
    """[fn(item) for item in items] with at most `workers` calls in flight, in order: for backends whose listing
    names keys but whose state and labels take a call per key (a sequential read of 2,000 keys took ~15 s on
    LocalStack). The backends' own throttling answers are retried by their clients as usual."""
    items = list(items)
    if len(items) < 2 or workers < 2:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="kmsb-inventory") as pool:
        return list(pool.map(fn, items))


class ProviderNotFound(ProviderError):
    """The backend does not know the key or version."""


class ProviderAccessDenied(ProviderError):
    """The backend refused the broker's credentials for this operation."""


class ProviderThrottled(ProviderError):
    """The backend asked us to slow down; `retry_after` in seconds when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderInvalidState(ProviderError):
    """The backend holds the key in a state that forbids the operation (disabled, pending deletion, …)."""


class ProviderInvalidCiphertext(ProviderError):
    """Decryption or unwrap failed: wrong key, wrong AAD, or tampered data."""


class ProviderIntegrityError(ProviderError):
    """A response failed an integrity check (e.g. a CRC32C mismatch): the data cannot be trusted."""


class ProviderUnsupported(ProviderError):
    """The backend has no such operation for this key."""


class ProviderInvalidInput(ProviderError):
    """The backend rejected the input itself (e.g. imported material of the wrong length)."""


# -------------------------------------------------------------------------------------------------- protocol


class Provider(abc.ABC):
    """A key backend instance, named in settings (`[providers.<name>] kind = "..."`).

    Implementations must be safe to call from several threads. Methods for capabilities a backend does not
    declare raise ProviderUnsupported (the defaults below do).
    """

    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abc.abstractmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> Provider:
        """Build from the settings table of this instance (already merged with KMSB_* overrides)."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    def check_health(self) -> None:
        """Raise ProviderUnavailable when the backend cannot serve requests; cheap, called by /readyz."""

    def close(self) -> None:
        """Release connections and sessions."""

    # -- lifecycle
    @abc.abstractmethod
    def create_key(self, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        """Create material for version 1 of a broker key. `label` is the broker key id (for tags/names)."""

    @abc.abstractmethod
    def create_version(self, ref: ProviderKeyRef, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        """Create new material for the same key (rotation). Old versions must keep working."""

    def set_enabled(self, ref: ProviderKeyRef, enabled: bool) -> None:
        """Mirror the broker's enabled state onto the backend, where it has one. Default: nothing to do."""

    def schedule_destruction(self, ref: ProviderKeyRef, days: int) -> None:
        """Mirror a scheduled deletion onto the backend, where it has one. Default: nothing to do."""

    def cancel_destruction(self, ref: ProviderKeyRef) -> None:
        """Undo `schedule_destruction`. Default: nothing to do."""

    @abc.abstractmethod
    def destroy(self, ref: ProviderKeyRef) -> None:
        """Destroy the version's material for good (the broker's deletion window has passed)."""

    def destroyed_ref(self, ref: ProviderKeyRef) -> ProviderKeyRef:
        """What the catalog keeps of a version `destroy` made unusable: by default the ref without its material."""
        return ProviderKeyRef(key_id=ref.key_id, version=ref.version, extra=dict(ref.extra))

    # -- symmetric
    def encrypt(self, ref: ProviderKeyRef, plaintext: bytes, aad: bytes) -> bytes:
        raise ProviderUnsupported("encrypt")

    def decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, aad: bytes) -> bytes:
        raise ProviderUnsupported("decrypt")

    def wrap_data_key(self, ref: ProviderKeyRef, data_key: bytes) -> bytes:
        raise ProviderUnsupported("wrap_data_key")

    def unwrap_data_key(self, ref: ProviderKeyRef, wrapped: bytes) -> bytes:
        raise ProviderUnsupported("unwrap_data_key")

    # -- asymmetric
    def get_public_key(self, ref: ProviderKeyRef) -> bytes:
        """DER SubjectPublicKeyInfo. The service encrypts and verifies with it locally."""
        raise ProviderUnsupported("get_public_key")

    def asymmetric_decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        raise ProviderUnsupported("asymmetric_decrypt")

    def sign(self, ref: ProviderKeyRef, digest: bytes, algorithm: SigningAlgorithm) -> bytes:
        """Sign a digest the service computed with `algorithm.hash_name`. ECDSA signatures are DER-encoded."""
        raise ProviderUnsupported("sign")

    # -- MAC
    def generate_mac(self, ref: ProviderKeyRef, message: bytes, algorithm: MacAlgorithm) -> bytes:
        raise ProviderUnsupported("generate_mac")

    # -- import
    # Imported material belongs to one backend key for good (AWS: "you can re-import only the same material"):
    # `ref` is the key's existing version-1 ref (None for its first import), so a re-import lands in the same backend
    # key, and the provider refuses material that differs from what the key held — even after it was deleted
    # (ProviderInvalidInput). How a backend recognises its material is its own fact, kept in its refs.
    def begin_import(self, spec: KeySpec, ref: ProviderKeyRef | None = None) -> ImportParameters:
        raise ProviderUnsupported("begin_import")

    def finish_import(
        self, handle: Mapping[str, Any], spec: KeySpec, usage: KeyUsage, wrapped_material: bytes,
        wrapping_algorithm: str, *, label: str, ref: ProviderKeyRef | None = None,
    ) -> ProviderKeyRef:
        raise ProviderUnsupported("finish_import")

    def discard_import(self, handle: Mapping[str, Any]) -> None:
        """Forget the wrapping key of an import that expired or finished (never the key a re-import targets)."""

    def delete_imported_material(self, ref: ProviderKeyRef) -> ProviderKeyRef:
        """Delete a version's imported material but keep the key, so the same material can be imported again;
        returns the ref the catalog keeps (no material, whatever the provider needs to recognise it later)."""
        raise ProviderUnsupported("delete_imported_material")

    def byok_import(
        self, spec: KeySpec, usage: KeyUsage, wrap: WrapForImport, *, label: str, ref: ProviderKeyRef | None = None,
    ) -> ProviderKeyRef:
        """Import broker-held material through the backend's own import protocol; `ref` re-imports into a key."""
        raise ProviderUnsupported("byok_import")

    # -- misc
    def random(self, n: int) -> bytes:
        raise ProviderUnsupported("random")

    def inventory(self) -> Iterable[InventoryItem]:
        raise ProviderUnsupported("inventory")

    def ref_of(self, item: InventoryItem) -> ProviderKeyRef:
        """A ref to an inventoried key, enough for `discard` (the backend knows what its refs need)."""
        return ProviderKeyRef(key_id=item.key_id)

    def stray_versions(self, held: Iterable[ProviderKeyRef]) -> dict[str, ProviderKeyRef]:
        """Live versions inside the cloud keys of `held` (every version ref of one broker key) that are none of
        them and were made before the latest of them -> {the cloud's name of the version: a ref for `discard`}.
        Only a backend that numbers versions inside one cloud key can tell from the refs alone (a skipped number);
        it reads those versions and nothing else. The others (one cloud key per version, or unnumbered versions)
        have none to report."""
        return {}

    def discard(self, ref: ProviderKeyRef) -> None:
        """Make material the broker never registered unusable and destroy it as far as the backend allows (crash
        cleanup): disable, schedule for the shortest window, destroy. A key that is gone already is done; one
        that holds no material (awaiting an import) cannot be disabled and is scheduled all the same."""
        try:
            try:
                self.set_enabled(ref, False)
            except ProviderInvalidState:
                pass
            self.schedule_destruction(ref, 7)
            self.destroy(ref)
        except ProviderNotFound:
            return

# ------------------------------------------------------------------------------------------- root of trust


@dataclass(frozen=True)
class RootPackage:
    """The root-of-trust keys of one HSM, wrapped for exactly one recipient key (another HSM's transport key, or
    the backup key). Nothing in it is usable without the recipient's private key, which never leaves its HSM
    (transport) or exists only while M custodians' shares are combined (backup).

    wrapped_root / wrapped_hmac: the root KEK and the audit HMAC key, wrapped under the recipient public key
                   (RSA-OAEP inside the source HSM; only a key its security officer marked trusted can do that).
    wrapped_signing: the audit signing private key, wrapped under the root KEK (RFC 5649 inside the HSM).
    signing_public_key: SubjectPublicKeyInfo (DER) of the audit signing key (public).
    check:         a value sealed under the root KEK: the recipient unseals it to prove the right key arrived.
    recipient:     fingerprint of the recipient public key the package was made for.
    """

    wrapped_root: bytes = field(repr=False)
    wrapped_hmac: bytes = field(repr=False)
    wrapped_signing: bytes = field(repr=False)
    signing_public_key: bytes
    check: bytes = field(repr=False)
    recipient: str

    def to_dict(self) -> dict[str, str]:
        return {"wrapped_root": self.wrapped_root.hex(), "wrapped_hmac": self.wrapped_hmac.hex(),
                "wrapped_signing": self.wrapped_signing.hex(), "signing_public_key": self.signing_public_key.hex(),
                "check": self.check.hex(), "recipient": self.recipient}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RootPackage:
        try:
            return cls(**{k: bytes.fromhex(data[k]) for k in ("wrapped_root", "wrapped_hmac", "wrapped_signing",
                                                               "signing_public_key", "check")},
                       recipient=str(data["recipient"]))
        except (KeyError, TypeError, ValueError):
            raise ProviderInvalidInput("not a root-of-trust package") from None


def key_fingerprint(spki_der: bytes) -> str:
    """The name of a recipient public key: its SPKI digest (public; labels trusted objects in an HSM)."""
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()[:32]


class RootOfTrust(abc.ABC):
    """The keys the broker itself rests on, kept in an HSM: its own protocol, not extra methods on a Provider.

    * seal/unseal: AES-GCM under the root KEK for every secret the broker stores (keyring entries, credentials, …);
    * audit: HMAC of values that must never be logged, checkpoint signatures and their public key;
    * import wrapping: HSM material wrapped for another backend's import API without leaving the HSM in clear;
    * node transfer: the root KEK and the audit keys move only HSM to HSM, wrapped for a recipient public key that
      the source HSM's security officer has marked trusted (the HSM refuses any other wrapping key).
    """

    # -- secrets the broker keeps
    @abc.abstractmethod
    def seal(self, data: bytes, aad: bytes = b"") -> bytes: ...

    @abc.abstractmethod
    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes: ...

    @abc.abstractmethod
    def random(self, n: int) -> bytes: ...

    # -- audit
    @abc.abstractmethod
    def audit_hmac(self, data: bytes) -> bytes: ...

    @abc.abstractmethod
    def audit_sign(self, data: bytes) -> bytes: ...

    @abc.abstractmethod
    def audit_public_key(self) -> bytes: ...

    @abc.abstractmethod
    def audit_marks(self, slot: bytes) -> list[bytes]:
        """The audit high-water marks stored under `slot` (broker.audit.mark): readable only with the HSM's PIN."""

    @abc.abstractmethod
    def replace_audit_mark(self, slot: bytes, value: bytes) -> None:
        """Store `value` as the mark of `slot`, replacing the previous one (written only with the HSM's PIN)."""

    # -- import wrapping
    @abc.abstractmethod
    def wrap_for_import(self, ref: ProviderKeyRef, public_key_der: bytes, algorithm: str) -> bytes: ...

    # -- node transfer and backup
    @abc.abstractmethod
    def has_root(self) -> bool:
        """Whether this HSM holds the root keys (False on a node that has not joined yet)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A key check value of the root KEK: equal on every HSM that holds the same root (never secret)."""

    @abc.abstractmethod
    def transport_key(self) -> bytes:
        """SPKI (DER) of this HSM's transport key, born here (made on first call); its private half never leaves."""

    @abc.abstractmethod
    def trust(self, public_key_der: bytes) -> str:
        """Have the security officer mark a recipient public key trusted for wrapping; returns its fingerprint."""

    @abc.abstractmethod
    def forget(self, fingerprint: str) -> None:
        """Remove a trusted recipient key (after a transfer, or when a node is removed)."""

    @abc.abstractmethod
    def export_root(self, recipient_der: bytes) -> RootPackage:
        """The root keys wrapped for a trusted recipient public key."""

    @abc.abstractmethod
    def import_root(self, package: RootPackage) -> None:
        """Unwrap a package made for this HSM's transport key into this HSM (then the transport key is spent)."""

    @abc.abstractmethod
    def restore_root(self, package: RootPackage, recipient_private_pkcs8: bytes) -> None:
        """Unwrap a backup package into this HSM with the backup private key (held only while restoring)."""
