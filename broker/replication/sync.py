"""Declarative sync: `plan` = manifest vs broker catalog vs each cloud's inventory; `apply` reconciles.

`Sync.plan` and `Sync.apply` are declared operations (broker:Sync on "sync/<manifest>"); every change inside an
apply is a declared operation of its own, audited and authorized for the same caller: KeyService's (tag, alias,
enable, rotation, deletion), ReplicatedKeys.rotate, and this module's steps that KeyService has no operation for,
because the sync chooses the broker key id *before* the external create so a crash can be settled:

    journal intent (entry, target, key id)  →  provision (cloud key labelled with that key id)
    →  journal "created" + the provisioned material  →  register (catalog row)  →  journal "done"

("done" is written for a batch's entries at once when the batch ends: an entry whose key is registered is settled
already, and a crash before its "done" only leaves it for the next run to close.)

On the next run, open journal entries are settled first: a key already in the catalog closes its entry; journaled
material is registered (no duplicate create); an intent without material is looked up in the cloud's inventory by
its label and destroyed (no orphaned material), and the intent is marked aborted. Every plan that reads the clouds
reports as a `stray` (and the apply schedules for deletion) a live cloud key labelled with an aborted intent's id (a
create that landed after the resume looked) or labelled with a key's id without being one of its versions (a create
the SDK retried after its first attempt had landed). Everything else is recomputed from state, so a second apply is
a no-op and a killed apply converges on the next run.

Scope: a manifest manages only keys its own runs made (journal "done"), tagged kmsb:sync=<manifest>/<entry>. A key
tagged into the scope by anyone else is reported and left alone; an alias is moved only away from a key of the same
manifest; nothing outside the scope is tagged, enabled, disabled, deleted or re-pointed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from broker import errors
from broker.gate import Call, Need, Service, internal, key_arg, operation, resource
from broker.model import Key, KeySpec, KeyState, Origin
from broker.replication.lanes import Lanes
from broker.replication.manifest import PRIMARY, SYNC_TAG, TARGET_TAG, KeyEntry, Manifest
from broker.replication.replicated import PRIMARY_TAG, REPLICA_TAG, ReplicatedKeys
from broker.replication.repo import JournalEntry, ReplicationRepo
from broker.service import KeyService, Provisioned, Strays
from providers import base as pb
from providers.base import InventoryItem

MAX_ATTEMPTS = 6
MAX_THREADS = 16  # worker threads of one apply (each holds store connections; the pool has 40)


class _Unfixable(Exception):
    """Drift the sync cannot repair; the action ends 'unfixable' and the run ends with drift left (exit 2)."""


@dataclass
class Action:
    kind: str  # create | update | delete | fix-drift
    entry: str
    target: str
    provider: str
    key_id: str | None = None
    changes: list[str] = field(default_factory=list)
    status: str = "pending"  # pending | done | failed | unfixable
    error: str | None = None


@dataclass
class Drift:
    # missing-in-cloud | changed-outside | unmanaged | not-in-manifest | not-owned | duplicate | stray | stray-version
    kind: str
    provider: str
    detail: str
    key_id: str | None = None
    cloud_key: str | None = None
    entry: str | None = None
    fixable: bool = False


@dataclass
class Report:
    manifest: str
    mode: str
    actions: list[Action] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    per_provider: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.errors or any(a.status == "failed" for a in self.actions):
            return "failed"
        pending = [a for a in self.actions if a.status != "done"]
        if pending or any(d.kind in DRIFT_LEFT for d in self.drift):
            return "drift"
        return "converged"

    @property
    def exit_code(self) -> int:
        return {"converged": 0, "drift": 2, "failed": 1}[self.status]

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for a in self.actions:
            counts[a.kind] += 1
        return {"manifest": self.manifest, "mode": self.mode, "status": self.status, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 3), "summary": dict(counts), "resumed": self.resumed,
                "actions": [asdict(a) for a in self.actions], "drift": [asdict(d) for d in self.drift],
                "errors": self.errors, "per_provider": self.per_provider}


# drift that keeps an apply from being "converged" (unmanaged cloud keys, keys left by an un-pruned manifest and keys
# tagged into the scope by someone else are reported, but they are not the manifest's to fix)
DRIFT_LEFT = {"missing-in-cloud", "changed-outside", "duplicate", "replica-behind"}
# an update's changes that set the key's state in the cloud as well as in the catalog
_STATE_CHANGES = frozenset({"enable", "disable", "cancel-deletion"})


class RateLimit:
    """At most `rate` starts per second (None: unlimited); shared by a provider's workers."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            t = time.monotonic()
            start = max(t, self._next)
            self._next = start + self.interval
        if start > t:
            time.sleep(start - t)


