"""The pkcs11 provider: a PKCS#11 HSM (SoftHSM2 here) and the broker's root of trust.

Key material is generated inside the HSM as session objects, immediately wrapped under the token's
non-extractable root KEK (CKM_AES_KEY_WRAP_PAD, RFC 5649) and handed back in the ref: the store keeps only that
wrapped blob, so any broker process on any host with the same token can serve the key (state lives in the store).
On use, the blob is unwrapped into a session object and cached per process. All operations run inside the HSM.

SoftHSM serialises nothing itself when initialised the way python-pkcs11 does (C_Initialize(NULL)), and one
session per thread crashes it: this module uses one session per process behind a process-wide lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pkcs11
from asn1crypto.algos import DigestInfo
from asn1crypto.core import Null
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11._pkcs11 import DEFAULT
from pkcs11.util.ec import (
    decode_ec_public_key,
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)
from pkcs11.util.rsa import decode_rsa_public_key, encode_rsa_public_key

from broker.model import EncryptionAlgorithm, KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm
from broker.random_pool import RandomPool
from providers.base import (
    Capabilities,
    ImportParameters,
    Provider,
    ProviderAccessDenied,
    ProviderError,
    ProviderInvalidCiphertext,
    ProviderInvalidInput,
    ProviderInvalidState,
    ProviderKeyRef,
    ProviderUnavailable,
    ProviderUnsupported,
    RootOfTrust,
    RootPackage,
    key_fingerprint,
)
from providers.openssl_errors import clear_openssl_errors, openssl_errors_cleared

DEFAULT_LIB = "/usr/lib/softhsm/libsofthsm2.so"
ROOT_KEK_LABEL = "kmsb-root-kek"
AUDIT_HMAC_LABEL = "kmsb-audit-hmac"
AUDIT_SIGNING_LABEL = "kmsb-audit-signing"
AUDIT_MARK_LABEL = "kmsb-audit-mark"
IMPORT_WRAPPING_ALGORITHMS = ("RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1")

# SoftHSM 2.6.1 (OpenSSL 3 backend) generates and signs on all four AWS curves (checked: P-521 signs SHA-512
# digests, secp256k1 SHA-256 ones, both verified by `cryptography`).
_CURVES = {KeySpec.ECC_NIST_P256: "secp256r1", KeySpec.ECC_NIST_P384: "secp384r1", KeySpec.ECC_NIST_P521: "secp521r1",
           KeySpec.ECC_SECG_P256K1: "secp256k1"}
_HASH_MECH = {"sha1": Mechanism.SHA_1, "sha256": Mechanism.SHA256, "sha384": Mechanism.SHA384, "sha512": Mechanism.SHA512}
_MGF = {"sha1": MGF.SHA1, "sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}
_HMAC_MECH = {"sha256": Mechanism.SHA256_HMAC, "sha384": Mechanism.SHA384_HMAC, "sha512": Mechanism.SHA512_HMAC}
_OAEP_SHA1 = (Mechanism.SHA_1, MGF.SHA1, None)
_OAEP_PARAMS = {EncryptionAlgorithm.RSAES_OAEP_SHA_1: _OAEP_SHA1,
                EncryptionAlgorithm.RSAES_OAEP_SHA_256: (Mechanism.SHA256, MGF.SHA256, None)}

# Templates. Material is extractable only so the root KEK can wrap it; it is always sensitive (never readable).
_SECRET = {Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True, Attribute.TOKEN: False}
_AES_USE = {**_SECRET, Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.WRAP: True, Attribute.UNWRAP: True}
_HMAC_USE = {**_SECRET, Attribute.SIGN: True, Attribute.VERIFY: True}
# Private-key templates must not carry public-key attributes; DEFAULT drops them from python-pkcs11's template.
_NOT_ON_PRIVATE = {Attribute.ENCRYPT: DEFAULT, Attribute.VERIFY: DEFAULT, Attribute.WRAP: DEFAULT}
_RSA_PRIVATE = {**_SECRET, **_NOT_ON_PRIVATE, Attribute.SIGN: True, Attribute.DECRYPT: True, Attribute.UNWRAP: True}
_EC_PRIVATE = {**_SECRET, **_NOT_ON_PRIVATE, Attribute.SIGN: True, Attribute.DECRYPT: DEFAULT,
               Attribute.UNWRAP: DEFAULT, Attribute.DERIVE: DEFAULT}

# The root KEK's session copy (`Pkcs11Provider._root_copy`): what seal/unseal (ENCRYPT, DECRYPT) and unwrapping
# stored key versions (UNWRAP) need, nothing more. SoftHSM 2.6.1 takes TOKEN, EXTRACTABLE (true -> false), WRAP,
# DERIVE, LABEL and MODIFIABLE in a copy template and refuses SENSITIVE, COPYABLE and WRAP_WITH_TRUSTED
# (AttributeReadOnly: they stay as the original's, sensitive and wrap-with-trusted). MODIFIABLE false comes last:
# SoftHSM applies the template in order and refuses any change after it; it also keeps WRAP from being set back and
# a copy of the copy from changing anything. Its own label keeps it out of every lookup of the token root by label.
_ROOT_COPY = {Attribute.TOKEN: False, Attribute.EXTRACTABLE: False, Attribute.WRAP: False, Attribute.DERIVE: False,
              Attribute.SIGN: False, Attribute.VERIFY: False, Attribute.LABEL: "kmsb-root-kek/session-copy",
              Attribute.MODIFIABLE: False}
_ROOT_COPY_IS = {Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                 Attribute.WRAP: False, Attribute.DERIVE: False, Attribute.MODIFIABLE: False}
_ROOT_COPY_SLOT = "__root_copy__"
_ROOT_CHECKED_SLOT = "__root_checked__"
_ROOT_RECHECK_SECONDS = 1.0
# What ends a session's usefulness: `_call` resets the session (and with it the cached handles and the root copy).
_SESSION_LOST = (pkcs11.exceptions.SessionHandleInvalid, pkcs11.exceptions.SessionClosed,
                 pkcs11.exceptions.DeviceRemoved, pkcs11.exceptions.TokenNotPresent,
                 pkcs11.exceptions.UserNotLoggedIn, pkcs11.exceptions.DeviceError,
                 pkcs11.exceptions.ObjectHandleInvalid)

_MATERIAL_LENGTHS = {KeySpec.SYMMETRIC_DEFAULT: 32, KeySpec.HMAC_256: 32, KeySpec.HMAC_384: 48, KeySpec.HMAC_512: 64}


def read_pin(config: Mapping[str, Any]) -> str:
    """The user PIN from an environment variable or a file — never from argv, and never logged."""
    env_name = config.get("pin_env", "KMSB_HSM_PIN")
    if os.environ.get(env_name):
        return os.environ[env_name]
    pin_file = config.get("pin_file")
    if pin_file and Path(pin_file).is_file():
        return Path(pin_file).read_text().strip()
    raise ProviderUnavailable(f"HSM PIN not available: set ${env_name} or pin_file")


# SoftHSM (C_Initialize(NULL)) serialises nothing: every provider instance in this process shares ONE lock.
_PROCESS_LOCK = threading.RLock()
# After an HSM outage (SoftHSM: its token folder gone and back) the library keeps answering CKR_GENERAL_ERROR for that
# token until it is initialised again: a failed open re-initialises it, at most every _REINIT_SECONDS. Re-initialising
# ends every session of the process, so each _Session notes the generation it opened in and re-opens after one.
_REINIT_SECONDS = 1.0
_library = {"generation": 0, "reinit_at": 0.0}


class TokenFiles:
    """SoftHSM keeps a token in files, which every process re-reads when the token changes. A process that
    initialises the library, logs in or looks token objects up while another process writes the token (creates or
    destroys an object, or logs in: SoftHSM writes the token there too) can fail: GeneralError, UserPinNotInitialized,
    or NoSuchToken for the rest of its life (SoftHSM lists tokens only at C_Initialize). So opening a session and
    writing token objects hold this cross-process lock exclusively, looking token objects up holds it shared. Using
    objects already found (the cached handles every key operation uses) needs no lock. Without a SoftHSM config (a
    hardware HSM) it is a no-op."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        conf = config.get("softhsm_conf") or os.environ.get("SOFTHSM2_CONF")
        self._path = Path(f"{conf}.kmsb-lock") if conf else None

    @contextmanager
    def held(self, exclusive: bool = False) -> Iterator[None]:
        if self._path is None:
            yield
            return
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # a read-only token folder: nobody can write token objects there either
            yield
            return
        try:  # one descriptor per holder: flock locks belong to the descriptor, threads must not share one
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)


