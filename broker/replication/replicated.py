"""Replicated keys (cross-cloud BYOK): material born in the broker's HSM, imported into each target cloud through
that cloud's own import protocol, wrapped for the cloud *inside* the HSM, so the material never exists in clear
outside it. All of it happens behind KeyService's doors (`provision_key`, `replicate_provisioned`,
`register_key`, `append_version`): this module never sees a provider or a provider ref.

Catalog shape:
- the **primary** is a broker key on the provider that can wrap its material for another's import (the pkcs11 root
  of trust); its version refs hold the material wrapped under the root KEK: that is the escrow copy, in the store;
- each **copy** is a broker key (Origin EXTERNAL) on a target provider, tagged `kmsb:replica-of=<primary>`, and
  recorded in `key_replicas`. Version N of every copy holds the same material as version N of the primary.

Rotation makes version N+1 in the HSM and imports it into every copy as *new* cloud key material (a new cloud
key where the cloud imports one material per key, as AWS and Aliyun do), then adds version N+1 to every copy at
once. Old versions keep decrypting.

Specs: SYMMETRIC_DEFAULT, and the asymmetric (signing) specs the HSM wraps exactly for import
(`Capabilities.wrap_specs`): SoftHSM zero-pads a private key's PKCS#8 to a multiple of 8 bytes before AES-KWP, and
importers refuse the padded key, so only curves whose PKCS#8 length is a multiple of 8 travel (P-384 and secp256k1
on SoftHSM 2.6.1; never RSA, whose length differs from key to key). Asymmetric copies do not rotate (as in AWS).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from broker import errors
from broker.gate import Call, Need, Service, Target, internal, key_arg, operation
from broker.model import Key, KeySpec, KeyUsage, Origin
from broker.replication.repo import ReplicationRepo
from broker.service import KeyService, Provisioned, check_description, check_tags

REPLICA_TAG = "kmsb:replica-of"
PRIMARY_TAG = "kmsb:replicated"


def _hsm_resource(host: ReplicatedKeys, args: Mapping[str, Any]) -> Target:
    return Target(resource=f"provider/{host.hsm_name}")


def _spec(key_spec: Any) -> KeySpec:
    """SYMMETRIC_DEFAULT or an ECC signing spec; whether the HSM can hand it on is checked per target
    (`KeyService.check_replica_target`)."""
    try:
        spec = KeySpec(key_spec)
    except ValueError:
        raise errors.ValidationError(f"KeySpec {str(key_spec)[:64]!r} is not a key spec") from None
    if spec is not KeySpec.SYMMETRIC_DEFAULT and not spec.is_ecc:
        raise errors.Unsupported(f"replicated keys are SYMMETRIC_DEFAULT or ECC signing keys, not {spec.value} "
                                 "(an RSA key's PKCS#8 cannot be wrapped exactly by the HSM)")
    return spec


class ReplicatedKeys(Service):
    """Create, describe and rotate replicated keys; every method a declared operation of the gate."""

    def __init__(self, keys: KeyService, repo: ReplicationRepo, hsm: str | None = None) -> None:
        self.keys = keys
        self.gate = keys.gate
        self.repo = repo
        self._hsm = hsm

    @property
    def hsm_name(self) -> str:
        """The provider that holds primaries: the first that can wrap its material for another's import."""
        if self._hsm is None:
            found = [n for n in self.keys.provider_names() if self.keys.capabilities_of(n).wrap_for_import]
            if not found:
                raise errors.Unsupported("no provider can wrap material for import (a pkcs11 root of trust is needed)")
            self._hsm = found[0]
        return self._hsm

    @internal
    def resolve_key(self, key_ref: Any, *, details: bool = False) -> Key:
        """KeyService's resolver, for the gate's `key_arg` checks (metadata only)."""
        return self.keys.resolve_key(key_ref, details=details)

    @internal
    def primary_of(self, key: Key) -> str | None:
        """The primary a copy replicates (its tag, confirmed by the replica table), or None."""
        primary = key.tags.get(REPLICA_TAG)
        if primary and self.repo.replicas(primary).get(key.provider) == key.key_id:
            return primary
        return None

    @internal
    def rotated_by(self, key: Key) -> str | None:
        """The replicated key `key` belongs to (as its primary or as a copy), which must rotate as a whole."""
        if self.repo.replicas(key.key_id):
            return key.key_id
        return self.primary_of(self.keys.resolve_key(key.key_id, details=True))

    @internal
    def replicas_of(self, primary_id: str) -> dict[str, str]:
        """{target provider: copy key id} of a primary."""
        return self.repo.replicas(primary_id)

    # ------------------------------------------------------------------------------------------ operations

    @operation("kms:CreateKey", Need("kms:CreateKey", _hsm_resource), dynamic=("kms:CreateKey",), mutates=True)
    def create(self, call: Call, *, targets: Any, key_spec: str = "SYMMETRIC_DEFAULT", description: str = "",
               tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A primary in the HSM and one copy per target; nothing is registered unless every copy was imported."""
        spec = _spec(key_spec)
        if not isinstance(targets, list) or not targets or len(targets) > 16 \
                or not all(isinstance(t, str) for t in targets) or len(set(targets)) != len(targets):
            raise errors.ValidationError("Targets must be a non-empty list of at most 16 distinct provider names")
        description = check_description(description)
        tags = check_tags(tags)
        if any(k.startswith("kmsb:") for k in tags):
            raise errors.ValidationError("tag keys starting with kmsb: are the broker's own")
        for t in targets:
            self.keys.check_replica_target(t, spec, source=self.hsm_name)
            call.require("kms:CreateKey", resource=f"provider/{t}")
        primary_id = str(uuid.uuid4())
        call.entry.key_id, call.entry.provider = primary_id, self.hsm_name
        usage = KeyUsage.SIGN_VERIFY if spec.is_ecc else KeyUsage.ENCRYPT_DECRYPT
        material = self.keys.provision_key(call, self.hsm_name, spec, usage, label=primary_id)
        made: list[tuple[str, Provisioned]] = []
        try:
            for t in targets:
                rid = str(uuid.uuid4())
                made.append((rid, self.keys.replicate_provisioned(call, material, spec, usage, t, label=rid)))
        except BaseException:
            for _, copy in made:
                self.keys.discard(call, copy)
            self.keys.discard(call, material)
            raise
        primary = self.keys.register_key(call, material, key_id=primary_id, spec=spec, usage=usage,
                                         description=description, tags={**tags, PRIMARY_TAG: "primary"})
        for rid, copy in made:
            self.keys.register_key(call, copy, key_id=rid, spec=spec, usage=usage, origin=Origin.EXTERNAL,
                                   description=description, tags={**tags, REPLICA_TAG: primary_id})
            self.repo.add_replica(primary_id, copy.provider, rid)
        call.entry.extra["replicas"] = {copy.provider: rid for rid, copy in made}
        return self._describe(call, primary, self.keys.registered_metadata(call, primary))

    def _primary(self, call: Call) -> Key:
        primary = call.key()
        if PRIMARY_TAG not in primary.tags:
            raise errors.ValidationError(f"key {primary.key_id} is not the primary of a replicated key")
        return primary

    def _describe(self, call: Call, primary: Key, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        copies = []
        for target, rid in sorted(self.repo.replicas(primary.key_id).items()):
            copy: dict[str, Any] = {"Target": target, "KeyId": rid}
            try:
                key = self.keys.resolve_key(rid)
            except errors.NotFound:
                copy.update(KeyState="Missing", PrimaryVersion=None)
            else:
                if metadata is not None or call.holds("kms:DescribeKey", key):
                    copy.update(KeyState=key.state.value, PrimaryVersion=key.primary_version)
            copies.append(copy)
        return {"KeyMetadata": metadata or self.keys.metadata_of(call, primary), "Replicas": copies}

    @operation("kms:DescribeKey", Need("kms:DescribeKey", key_arg("key_ref", details=True)))
    def describe(self, call: Call, key_ref: str) -> dict[str, Any]:
        return self._describe(call, self._primary(call))

    @operation("kms:RotateKeyOnDemand", Need("kms:RotateKeyOnDemand", key_arg("key_ref", details=True)),
               dynamic=("kms:RotateKeyOnDemand",), mutates=True)
    def rotate(self, call: Call, key_ref: str) -> dict[str, Any]:
        """New HSM material imported into every copy, then version N+1 of the primary and of every copy at once."""
        primary = self._primary(call)
        copies = {t: self.keys.resolve_key(rid) for t, rid in self.repo.replicas(primary.key_id).items()}
        for copy in copies.values():
            call.require("kms:RotateKeyOnDemand", copy)
        call.entry.key_id, call.entry.provider = primary.key_id, primary.provider
        staged = self.keys.provision_version(call, primary)
        made: dict[str, Provisioned] = {}
        try:
            for t, copy in copies.items():
                made[t] = self.keys.replicate_provisioned(call, staged, primary.spec, primary.usage, t,
                                                          label=copy.key_id)
        except BaseException:
            for material in (*made.values(), staged):
                self.keys.discard(call, material)
            raise
        number = self.keys.append_version(call, primary, staged, expected_primary=primary.primary_version)
        if number is None:
            for material in (*made.values(), staged):
                self.keys.discard(call, material)
            raise errors.InvalidState("the key was rotated concurrently; retry")
        versions = {t: self.keys.append_version(call, copies[t], material) for t, material in made.items()}
        call.entry.key_version = number
        call.entry.extra["replicas"] = {t: c.key_id for t, c in copies.items()}
        return {"KeyId": primary.key_id, "KeyVersion": number,
                "Replicas": [{"Target": t, "KeyId": c.key_id, "KeyVersion": versions[t]}
                             for t, c in sorted(copies.items())]}
