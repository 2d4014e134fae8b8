"""Replicated keys (cross-cloud BYOK): material born in the broker's HSM, imported into each target cloud through
that cloud's own import protocol (`Provider.byok_import`), wrapped for the cloud *inside* the HSM
(`wrap_for_import`), so the material never exists in clear outside the HSM.

Catalog shape:
- the **primary** is a broker key on the HSM provider; its version refs hold the material wrapped under the root
  KEK: that is the escrow copy, kept in the store;
- each **copy** is a broker key (Origin EXTERNAL) on a target provider, tagged `kmsb:replica-of=<primary>`, and
  recorded in `key_replicas`. Version N of every copy holds the same material as version N of the primary.

Rotation makes version N+1 in the HSM and imports it into every copy as *new* cloud key material (a new cloud
key where the cloud imports one material per key, as AWS and Aliyun do), then adds version N+1 to every copy at
once. Old versions keep decrypting.

Symmetric keys only: SoftHSM zero-pads asymmetric PKCS#8 before AES-KWP, which strict importers (AWS, GCP) reject.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from broker import errors
from broker.model import Key, KeySpec, KeyState, KeyUsage, KeyVersion, Origin
from broker.replication.repo import ReplicationRepo, now
from broker.service import AuditEntry, KeyService, RequestContext, check_tags
from providers import base as pb
from providers.base import Provider, ProviderKeyRef

REPLICA_TAG = "kmsb:replica-of"
PRIMARY_TAG = "kmsb:replicated"


class ReplicatedKeys:
    def __init__(self, service: KeyService, hsm: str | None = None) -> None:
        self.service = service
        self.repo = ReplicationRepo(service.store)
        self.hsm_name = hsm or self._find_hsm()

    def _find_hsm(self) -> str:
        """The provider that can wrap its material for another backend's import (the root of trust)."""
        names = [self.service.default_provider, *self.service.providers]
        for name in names:
            if callable(getattr(self.service.providers[name], "wrap_for_import", None)):
                return name
        raise errors.Unsupported("no provider can wrap material for import (a pkcs11 root of trust is needed)")

    @property
    def hsm(self) -> Provider:
        return self.service.providers[self.hsm_name]

    def _target(self, name: str, spec: KeySpec) -> Provider:
        backend = self.service.provider(name)
        if name == self.hsm_name:
            raise errors.ValidationError("the HSM holds the primary; targets are the other providers")
        if not backend.capabilities.byok_import:
            raise errors.Unsupported(f"provider {name!r} lacks byok_import; it cannot hold a replicated copy")
        if backend.capabilities.missing_for(spec):
            raise errors.Unsupported(f"provider {name!r} lacks {backend.capabilities.missing_for(spec)}")
        return backend

    @staticmethod
    def _spec(key_spec: str) -> KeySpec:
        if key_spec != KeySpec.SYMMETRIC_DEFAULT.value:
            raise errors.Unsupported("replicated keys are SYMMETRIC_DEFAULT only (asymmetric BYOK: SoftHSM zero-pads "
                                     "PKCS#8 before AES-KWP and strict importers reject it)")
        return KeySpec.SYMMETRIC_DEFAULT

    def _wrap(self, ref: ProviderKeyRef) -> Callable[[bytes, str], bytes]:
        hsm = self.hsm
        return lambda public_key_der, algorithm: hsm.wrap_for_import(ref, public_key_der, algorithm)

    # ------------------------------------------------------------------------------- building blocks (sync)
    def create_primary(self, ctx: RequestContext, entry: AuditEntry, *, key_id: str, spec: KeySpec,
                       description: str = "", tags: Mapping[str, str] | None = None) -> Key:
        """HSM-born material for a new primary; nothing leaves the broker (the ref carries it wrapped)."""
        self.service.authorize(ctx, entry, "kms:CreateKey", None, resource=f"provider/{self.hsm_name}")
        ref = self.hsm.create_key(spec, KeyUsage.ENCRYPT_DECRYPT, label=key_id)
        key = Key(key_id=key_id, provider=self.hsm_name, spec=spec, usage=KeyUsage.ENCRYPT_DECRYPT,
                  state=KeyState.ENABLED, origin=Origin.BROKER, description=description, created_at=now(),
                  tags={**(tags or {}), PRIMARY_TAG: "primary"})
        self.service.store.add_key(key, KeyVersion(1, ref.to_dict(), now()))
        return key

    def import_copy(self, ctx: RequestContext, entry: AuditEntry, primary: Key, target: str, *,
                    replica_id: str, version: int | None = None) -> ProviderKeyRef:
        """Import version `version` (default: primary) of the primary's material into `target`; returns the ref."""
        backend = self._target(target, primary.spec)
        self.service.authorize(ctx, entry, "kms:CreateKey", None, resource=f"provider/{target}")
        _, ref = self.service._version(primary, version)
        return backend.byok_import(primary.spec, primary.usage, self._wrap(ref), label=replica_id)

    def record_copy(self, primary: Key, target: str, replica_id: str, cref: ProviderKeyRef,
                    tags: Mapping[str, str] | None = None) -> Key:
        key = Key(key_id=replica_id, provider=target, spec=primary.spec, usage=primary.usage,
                  state=KeyState.ENABLED, origin=Origin.EXTERNAL, description=primary.description,
                  created_at=now(), tags={**(tags or {}), REPLICA_TAG: primary.key_id})
        self.service.store.add_key(key, KeyVersion(1, cref.to_dict(), now()))
        self.repo.add_replica(primary.key_id, target, replica_id)
        return key

    def _discard(self, target: str, ref: ProviderKeyRef) -> None:
        try:
            self.service.providers[target].destroy(ref)
        except pb.ProviderError:
            pass  # best effort; the sync's drift report shows what is left

    # ------------------------------------------------------------------------------------------ operations
    def create(self, ctx: RequestContext, *, targets: Any, key_spec: str = "SYMMETRIC_DEFAULT", description: str = "",
               tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:CreateKey") as entry:
            spec = self._spec(key_spec)
            if not isinstance(targets, list) or not targets or len(set(targets)) != len(targets):
                raise errors.ValidationError("Targets must be a non-empty list of distinct provider names")
            tags = check_tags(tags)
            for t in targets:
                self._target(t, spec)
            primary_id = str(uuid.uuid4())
            entry.key_id, entry.provider = primary_id, self.hsm_name
            primary = self.create_primary(ctx, entry, key_id=primary_id, spec=spec, description=description,
                                          tags=tags)
            made: list[tuple[str, str, ProviderKeyRef]] = []
            try:
                for t in targets:
                    rid = str(uuid.uuid4())
                    made.append((t, rid, self.import_copy(ctx, entry, primary, t, replica_id=rid)))
            except BaseException:
                for t, _, cref in made:
                    self._discard(t, cref)
                self.service._destroy_versions(primary)
                self.service.store.update_key(primary_id, state=KeyState.DESTROYED)
                raise
            for t, rid, cref in made:
                self.record_copy(primary, t, rid, cref, tags)
            entry.key_id, entry.provider = primary_id, self.hsm_name
            entry.extra["replicas"] = {t: rid for t, rid, _ in made}
            return self._describe(primary_id)

    def _describe(self, primary_id: str) -> dict[str, Any]:
        primary = self.service.store.get_key(primary_id)
        if primary is None or PRIMARY_TAG not in primary.tags:
            raise errors.NotFound(f"replicated key {primary_id} not found")
        copies = []
        for target, rid in sorted(self.repo.replicas(primary_id).items()):
            key = self.service.store.get_key(rid)
            copies.append({"Target": target, "KeyId": rid, "KeyState": key.state.value if key else "Missing",
                           "PrimaryVersion": key.primary_version if key else None})
        return {"KeyMetadata": self.service._metadata(primary), "Replicas": copies}

    def describe(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:DescribeKey") as entry:
            key = self.service.resolve_key(key_ref)
            self.service.authorize(ctx, entry, "kms:DescribeKey", key)
            return self._describe(key.key_id)

    def rotate(self, ctx: RequestContext, key_ref: str) -> dict[str, Any]:
        with self.service.operation(ctx, "kms:RotateKeyOnDemand") as entry:
            primary = self.service.resolve_key(key_ref, details=True)
            if PRIMARY_TAG not in primary.tags:
                raise errors.ValidationError(f"key {primary.key_id} is not the primary of a replicated key")
            self.service.authorize(ctx, entry, "kms:RotateKeyOnDemand", primary)
            self.service._require_usable(primary)
            replicas = {t: self.service.resolve_key(rid) for t, rid in self.repo.replicas(primary.key_id).items()}
            for copy in replicas.values():
                self.service.authorize(ctx, entry, "kms:RotateKeyOnDemand", copy)
            _, current = self.service._version(primary)
            new_ref = self.hsm.create_version(current, primary.spec, primary.usage, label=primary.key_id)
            made: list[tuple[str, ProviderKeyRef]] = []
            try:
                for t, copy in replicas.items():
                    made.append((t, self.service.providers[t].byok_import(
                        primary.spec, primary.usage, self._wrap(new_ref), label=copy.key_id)))
            except BaseException:
                for t, cref in made:
                    self._discard(t, cref)
                raise
            number = primary.primary_version + 1
            if not self.service.store.add_version(primary.key_id, KeyVersion(number, new_ref.to_dict(), now()),
                                                  expected_primary=primary.primary_version):
                for t, cref in made:
                    self._discard(t, cref)
                raise errors.InvalidState("the key was rotated concurrently; retry")
            for t, cref in made:
                copy = replicas[t]
                self.service.store.add_version(copy.key_id, KeyVersion(copy.primary_version + 1, cref.to_dict(),
                                                                       now()))
            entry.key_id, entry.provider, entry.key_version = primary.key_id, primary.provider, number
            entry.extra["replicas"] = {t: c.key_id for t, c in replicas.items()}
            return {"KeyId": primary.key_id, "KeyVersion": number,
                    "Replicas": [{"Target": t, "KeyId": c.key_id, "KeyVersion": c.primary_version + 1}
                                 for t, c in sorted(replicas.items())]}