class _Session:
    """One PKCS#11 session per process, opened lazily, re-opened after failures."""

    def __init__(self, lib_path: str, token_label: str, config: Mapping[str, Any]) -> None:
        self._lib_path = lib_path
        self._token_label = token_label
        self._config = config
        self._session: Any = None
        self._pid = 0
        self._generation = 0
        self.lock = _PROCESS_LOCK
        self.files = TokenFiles(config)

    def get(self) -> Any:
        if self._session is not None and self._pid == os.getpid() and self._generation == _library["generation"]:
            return self._session
        self._session = None
        with self.files.held(exclusive=True):  # SoftHSM's C_Initialize and C_Login write the token too
            return self._open_or_reinitialize()

    def _open_or_reinitialize(self) -> Any:
        try:
            try:
                self._open()
            except (pkcs11.PKCS11Error, RuntimeError):
                if not self._reinitialize():
                    raise
                self._open()
        except ProviderUnavailable:
            raise
        except (pkcs11.PKCS11Error, OSError, RuntimeError) as exc:
            self._session = None
            raise ProviderUnavailable(f"HSM token {self._token_label!r} not available ({type(exc).__name__})") from None
        return self._session

    def _open(self) -> None:
        lib = pkcs11.lib(self._lib_path)
        token = lib.get_token(token_label=self._token_label)
        pin = read_pin(self._config)
        try:
            self._session = token.open(rw=True, user_pin=pin)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            # PKCS#11 login is per application: another provider instance of this process is logged in
            # to the token already, and a new session shares that login.
            self._session = token.open(rw=True)
        self._pid = os.getpid()
        self._generation = _library["generation"]

    def _reinitialize(self) -> bool:
        """C_Finalize + C_Initialize (throttled): how the library notices a token that came back."""
        now = time.monotonic()
        if now - _library["reinit_at"] < _REINIT_SECONDS:
            return False
        _library["reinit_at"] = now
        try:
            pkcs11.lib(self._lib_path).reinitialize()
        except (pkcs11.PKCS11Error, RuntimeError):
            return False
        _library["generation"] += 1
        return True

    def reset(self) -> None:
        try:
            if self._session is not None and self._pid == os.getpid():
                self._session.close()
        except pkcs11.PKCS11Error:
            pass
        self._session = None


