"""The emulator's single shared state and the Cloud KMS v1 rules (no I/O; both transports call this).

Every public method is named after its RPC in snake_case, takes the proto-plus request and returns the
proto-plus response, or raises KmsError with the status the real service uses.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from emulator_state.deadlines import Deadlines
from google.cloud import kms_v1 as k

from . import crypto, names
from .errors import KmsError, already_exists, invalid, not_found, precondition
from .integrity import crc32c, verify

State = k.CryptoKeyVersion.CryptoKeyVersionState
Purpose = k.CryptoKey.CryptoKeyPurpose
Alg = k.CryptoKeyVersion.CryptoKeyVersionAlgorithm

MAX_PAGE = 1000
DEFAULT_DESTROY = timedelta(days=30)
MAX_DESTROY = timedelta(days=120)
MIN_ROTATION = timedelta(days=1)
IMPORT_JOB_LIFETIME = timedelta(days=3)
MAX_PAYLOAD = 64 * 1024


def _copy(msg: Any) -> Any:
    cls = type(msg)
    return cls.deserialize(cls.serialize(msg))


def _page(items: Sequence[Any], page_size: int, page_token: str) -> tuple[list[Any], str]:
    """Opaque offset tokens; an unparsable token is INVALID_ARGUMENT like the real service."""
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("o:"))
        except ValueError:
            raise invalid("Invalid page token.") from None
    if page_size < 0:
        raise invalid("page_size must not be negative.")
    size = min(page_size or MAX_PAGE, MAX_PAGE)
    chunk = list(items[start:start + size])
    nxt = start + size
    token = base64.urlsafe_b64encode(f"o:{nxt}".encode()).decode() if nxt < len(items) else ""
    return chunk, token


class KmsBackend:
    """All key rings, keys, versions, import jobs and their material, guarded by one lock."""

    def __init__(self, *, now: Callable[[], datetime] | None = None,
                 min_destroy_duration: timedelta = timedelta(days=1),
                 on_change: Callable[[], None] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self.min_destroy_duration = min_destroy_duration
        self.on_change = on_change
        self.lock = threading.RLock()
        self.key_rings: dict[str, k.KeyRing] = {}
        self.crypto_keys: dict[str, k.CryptoKey] = {}
        self.versions: dict[str, k.CryptoKeyVersion] = {}
        self.import_jobs: dict[str, k.ImportJob] = {}
        self.material: dict[str, bytes] = {}  # version or import-job name -> key bytes
        self.key_versions: dict[str, list[str]] = {}  # key name -> its version names, oldest first
        self.deadlines = Deadlines()  # ("destroy", version) / ("expire", job) / ("rotate", key) -> when
        self.mark: Callable[[str, str], None] | None = None  # persistence: (table, name) changed, under the lock

    # ---- plumbing -------------------------------------------------------------------------------

    def call(self, method: str, request: Any) -> Any:
        """Dispatch one RPC under the lock, applying time-based transitions first."""
        handler = getattr(self, method, None)
        if handler is None or method.startswith("_"):
            raise KmsError("UNIMPLEMENTED", f"Method {method} is not implemented by the emulator.")
        with self.lock:
            changed = self._tick()
            before = self._generation()
            try:
                return handler(request)
            finally:
                if self.on_change and (changed or before != self._generation()):
                    self.on_change()

    def _generation(self) -> tuple[int, ...]:
        return (len(self.key_rings), len(self.crypto_keys), len(self.versions), len(self.import_jobs),
                self._mutations)

    _mutations = 0

    def _touch(self) -> None:
        self._mutations += 1

    def _changed(self, table: str, name: str) -> None:
        """Record that one object (or its material) changed, for the state file."""
        if self.mark is not None:
            self.mark(table, name)
            if table in ("versions", "import_jobs"):
                self.mark("material", name)

    def _schedule_rotation(self, key: k.CryptoKey) -> None:
        when = key.next_rotation_time if "next_rotation_time" in key and not key.import_only else None
        self.deadlines.set(("rotate", key.name), when)

    def reindex(self) -> None:
        """Rebuild the version index and the deadlines from the tables (after a load)."""
        self.key_versions = {}
        for name in self.versions:
            self.key_versions.setdefault(names.version_key(name), []).append(name)
        self.deadlines = Deadlines()
        for ver in self.versions.values():
            if ver.state == State.DESTROY_SCHEDULED:
                self.deadlines.set(("destroy", ver.name), ver.destroy_time)
        for job in self.import_jobs.values():
            if job.state == k.ImportJob.ImportJobState.ACTIVE:
                self.deadlines.set(("expire", job.name), job.expire_time)
        for key in self.crypto_keys.values():
            self._schedule_rotation(key)

    def _tick(self) -> bool:
        """Scheduled destruction, import-job expiry and automatic rotation whose deadline has come (a heap, not a
        scan: each due entry is checked against its object, so a moved or cancelled deadline is a no-op)."""
        now = self._now()
        changed = False
        for rule, name in list(self.deadlines.due(now)):
            if rule == "destroy":
                ver = self.versions.get(name)
                if ver is not None and ver.state == State.DESTROY_SCHEDULED and ver.destroy_time <= now:
                    ver.state = State.DESTROYED
                    ver.destroy_event_time = now
                    self.material.pop(ver.name, None)
                    self._changed("versions", name)
                    changed = True
            elif rule == "expire":
                job = self.import_jobs.get(name)
                if job is not None and job.state == k.ImportJob.ImportJobState.ACTIVE and job.expire_time <= now:
                    job.state = k.ImportJob.ImportJobState.EXPIRED
                    job.expire_event_time = now
                    self.material.pop(job.name, None)
                    self._changed("import_jobs", name)
                    changed = True
            else:
                key = self.crypto_keys.get(name)
                if key is not None and "next_rotation_time" in key and key.next_rotation_time <= now \
                        and not key.import_only:
                    ver = self._new_version(key, crypto.generate(self._alg(key)))
                    key.primary = k.CryptoKeyVersion(name=ver.name)
                    if "rotation_period" in key:
                        key.next_rotation_time = now + key.rotation_period
                    else:
                        del key.next_rotation_time
                    self._schedule_rotation(key)
                    self._changed("crypto_keys", name)
                    changed = True
                elif key is not None:
                    self._schedule_rotation(key)  # re-arm a later deadline (none is due: set() is a no-op then)
        if changed:
            self._touch()
        return changed

    def _alg(self, key: k.CryptoKey) -> crypto.Algorithm:
        return crypto.algorithm(Alg(key.version_template.algorithm).name)

    def _key_ring(self, name: str) -> k.KeyRing:
        names.check(names.KEY_RING_RE, name, "KeyRing")
        if name not in self.key_rings:
            raise not_found("KeyRing", name)
        return self.key_rings[name]

    def _key(self, name: str) -> k.CryptoKey:
        names.check(names.CRYPTO_KEY_RE, name, "CryptoKey")
        if name not in self.crypto_keys:
            raise not_found("CryptoKey", name)
        return self.crypto_keys[name]

    def _version(self, name: str) -> k.CryptoKeyVersion:
        names.check(names.VERSION_RE, name, "CryptoKeyVersion")
        if name not in self.versions:
            raise not_found("CryptoKeyVersion", name)
        return self.versions[name]

    def _job(self, name: str) -> k.ImportJob:
        names.check(names.IMPORT_JOB_RE, name, "ImportJob")
        if name not in self.import_jobs:
            raise not_found("ImportJob", name)
        return self.import_jobs[name]

    def _key_view(self, key: k.CryptoKey) -> k.CryptoKey:
        """CryptoKey.primary is returned as the full current CryptoKeyVersion."""
        out = _copy(key)
        if "primary" in key and key.primary.name in self.versions:
            out.primary = _copy(self.versions[key.primary.name])
        return out

    def _versions_of(self, key_name: str) -> list[k.CryptoKeyVersion]:
        return [self.versions[n] for n in self.key_versions.get(key_name, ())]

    def _new_version(self, key: k.CryptoKey, material: bytes, algorithm: int | None = None,
                     **fields: Any) -> k.CryptoKeyVersion:
        number = max((int(n.rsplit("/", 1)[1]) for n in self.key_versions.get(key.name, ())), default=0) + 1
        now = self._now()
        ver = k.CryptoKeyVersion(
            name=f"{key.name}/cryptoKeyVersions/{number}", state=State.ENABLED,
            protection_level=key.version_template.protection_level,
            algorithm=algorithm if algorithm is not None else key.version_template.algorithm,
            create_time=now, **fields)
        if "import_job" not in fields:
            ver.generate_time = now
        self.versions[ver.name] = ver
        self.key_versions.setdefault(key.name, []).append(ver.name)
        self.material[ver.name] = material
        self._changed("versions", ver.name)
        self._changed("crypto_keys", key.name)  # its primary usually moves with a new version
        self._touch()
        return ver

    def _usable(self, name: str, purpose: int) -> tuple[k.CryptoKeyVersion, k.CryptoKey, crypto.Algorithm]:
        ver = self._version(name)
        key = self.crypto_keys[names.version_key(name)]
        if key.purpose != purpose:
            raise precondition(f"{name} has purpose {Purpose(key.purpose).name}; this operation requires "
                               f"{Purpose(purpose).name}.")
        if ver.state != State.ENABLED:
            raise precondition(f"{name} is not enabled, current state is: {State(ver.state).name}.")
        return ver, key, crypto.algorithm(Alg(ver.algorithm).name)

    # ---- key rings ------------------------------------------------------------------------------

    def create_key_ring(self, req: k.CreateKeyRingRequest) -> k.KeyRing:
        names.check(names.LOCATION_RE, req.parent, "Location")
        names.check_id(req.key_ring_id, "key_ring_id")
        name = f"{req.parent}/keyRings/{req.key_ring_id}"
        if name in self.key_rings:
            raise already_exists("KeyRing", name)
        ring = k.KeyRing(name=name, create_time=self._now())
        self.key_rings[name] = ring
        self._changed("key_rings", name)
        return _copy(ring)

    def get_key_ring(self, req: k.GetKeyRingRequest) -> k.KeyRing:
        return _copy(self._key_ring(req.name))

    def list_key_rings(self, req: k.ListKeyRingsRequest) -> k.ListKeyRingsResponse:
        names.check(names.LOCATION_RE, req.parent, "Location")
        items = [r for n, r in self.key_rings.items() if n.startswith(req.parent + "/keyRings/")]
        page, token = _page(items, req.page_size, req.page_token)
        return k.ListKeyRingsResponse(key_rings=[_copy(r) for r in page], next_page_token=token,
                                      total_size=len(items))

    # ---- crypto keys ----------------------------------------------------------------------------

    def _check_rotation(self, key: k.CryptoKey) -> None:
        if "rotation_period" in key or "next_rotation_time" in key:
            if key.purpose != Purpose.ENCRYPT_DECRYPT:
                raise invalid("Automatic rotation is only supported for ENCRYPT_DECRYPT keys.")
        if "rotation_period" in key:
            if "next_rotation_time" not in key:
                raise invalid("next_rotation_time must be set when rotation_period is set.")
            if key.rotation_period < MIN_ROTATION:
                raise invalid("rotation_period must be at least 24 hours.")

    def create_crypto_key(self, req: k.CreateCryptoKeyRequest) -> k.CryptoKey:
        self._key_ring(req.parent)
        names.check_id(req.crypto_key_id, "crypto_key_id")
        name = f"{req.parent}/cryptoKeys/{req.crypto_key_id}"
        if name in self.crypto_keys:
            raise already_exists("CryptoKey", name)
        key = _copy(req.crypto_key)
        key.name = name
        if key.purpose == Purpose.CRYPTO_KEY_PURPOSE_UNSPECIFIED:
            raise invalid("crypto_key.purpose is required.")
        tmpl = key.version_template
        if tmpl.algorithm == Alg.CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED:
            if key.purpose != Purpose.ENCRYPT_DECRYPT:
                raise invalid("crypto_key.version_template.algorithm is required for this purpose.")
            tmpl.algorithm = Alg.GOOGLE_SYMMETRIC_ENCRYPTION
        alg = crypto.algorithm(Alg(tmpl.algorithm).name)
        if alg.purpose != Purpose(key.purpose).name:
            raise invalid(f"Algorithm {alg.name} is not compatible with purpose {Purpose(key.purpose).name}.")
        if tmpl.protection_level == k.ProtectionLevel.PROTECTION_LEVEL_UNSPECIFIED:
            tmpl.protection_level = k.ProtectionLevel.SOFTWARE
        if tmpl.protection_level not in (k.ProtectionLevel.SOFTWARE, k.ProtectionLevel.HSM):
            raise invalid("Only SOFTWARE and HSM protection levels are supported by the emulator.")
        key.version_template = tmpl
        self._check_rotation(key)
        if "destroy_scheduled_duration" not in key:
            key.destroy_scheduled_duration = DEFAULT_DESTROY
        if not self.min_destroy_duration <= key.destroy_scheduled_duration <= MAX_DESTROY:
            raise invalid("destroy_scheduled_duration must be between 24 hours and 120 days.")
        if key.import_only and not req.skip_initial_version_creation:
            raise invalid("import_only keys require skip_initial_version_creation.")
        if "primary" in key:
            raise invalid("crypto_key.primary must not be set on creation.")
        key.create_time = self._now()
        self.crypto_keys[name] = key
        self._schedule_rotation(key)
        self._changed("crypto_keys", name)
        if not req.skip_initial_version_creation:
            ver = self._new_version(key, crypto.generate(alg))
            if key.purpose == Purpose.ENCRYPT_DECRYPT:
                key.primary = k.CryptoKeyVersion(name=ver.name)
        return self._key_view(key)

    def get_crypto_key(self, req: k.GetCryptoKeyRequest) -> k.CryptoKey:
        return self._key_view(self._key(req.name))

    def list_crypto_keys(self, req: k.ListCryptoKeysRequest) -> k.ListCryptoKeysResponse:
        self._key_ring(req.parent)
        items = [c for n, c in self.crypto_keys.items() if n.startswith(req.parent + "/cryptoKeys/")]
        page, token = _page(items, req.page_size, req.page_token)
        return k.ListCryptoKeysResponse(crypto_keys=[self._key_view(c) for c in page], next_page_token=token,
                                        total_size=len(items))

    _KEY_MUTABLE = {"labels", "rotation_period", "next_rotation_time", "version_template",
                    "version_template.algorithm", "version_template.protection_level"}

    def update_crypto_key(self, req: k.UpdateCryptoKeyRequest) -> k.CryptoKey:
        key = self._key(req.crypto_key.name)
        paths = list(req.update_mask.paths)
        if not paths:
            raise invalid("update_mask is required.")
        bad = [p for p in paths if p not in self._KEY_MUTABLE]
        if bad:
            raise invalid(f"update_mask contains fields that cannot be updated: {', '.join(bad)}.")
        new = _copy(key)
        for path in paths:
            if path == "labels":
                new.labels = dict(req.crypto_key.labels)
            elif path in ("rotation_period", "next_rotation_time"):
                if path in req.crypto_key:
                    setattr(new, path, getattr(req.crypto_key, path))
                elif path in new:
                    delattr(new, path)
            else:
                field = path.split(".", 1)[1] if "." in path else None
                for f in [field] if field else ["algorithm", "protection_level"]:
                    setattr(new.version_template, f, getattr(req.crypto_key.version_template, f))
                alg = crypto.algorithm(Alg(new.version_template.algorithm).name)
                if alg.purpose != Purpose(new.purpose).name:
                    raise invalid(f"Algorithm {alg.name} is not compatible with purpose "
                                  f"{Purpose(new.purpose).name}.")
        self._check_rotation(new)
        self.crypto_keys[key.name] = new
        self._schedule_rotation(new)
        self._changed("crypto_keys", key.name)
        self._touch()
        return self._key_view(new)

    def update_crypto_key_primary_version(self, req: k.UpdateCryptoKeyPrimaryVersionRequest) -> k.CryptoKey:
        key = self._key(req.name)
        if key.purpose != Purpose.ENCRYPT_DECRYPT:
            raise precondition(f"{key.name} does not have purpose ENCRYPT_DECRYPT; it has no primary version.")
        ver = self._version(f"{key.name}/cryptoKeyVersions/{req.crypto_key_version_id}")
        if ver.state != State.ENABLED:
            raise precondition(f"{ver.name} is not enabled, current state is: {State(ver.state).name}.")
        key.primary = k.CryptoKeyVersion(name=ver.name)
        self._changed("crypto_keys", key.name)
        self._touch()
        return self._key_view(key)

    # ---- versions -------------------------------------------------------------------------------

    def create_crypto_key_version(self, req: k.CreateCryptoKeyVersionRequest) -> k.CryptoKeyVersion:
        key = self._key(req.parent)
        if key.import_only:
            raise precondition(f"{key.name} is import-only; new versions must be imported.")
        ver = self._new_version(key, crypto.generate(self._alg(key)))
        if key.purpose == Purpose.ENCRYPT_DECRYPT and "primary" not in key:
            key.primary = k.CryptoKeyVersion(name=ver.name)
        return _copy(ver)

    def get_crypto_key_version(self, req: k.GetCryptoKeyVersionRequest) -> k.CryptoKeyVersion:
        return _copy(self._version(req.name))

    def list_crypto_key_versions(self, req: k.ListCryptoKeyVersionsRequest) -> k.ListCryptoKeyVersionsResponse:
        self._key(req.parent)
        items = self._versions_of(req.parent)
        if req.filter:
            items = _filter_state(items, req.filter)
        page, token = _page(items, req.page_size, req.page_token)
        return k.ListCryptoKeyVersionsResponse(crypto_key_versions=[_copy(v) for v in page],
                                               next_page_token=token, total_size=len(items))

    def update_crypto_key_version(self, req: k.UpdateCryptoKeyVersionRequest) -> k.CryptoKeyVersion:
        ver = self._version(req.crypto_key_version.name)
        paths = list(req.update_mask.paths)
        if paths != ["state"]:
            raise invalid("update_mask must be exactly [state]; only state can be updated.")
        target = req.crypto_key_version.state
        if target not in (State.ENABLED, State.DISABLED):
            raise invalid("state can only be updated to ENABLED or DISABLED.")
        if ver.state not in (State.ENABLED, State.DISABLED):
            raise precondition(f"{ver.name} is not in a state that can be enabled or disabled, "
                               f"current state is: {State(ver.state).name}.")
        ver.state = target
        self._changed("versions", ver.name)
        self._touch()
        return _copy(ver)

    def destroy_crypto_key_version(self, req: k.DestroyCryptoKeyVersionRequest) -> k.CryptoKeyVersion:
        ver = self._version(req.name)
        if ver.state not in (State.ENABLED, State.DISABLED):
            raise precondition(f"{ver.name} cannot be destroyed, current state is: {State(ver.state).name}.")
        key = self.crypto_keys[names.version_key(ver.name)]
        ver.state = State.DESTROY_SCHEDULED
        ver.destroy_time = self._now() + key.destroy_scheduled_duration
        self.deadlines.set(("destroy", ver.name), ver.destroy_time)
        self._changed("versions", ver.name)
        self._touch()
        self._tick()
        return _copy(ver)

    def restore_crypto_key_version(self, req: k.RestoreCryptoKeyVersionRequest) -> k.CryptoKeyVersion:
        ver = self._version(req.name)
        if ver.state != State.DESTROY_SCHEDULED:
            raise precondition(f"{ver.name} is not scheduled for destruction, current state is: "
                               f"{State(ver.state).name}.")
        ver.state = State.DISABLED
        del ver.destroy_time
        self.deadlines.set(("destroy", ver.name), None)
        self._changed("versions", ver.name)
        self._touch()
        return _copy(ver)

    def get_public_key(self, req: k.GetPublicKeyRequest) -> k.PublicKey:
        ver = self._version(req.name)
        key = self.crypto_keys[names.version_key(ver.name)]
        if key.purpose not in (Purpose.ASYMMETRIC_SIGN, Purpose.ASYMMETRIC_DECRYPT):
            raise precondition(f"{ver.name} is not an asymmetric key version; it has no public key.")
        if ver.state != State.ENABLED:
            raise precondition(f"{ver.name} is not enabled, current state is: {State(ver.state).name}.")
        fmt = req.public_key_format
        if fmt not in (k.PublicKey.PublicKeyFormat.PUBLIC_KEY_FORMAT_UNSPECIFIED, k.PublicKey.PublicKeyFormat.PEM):
            raise invalid("Only the PEM public key format is supported for this algorithm.")
        pem = crypto.public_pem(self.material[ver.name])
        return k.PublicKey(pem=pem, pem_crc32c=crc32c(pem.encode()), algorithm=ver.algorithm, name=ver.name,
                           protection_level=ver.protection_level)

    # ---- import jobs ----------------------------------------------------------------------------

    def create_import_job(self, req: k.CreateImportJobRequest) -> k.ImportJob:
        self._key_ring(req.parent)
        names.check_id(req.import_job_id, "import_job_id")
        name = f"{req.parent}/importJobs/{req.import_job_id}"
        if name in self.import_jobs:
            raise already_exists("ImportJob", name)
        method_name = k.ImportJob.ImportMethod(req.import_job.import_method).name
        method = crypto.IMPORT_METHODS.get(method_name)
        if method is None:
            raise invalid(f"import_method {method_name} is not supported.")
        level = req.import_job.protection_level
        if level not in (k.ProtectionLevel.SOFTWARE, k.ProtectionLevel.HSM):
            raise invalid("import_job.protection_level must be SOFTWARE or HSM.")
        wrapping = crypto.generate_wrapping_key(method)
        now = self._now()
        job = k.ImportJob(name=name, import_method=req.import_job.import_method, protection_level=level,
                          create_time=now, generate_time=now, expire_time=now + IMPORT_JOB_LIFETIME,
                          state=k.ImportJob.ImportJobState.ACTIVE,
                          public_key=k.ImportJob.WrappingPublicKey(pem=crypto.public_pem(wrapping)))
        self.import_jobs[name] = job
        self.material[name] = wrapping
        self.deadlines.set(("expire", name), job.expire_time)
        self._changed("import_jobs", name)
        return _copy(job)

    def get_import_job(self, req: k.GetImportJobRequest) -> k.ImportJob:
        return _copy(self._job(req.name))

    def list_import_jobs(self, req: k.ListImportJobsRequest) -> k.ListImportJobsResponse:
        self._key_ring(req.parent)
        items = [j for n, j in self.import_jobs.items() if n.startswith(req.parent + "/importJobs/")]
        page, token = _page(items, req.page_size, req.page_token)
        return k.ListImportJobsResponse(import_jobs=[_copy(j) for j in page], next_page_token=token,
                                        total_size=len(items))

    def import_crypto_key_version(self, req: k.ImportCryptoKeyVersionRequest) -> k.CryptoKeyVersion:
        key = self._key(req.parent)
        if not req.import_job:
            raise invalid("import_job is required.")
        job = self._job(req.import_job)
        if job.state != k.ImportJob.ImportJobState.ACTIVE:
            raise precondition(f"{job.name} is not active, current state is: "
                               f"{k.ImportJob.ImportJobState(job.state).name}.")
        if req.algorithm == Alg.CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED:
            raise invalid("algorithm is required.")
        alg = crypto.algorithm(Alg(req.algorithm).name)
        if alg.purpose != Purpose(key.purpose).name:
            raise invalid(f"Algorithm {alg.name} is not compatible with purpose {Purpose(key.purpose).name}.")
        if job.protection_level != key.version_template.protection_level:
            raise invalid("The ImportJob's protection_level must match the CryptoKey's version_template.")
        wrapped = req.wrapped_key or req.rsa_aes_wrapped_key
        if not wrapped:
            raise invalid("wrapped_key is required.")
        method = crypto.IMPORT_METHODS[k.ImportJob.ImportMethod(job.import_method).name]
        material = crypto.unwrap_import(method, self.material[job.name], wrapped)
        if material is None:
            raise invalid(f"Failed to unwrap the key material with {job.name} ({method.name}).")
        crypto.check_imported(alg, material)
        now = self._now()
        if req.crypto_key_version:
            ver = self._version(req.crypto_key_version)
            if names.version_key(ver.name) != key.name:
                raise invalid("crypto_key_version must belong to parent.")
            if ver.state not in (State.DESTROYED, State.IMPORT_FAILED) or not ver.import_job:
                raise precondition(f"{ver.name} is not eligible for re-import.")
            if ver.algorithm != req.algorithm:
                raise invalid("Re-imported material must use the version's algorithm.")
            ver.state, ver.import_job, ver.import_time = State.ENABLED, job.name, now
            del ver.destroy_time
            del ver.destroy_event_time
            self.material[ver.name] = material
            self._changed("versions", ver.name)
            self._touch()
            return _copy(ver)
        ver = self._new_version(key, material, req.algorithm, import_job=job.name, import_time=now)
        if key.purpose == Purpose.ENCRYPT_DECRYPT and "primary" not in key:
            key.primary = k.CryptoKeyVersion(name=ver.name)
        return _copy(ver)

    # ---- cryptographic operations ---------------------------------------------------------------

    def _primary(self, name: str) -> str:
        """Encrypt accepts a CryptoKey (its primary is used) or a CryptoKeyVersion."""
        if names.is_version(name):
            return name
        key = self._key(name)
        if key.purpose != Purpose.ENCRYPT_DECRYPT:
            raise precondition(f"{name} does not have purpose ENCRYPT_DECRYPT.")
        if "primary" not in key:
            raise precondition(f"{name} has no primary version.")
        return key.primary.name

    def encrypt(self, req: k.EncryptRequest) -> k.EncryptResponse:
        ver_pt = verify(req, "plaintext")
        ver_aad = verify(req, "additional_authenticated_data")
        ver, _, _ = self._usable(self._primary(req.name), Purpose.ENCRYPT_DECRYPT)
        if len(req.plaintext) > MAX_PAYLOAD or len(req.additional_authenticated_data) > MAX_PAYLOAD:
            raise invalid("The plaintext and additional_authenticated_data must each be at most 64KiB.")
        number = int(ver.name.rsplit("/", 1)[1])
        ct = crypto.symmetric_encrypt(self.material[ver.name], number, req.plaintext,
                                      req.additional_authenticated_data)
        return k.EncryptResponse(name=ver.name, ciphertext=ct, ciphertext_crc32c=crc32c(ct),
                                 verified_plaintext_crc32c=ver_pt,
                                 verified_additional_authenticated_data_crc32c=ver_aad,
                                 protection_level=ver.protection_level)

    def decrypt(self, req: k.DecryptRequest) -> k.DecryptResponse:
        verify(req, "ciphertext")
        verify(req, "additional_authenticated_data")
        key = self._key(req.name)
        if key.purpose != Purpose.ENCRYPT_DECRYPT:
            raise precondition(f"{key.name} does not have purpose ENCRYPT_DECRYPT.")
        failed = invalid("Decryption failed: verify that 'name' refers to the correct CryptoKey.")
        number = crypto.ciphertext_version(req.ciphertext)
        ver_name = f"{key.name}/cryptoKeyVersions/{number}"
        if number is None or ver_name not in self.versions:
            raise failed
        ver, _, _ = self._usable(ver_name, Purpose.ENCRYPT_DECRYPT)
        pt = crypto.symmetric_decrypt(self.material[ver.name], req.ciphertext, req.additional_authenticated_data)
        if pt is None:
            raise failed
        return k.DecryptResponse(plaintext=pt, plaintext_crc32c=crc32c(pt),
                                 used_primary=key.primary.name == ver.name, protection_level=ver.protection_level)

    def raw_encrypt(self, req: k.RawEncryptRequest) -> k.RawEncryptResponse:
        v_pt = verify(req, "plaintext")
        v_aad = verify(req, "additional_authenticated_data")
        v_iv = verify(req, "initialization_vector")
        ver, _, _ = self._usable(req.name, Purpose.RAW_ENCRYPT_DECRYPT)
        iv = req.initialization_vector or os.urandom(12)
        if len(iv) != 12:
            raise invalid("initialization_vector must be 12 bytes for AES-GCM.")
        ct = crypto.raw_encrypt(self.material[ver.name], iv, req.plaintext, req.additional_authenticated_data)
        return k.RawEncryptResponse(
            ciphertext=ct, initialization_vector=iv, tag_length=16, ciphertext_crc32c=crc32c(ct),
            initialization_vector_crc32c=crc32c(iv), verified_plaintext_crc32c=v_pt,
            verified_additional_authenticated_data_crc32c=v_aad, verified_initialization_vector_crc32c=v_iv,
            name=ver.name, protection_level=ver.protection_level)

    def raw_decrypt(self, req: k.RawDecryptRequest) -> k.RawDecryptResponse:
        v_ct = verify(req, "ciphertext")
        v_aad = verify(req, "additional_authenticated_data")
        v_iv = verify(req, "initialization_vector")
        ver, _, _ = self._usable(req.name, Purpose.RAW_ENCRYPT_DECRYPT)
        if req.tag_length not in (0, 16):
            raise invalid("tag_length must be 16 for AES-GCM.")
        pt = crypto.raw_decrypt(self.material[ver.name], req.initialization_vector, req.ciphertext,
                                req.additional_authenticated_data)
        if pt is None:
            raise invalid("Decryption failed: the ciphertext, IV or additional authenticated data is invalid.")
        return k.RawDecryptResponse(plaintext=pt, plaintext_crc32c=crc32c(pt), protection_level=ver.protection_level,
                                    verified_ciphertext_crc32c=v_ct, verified_additional_authenticated_data_crc32c=v_aad,
                                    verified_initialization_vector_crc32c=v_iv)

    def asymmetric_sign(self, req: k.AsymmetricSignRequest) -> k.AsymmetricSignResponse:
        which = k.Digest.pb(req.digest).WhichOneof("digest") if "digest" in req else None
        digest = getattr(req.digest, which) if which else None
        v_digest = False
        if "digest_crc32c" in req:
            if crc32c(digest or b"") != req.digest_crc32c:
                raise invalid("The checksum in field digest_crc32c did not match the data in field digest.")
            v_digest = True
        v_data = verify(req, "data")
        ver, _, alg = self._usable(req.name, Purpose.ASYMMETRIC_SIGN)
        if digest is not None and which != alg.hash.lower():
            raise invalid(f"The digest type must be {alg.hash.lower()} for {alg.name}.")
        sig = crypto.sign(alg, self.material[ver.name], digest, req.data if digest is None else None)
        return k.AsymmetricSignResponse(signature=sig, signature_crc32c=crc32c(sig), verified_digest_crc32c=v_digest,
                                        verified_data_crc32c=v_data, name=ver.name,
                                        protection_level=ver.protection_level)

    def asymmetric_decrypt(self, req: k.AsymmetricDecryptRequest) -> k.AsymmetricDecryptResponse:
        v_ct = verify(req, "ciphertext")
        ver, _, alg = self._usable(req.name, Purpose.ASYMMETRIC_DECRYPT)
        pt = crypto.asymmetric_decrypt(alg, self.material[ver.name], req.ciphertext)
        if pt is None:
            raise invalid("Decryption failed: the ciphertext is invalid for this key version.")
        return k.AsymmetricDecryptResponse(plaintext=pt, plaintext_crc32c=crc32c(pt), verified_ciphertext_crc32c=v_ct,
                                           protection_level=ver.protection_level)

    def mac_sign(self, req: k.MacSignRequest) -> k.MacSignResponse:
        v_data = verify(req, "data")
        ver, _, alg = self._usable(req.name, Purpose.MAC)
        tag = crypto.mac(alg, self.material[ver.name], req.data)
        return k.MacSignResponse(name=ver.name, mac=tag, mac_crc32c=crc32c(tag), verified_data_crc32c=v_data,
                                 protection_level=ver.protection_level)

    def mac_verify(self, req: k.MacVerifyRequest) -> k.MacVerifyResponse:
        v_data = verify(req, "data")
        v_mac = verify(req, "mac")
        ver, _, alg = self._usable(req.name, Purpose.MAC)
        ok = crypto.mac_equal(crypto.mac(alg, self.material[ver.name], req.data), req.mac)
        return k.MacVerifyResponse(name=ver.name, success=ok, verified_data_crc32c=v_data, verified_mac_crc32c=v_mac,
                                   verified_success_integrity=ok, protection_level=ver.protection_level)

    def generate_random_bytes(self, req: k.GenerateRandomBytesRequest) -> k.GenerateRandomBytesResponse:
        names.check(names.LOCATION_RE, req.location, "Location")
        if not 8 <= req.length_bytes <= 1024:
            raise invalid("length_bytes must be between 8 and 1024.")
        if req.protection_level != k.ProtectionLevel.HSM:
            raise invalid("protection_level must be HSM.")
        data = os.urandom(req.length_bytes)
        return k.GenerateRandomBytesResponse(data=data, data_crc32c=crc32c(data))


def _filter_state(items: Iterable[k.CryptoKeyVersion], expr: str) -> list[k.CryptoKeyVersion]:
    """The filter form clients use most: `state=ENABLED`, `state!=DESTROYED` (others are INVALID_ARGUMENT)."""
    expr = expr.replace(" ", "")
    for op in ("!=", "="):
        field, sep, value = expr.partition(op)
        if sep and field == "state" and value in State.__members__:
            want = State[value]
            return [v for v in items if (v.state == want) == (op == "=")]
    raise invalid(f"Unsupported filter: {expr}.")