def retry(fn: Callable[[], Any]) -> Any:
    """fn(), retried when throttled: the provider's retry_after when it gave one, else exponential backoff with
    jitter, up to MAX_ATTEMPTS."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            return fn()
        except (pb.ProviderThrottled, errors.Throttled) as exc:
            if attempt == MAX_ATTEMPTS - 1:
                raise
            wait = getattr(exc, "retry_after", None) or min(0.2 * 2 ** attempt, 10.0)
            time.sleep(wait + random.uniform(0, wait / 4))
    raise AssertionError("unreachable")


def _manifest_resource(args: Mapping[str, Any]) -> str:
    manifest = args["manifest"]
    if not isinstance(manifest, Manifest):
        raise errors.ValidationError("a sync needs a parsed manifest")
    return f"sync/{manifest.manifest}"


def _provider_arg(args: Mapping[str, Any]) -> str:
    return f"provider/{args['provider']}"


# ================================================================================================== the service


class Sync(Service):
    """Plan and apply sync manifests; each step a declared operation run as the caller."""

    def __init__(self, keys: KeyService, repo: ReplicationRepo, replicated: ReplicatedKeys) -> None:
        self.keys = keys
        self.gate = keys.gate
        self.repo = repo
        self.replicated = replicated

    @internal
    def resolve_key(self, key_ref: Any, *, details: bool = False) -> Key:
        """KeyService's resolver, for the gate's `key_arg` checks (metadata only)."""
        return self.keys.resolve_key(key_ref, details=details)

    @operation("broker:Sync", Need("broker:Sync", resource(_manifest_resource)), dynamic=("kms:ListKeys",))
    def plan(self, call: Call, manifest: Manifest, *, inventory: bool = True) -> Report:
        """What apply would change (nothing is changed)."""
        return _Run(self, call, manifest, inventory=inventory).plan()

    @operation("broker:Sync", Need("broker:Sync", resource(_manifest_resource)), dynamic=("kms:ListKeys",),
               mutates=True)
    def apply(self, call: Call, manifest: Manifest, *, inventory: bool = True, concurrency: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> Report:
        """Reconcile: idempotent and resumable."""
        call.entry.extra["mode"] = "apply"
        return _Run(self, call, manifest, inventory=inventory, concurrency=concurrency, progress=progress).apply()

    # ------------------------------------------------------------------------------ steps (each its own operation)

    @operation("kms:CreateKey", Need("kms:CreateKey", resource(_provider_arg)), dynamic=("kms:ReplicateKey",),
               mutates=True)
    def _create(self, call: Call, run: _Run, e: KeyEntry, target: str, provider: str) -> Key:
        key_id = str(uuid.uuid4())
        m = run.manifest.manifest
        call.entry.key_id, call.entry.provider = key_id, provider
        call.entry.extra["sync"] = run.sync_value(e.name)
        if e.replicate and target != PRIMARY:
            primary = run.primary(e)
            call.require("kms:ReplicateKey", primary)
            jid = self.repo.journal_intent(m, e.name, target, key_id, "import")
            run.limit(provider)
            material = retry(lambda: self.keys.replicate_version(call, primary, target, label=key_id))
            self.repo.journal_set(jid, "created", material.journal())
            key = self._register(call, run, material, e, target, key_id, primary=primary.key_id)
        else:
            jid = self.repo.journal_intent(m, e.name, target, key_id, "create")
            run.limit(provider)
            material = retry(lambda: self.keys.provision_key(call, provider, e.key_spec, e.key_usage,
                                                              label=key_id))
            self.repo.journal_set(jid, "created", material.journal())
            key = self._register(call, run, material, e, target, key_id)
        run.close_later(jid)  # the key is in the catalog: its entry is settled; closed with the batch's others
        return key

    def _register(self, call: Call, run: _Run, material: Provisioned, e: KeyEntry, target: str, key_id: str, *,
                  primary: str | None = None) -> Key:
        tags = run.desired_tags(e, target)
        if primary is not None:
            key = self.keys.register_key(call, material, key_id=key_id, spec=e.key_spec, usage=e.key_usage,
                                         origin=Origin.EXTERNAL, description=e.description,
                                         tags={**tags, REPLICA_TAG: primary})
            if target not in self.repo.replicas(primary):
                self.repo.add_replica(primary, target, key_id)
        else:
            if e.replicate and target == PRIMARY:
                tags[PRIMARY_TAG] = "primary"
            key = self.keys.register_key(call, material, key_id=key_id, spec=e.key_spec, usage=e.key_usage,
                                         description=e.description, tags=tags)
        run.made(e, target, key)
        return key

    @operation("kms:CreateKey", Need("kms:CreateKey", resource(_provider_arg)), dynamic=("kms:ReplicateKey",),
               mutates=True)
    def _adopt(self, call: Call, run: _Run, j: JournalEntry, e: KeyEntry, provider: str) -> None:
        """Register the material a crashed run journaled (no second create)."""
        call.entry.key_id, call.entry.provider = j.key_id, provider
        call.entry.extra["sync"] = "adopt-after-crash"
        material = self.keys.restore_provisioned(call, provider, j.key_id, _journaled_ref(j))
        primary = None
        if j.action == "import":
            primary_key = run.primary(e)
            call.require("kms:ReplicateKey", primary_key)
            primary = primary_key.key_id
        self._register(call, run, material, e, j.target, j.key_id, primary=primary)
        self.repo.journal_set(j.id, "done")

    @operation("broker:DestroyKey", Need("broker:DestroyKey", resource(_provider_arg)), mutates=True)
    def _clean(self, call: Call, run: _Run, j: JournalEntry, provider: str) -> int:
        """Destroy whatever the cloud made for an intent whose material never reached the catalog. -> how many
        provider keys were destroyed."""
        call.entry.key_id, call.entry.provider = j.key_id, provider
        call.entry.extra["sync"] = "cleanup-after-crash"
        if j.provider_ref is not None:
            material = self.keys.restore_provisioned(call, provider, j.key_id, _journaled_ref(j))
            return int(retry(lambda: self.keys.discard(call, material)))
        items = run.labelled(provider, j.key_id)
        return len(retry(lambda: self.keys.discard_unregistered(call, provider, j.key_id, items)))

    @operation("broker:DestroyKey", Need("broker:DestroyKey", resource(_provider_arg)), mutates=True)
    def _discard_stray(self, call: Call, run: _Run, label: str, provider: str, cloud_key: str) -> None:
        """Schedule for deletion a cloud key labelled with one of this manifest's key ids that the catalog does not
        hold (a second key of a retried create, or a create that landed after its intent was aborted); KeyService
        refuses any catalog version's material."""
        call.entry.key_id, call.entry.provider = label, provider
        call.entry.extra["sync"] = "discard-stray"
        items = [i for i in run.labelled(provider, label) if i.key_id == cloud_key]
        if not retry(lambda: self.keys.discard_unregistered(call, provider, label, items)):
            raise _Unfixable(f"{cloud_key} is not a stray of {label} (any more)")

    @operation("broker:DestroyKey", Need("broker:DestroyKey", resource(_provider_arg)), mutates=True)
    def _discard_stray_version(self, call: Call, key_id: str, provider: str, name: str) -> None:
        """Destroy a version inside a key's cloud key that none of its catalog versions is (a version create the
        SDK retried after its first attempt had landed); KeyService checks it against the catalog again."""
        call.entry.key_id, call.entry.provider = key_id, provider
        call.entry.extra["sync"] = "discard-stray-version"
        if not retry(lambda: self.keys.discard_stray_version(call, provider, key_id, name)):
            raise _Unfixable(f"{name} is not a stray version of {key_id} (any more)")

    @operation("kms:EnableKey", Need("kms:EnableKey", key_arg("key_id")), mutates=True)
    def _mirror_enabled(self, call: Call, key_id: str) -> None:
        call.entry.extra["sync"] = "mirror-state"
        retry(lambda: self.keys.mirror_state(call, call.key("key_id")))

    @operation("kms:DisableKey", Need("kms:DisableKey", key_arg("key_id")), mutates=True)
    def _mirror_disabled(self, call: Call, key_id: str) -> None:
        call.entry.extra["sync"] = "mirror-state"
        retry(lambda: self.keys.mirror_state(call, call.key("key_id")))