class Pkcs11Provider(Provider):
    kind = "pkcs11"

    def __init__(self, name: str, *, lib_path: str, token_label: str, config: Mapping[str, Any],
                 cache_size: int = 4096) -> None:
        super().__init__(name)
        if config.get("softhsm_conf"):
            os.environ["SOFTHSM2_CONF"] = str(config["softhsm_conf"])
        self._session = _Session(lib_path, token_label, config)
        self._cache: OrderedDict[bytes, Any] = OrderedDict()
        self._cache_session: Any = None
        self._handles: dict[str, Any] = {}
        self._cache_size = cache_size
        # GCM IVs: drawn from the HSM's generator 256 at a time (one C_GenerateRandom per 256 encrypts, not one each)
        self._ivs = RandomPool(block=12 * 256)
        self._root_of_trust: Pkcs11RootOfTrust | None = None
        self._oaep_sha256: bool | None = None  # probed once the HSM is reached (`_offers_oaep_sha256`)
        self._wrap_specs: frozenset[KeySpec] | None = None  # measured once the HSM is reached (`_exact_wraps`)
        self._capabilities: Capabilities | None = None  # fixed once both probes have answered

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> Pkcs11Provider:
        return cls(name, lib_path=config.get("lib", DEFAULT_LIB), token_label=config.get("token_label", "kms-broker"),
                   config=config)

    @property
    def capabilities(self) -> Capabilities:
        """Asked on every crypto call: built once the token's probes have answered (an unreachable HSM leaves them
        unknown, so the answer is rebuilt until they do)."""
        if self._capabilities is not None:
            return self._capabilities
        offered = {EncryptionAlgorithm.RSAES_OAEP_SHA_1}
        if self._offers_oaep_sha256():
            offered.add(EncryptionAlgorithm.RSAES_OAEP_SHA_256)
        capabilities = Capabilities(
            key_specs=frozenset(KeySpec), native_symmetric=True, asymmetric_decrypt=True, sign=True, mac=True,
            import_material=True, random=True, wrap_for_import=True, encryption_algorithms=frozenset(offered),
            wrap_specs=self._exact_wraps(),
        )
        if self._oaep_sha256 is not None and self._wrap_specs is not None:
            self._capabilities = capabilities
        return capabilities

    def _exact_wraps(self) -> frozenset[KeySpec]:
        """The specs whose material this token wraps exactly for another's import (AES-KWP of the key value or of
        the private key's PKCS#8). SoftHSM zero-pads the value to a multiple of 8 bytes before wrapping, so a
        PKCS#8 whose length is not one unwraps with trailing zeros, which importers refuse. Secret and HMAC keys
        are 16-64 bytes (exact). EC keys are measured once per process on throwaway key pairs (SoftHSM 2.6.1's
        PKCS#8: P-256 67 bytes, P-384 80, P-521 98, secp256k1 64, the same for every key of a curve); RSA keys'
        PKCS#8 length differs from key to key, so no RSA key can be promised an exact wrap."""
        exact = frozenset(s for s in KeySpec if not s.is_asymmetric)
        if self._wrap_specs is None:
            try:
                self._wrap_specs = exact | self._call(self._measure_ec_wraps)
            except ProviderError:
                return exact
        return self._wrap_specs

    @staticmethod
    def _measure_ec_wraps(session: Any) -> frozenset[KeySpec]:
        from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

        # A throwaway AES key whose value may be read (it wraps nothing but throwaway keys).
        kek = session.generate_key(KeyType.AES, 256, template={
            Attribute.TOKEN: False, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, Attribute.WRAP: True})
        try:
            value = bytes(kek[Attribute.VALUE])
            exact = set()
            for spec, curve in _CURVES.items():
                lengths = set()
                for _ in range(3):
                    params = session.create_domain_parameters(
                        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True)
                    pub, priv = params.generate_keypair(store=False, private_template=_SECRET)
                    try:
                        der = aes_key_unwrap_with_padding(value, kek.wrap_key(priv, mechanism=Mechanism.AES_KEY_WRAP_PAD))
                    finally:
                        pub.destroy()
                        priv.destroy()
                    lengths.add((len(der), _der_length(der)))
                if all(unwrapped == encoded for unwrapped, encoded in lengths):
                    exact.add(spec)
            return frozenset(exact)
        finally:
            kek.destroy()

    def _offers_oaep_sha256(self) -> bool:
        """Whether the module decrypts RSA-OAEP with SHA-256 (and MGF1-SHA-256) inside the token — what AWS clients
        default to. Checked once per process, the first time the HSM is reached: a throwaway RSA-2048 key pair in
        the token decrypts a ciphertext `cryptography` made with its public key. SoftHSM 2.6.1 answers
        ArgumentsBad ("hashAlg must be CKM_SHA_1"); a module that has it (an HSM, another PKCS#11 module) is used
        for it with the private key never leaving the token. An unreachable HSM leaves it unknown (SHA-1 only)."""
        if self._oaep_sha256 is None:
            try:
                self._oaep_sha256 = self._call(self._probe_oaep_sha256)
            except ProviderError:
                return False
        return self._oaep_sha256

    @staticmethod
    def _probe_oaep_sha256(session: Any) -> bool:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        pub, priv = session.generate_keypair(KeyType.RSA, 2048, store=False,
                                             private_template={**_SECRET, Attribute.EXTRACTABLE: False})
        try:
            public = serialization.load_der_public_key(_rsa_spki(encode_rsa_public_key(pub)))
            probe = os.urandom(32)
            blob = public.encrypt(probe, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
            try:
                return bytes(priv.decrypt(blob, mechanism=Mechanism.RSA_PKCS_OAEP,
                                          mechanism_param=_OAEP_PARAMS[EncryptionAlgorithm.RSAES_OAEP_SHA_256])) == probe
            except pkcs11.PKCS11Error:
                return False
        finally:
            pub.destroy()
            priv.destroy()

    # ------------------------------------------------------------------------------------------ plumbing

    def _call(self, fn, *args):
        """Run fn(session, *args) under the process lock, mapping PKCS#11 failures to provider errors."""
        with self._session.lock:
            try:
                session = self._session.get()
                if session is not self._cache_session:  # a new session: objects of the old one are gone with it
                    self._cache.clear()
                    self._cache_session = session
                try:
                    return fn(session, *args)
                except ProviderError:
                    raise
                except _SESSION_LOST as exc:
                    self._session.reset()
                    self._cache.clear()
                    raise ProviderUnavailable(f"HSM session lost ({type(exc).__name__})") from None
            finally:
                clear_openssl_errors()  # what openssl_errors_cleared() does, without a generator per call

    def _token_key(self, session: Any, label: str) -> Any:
        """A long-lived token key by label; found once per session (C_FindObjects is slow in SoftHSM)."""
        handles = self._handles
        if handles.get("__session__") is not session:
            handles.clear()
            handles["__session__"] = session
        if label not in handles:
            try:
                with self._session.files.held():
                    handles[label] = session.get_key(label=label, object_class=ObjectClass.SECRET_KEY)
            except pkcs11.NoSuchKey:
                raise ProviderUnavailable(f"{label} missing from the HSM token (run `kms-broker init`)") from None
        return handles[label]

    def _root(self, session: Any) -> Any:
        """The root KEK token object: for what must be the token object itself (wrapping under it, exporting it)."""
        return self._token_key(session, ROOT_KEK_LABEL)

    def _root_copy(self, session: Any) -> Any:
        """The root KEK for AES-GCM seal/unseal and unwrapping stored key versions: a session copy of it.

        SoftHSM re-reads a token object's file (open, locks, reads: ~14 syscalls) on every use, a session object's
        not. The copy (C_CopyObject, `_ROOT_COPY`) is made once per session and kept in the handle cache, so it goes
        with the session (reset, re-initialisation, a forked child's new session: `_token_key` clears the cache) and
        the HSM destroys it when the session closes. It can encrypt, decrypt and unwrap only: not a token object, not
        extractable, no WRAP, not modifiable (so not re-enabled), sensitive like the original. A token whose root
        refuses such a copy (not copyable, a module that refuses the template) is served by the token object.

        A copy does not notice the token object being destroyed by another process, so at most every
        `_ROOT_RECHECK_SECONDS` the token object is read once (as every use of it did): gone, the call fails as a
        lost handle, the session is reset and the copy with it."""
        root = self._root(session)  # resets the handle cache when the session changed
        handles = self._handles
        copy = handles.get(_ROOT_COPY_SLOT)
        now = time.monotonic()
        if copy is None:
            copy = handles[_ROOT_COPY_SLOT] = self._copy_root(root)
            handles[_ROOT_CHECKED_SLOT] = now
        elif now - handles[_ROOT_CHECKED_SLOT] >= _ROOT_RECHECK_SECONDS:
            _ = root[Attribute.CLASS]  # ObjectHandleInvalid when the token object is gone
            handles[_ROOT_CHECKED_SLOT] = now
        return copy

    def _forget_root(self) -> None:
        """After this process wrote the root keys: drop the cached handles and destroy the root's session copy now
        (not at session close), so nothing here uses a root the token no longer holds."""
        copy = self._handles.get(_ROOT_COPY_SLOT)
        if copy is not None and copy is not self._handles.get(ROOT_KEK_LABEL):  # never the token object itself
            self._evict(copy)
        self._handles.clear()

    @staticmethod
    def _copy_root(root: Any) -> Any:
        """A session copy of the token root (`_ROOT_COPY`), or the token object itself when the module refuses it or
        makes a copy that is more capable than asked (checked attribute by attribute). Session loss propagates."""
        try:
            copy = root.copy(_ROOT_COPY)
        except _SESSION_LOST:
            raise
        except pkcs11.PKCS11Error:
            return root
        try:
            if all(copy[attribute] == value for attribute, value in _ROOT_COPY_IS.items()):
                return copy
        except _SESSION_LOST:
            raise
        except pkcs11.PKCS11Error:
            pass
        Pkcs11Provider._evict(copy)
        return root

    def _wrap(self, session: Any, obj: Any) -> bytes:
        return self._root(session).wrap_key(obj, mechanism=Mechanism.AES_KEY_WRAP_PAD)

    def _object(self, session: Any, ref: ProviderKeyRef) -> Any:
        """The HSM object for a ref: from the per-process cache, else unwrapped from the stored blob."""
        if not ref.material:
            raise ProviderInvalidInput("key version has no material")
        cache_key = hashlib.sha256(ref.material).digest()
        obj = self._cache.get(cache_key)
        if obj is not None:
            self._cache.move_to_end(cache_key)
            return obj
        kind = ref.extra.get("kind")
        root = self._root_copy(session)
        if kind == "aes":
            obj = root.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, ref.material,
                                  mechanism=Mechanism.AES_KEY_WRAP_PAD, template=_AES_USE)
        elif kind == "hmac":
            obj = root.unwrap_key(ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, ref.material,
                                  mechanism=Mechanism.AES_KEY_WRAP_PAD, template=_HMAC_USE)
        elif kind == "rsa":
            obj = root.unwrap_key(ObjectClass.PRIVATE_KEY, KeyType.RSA, ref.material,
                                  mechanism=Mechanism.AES_KEY_WRAP_PAD, template=_RSA_PRIVATE)
        elif kind == "ec":
            obj = root.unwrap_key(ObjectClass.PRIVATE_KEY, KeyType.EC, ref.material,
                                  mechanism=Mechanism.AES_KEY_WRAP_PAD, template=_EC_PRIVATE)
        else:
            raise ProviderInvalidInput(f"unknown pkcs11 material kind {kind!r}")
        self._cache[cache_key] = obj
        if len(self._cache) > self._cache_size:
            self._evict(self._cache.popitem(last=False)[1])
        return obj

    @staticmethod
    def _evict(obj: Any) -> None:
        try:
            obj.destroy()
        except pkcs11.PKCS11Error:
            pass

    def check_health(self) -> None:
        self._call(self._root)

    def close(self) -> None:
        with self._session.lock, openssl_errors_cleared():
            self._cache.clear()
            self._session.reset()

    # ------------------------------------------------------------------------------------------ lifecycle

    def _generate(self, session: Any, spec: KeySpec, label: str) -> ProviderKeyRef:
        if spec is KeySpec.SYMMETRIC_DEFAULT:
            obj = session.generate_key(KeyType.AES, 256, template=_AES_USE)
            return self._remember(session, obj, label, {"kind": "aes"})
        if spec.is_hmac:
            obj = session.generate_key(KeyType.GENERIC_SECRET, spec.hmac_bits, template=_HMAC_USE)
            return self._remember(session, obj, label, {"kind": "hmac"})
        if spec.is_rsa:
            pub, priv = session.generate_keypair(KeyType.RSA, spec.rsa_bits, store=False, private_template=_SECRET)
            spki = _rsa_spki(encode_rsa_public_key(pub))
            pub.destroy()
            return self._remember(session, priv, label, {"kind": "rsa", "public_key": spki.hex()})
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[spec])}, local=True)
        pub, priv = params.generate_keypair(store=False, private_template=_SECRET)
        spki = encode_ec_public_key(pub)
        pub.destroy()
        return self._remember(session, priv, label, {"kind": "ec", "public_key": spki.hex()})

    def _remember(self, session: Any, obj: Any, label: str, extra: dict[str, Any]) -> ProviderKeyRef:
        material = self._wrap(session, obj)
        self._cache[hashlib.sha256(material).digest()] = obj
        return ProviderKeyRef(key_id=label, material=material, extra=extra)

    def create_key(self, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        return self._call(self._generate, spec, label)

    def create_version(self, ref: ProviderKeyRef, spec: KeySpec, usage: KeyUsage, *, label: str) -> ProviderKeyRef:
        return self._call(self._generate, spec, label)

    def destroy(self, ref: ProviderKeyRef) -> None:
        """Drop the session object; the wrapped blob is deleted from the store by the service."""
        if not ref.material:
            return

        def drop(_session: Any) -> None:
            obj = self._cache.pop(hashlib.sha256(ref.material).digest(), None)
            if obj is not None:
                self._evict(obj)

        self._call(drop)

    # ------------------------------------------------------------------------------------------ crypto

    def encrypt(self, ref: ProviderKeyRef, plaintext: bytes, aad: bytes) -> bytes:
        def run(session: Any) -> bytes:
            iv = self._iv(session)
            params = pkcs11.GCMParams(iv, aad, 128)
            return iv + self._object(session, ref).encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                                           mechanism_param=params)
        return self._call(run)

    def decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, aad: bytes) -> bytes:
        if len(ciphertext) < 12 + 16:
            raise ProviderInvalidCiphertext("ciphertext too short")

        def run(session: Any) -> bytes:
            params = pkcs11.GCMParams(ciphertext[:12], aad, 128)
            try:
                return self._object(session, ref).decrypt(ciphertext[12:], mechanism=Mechanism.AES_GCM,
                                                          mechanism_param=params)
            except (pkcs11.exceptions.GeneralError, pkcs11.exceptions.EncryptedDataInvalid,
                    pkcs11.exceptions.EncryptedDataLenRange):
                # SoftHSM reports a failed GCM tag check as GeneralError.
                raise ProviderInvalidCiphertext("authentication failed") from None
        return self._call(run)

    def get_public_key(self, ref: ProviderKeyRef) -> bytes:
        public = ref.extra.get("public_key")
        if not public:
            raise ProviderUnsupported("get_public_key")
        return bytes.fromhex(public)

    def asymmetric_decrypt(self, ref: ProviderKeyRef, ciphertext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        if algorithm not in self.capabilities.encryption_algorithms:
            # SoftHSM 2.6 implements OAEP with SHA-1 only ("hashAlg must be CKM_SHA_1"); the capability says what this
            # module offers, and the service refuses other algorithms before encrypting anything (OAEP is always
            # undone inside the token: no hand-made OAEP decoding here).
            raise ProviderUnsupported(f"{algorithm.value} decryption (this HSM does not offer it)")

        def run(session: Any) -> bytes:
            key = self._object(session, ref)
            try:
                return key.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                                   mechanism_param=_OAEP_PARAMS[algorithm])
            except (pkcs11.exceptions.EncryptedDataInvalid, pkcs11.exceptions.EncryptedDataLenRange,
                    pkcs11.exceptions.GeneralError, pkcs11.exceptions.DataLenRange, pkcs11.exceptions.DataInvalid):
                raise ProviderInvalidCiphertext("RSA decryption failed") from None
        return self._call(run)

    def sign(self, ref: ProviderKeyRef, digest: bytes, algorithm: SigningAlgorithm) -> bytes:
        h = algorithm.hash_name

        def run(session: Any) -> bytes:
            key = self._object(session, ref)
            if algorithm.is_ecdsa:
                return encode_ecdsa_signature(key.sign(digest, mechanism=Mechanism.ECDSA))
            if algorithm.is_pss:
                return key.sign(digest, mechanism=Mechanism.RSA_PKCS_PSS,
                                mechanism_param=(_HASH_MECH[h], _MGF[h], len(digest)))
            info = DigestInfo({"digest_algorithm": {"algorithm": h, "parameters": Null()}, "digest": digest})
            return key.sign(info.dump(), mechanism=Mechanism.RSA_PKCS)
        return self._call(run)

    def generate_mac(self, ref: ProviderKeyRef, message: bytes, algorithm: MacAlgorithm) -> bytes:
        return self._call(lambda s: self._object(s, ref).sign(message, mechanism=_HMAC_MECH[algorithm.hash_name]))

    def random(self, n: int) -> bytes:
        return self._call(lambda s: bytes(s.generate_random(n * 8)))

    def _iv(self, session: Any) -> bytes:
        """A 12-byte AES-GCM IV from the HSM's generator, through the pool (called under the session lock)."""
        return self._ivs.take(12, lambda n: bytes(session.generate_random(n * 8)))

    # ------------------------------------------------------------------------------------------ import

    def begin_import(self, spec: KeySpec, ref: ProviderKeyRef | None = None) -> ImportParameters:
        """A fresh RSA-2048 wrapping key pair in the HSM (`ref` changes nothing: material lives in the ref)."""
        if spec not in _MATERIAL_LENGTHS:
            raise ProviderUnsupported(f"importing {spec.value} material")

        def run(session: Any) -> ImportParameters:
            pub, priv = session.generate_keypair(KeyType.RSA, 2048, store=False, private_template=_SECRET)
            spki = _rsa_spki(encode_rsa_public_key(pub))
            pub.destroy()
            ref = self._remember(session, priv, "import-wrapping-key", {"kind": "rsa"})
            return ImportParameters(public_key_der=spki, wrapping_algorithms=IMPORT_WRAPPING_ALGORITHMS,
                                    handle=ref.to_dict())
        return self._call(run)

    def finish_import(self, handle: Mapping[str, Any], spec: KeySpec, usage: KeyUsage, wrapped_material: bytes,
                      wrapping_algorithm: str, *, label: str, ref: ProviderKeyRef | None = None) -> ProviderKeyRef:
        """Unwrap the caller's material inside the HSM, check its length, and re-wrap it under the root KEK.

        The ref keeps a key check value of the material (`_check_value`, computed in the HSM; not secret), so a
        re-import into a key (`ref`) is refused unless it brings the same material, even after the material itself
        was deleted."""
        if spec not in _MATERIAL_LENGTHS:
            raise ProviderUnsupported(f"importing {spec.value} material")
        if wrapping_algorithm not in IMPORT_WRAPPING_ALGORITHMS:
            raise ProviderInvalidInput(f"wrapping algorithm must be one of {', '.join(IMPORT_WRAPPING_ALGORITHMS)}")
        key_type, template, kind = ((KeyType.AES, _AES_USE, "aes") if spec is KeySpec.SYMMETRIC_DEFAULT
                                    else (KeyType.GENERIC_SECRET, _HMAC_USE, "hmac"))

        def run(session: Any) -> ProviderKeyRef:
            wrapping = self._object(session, ProviderKeyRef.from_dict(handle))
            try:
                if wrapping_algorithm == "RSAES_OAEP_SHA_1":
                    obj = wrapping.unwrap_key(ObjectClass.SECRET_KEY, key_type, wrapped_material,
                                              mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=_OAEP_SHA1,
                                              template=template)
                else:
                    obj = self._unwrap_rsa_aes(session, wrapping, wrapped_material, key_type, template)
            except (pkcs11.exceptions.WrappedKeyInvalid, pkcs11.exceptions.WrappedKeyLenRange,
                    pkcs11.exceptions.EncryptedDataInvalid, pkcs11.exceptions.EncryptedDataLenRange,
                    pkcs11.exceptions.GeneralError, pkcs11.exceptions.TemplateInconsistent,
                    pkcs11.exceptions.KeySizeRange, pkcs11.exceptions.AttributeValueInvalid):
                raise ProviderInvalidCiphertext("the wrapped key material could not be unwrapped") from None
            length = obj[Attribute.VALUE_LEN] or self._value_len(session, obj)
            if length != _MATERIAL_LENGTHS[spec]:
                obj.destroy()
                raise ProviderInvalidInput(f"{spec.value} material must be {_MATERIAL_LENGTHS[spec]} bytes")
            check = self._check_value(obj, kind)
            if ref is not None and not self._same_material(session, ref, obj, check):
                obj.destroy()
                raise ProviderInvalidInput("the key already has different key material; import the same material")
            return self._remember(session, obj, label, {"kind": kind, "check": check})
        return self._call(run)

    @staticmethod
    def _check_value(obj: Any, kind: str) -> str:
        """A key check value, computed inside the HSM: AES-ECB of a zero block (AES keys), or HMAC-SHA-256 of a
        fixed label (HMAC keys). Like a KCV it names the material without revealing it."""
        if kind == "aes":
            return bytes(obj.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)).hex()
        return bytes(obj.sign(b"kms-broker import check v1", mechanism=Mechanism.SHA256_HMAC)).hex()

    def _same_material(self, session: Any, ref: ProviderKeyRef, obj: Any, check: str) -> bool:
        """Whether `obj` holds the material the key `ref` held: its check value; for a key imported before check
        values existed, its wrapped material (AES key wrap under the root KEK is deterministic); a key of that age
        whose material was deleted can no longer be compared."""
        held = ref.extra.get("check")
        if held:
            return hmac.compare_digest(str(held), check)
        if ref.material:
            return hmac.compare_digest(self._wrap(session, obj), ref.material)
        return True

    def delete_imported_material(self, ref: ProviderKeyRef) -> ProviderKeyRef:
        """Drop the material (the store keeps the ref without it, and its check value for a later re-import)."""
        self.destroy(ref)
        return self.destroyed_ref(ref)

    @staticmethod
    def _value_len(session: Any, obj: Any) -> int:
        """The exact length of an unwrapped secret, measured inside the HSM; -1 when it cannot be measured.

        SoftHSM leaves CKA_VALUE_LEN at 0 on unwrapped keys. An exact RFC 3394 wrap under a throwaway key gives
        the length rounded up to 8 bytes (SoftHSM zero-pads the value first); the value was not padded iff a
        copy made from that wrap digests (C_DigestKey, in the HSM) to the same SHA-256 as the original.
        """
        probe = session.generate_key(KeyType.AES, 256, template={**_AES_USE, Attribute.EXTRACTABLE: False})
        try:
            wrapped = probe.wrap_key(obj, mechanism=Mechanism.AES_KEY_WRAP)
            copy = probe.unwrap_key(ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, wrapped,
                                    mechanism=Mechanism.AES_KEY_WRAP,
                                    template={Attribute.TOKEN: False, Attribute.SENSITIVE: True,
                                              Attribute.EXTRACTABLE: False})
            try:
                unpadded = session.digest(copy, mechanism=Mechanism.SHA256) == session.digest(
                    obj, mechanism=Mechanism.SHA256)
            finally:
                copy.destroy()
            return len(wrapped) - 8 if unpadded else -1
        except pkcs11.PKCS11Error:
            return -1
        finally:
            probe.destroy()

    @staticmethod
    def _unwrap_rsa_aes(session: Any, wrapping: Any, blob: bytes, key_type: KeyType, template: dict) -> Any:
        """RSA_AES_KEY_WRAP composed in the HSM: OAEP-SHA-1 unwraps an ephemeral AES key, which unwraps (RFC 5649)."""
        rsa_len = 256  # the import wrapping key is RSA-2048
        ephemeral = wrapping.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, blob[:rsa_len],
                                        mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=_OAEP_SHA1,
                                        template={**_AES_USE, Attribute.EXTRACTABLE: False})
        try:
            return ephemeral.unwrap_key(ObjectClass.SECRET_KEY, key_type, blob[rsa_len:],
                                        mechanism=Mechanism.AES_KEY_WRAP_PAD, template=template)
        finally:
            ephemeral.destroy()

    def discard_import(self, handle: Mapping[str, Any]) -> None:
        self.destroy(ProviderKeyRef.from_dict(handle))

    # ------------------------------------------------------------------------------------------ root of trust

    def root_of_trust(self) -> Pkcs11RootOfTrust:
        """This token's root of trust (its own protocol; it shares this provider's one session per process)."""
        if self._root_of_trust is None:
            self._root_of_trust = Pkcs11RootOfTrust(self)
        return self._root_of_trust


