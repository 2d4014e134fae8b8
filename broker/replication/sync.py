"""Declarative sync: `plan` = manifest vs broker catalog vs each cloud's inventory; `apply` reconciles.

Every key operation runs inside `KeyService.operation` and is authorized (the one choke point): existing service
operations (tag, alias, enable, rotation, deletion) are called as they are; key creation has its own operation here
because the sync chooses the broker key id *before* the external create, so a crash can be reconciled:

    journal intent (entry, target, key id)  →  provider create (cloud key labelled with that key id)
    →  journal "created" + provider ref     →  catalog row (tags name the manifest entry)  →  journal "done"

On the next run, open journal entries are settled first: a key already in the catalog closes its entry; a recorded
ref is adopted into the catalog (no duplicate create); an intent without a ref is looked up in the cloud's
inventory by its label and destroyed (no orphaned material). Everything else is recomputed from state, so a second
apply is a no-op and a killed apply converges on the next run.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from broker import errors
from broker.model import Key, KeySpec, KeyState, KeyVersion, Origin
from broker.replication.manifest import PRIMARY, SYNC_TAG, TARGET_TAG, KeyEntry, Manifest
from broker.replication.replicated import PRIMARY_TAG, REPLICA_TAG, ReplicatedKeys
from broker.replication.repo import JournalEntry, ReplicationRepo, now
from broker.service import KeyService, RequestContext
from providers import base as pb
from providers.base import InventoryItem, ProviderKeyRef

LABEL_TAGS = ("kmsb:key-id", "kms-broker-label")  # the tags/labels providers put the broker key id in
MAX_ATTEMPTS = 6
MAX_THREADS = 16  # worker threads of one apply (each holds store connections; the pool has 40)


class _Unfixable(Exception):
    """Drift the sync cannot repair; the action ends 'unfixable' and the run ends with drift left (exit 2)."""


@dataclass
class Action:
    kind: str  # create | update | delete | fix-drift | cleanup | adopt
    entry: str
    target: str
    provider: str
    key_id: str | None = None
    changes: list[str] = field(default_factory=list)
    status: str = "pending"  # pending | done | failed | unfixable
    error: str | None = None


@dataclass
class Drift:
    kind: str  # missing-in-cloud | changed-outside | unmanaged | not-in-manifest | duplicate | replica-behind
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


# drift that keeps an apply from being "converged" (unmanaged cloud keys and keys left by an un-pruned manifest
# are reported, but they are not the manifest's to fix)
DRIFT_LEFT = {"missing-in-cloud", "changed-outside", "duplicate", "replica-behind"}


def _label(item: InventoryItem) -> str | None:
    for tag in LABEL_TAGS:
        if item.tags.get(tag):
            return item.tags[tag].lower()
    return None


class _RateLimit:
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


class SyncEngine:
    def __init__(self, service: KeyService, manifest: Manifest, ctx: RequestContext, *, inventory: bool = True,
                 concurrency: int | None = None, progress: Callable[[int, int], None] | None = None) -> None:
        self.service = service
        self.manifest = manifest
        self.ctx = ctx
        self.repo = ReplicationRepo(service.store)
        self.use_inventory = inventory
        self.concurrency = concurrency or manifest.concurrency
        self.progress = progress
        self._replicated: ReplicatedKeys | None = None
        self._limits = {p: _RateLimit(manifest.rate.get(p)) for p in service.providers}
        self._cleaned: set[str] = set()
        self._timing: dict[str, list[float]] = defaultdict(list)
        self._timing_lock = threading.Lock()
        self._span: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------------------------------------ units
    @property
    def replicated(self) -> ReplicatedKeys:
        if self._replicated is None:
            self._replicated = ReplicatedKeys(self.service)
        return self._replicated

    def _units(self) -> list[tuple[KeyEntry, str, str]]:
        """(entry, target, provider) for every key the manifest wants."""
        out = []
        for e in self.manifest.keys:
            if e.replicate:
                out.append((e, PRIMARY, self.replicated.hsm_name))
            out += [(e, t, t) for t in e.targets]
        return out

    def _sync_value(self, entry: str) -> str:
        return f"{self.manifest.manifest}/{entry}"

    def _catalog(self) -> dict[tuple[str, str], list[Key]]:
        out: dict[tuple[str, str], list[Key]] = defaultdict(list)
        for key in self.repo.keys_tagged(SYNC_TAG, self.manifest.manifest + "/"):
            if key.state is KeyState.DESTROYED:
                continue
            entry = key.tags[SYNC_TAG].split("/", 1)[1] if "/" in key.tags[SYNC_TAG] else ""
            out[(entry, key.tags.get(TARGET_TAG, ""))].append(key)
        return out

    def _inventory(self, providers: Iterable[str]) -> dict[str, list[InventoryItem]]:
        if not self.use_inventory:
            return {}
        names = [p for p in set(providers) if p in self.service.providers
                 and self.service.providers[p].capabilities.inventory]

        def one(name: str) -> list[InventoryItem]:
            return self._retry(name, lambda: list(self.service.providers[name].inventory()))

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
    def _desired_tags(self, e: KeyEntry, target: str) -> dict[str, str]:
        return {**e.tags, SYNC_TAG: self._sync_value(e.name), TARGET_TAG: target}

    def _changes(self, e: KeyEntry, target: str, key: Key) -> list[str]:
        ch: list[str] = []
        if key.state is KeyState.PENDING_DELETION:
            ch.append("cancel-deletion")
            ch.append("enable" if e.enabled else "")
        elif key.state is KeyState.ENABLED and not e.enabled:
            ch.append("disable")
        elif key.state is KeyState.DISABLED and e.enabled:
            ch.append("enable")
        ch = [c for c in ch if c]
        rotatable = key.spec is KeySpec.SYMMETRIC_DEFAULT and key.origin is Origin.BROKER and not e.replicate
        if rotatable and key.rotation_period_days != e.rotation_days:
            ch.append(f"rotation:{e.rotation_days or 'off'}")
        if e.replicate and target == PRIMARY and e.rotation_days and key.state is KeyState.ENABLED:
            kv = self.service.store.get_version(key.key_id, key.primary_version)
            if kv is not None and kv.created_at + timedelta(days=e.rotation_days) <= datetime.now(UTC):
                ch.append("rotate-replicas")
        desired = self._desired_tags(e, target)
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
        catalog = self._catalog()
        units = self._units()
        if inventory is None:
            inventory = self._inventory({p for _, _, p in units} | {k.provider for ks in catalog.values() for k in ks})
        wanted = set()
        for e, target, provider in units:
            wanted.add((e.name, target))
            keys = [k for k in catalog.get((e.name, target), [])]
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
        labels = {lab for items in inventory.values() for i in items if (lab := _label(i))}
        known = self.repo.known_key_ids(sorted(labels))
        for provider, items in inventory.items():
            by_label: dict[str, list[InventoryItem]] = defaultdict(list)
            for item in items:
                lab = _label(item)
                if lab is None:
                    if item.enabled:
                        report.drift.append(Drift("unmanaged", provider, "a key the broker did not create",
                                                  cloud_key=item.key_id))
                    continue
                by_label[lab].append(item)
                if lab not in known and item.enabled and item.key_id not in self._cleaned:
                    report.drift.append(Drift("unmanaged", provider, "labelled with a key id the broker does not "
                                              "know", cloud_key=item.key_id))
            for key_id, (entry, key) in ours.items():
                if key.provider != provider or key.state not in (KeyState.ENABLED, KeyState.DISABLED):
                    continue
                found = by_label.get(key_id.lower(), [])
                if not found:
                    report.drift.append(Drift("missing-in-cloud", provider, "deleted outside the broker; its "
                                              "material cannot be recovered", key_id=key_id, entry=entry))
                    continue
                enabled = key.state is KeyState.ENABLED
                if enabled and not any(i.enabled for i in found) or not enabled and any(i.enabled for i in found):
                    report.drift.append(Drift("changed-outside", provider, f"{'disabled' if enabled else 'enabled'} "
                                              "in the cloud, not in the broker", key_id=key_id, entry=entry,
                                              cloud_key=found[0].key_id, fixable=True))
                    report.actions.append(Action("fix-drift", entry, key.tags.get(TARGET_TAG, ""), provider, key_id,
                                                 ["enable" if enabled else "disable"]))

    # ------------------------------------------------------------------------------------------ apply
    def apply(self) -> Report:
        started = time.perf_counter()
        units = self._units()
        catalog = self._catalog()
        providers = {p for _, _, p in units} | {k.provider for ks in catalog.values() for k in ks}
        inventory = self._inventory(providers | {j.target for j in self.repo.journal_open(self.manifest.manifest)
                                                 if j.target != PRIMARY})
        resumed = self._resume(inventory)
        report = self.plan(inventory)
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
            self._run_batch(batch, entries, tick)
        report.seconds = time.perf_counter() - started
        report.per_provider = self._provider_stats()
        return report

    def _run_batch(self, actions: list[Action], entries: dict[str, KeyEntry], tick: Callable[[], None]) -> None:
        """At most `concurrency` operations in flight per provider, and at most MAX_THREADS in all (each worker
        thread holds store connections). Providers are interleaved so none waits behind another's queue."""
        by_provider: dict[str, list[Action]] = defaultdict(list)
        for a in actions:
            by_provider[a.provider].append(a)
        if not by_provider:
            return
        gates = {p: threading.BoundedSemaphore(self.concurrency) for p in by_provider}
        order = [a for group in itertools.zip_longest(*by_provider.values()) for a in group if a is not None]

        def run(a: Action) -> None:
            with gates[a.provider]:
                self._execute(a, entries.get(a.entry))

        workers = min(MAX_THREADS, self.concurrency * len(by_provider))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kmsb-sync") as pool:
            futures = [(a, pool.submit(run, a)) for a in order]
            for a, fut in futures:
                try:
                    fut.result()
                    a.status = "done"
                except _Unfixable as exc:
                    a.status, a.error = "unfixable", str(exc)
                except (errors.BrokerError, pb.ProviderError) as exc:
                    a.status, a.error = "failed", f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"
                tick()

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

    def _retry(self, provider: str, fn: Callable[[], Any]) -> Any:
        """Retry throttled calls: the provider's retry_after when it gave one, else exponential backoff + jitter."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return fn()
            except (pb.ProviderThrottled, errors.Throttled) as exc:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
                wait = getattr(exc, "retry_after", None) or min(0.2 * 2 ** attempt, 10.0)
                time.sleep(wait + random.uniform(0, wait / 4))
        raise AssertionError("unreachable")

    def _execute(self, a: Action, e: KeyEntry | None) -> None:
        started = time.perf_counter()
        try:
            if a.kind == "create":
                assert e is not None
                key = self._create(e, a.target, a.provider)
                a.key_id = key.key_id
                a.changes = self._changes(e, a.target, key)
                self._update(e, a.target, key, a.changes)
            elif a.kind == "update":
                assert e is not None
                key = self.service.store.get_key(a.key_id)
                self._update(e, a.target, key, a.changes)
            elif a.kind == "delete":
                self._retry(a.provider, lambda: self.service.schedule_key_deletion(self.ctx, a.key_id, 7))
            elif a.kind == "fix-drift":
                try:
                    self._mirror_state(a.key_id, a.changes[0] == "enable")
                except errors.InvalidState:
                    # e.g. scheduled for deletion in the cloud: only people can decide what to do with that key
                    raise _Unfixable("the cloud holds the key in a state the broker cannot undo (deleted or "
                                     "scheduled for deletion outside the broker)") from None
        finally:
            self._timed(a.provider, started)

    # -- create
    def _create(self, e: KeyEntry, target: str, provider: str) -> Key:
        key_id = str(uuid.uuid4())
        m = self.manifest.manifest
        svc = self.service
        with svc.operation(self.ctx, "kms:CreateKey") as entry:
            entry.key_id, entry.provider = key_id, provider
            entry.extra["sync"] = self._sync_value(e.name)
            tags = self._desired_tags(e, target)
            if e.replicate and target != PRIMARY:
                primary = self._primary(e)
                svc.authorize(self.ctx, entry, "kms:CreateKey", None, resource=f"provider/{provider}")
                jid = self.repo.journal_intent(m, e.name, target, key_id, "import")
                self._limits[provider].wait()
                ref = self._retry(provider, lambda: self.replicated.import_copy(self.ctx, entry, primary, target,
                                                                                 replica_id=key_id))
                self.repo.journal_set(jid, "created", ref.to_dict())
                key = self.replicated.record_copy(primary, target, key_id, ref, tags)
                self.repo.journal_set(jid, "done")
                return svc.store.get_key(key.key_id)
            svc.authorize(self.ctx, entry, "kms:CreateKey", None, resource=f"provider/{provider}")
            backend = svc.provider(provider)
            missing = backend.capabilities.missing_for(e.key_spec)
            if missing:
                raise errors.Unsupported(f"provider {provider!r} lacks {missing}; cannot create this key there")
            jid = self.repo.journal_intent(m, e.name, target, key_id, "create")
            self._limits[provider].wait()
            ref = self._retry(provider, lambda: backend.create_key(e.key_spec, e.key_usage, label=key_id))
            self.repo.journal_set(jid, "created", ref.to_dict())
            self._add_key(e, target, provider, key_id, ref)
            self.repo.journal_set(jid, "done")
            return svc.store.get_key(key_id)

    def _add_key(self, e: KeyEntry, target: str, provider: str, key_id: str, ref: ProviderKeyRef) -> None:
        tags = self._desired_tags(e, target)
        if e.replicate and target == PRIMARY:
            tags[PRIMARY_TAG] = "primary"
        key = Key(key_id=key_id, provider=provider, spec=e.key_spec, usage=e.key_usage, state=KeyState.ENABLED,
                  origin=Origin.BROKER, description=e.description, created_at=now(), tags=tags)
        self.service.store.add_key(key, KeyVersion(1, ref.to_dict(), now()))

    def _primary(self, e: KeyEntry) -> Key:
        keys = self._catalog().get((e.name, PRIMARY), [])
        if not keys:
            raise errors.InvalidState(f"the primary of replicated entry {e.name} does not exist")
        return keys[0]

    # -- update (each change is its own audited KeyService operation)
    def _update(self, e: KeyEntry, target: str, key: Key, changes: list[str]) -> None:
        svc, ctx = self.service, self.ctx
        retry = lambda fn: self._retry(key.provider, fn)  # noqa: E731
        tags = self._desired_tags(e, target)
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
                retry(lambda: self.replicated.rotate(ctx, key.key_id))
            elif c.startswith("unalias:"):
                alias = c.split(":", 1)[1]
                retry(lambda n=alias: svc.delete_alias(ctx, n))
            elif c.startswith("alias:"):
                name = c.split(":", 1)[1]
                owner = self.repo.alias_targets([name]).get(name)
                if owner is None:
                    retry(lambda n=name: svc.create_alias(ctx, n, key.key_id))
                elif owner != key.key_id:
                    retry(lambda n=name: svc.update_alias(ctx, n, key.key_id))

    def _mirror_state(self, key_id: str, enabled: bool) -> None:
        """Put the broker's enabled state back onto the cloud (someone changed it there)."""
        svc = self.service
        action = "kms:EnableKey" if enabled else "kms:DisableKey"
        with svc.operation(self.ctx, action) as entry:
            key = svc.resolve_key(key_id)
            svc.authorize(self.ctx, entry, action, key)
            entry.extra["sync"] = "mirror-state"
            backend = svc.provider(key.provider)
            for kv in svc.store.list_versions(key.key_id):
                if kv.state == "Enabled":
                    self._retry(key.provider, lambda r=kv.provider_ref: backend.set_enabled(
                        ProviderKeyRef.from_dict(r), enabled))

    # -- resume
    def _resume(self, inventory: dict[str, list[InventoryItem]]) -> dict[str, int]:
        """Settle what a killed run left: close, adopt or clean up every open journal entry."""
        counts = {"closed": 0, "adopted": 0, "cleaned": 0}
        open_entries = self.repo.journal_open(self.manifest.manifest)
        if not open_entries:
            return counts
        known = self.repo.known_key_ids([j.key_id for j in open_entries])
        entries = {e.name: e for e in self.manifest.keys}
        for j in open_entries:
            if j.key_id in known:
                self._ensure_replica_row(j)
                self.repo.journal_set(j.id, "done")
                counts["closed"] += 1
            elif j.state == "created" and j.provider_ref is not None and j.entry in entries:
                self._adopt(j, entries[j.entry])
                counts["adopted"] += 1
            else:
                counts["cleaned"] += self._clean(j, inventory)
                self.repo.journal_set(j.id, "aborted")
        return counts

    def _ensure_replica_row(self, j: JournalEntry) -> None:
        if j.action != "import":
            return
        key = self.service.store.get_key(j.key_id)
        primary = key.tags.get(REPLICA_TAG) if key else None
        if primary and j.target not in self.repo.replicas(primary):
            self.repo.add_replica(primary, j.target, j.key_id)

    def _adopt(self, j: JournalEntry, e: KeyEntry) -> None:
        ref = ProviderKeyRef.from_dict(j.provider_ref or {})
        provider = self.replicated.hsm_name if j.target == PRIMARY else j.target
        with self.service.operation(self.ctx, "kms:CreateKey") as entry:
            entry.key_id, entry.provider = j.key_id, provider
            entry.extra["sync"] = "adopt-after-crash"
            self.service.authorize(self.ctx, entry, "kms:CreateKey", None, resource=f"provider/{provider}")
            if j.action == "import":
                primary = self._primary(e)
                self.replicated.record_copy(primary, j.target, j.key_id, ref, self._desired_tags(e, j.target))
            else:
                self._add_key(e, j.target, provider, j.key_id, ref)
        self.repo.journal_set(j.id, "done")

    def _clean(self, j: JournalEntry, inventory: dict[str, list[InventoryItem]]) -> int:
        """Destroy whatever the cloud made for an intent whose create never reached the journal."""
        provider = self.replicated.hsm_name if j.target == PRIMARY else j.target
        backend = self.service.providers.get(provider)
        if backend is None:
            return 0
        if j.provider_ref is not None:
            found = [ProviderKeyRef.from_dict(j.provider_ref)]
        else:
            found = [ProviderKeyRef(key_id=i.key_id) for i in inventory.get(provider, [])
                     if _label(i) == j.key_id.lower()]
        with self.service.operation(self.ctx, "broker:DestroyKey") as entry:
            entry.key_id, entry.provider = j.key_id, provider
            entry.extra["sync"] = "cleanup-after-crash"
            self.service.authorize(self.ctx, entry, "broker:DestroyKey", None, resource=f"provider/{provider}")
            for ref in found:
                self._destroy_orphan(backend, ref)
                self._cleaned.add(ref.key_id)
        return len(found)

    def _destroy_orphan(self, backend: pb.Provider, ref: ProviderKeyRef) -> None:
        """Disable, schedule and destroy (each as far as the backend has it). A backend that manages versions, not
        keys, needs a version: an orphan has exactly its first one."""
        for candidate in (ref, ProviderKeyRef(key_id=ref.key_id, version="1", extra=dict(ref.extra))):
            try:
                self._retry(backend.name, lambda r=candidate: backend.set_enabled(r, False))
                self._retry(backend.name, lambda r=candidate: backend.schedule_destruction(r, 7))
                self._retry(backend.name, lambda r=candidate: backend.destroy(r))
                return
            except pb.ProviderInvalidInput:
                continue
            except pb.ProviderNotFound:
                return