def _desired_tags(manifest: str, e: KeyEntry, target: str) -> dict[str, str]:
    return {**e.tags, SYNC_TAG: f"{manifest}/{e.name}", TARGET_TAG: target}


def _by_unit(keys: Iterable[Key]) -> dict[tuple[str, str], list[Key]]:
    """Keys by (manifest entry, target), from their sync tags."""
    out: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key in keys:
        out[(key.tags[SYNC_TAG].split("/", 1)[1], key.tags.get(TARGET_TAG, ""))].append(key)
    return out


def _journaled_ref(j: JournalEntry) -> Mapping[str, Any]:
    """The provider ref a journal entry keeps (`Provisioned.journal()`; a bare ref in entries of earlier runs)."""
    data = j.provider_ref or {}
    return data["ref"] if isinstance(data.get("ref"), Mapping) and "provider" in data else data


# ================================================================================================== one run


class _Run:
    """The state of one plan or apply: the manifest, the caller's call, the catalog and inventories it read."""

    def __init__(self, sync: Sync, call: Call, manifest: Manifest, *, inventory: bool = True,
                 concurrency: int | None = None, progress: Callable[[int, int], None] | None = None) -> None:
        self.sync = sync
        self.keys = sync.keys
        self.repo = sync.repo
        self.call = call
        self.ctx = call.ctx
        self.manifest = manifest
        self.use_inventory = inventory
        self.concurrency = concurrency or manifest.concurrency
        self.progress = progress
        self.inventory: dict[str, list[InventoryItem]] = {}
        self._limits: dict[str, RateLimit] = {}
        self._limits_lock = threading.Lock()
        self._cleaned: set[str] = set()  # labels whose cloud keys this run's resume destroyed
        self._timing: dict[str, list[float]] = defaultdict(list)
        self._timing_lock = threading.Lock()
        self._span: dict[str, tuple[float, float]] = {}
        self._scope_lock = threading.RLock()
        self._scope: tuple[list[Key], list[Key]] | None = None
        self._catalog: dict[tuple[str, str], list[Key]] | None = None
        self._owned: set[str] | None = None
        self._made: dict[tuple[str, str], Key] = {}
        self._by_label: dict[tuple[str, str], list[InventoryItem]] | None = None
        self._settled: list[int] = []
        call.entry.extra["manifest"] = manifest.manifest
        call.require("kms:ListKeys")

    # ------------------------------------------------------------------------------------------ helpers

    def close_later(self, journal_id: int) -> None:
        """Mark a journal entry whose key is registered as done with the rest of its batch (one statement per 500
        entries, not one transaction per key). Until then it reads as open, and a run that resumes after a crash
        closes it (its key is in the catalog), so the delay never loses anything."""
        with self._scope_lock:
            self._settled.append(journal_id)

    def _close_settled(self) -> None:
        with self._scope_lock:
            ids, self._settled = self._settled, []
        self.repo.journal_done(ids)

    def labelled(self, provider: str, label: str) -> list[InventoryItem]:
        """The provider's inventory items labelled `label` (an index built once per run: settling thousands of
        crashed intents must not scan the whole inventory for each)."""
        with self._scope_lock:
            if self._by_label is None:
                self._by_label = defaultdict(list)
                for name, items in self.inventory.items():
                    for item in items:
                        if item.label:
                            self._by_label[(name, item.label.lower())].append(item)
            return list(self._by_label.get((provider, label.lower()), []))

    def sync_value(self, entry: str) -> str:
        return f"{self.manifest.manifest}/{entry}"

    def desired_tags(self, e: KeyEntry, target: str) -> dict[str, str]:
        return _desired_tags(self.manifest.manifest, e, target)

    def limit(self, provider: str) -> None:
        with self._limits_lock:
            gate = self._limits.setdefault(provider, RateLimit(self.manifest.rate.get(provider)))
        gate.wait()

    def primary(self, e: KeyEntry) -> Key:
        """The entry's HSM primary: from the catalog this run read, or made by this run's first batch."""
        with self._scope_lock:
            keys = self._catalog_now().get((e.name, PRIMARY), [])
            made = self._made.get((e.name, PRIMARY))
        if made is not None:
            return made
        if not keys:
            raise errors.InvalidState(f"the primary of replicated entry {e.name} does not exist")
        return keys[0]

    def made(self, e: KeyEntry, target: str, key: Key) -> None:
        """Record a key this run registered: in scope from now on (an alias may move from it, a copy of it may be
        imported), without reading the whole scope again."""
        with self._scope_lock:
            self._made[(e.name, target)] = key
            if self._owned is not None:
                self._owned.add(key.key_id)

    def owned_ids(self) -> set[str]:
        """The key ids this manifest's journal names, read once per run (plus what this run made)."""
        with self._scope_lock:
            if self._owned is None:
                self._owned = self.repo.journal_owned(self.manifest.manifest)
            return self._owned

    def _units(self) -> list[tuple[KeyEntry, str, str]]:
        """(entry, target, provider) for every key the manifest wants."""
        out = []
        for e in self.manifest.keys:
            if e.replicate:
                out.append((e, PRIMARY, self.sync.replicated.hsm_name))
            out += [(e, t, t) for t in e.targets]
        return out

    def _scoped(self, *, fresh: bool = False) -> tuple[list[Key], list[Key]]:
        """(keys this manifest owns, keys tagged into its scope that it did not make): one read of the catalog and
        the journal per run (`fresh` reads them again, e.g. after settling a crashed run's entries)."""
        with self._scope_lock:
            if self._scope is not None and not fresh:
                return self._scope
            self._owned = owned_ids = self.repo.journal_owned(self.manifest.manifest)
            owned, foreign = [], []
            for key in self.keys.keys_tagged(self.call, SYNC_TAG, self.manifest.manifest + "/"):
                if key.state is KeyState.DESTROYED:
                    continue
                (owned if key.key_id in owned_ids else foreign).append(key)
            self._scope, self._catalog = (owned, foreign), None
            return self._scope

    def _catalog_now(self) -> dict[tuple[str, str], list[Key]]:
        if self._catalog is None:
            self._catalog = _by_unit(self._scoped()[0])
        return self._catalog

    def catalog(self) -> dict[tuple[str, str], list[Key]]:
        """The manifest's keys by (entry, target), as this run read them."""
        with self._scope_lock:
            return self._catalog_now()

    def _read_inventory(self, providers: Iterable[str]) -> dict[str, list[InventoryItem]]:
        if not self.use_inventory:
            return {}
        known = set(self.keys.provider_names())
        names = sorted(p for p in set(providers) if p in known and self.keys.capabilities_of(p).inventory)
        for name in names:
            self.call.require("kms:ListKeys", resource=f"provider/{name}")

        def one(name: str) -> list[InventoryItem]:
            return retry(lambda: self.keys.inventory_of(self.call, name))

        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            results = {n: pool.submit(one, n) for n in names}
        out: dict[str, list[InventoryItem]] = {}
        for n, fut in results.items():
            try:
                out[n] = fut.result()
            except (pb.ProviderError, errors.BrokerError) as exc:
                raise errors.DependencyFailure(f"inventory of {n!r} failed: {exc}") from None
        return out

    # ------------------------------------------------------------------------------------------ plan

    def _rotation_due(self, e: KeyEntry, key: Key) -> bool:
        versions = self.keys.list_key_versions(self.ctx, key.key_id)["Versions"]
        current = next((v for v in versions if v["KeyVersion"] == key.primary_version), None)
        if current is None:
            return False
        created = datetime.fromisoformat(current["CreationDate"])
        return (datetime.now(created.tzinfo) - created).days >= (e.rotation_days or 0)

    def _changes(self, e: KeyEntry, target: str, key: Key) -> list[str]:
        ch: list[str] = []
        if key.state is KeyState.PENDING_DELETION:
            ch.append("cancel-deletion")
            if e.enabled:
                ch.append("enable")
        elif key.state is KeyState.ENABLED and not e.enabled:
            ch.append("disable")
        elif key.state is KeyState.DISABLED and e.enabled:
            ch.append("enable")
        rotatable = key.spec is KeySpec.SYMMETRIC_DEFAULT and key.origin is Origin.BROKER and not e.replicate
        if rotatable and key.rotation_period_days != e.rotation_days:
            ch.append(f"rotation:{e.rotation_days or 'off'}")
        if e.replicate and target == PRIMARY and e.rotation_days and key.state is KeyState.ENABLED \
                and self._rotation_due(e, key):
            ch.append("rotate-replicas")
        desired = self.desired_tags(e, target)
        for k, v in sorted(desired.items()):
            if key.tags.get(k) != v:
                ch.append(f"tag:{k}")
        for k in sorted(key.tags):
            if not k.startswith("kmsb:") and k not in e.tags:
                ch.append(f"untag:{k}")
        want = e.aliases_for(target)
        ch += [f"alias:{a}" for a in want if a not in key.aliases]
        ch += [f"unalias:{a}" for a in key.aliases if a not in want]
        if key.description != e.description:
            ch.append("description")
        return ch

    def plan(self, inventory: dict[str, list[InventoryItem]] | None = None) -> Report:
        started = time.perf_counter()
        report = Report(self.manifest.manifest, "plan")
        owned, foreign = self._scoped()
        catalog = self.catalog()
        for key in foreign:
            report.drift.append(Drift("not-owned", key.provider, "tagged for this manifest but not made by it: left "
                                      "alone", key_id=key.key_id, entry=key.tags[SYNC_TAG].split("/", 1)[1]))
        units = self._units()
        if inventory is None:
            inventory = self._read_inventory({p for _, _, p in units} | {k.provider for k in owned})
            self.inventory = inventory
        wanted = set()
        for e, target, provider in units:
            wanted.add((e.name, target))
            keys = list(catalog.get((e.name, target), []))
            if len(keys) > 1:
                report.drift.append(Drift("duplicate", provider, f"{len(keys)} keys for {e.name}/{target}",
                                          key_id=keys[1].key_id, entry=e.name))
            if not keys:
                report.actions.append(Action("create", e.name, target, provider))
                continue
            key = keys[0]
            changes = self._changes(e, target, key)
            if changes:
                report.actions.append(Action("update", e.name, target, provider, key.key_id, changes))
        for (entry, target), keys in sorted(catalog.items()):
            if (entry, target) in wanted:
                continue
            for key in keys:
                if key.state is KeyState.PENDING_DELETION:
                    continue
                if self.manifest.prune:
                    report.actions.append(Action("delete", entry, target, key.provider, key.key_id,
                                                 ["schedule-deletion"]))
                else:
                    report.drift.append(Drift("not-in-manifest", key.provider, "made by this manifest, no longer "
                                              "listed (set prune: true to delete)", key_id=key.key_id, entry=entry))
        self._cloud_drift(report, catalog, inventory)
        report.seconds = time.perf_counter() - started
        return report

    def _cloud_drift(self, report: Report, catalog: dict[tuple[str, str], list[Key]],
                     inventory: dict[str, list[InventoryItem]]) -> None:
        if not inventory:
            return
        ours = {k.key_id: (entry, k) for (entry, _), ks in catalog.items() for k in ks}
        # keys an action of this plan moves to another state: EnableKey/DisableKey/ScheduleKeyDeletion set the cloud
        # first, then the catalog, so their action settles the cloud too. A mirror beside it would race it on the
        # same key (both run in one apply, the mirror writing the state it read before the change: a disable the
        # resumed run finished was undone in the cloud). A kill inside DisableKey leaves exactly that shape: the
        # cloud key disabled, the catalog key still enabled, the manifest wanting it disabled.
        restated = {a.key_id for a in report.actions
                    if a.kind == "delete" or a.kind == "update" and _STATE_CHANGES.intersection(a.changes)}
        deleted = {a.key_id for a in report.actions if a.kind == "delete"}
        labels = {i.label.lower() for items in inventory.values() for i in items if i.label}
        known = self.keys.known_key_ids(self.call, sorted(labels))
        aborted = {j.key_id.lower(): j for j in self.repo.journal_aborted(self.manifest.manifest)}
        for provider, items in inventory.items():
            by_label: dict[str, list[InventoryItem]] = defaultdict(list)
            for item in items:
                lab = item.label.lower() if item.label else None
                if lab is None:
                    if item.enabled:
                        report.drift.append(Drift("unmanaged", provider, "a key the broker did not create",
                                                  cloud_key=item.key_id))
                    continue
                by_label[lab].append(item)
                if lab in known or not item.enabled or lab in self._cleaned:
                    continue
                j = aborted.get(lab)
                if j is None:
                    report.drift.append(Drift("unmanaged", provider, "labelled with a key id the broker does not "
                                              "know", cloud_key=item.key_id))
                else:  # landed after the run that settled its intent had looked
                    self._stray(report, provider, j.entry, j.target, j.key_id, item, "made for a create a killed "
                                "run never finished (it landed after the resumed run looked)")
            mine = {key_id: by_label[key_id.lower()] for key_id, (_, key) in ours.items()
                    if key.provider == provider and by_label.get(key_id.lower())}
            strays = self.keys.strays(self.call, provider, mine) if mine else Strays()
            for key_id, (entry, key) in ours.items():
                if key.provider != provider:
                    continue
                target = key.tags.get(TARGET_TAG, "")
                extra = {i.key_id for i in strays.keys.get(key_id, ())}
                for item in strays.keys.get(key_id, ()):
                    if item.enabled:
                        self._stray(report, provider, entry, target, key_id, item, "a second cloud key labelled "
                                    "with this key's id, not the catalog's (a create retried after its first "
                                    "attempt had landed)")
                    elif item.awaiting_material:
                        self._stray(report, provider, entry, target, key_id, item, "an empty cloud key (no "
                                    "material) labelled with this key's id, not the catalog's (an import's create "
                                    "retried after its first attempt had landed)")
                for name in strays.versions.get(key_id, ()):
                    report.drift.append(Drift("stray-version", provider, "a live version inside this key's cloud "
                                              "key that none of its versions is (a version create retried after its "
                                              "first attempt had landed): destroyed", key_id=key_id,
                                              cloud_key=name, entry=entry, fixable=True))
                    report.actions.append(Action("fix-drift", entry, target, provider, key_id,
                                                 [f"discard-version:{name}"]))
                if key.state not in (KeyState.ENABLED, KeyState.DISABLED):
                    continue
                found = [i for i in by_label.get(key_id.lower(), []) if i.key_id not in extra]
                if not found and key_id in deleted:
                    continue  # a cloud that lists no key pending deletion, killed after its half: the delete ends it
                if not found:
                    report.drift.append(Drift("missing-in-cloud", provider, "deleted outside the broker; its "
                                              "material cannot be recovered", key_id=key_id, entry=entry))
                    continue
                enabled = key.state is KeyState.ENABLED
                if enabled and not any(i.enabled for i in found) or not enabled and any(i.enabled for i in found):
                    report.drift.append(Drift("changed-outside", provider, f"{'disabled' if enabled else 'enabled'} "
                                              "in the cloud, not in the broker", key_id=key_id, entry=entry,
                                              cloud_key=found[0].key_id, fixable=True))
                    if key_id not in restated:
                        report.actions.append(Action("fix-drift", entry, key.tags.get(TARGET_TAG, ""), provider,
                                                     key_id, ["enable" if enabled else "disable"]))

    @staticmethod
    def _stray(report: Report, provider: str, entry: str, target: str, label: str, item: InventoryItem,
               why: str) -> None:
        """A live cloud key labelled with one of this manifest's key ids that the catalog does not hold: reported,
        and scheduled for deletion by the apply."""
        report.drift.append(Drift("stray", provider, f"{why}: scheduled for deletion", key_id=label,
                                  cloud_key=item.key_id, entry=entry, fixable=True))
        report.actions.append(Action("fix-drift", entry, target, provider, label, [f"discard:{item.key_id}"]))

    # ------------------------------------------------------------------------------------------ apply

    def apply(self) -> Report:
        started = time.perf_counter()
        units = self._units()
        owned, _ = self._scoped()
        open_entries = self.repo.journal_open(self.manifest.manifest)
        providers = {p for _, _, p in units} | {k.provider for k in owned}
        self.inventory = self._read_inventory(providers | {self._provider_of(j) for j in open_entries})
        resumed = self._resume(open_entries)
        if open_entries:
            self._scoped(fresh=True)  # settling adopted keys into the catalog
        report = self.plan(self.inventory)
        report.mode, report.resumed = "apply", resumed
        report.drift = [d for d in report.drift if not d.fixable]
        entries = {e.name: e for e in self.manifest.keys}
        first = [a for a in report.actions if not (a.kind == "create" and entries.get(a.entry)
                                                   and entries[a.entry].replicate and a.target != PRIMARY)]
        in_first = {id(a) for a in first}
        second = [a for a in report.actions if id(a) not in in_first]
        total, done = len(report.actions), [0]
        lock = threading.Lock()

        def tick() -> None:
            with lock:
                done[0] += 1
                if self.progress:
                    self.progress(total, done[0])

        for batch in (first, second):
            try:
                self._run_batch(batch, entries, tick)
            finally:
                self._close_settled()
        report.seconds = time.perf_counter() - started
        report.per_provider = self._provider_stats()
        self.call.entry.extra["status"] = report.status
        return report

    def _run_batch(self, actions: list[Action], entries: dict[str, KeyEntry], tick: Callable[[], None]) -> None:
        """At most `concurrency` operations in flight per provider and MAX_THREADS worker threads in all (each holds
        store connections), on per-provider lanes: a slow provider holds only its own slots, never the threads the
        other providers' work could use."""

        def work(a: Action) -> None:
            self._execute(a, entries.get(a.entry))

        def done(a: Action, exc: Exception | None) -> None:
            if exc is None:
                a.status = "done"
            elif isinstance(exc, _Unfixable):
                a.status, a.error = "unfixable", str(exc)
            elif isinstance(exc, errors.BrokerError | pb.ProviderError):
                a.status, a.error = "failed", f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"
            else:
                raise exc
            tick()

        Lanes(self.concurrency, MAX_THREADS).run(((a.provider, a) for a in actions), work, done)

    def _timed(self, provider: str, started: float) -> None:
        ended = time.perf_counter()
        with self._timing_lock:
            self._timing[provider].append(ended - started)
            first, last = self._span.get(provider, (started, ended))
            self._span[provider] = (min(first, started), max(last, ended))

    def _provider_stats(self) -> dict[str, dict[str, float]]:
        return {p: {"operations": len(ts), "busy_seconds": round(sum(ts), 3),
                    "wall_seconds": round(self._span[p][1] - self._span[p][0], 3)}
                for p, ts in sorted(self._timing.items())}

    def _execute(self, a: Action, e: KeyEntry | None) -> None:
        started = time.perf_counter()
        try:
            if a.kind == "create":
                assert e is not None
                key = self.sync._create(self.ctx, self, e, a.target, a.provider)
                a.key_id = key.key_id
                a.changes = self._changes(e, a.target, key)  # the key as registered (no aliases yet)
                self._update(e, a.target, key, a.changes)
            elif a.kind == "update":
                assert e is not None and a.key_id is not None
                self._update(e, a.target, self.keys.resolve_key(a.key_id, details=True), a.changes)
            elif a.kind == "delete":
                retry(lambda: self.keys.schedule_key_deletion(self.ctx, a.key_id, 7))
            elif a.kind == "fix-drift" and a.changes[0].startswith("discard:"):
                assert a.key_id is not None
                self.sync._discard_stray(self.ctx, self, a.key_id, a.provider, a.changes[0].split(":", 1)[1])
            elif a.kind == "fix-drift" and a.changes[0].startswith("discard-version:"):
                assert a.key_id is not None
                self.sync._discard_stray_version(self.ctx, a.key_id, a.provider, a.changes[0].split(":", 1)[1])
            elif a.kind == "fix-drift":
                mirror = self.sync._mirror_enabled if a.changes[0] == "enable" else self.sync._mirror_disabled
                try:
                    mirror(self.ctx, a.key_id)
                except errors.InvalidState:
                    # e.g. scheduled for deletion in the cloud: only people can decide what to do with that key
                    raise _Unfixable("the cloud holds the key in a state the broker cannot undo (deleted or "
                                     "scheduled for deletion outside the broker)") from None
        finally:
            self._timed(a.provider, started)

    def _update(self, e: KeyEntry, target: str, key: Key, changes: list[str]) -> None:
        """Each change is a declared operation of its own, run as the caller."""
        svc, ctx = self.keys, self.ctx
        tags = self.desired_tags(e, target)
        set_tags = {c.split(":", 1)[1]: tags[c.split(":", 1)[1]] for c in changes if c.startswith("tag:")}
        if set_tags:
            retry(lambda: svc.tag_resource(ctx, key.key_id, set_tags))
        untag = [c.split(":", 1)[1] for c in changes if c.startswith("untag:")]
        if untag:
            retry(lambda: svc.untag_resource(ctx, key.key_id, untag))
        for c in changes:
            if c == "cancel-deletion":
                retry(lambda: svc.cancel_key_deletion(ctx, key.key_id))
            elif c == "enable":
                retry(lambda: svc.enable_key(ctx, key.key_id))
            elif c == "disable":
                retry(lambda: svc.disable_key(ctx, key.key_id))
            elif c == "description":
                retry(lambda: svc.update_key_description(ctx, key.key_id, e.description))
            elif c.startswith("rotation:"):
                days = c.split(":", 1)[1]
                if days == "off":
                    retry(lambda: svc.disable_key_rotation(ctx, key.key_id))
                else:
                    retry(lambda d=int(days): svc.enable_key_rotation(ctx, key.key_id, d))
            elif c == "rotate-replicas":
                retry(lambda: self.sync.replicated.rotate(ctx, key.key_id))
            elif c.startswith("unalias:"):
                alias = c.split(":", 1)[1]
                retry(lambda n=alias: svc.delete_alias(ctx, n))
            elif c.startswith("alias:"):
                self._point_alias(c.split(":", 1)[1], key)

    def _point_alias(self, name: str, key: Key) -> None:
        """Create the alias, or move it from another key *of this manifest*; an alias held outside the manifest's
        scope is never taken."""
        try:
            owner: Key | None = self.keys.resolve_key(name)
        except errors.NotFound:
            owner = None
        if owner is None:
            retry(lambda: self.keys.create_alias(self.ctx, name, key.key_id))
        elif owner.key_id != key.key_id:
            if owner.key_id not in self.owned_ids():
                raise _Unfixable(f"{name} points at a key this manifest does not manage; it is left alone")
            retry(lambda: self.keys.update_alias(self.ctx, name, key.key_id))

    # ------------------------------------------------------------------------------------------ resume

    def _provider_of(self, j: JournalEntry) -> str:
        return self.sync.replicated.hsm_name if j.target == PRIMARY else j.target

    def _resume(self, open_entries: list[JournalEntry]) -> dict[str, int]:
        """Settle what a killed run left: close, adopt or clean up every open journal entry."""
        counts = {"closed": 0, "adopted": 0, "cleaned": 0}
        if not open_entries:
            return counts
        known = self.keys.known_key_ids(self.call, [j.key_id for j in open_entries])
        entries = {e.name: e for e in self.manifest.keys}
        for j in open_entries:
            provider = self._provider_of(j)
            if j.key_id in known:
                self._ensure_replica_row(j)
                self.close_later(j.id)
                counts["closed"] += 1
            elif j.state == "created" and j.provider_ref is not None and j.entry in entries:
                self.sync._adopt(self.ctx, self, j, entries[j.entry], provider)
                counts["adopted"] += 1
            else:
                if provider in self.keys.provider_names():
                    counts["cleaned"] += self.sync._clean(self.ctx, self, j, provider)
                self._cleaned.add(j.key_id.lower())  # its cloud keys are gone: no stray in this run's plan
                self.repo.journal_set(j.id, "aborted")
        self._close_settled()
        return counts

    def _ensure_replica_row(self, j: JournalEntry) -> None:
        if j.action != "import":
            return
        key = self.keys.resolve_key(j.key_id, details=True)
        primary = key.tags.get(REPLICA_TAG)
        if primary and j.target not in self.repo.replicas(primary):
            self.repo.add_replica(primary, j.target, j.key_id)


__all__ = ["Action", "Drift", "RateLimit", "Report", "Sync", "retry"]