def _der_length(der: bytes) -> int:
    """The length of the DER element at the start of `der` (tag, length octets and content)."""
    if len(der) < 2:
        return -1
    first = der[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    return 2 + n + int.from_bytes(der[2:2 + n], "big")


def _rsa_spki(pkcs1_public: bytes) -> bytes:
    """PKCS#1 RSAPublicKey -> SubjectPublicKeyInfo DER (the form GetPublicKey returns)."""
    from asn1crypto.keys import PublicKeyInfo, RSAPublicKey

    return PublicKeyInfo.wrap(RSAPublicKey.load(pkcs1_public), "rsa").dump()


# ================================================================================================ root of trust

TRANSPORT_LABEL = "kmsb-transport"
TRUSTED_PREFIX = "kmsb-trusted/"
_CHECK = (b"kms-broker root-of-trust check v1", b"kms-broker/root-check")
_KCV = (b"\0" * 16, b"\xff" * 12, b"kms-broker root kcv")  # never a seal IV: seal IVs are HSM random

# The root keys move only wrapped under a key the security officer marked CKA_TRUSTED (CKA_WRAP_WITH_TRUSTED): a
# holder of the user PIN alone cannot wrap them under a key of its choosing. The signing key travels wrapped
# under the root KEK (SoftHSM cannot wrap private keys with RSA, and only the SO can make a key trusted, while the
# SO cannot use private keys): it is extractable, sensitive, and never leaves an HSM in clear.
ROOT_KEK_TEMPLATE = {
    Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True,
    Attribute.WRAP_WITH_TRUSTED: True, Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True, Attribute.SIGN: False, Attribute.VERIFY: False,
}
AUDIT_HMAC_TEMPLATE = {
    Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True,
    Attribute.WRAP_WITH_TRUSTED: True, Attribute.SIGN: True, Attribute.VERIFY: True,
}
SIGNING_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True,
    Attribute.SIGN: True,
}
_OAEP_MECH = {"mechanism": Mechanism.RSA_PKCS_OAEP, "mechanism_param": _OAEP_SHA1}
_RSA_UNWRAPPER = {Attribute.TOKEN: False, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                  Attribute.EXTRACTABLE: False, Attribute.UNWRAP: True, Attribute.DECRYPT: True,
                  Attribute.SIGN: False}


def _rsa_public_parts(spki_der: bytes) -> dict:
    from cryptography.hazmat.primitives import serialization

    try:
        public = serialization.load_der_public_key(spki_der)
        pkcs1 = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        return decode_rsa_public_key(pkcs1)
    except (ValueError, TypeError):
        raise ProviderInvalidInput("the recipient key is not an RSA public key (DER SubjectPublicKeyInfo)") from None


class Pkcs11RootOfTrust(RootOfTrust):
    """The root of trust of one PKCS#11 token. Every operation runs inside the HSM under the provider's lock."""

    def __init__(self, provider: Pkcs11Provider) -> None:
        self._p = provider

    def __repr__(self) -> str:
        return f"Pkcs11RootOfTrust({self._p.name!r})"

    # ------------------------------------------------------------------------------------------ secrets

    def seal(self, data: bytes, aad: bytes = b"") -> bytes:
        """AES-GCM under the root KEK, inside the HSM: for secrets the broker itself must keep."""
        def run(session: Any) -> bytes:
            iv = self._p._iv(session)
            return iv + self._p._root_copy(session).encrypt(data, mechanism=Mechanism.AES_GCM,
                                                            mechanism_param=pkcs11.GCMParams(iv, aad, 128))
        return self._p._call(run)

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        if len(blob) < 12 + 16:
            raise ProviderInvalidCiphertext("sealed data failed authentication")

        def run(session: Any) -> bytes:
            try:
                return self._p._root_copy(session).decrypt(blob[12:], mechanism=Mechanism.AES_GCM,
                                                           mechanism_param=pkcs11.GCMParams(blob[:12], aad, 128))
            except (pkcs11.exceptions.GeneralError, pkcs11.exceptions.EncryptedDataInvalid,
                    pkcs11.exceptions.EncryptedDataLenRange):
                raise ProviderInvalidCiphertext("sealed data failed authentication") from None
        return self._p._call(run)

    def random(self, n: int) -> bytes:
        return self._p.random(n)

    # ------------------------------------------------------------------------------------------ audit

    def audit_hmac(self, data: bytes) -> bytes:
        """HMAC-SHA-256 with the audit key that lives in the HSM (for values that must never be logged)."""
        return self._p._call(lambda session: self._p._token_key(session, AUDIT_HMAC_LABEL).sign(
            data, mechanism=Mechanism.SHA256_HMAC))

    def _audit_signing(self, session: Any, object_class: ObjectClass) -> Any:
        """The audit signing key pair's half of `object_class`, found once per session like `_token_key`."""
        self._p._token_key(session, ROOT_KEK_LABEL)  # resets the handle cache when the session changed
        handles = self._p._handles
        slot = f"{AUDIT_SIGNING_LABEL}/{object_class.name}"
        if slot not in handles:
            try:
                with self._p._session.files.held():
                    handles[slot] = session.get_key(label=AUDIT_SIGNING_LABEL, object_class=object_class)
            except pkcs11.NoSuchKey:
                raise ProviderUnavailable(f"{AUDIT_SIGNING_LABEL} missing from the HSM token") from None
        return handles[slot]

    def audit_sign(self, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature (DER) of `data` with the HSM's audit signing key.

        SoftHSM lacks CKM_ECDSA_SHA256: the digest is computed here, the raw ECDSA runs in the HSM (as `sign`).
        """
        digest = hashlib.sha256(data).digest()
        return self._p._call(lambda session: encode_ecdsa_signature(
            self._audit_signing(session, ObjectClass.PRIVATE_KEY).sign(digest, mechanism=Mechanism.ECDSA)))

    def audit_public_key(self) -> bytes:
        """SubjectPublicKeyInfo (DER) of the audit signing key: all a verifier of checkpoints needs."""
        return self._p._call(lambda session: encode_ec_public_key(
            self._audit_signing(session, ObjectClass.PUBLIC_KEY)))

    @staticmethod
    def _marks(session: Any, slot: bytes) -> list[Any]:
        return list(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: AUDIT_MARK_LABEL,
                                         Attribute.OBJECT_ID: slot}))

    def audit_marks(self, slot: bytes) -> list[bytes]:
        """The values of the audit high-water marks stored under `slot` (private token objects: PIN to read)."""
        def run(session: Any) -> list[bytes]:
            with self._p._session.files.held():
                return [bytes(o[Attribute.VALUE]) for o in self._marks(session, slot)]
        return self._p._call(run)

    def replace_audit_mark(self, slot: bytes, value: bytes) -> None:
        """Store `value` as the mark of `slot`: the new object is created before the old ones are destroyed (a
        crash in between leaves both; readers take the highest). CKA_VALUE of a data object is read-only."""
        def run(session: Any) -> None:
            with self._p._session.files.held(exclusive=True):
                old = self._marks(session, slot)
                session.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                                       Attribute.PRIVATE: True, Attribute.MODIFIABLE: False,
                                       Attribute.LABEL: AUDIT_MARK_LABEL, Attribute.APPLICATION: "kms-broker audit",
                                       Attribute.OBJECT_ID: slot, Attribute.VALUE: value})
                for obj in old:
                    obj.destroy()
        self._p._call(run)

    # ------------------------------------------------------------------------------------------ import wrapping

    def wrap_for_import(self, ref: ProviderKeyRef, public_key_der: bytes, algorithm: str) -> bytes:
        """Wrap this HSM's material for another backend's import API without it leaving the HSM in clear."""
        parts = _rsa_public_parts(public_key_der)

        def run(session: Any) -> bytes:
            target = self._p._object(session, ref)
            wrapper = session.create_object({**parts, Attribute.TOKEN: False, Attribute.WRAP: True,
                                             Attribute.ENCRYPT: True})
            try:
                if algorithm == "RSAES_OAEP_SHA_1":
                    return wrapper.wrap_key(target, **_OAEP_MECH)
                if algorithm == "RSA_AES_KEY_WRAP_SHA_1":
                    ephemeral = session.generate_key(KeyType.AES, 256, template=_AES_USE)
                    try:
                        return (wrapper.wrap_key(ephemeral, **_OAEP_MECH)
                                + ephemeral.wrap_key(target, mechanism=Mechanism.AES_KEY_WRAP_PAD))
                    finally:
                        ephemeral.destroy()
                raise ProviderUnsupported(f"wrapping for import with {algorithm}")
            finally:
                wrapper.destroy()
        return self._p._call(run)

    # ------------------------------------------------------------------------------------------ node transfer

    @staticmethod
    def _find(session: Any, label: str, object_class: ObjectClass) -> list[Any]:
        return list(session.get_objects({Attribute.LABEL: label, Attribute.CLASS: object_class}))

    def has_root(self) -> bool:
        return self._p._call(lambda s: bool(self._find(s, ROOT_KEK_LABEL, ObjectClass.SECRET_KEY)))

    def fingerprint(self) -> str:
        plain, iv, aad = _KCV

        def run(session: Any) -> str:
            out = self._p._root(session).encrypt(plain, mechanism=Mechanism.AES_GCM,
                                                 mechanism_param=pkcs11.GCMParams(iv, aad, 128))
            return "kcv:" + hashlib.sha256(bytes(out)).hexdigest()[:24]
        return self._p._call(run)

    def transport_key(self) -> bytes:
        def run(session: Any) -> bytes:
            with self._p._session.files.held(exclusive=True):  # may create token objects
                return made(session)

        def made(session: Any) -> bytes:
            found = self._find(session, TRANSPORT_LABEL, ObjectClass.PUBLIC_KEY)
            if found:
                return _rsa_spki(encode_rsa_public_key(found[0]))
            pub, _ = session.generate_keypair(
                KeyType.RSA, 2048, store=True, label=TRANSPORT_LABEL,
                public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.WRAP: True,
                                 Attribute.ENCRYPT: True, Attribute.VERIFY: False},
                private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                  Attribute.EXTRACTABLE: False, Attribute.UNWRAP: True, Attribute.DECRYPT: True,
                                  Attribute.SIGN: False})
            return _rsa_spki(encode_rsa_public_key(pub))
        return self._p._call(run)

    def trust(self, public_key_der: bytes) -> str:
        """The security officer's step, in a process of its own (PKCS#11 logs in per application, and this one is
        logged in as the user): it creates the recipient public key as a trusted token object."""
        import json
        import subprocess
        import sys

        _rsa_public_parts(public_key_der)  # refuse anything but an RSA key before asking the officer
        fp = key_fingerprint(public_key_der)
        config = self._p._session._config
        request = {"lib": self._p._session._lib_path, "token_label": self._p._session._token_label,
                   "softhsm_conf": str(config.get("softhsm_conf") or os.environ.get("SOFTHSM2_CONF", "")),
                   "so_pin_file": str(so_pin_file(config) or ""), "so_pin_env": config.get("so_pin_env", ""),
                   "label": TRUSTED_PREFIX + fp, "public_key": public_key_der.hex()}
        done = subprocess.run([sys.executable, "-m", "providers.pkcs11_officer"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            reason = (done.stdout.strip().splitlines() or ["the security officer step failed"])[-1]
            raise ProviderUnavailable(f"HSM security officer: {reason[:200]}")
        return fp

    def forget(self, fingerprint: str) -> None:
        def run(session: Any) -> None:
            with self._p._session.files.held(exclusive=True):
                for obj in self._find(session, TRUSTED_PREFIX + fingerprint, ObjectClass.PUBLIC_KEY):
                    obj.destroy()
        self._p._call(run)

    def export_root(self, recipient_der: bytes) -> RootPackage:
        parts = _rsa_public_parts(recipient_der)
        fp = key_fingerprint(recipient_der)

        def run(session: Any) -> RootPackage:
            candidates = [o for o in self._find(session, TRUSTED_PREFIX + fp, ObjectClass.PUBLIC_KEY)
                          if o[Attribute.TRUSTED] and o[Attribute.MODULUS] == parts[Attribute.MODULUS]]
            if not candidates:
                raise ProviderAccessDenied("the recipient key is not trusted by this HSM's security officer")
            recipient = candidates[0]
            root = self._p._root(session)
            try:
                wrapped_root = recipient.wrap_key(root, **_OAEP_MECH)
                wrapped_hmac = recipient.wrap_key(self._p._token_key(session, AUDIT_HMAC_LABEL), **_OAEP_MECH)
                wrapped_signing = root.wrap_key(self._audit_signing(session, ObjectClass.PRIVATE_KEY),
                                                mechanism=Mechanism.AES_KEY_WRAP_PAD)
            except pkcs11.exceptions.KeyUnextractable:
                raise ProviderUnsupported("this HSM's root keys were created non-extractable (before node transfer "
                                          "existed): they cannot leave it") from None
            except pkcs11.exceptions.KeyNotWrappable:
                raise ProviderAccessDenied("the HSM refused to wrap the root keys for this recipient") from None
            plain, aad = _CHECK
            iv = self._p._iv(session)
            check = iv + root.encrypt(plain, mechanism=Mechanism.AES_GCM, mechanism_param=pkcs11.GCMParams(iv, aad, 128))
            signing_public = encode_ec_public_key(self._audit_signing(session, ObjectClass.PUBLIC_KEY))
            return RootPackage(bytes(wrapped_root), bytes(wrapped_hmac), bytes(wrapped_signing), signing_public,
                               check, fp)
        return self._p._call(run)

    def import_root(self, package: RootPackage) -> None:
        def run(session: Any) -> None:
            with self._p._session.files.held(exclusive=True):  # writes token objects
                install(session)

        def install(session: Any) -> None:
            private = self._find(session, TRANSPORT_LABEL, ObjectClass.PRIVATE_KEY)
            public = self._find(session, TRANSPORT_LABEL, ObjectClass.PUBLIC_KEY)
            if not private or not public:
                raise ProviderInvalidState("this HSM has no transport key (run the join from the start)")
            if key_fingerprint(_rsa_spki(encode_rsa_public_key(public[0]))) != package.recipient:
                raise ProviderInvalidInput("the package was made for another HSM's transport key")
            self._install(session, private[0], package)
            for obj in private + public:  # the transport key is spent
                obj.destroy()
        self._p._call(run)

    def restore_root(self, package: RootPackage, recipient_private_pkcs8: bytes) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from pkcs11.util.rsa import decode_rsa_private_key

        try:
            key = serialization.load_der_private_key(recipient_private_pkcs8, password=None)
        except (ValueError, TypeError):
            raise ProviderInvalidInput("the backup private key is not valid") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ProviderInvalidInput("the backup private key is not an RSA key")
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        if key_fingerprint(spki) != package.recipient:
            raise ProviderInvalidInput("the package was not made for this backup key")
        pkcs1 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())

        def run(session: Any) -> None:
            with self._p._session.files.held(exclusive=True):  # writes token objects
                unwrapper = session.create_object({**decode_rsa_private_key(pkcs1), **_RSA_UNWRAPPER})
                try:
                    self._install(session, unwrapper, package)
                finally:
                    unwrapper.destroy()
        self._p._call(run)

    def _install(self, session: Any, unwrapper: Any, package: RootPackage) -> None:
        """Unwrap the package's keys into this token; on any failure nothing stays behind."""
        if self._find(session, ROOT_KEK_LABEL, ObjectClass.SECRET_KEY):
            raise ProviderInvalidState("this HSM already holds root keys")
        made: list[Any] = []
        try:
            root = unwrapper.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, package.wrapped_root,
                                        label=ROOT_KEK_LABEL, store=True, template=ROOT_KEK_TEMPLATE, **_OAEP_MECH)
            made.append(root)
            plain, aad = _CHECK
            check = package.check
            if root.decrypt(check[12:], mechanism=Mechanism.AES_GCM,
                            mechanism_param=pkcs11.GCMParams(check[:12], aad, 128)) != plain:
                raise ProviderInvalidCiphertext("the root key check failed")
            made.append(unwrapper.unwrap_key(ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, package.wrapped_hmac,
                                             label=AUDIT_HMAC_LABEL, store=True, template=AUDIT_HMAC_TEMPLATE,
                                             **_OAEP_MECH))
            made.append(root.unwrap_key(ObjectClass.PRIVATE_KEY, KeyType.EC, package.wrapped_signing,
                                        label=AUDIT_SIGNING_LABEL, store=True, mechanism=Mechanism.AES_KEY_WRAP_PAD,
                                        template={**_NOT_ON_PRIVATE, Attribute.DECRYPT: DEFAULT,
                                                  Attribute.UNWRAP: DEFAULT, Attribute.DERIVE: DEFAULT,
                                                  **SIGNING_PRIVATE_TEMPLATE}))
            made.append(session.create_object({**decode_ec_public_key(package.signing_public_key),
                                               Attribute.TOKEN: True, Attribute.PRIVATE: False,
                                               Attribute.VERIFY: True, Attribute.LABEL: AUDIT_SIGNING_LABEL}))
        except BaseException as exc:
            for obj in made:
                try:
                    obj.destroy()
                except pkcs11.PKCS11Error:
                    pass
            if isinstance(exc, ProviderError):
                raise
            if isinstance(exc, pkcs11.PKCS11Error):
                raise ProviderInvalidCiphertext(f"the package could not be unwrapped here ({type(exc).__name__})") \
                    from None
            raise
        self._p._forget_root()


def so_pin_file(config: Mapping[str, Any]) -> Path | None:
    """Where the security officer's PIN is kept: `so_pin_file`, else `so.pin` beside the user PIN file."""
    if config.get("so_pin_file"):
        return Path(config["so_pin_file"])
    if config.get("pin_file"):
        return Path(config["pin_file"]).with_name("so.pin")
    return None
