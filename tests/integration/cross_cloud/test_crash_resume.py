"""Crash and resume: `sync apply` is SIGKILLed at random points, over and over; each next apply converges, with no
duplicate keys and no orphaned material (every cloud key the journal ever named is in the catalog or disabled)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .conftest import World, providers_json
from .sync_support import (
    labelled,
    new_data_dir,
    preload,
    run_sync,
    start_forked_apply,
    through,
    wire_proxy,
    write_manifest,
)

pytestmark = pytest.mark.integration
RUNS = 20
PLACES = [["hsm"], ["aws"], ["gcp"], ["aliyun"], ["azure"], ["aws", "gcp"], ["aliyun", "azure-mhsm"]]


def _db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'broker.db'}?mode=ro", uri=True)


def _units(data_dir: Path) -> Counter:
    con = _db(data_dir)
    try:
        rows = con.execute("""select s.tag_value, t.tag_value from key_tags s join key_tags t on s.key_id = t.key_id
                              join keys k on k.key_id = s.key_id
                              where s.tag_key = 'kmsb:sync' and t.tag_key = 'kmsb:target'
                              and k.state not in ('Destroyed', 'PendingDeletion')""").fetchall()
    finally:
        con.close()
    return Counter(rows)


def _journal_rows(data_dir: Path) -> int:
    if not (data_dir / "broker.db").exists():
        return 0
    con = _db(data_dir)
    try:
        return con.execute("select count(*) from sync_journal").fetchone()[0]
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        con.close()


def _open_journal(data_dir: Path) -> int:
    con = _db(data_dir)
    try:
        return con.execute("select count(*) from sync_journal where state in ('intent', 'created')").fetchone()[0]
    finally:
        con.close()


@pytest.mark.timeout(1200)
def test_kill_apply_at_random_points_then_converge(world: World, tmp_path: Path) -> None:
    preload()
    rng = random.Random(8)
    data_dir = new_data_dir(tmp_path / "data")
    keys: list[dict] = []
    killed_mid_run, resumed = 0, Counter()
    for run in range(RUNS):
        for j in range(5):
            targets = rng.choice(PLACES)
            entry = {"name": f"k{run}-{j}", "targets": targets, "tags": {"run": str(run)}}
            if rng.random() < 0.25:
                entry = {**entry, "replicate": True, "targets": ["aws", "gcp"]}
            if rng.random() < 0.3:
                entry["enabled"] = False
            if rng.random() < 0.3:
                entry["aliases"] = [f"alias/crash/{run}-{j}"]
            keys.append(entry)
        if keys and rng.random() < 0.3:  # change an older key too
            old = rng.choice(keys[:-5] or keys)
            old["tags"] = {**old["tags"], "touched": str(run)}
        manifest = write_manifest(tmp_path / f"m{run}.yaml", {"manifest": "crash", "concurrency": 3, "keys": keys})
        journaled = _journal_rows(data_dir)
        proc = start_forked_apply(world, data_dir, manifest)
        # kill while it creates: once it journaled its first new intent (reading the clouds' inventories before
        # that takes longer and longer as they fill), at a random point of the creates that follow
        deadline = time.monotonic() + 60
        while proc.exitcode is None and _journal_rows(data_dir) == journaled and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8))
        if proc.exitcode is None:
            killed_mid_run += 1
            proc.kill()
        proc.join()
        assert proc.exitcode in (-signal.SIGKILL, 0), proc.exitcode
        code, report = run_sync(world, data_dir, "apply", manifest)
        assert code == 0, json.dumps(report, indent=1)
        resumed.update(report["resumed"])
        print(f"run {run}: killed {proc.exitcode == -signal.SIGKILL}, resumed {report['resumed']}, "
              f"resume apply {report['seconds']:.1f}s", flush=True)
        wanted = Counter((f"crash/{k['name']}", t) for k in keys
                         for t in (["@primary", *k["targets"]] if k.get("replicate") else k["targets"]))
        assert _units(data_dir) == wanted  # exactly one key per (entry, target): no duplicates, none missing
        assert _open_journal(data_dir) == 0
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [], plan
    assert killed_mid_run >= RUNS // 2, killed_mid_run
    assert sum(resumed.values()) > 0, resumed  # some kill landed between a journal intent and its "done"
    print(f"killed mid-run {killed_mid_run}/{RUNS}; settled on resume: {dict(resumed)}")
    _assert_no_orphans(world, data_dir)


def _assert_no_orphans(world: World, data_dir: Path) -> None:
    from providers.registry import build_provider

    con = _db(data_dir)
    try:
        journal = {r[0] for r in con.execute("select key_id from sync_journal")}
        catalog = {r[0] for r in con.execute("select key_id from keys")}
        held: dict[str, set[str]] = {}
        for key_id, ref in con.execute("select key_id, provider_ref from key_versions"):
            held.setdefault(key_id, set()).add(json.loads(ref)["key_id"])
    finally:
        con.close()
    cfgs = providers_json(world.env)
    live_orphans, live_strays = [], []
    for name in ("aws", "azure", "gcp", "aliyun"):
        provider = build_provider(name, cfgs[name])
        try:
            for item in provider.inventory():
                label = item.label.lower() if item.label else None
                if label in journal and label not in catalog and item.enabled:
                    live_orphans.append((name, item.key_id))
                elif label in journal and item.enabled and item.key_id not in held.get(label, ()):
                    live_strays.append((name, label, item.key_id))  # a second cloud key of a catalog key
        finally:
            provider.close()
    assert live_orphans == [] and live_strays == []


# ------------------------------------------------------------------ a kill at one exact point (in the child only)


def _die() -> NoReturn:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def _kill_before_the_gcp_import() -> None:
    """The copy's CryptoKey is made (labelled with the intent's key id), its material never arrives."""
    from providers.gcp import GcpProvider

    def import_version(self: GcpProvider, *args: Any, **kwargs: Any) -> NoReturn:
        _die()

    GcpProvider._import_version = import_version  # type: ignore[method-assign]


def _kill_after_the_aws_disable() -> None:
    """DisableKey sets the cloud, then the catalog: die between the two."""
    from providers.aws import AwsProvider

    original = AwsProvider.set_enabled

    def set_enabled(self: AwsProvider, ref: Any, enabled: bool) -> None:
        original(self, ref, enabled)
        if not enabled:
            _die()

    AwsProvider.set_enabled = set_enabled  # type: ignore[method-assign]


def _killed_apply(world: World, data_dir: Path, manifest: Path, fault: Any) -> None:
    proc = start_forked_apply(world, data_dir, manifest, setup=fault)
    proc.join(180)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    assert proc.exitcode == -signal.SIGKILL, (proc.exitcode, (data_dir.parent / ".killed.err").read_text()[-3000:])


@pytest.mark.timeout(600)
def test_a_copy_killed_between_its_gcp_key_and_its_import_leaves_nothing_live(world: World, tmp_path: Path) -> None:
    """Cloud KMS deletes no key: the cleanup can destroy versions only, and this key has none. It read as enabled
    (no primary version), so every later plan reported a live key the broker does not know."""
    preload()
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "cut-gcp", "keys": [
        {"name": "copy", "replicate": True, "targets": ["gcp"]}]})
    _killed_apply(world, data_dir, manifest, _kill_before_the_gcp_import)
    con = _db(data_dir)
    try:
        cut = [r[0] for r in con.execute("select key_id from sync_journal where target = 'gcp' and state = 'intent'")]
    finally:
        con.close()
    assert len(cut) == 1, cut
    code, report = run_sync(world, data_dir, "apply", manifest)
    # the primary was closed with its batch; the copy's intent is aborted and its empty key cleaned once
    assert code == 0 and report["resumed"] == {"closed": 0, "adopted": 0, "cleaned": 1}, report
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [], plan
    assert [d for d in plan["drift"] if cut[0] in (d["cloud_key"] or "")] == [], plan
    _assert_no_orphans(world, data_dir)


@pytest.mark.timeout(600)
def test_a_disable_killed_between_cloud_and_catalog_is_finished_by_one_action(world: World, tmp_path: Path) -> None:
    """The kill leaves the cloud key disabled and the catalog key enabled, the manifest wanting it disabled. The
    resumed apply must finish the disable, and only that: a mirror of the catalog's (enabled) state beside it raced
    it on the same key and re-enabled the cloud key after the disable (the next plan then had a "disable" to do)."""
    preload()
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "cut-disable", "keys": [
        {"name": "off", "targets": ["aws"], "enabled": False}]})
    _killed_apply(world, data_dir, manifest, _kill_after_the_aws_disable)
    con = _db(data_dir)
    try:
        (key_id, state), = con.execute("select key_id, state from keys").fetchall()
    finally:
        con.close()
    assert state == "Enabled"  # the catalog half never happened
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0, report
    assert [(a["kind"], a["changes"], a["status"]) for a in report["actions"] if a["key_id"] == key_id] == [
        ("update", ["disable"], "done")], report
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [] and [d for d in plan["drift"] if d["key_id"] == key_id] == [], plan
    con = _db(data_dir)
    try:
        assert con.execute("select state from keys where key_id = ?", (key_id,)).fetchone()[0] == "Disabled"
    finally:
        con.close()



# ------------------------------------------------------------------ a kill inside a prune's ScheduleKeyDeletion


def _kill_at_the_schedule(cloud: str, after: bool) -> Any:
    """ScheduleKeyDeletion schedules the cloud key, then writes the catalog: die before the cloud call, or between
    the two."""
    def fault() -> None:
        from providers.registry import provider_class

        cls = provider_class(cloud)
        original = cls.schedule_destruction

        def schedule_destruction(self: Any, ref: Any, days: int) -> None:
            if after:
                original(self, ref, days)
            _die()

        cls.schedule_destruction = schedule_destruction  # type: ignore[method-assign]
    return fault


@pytest.mark.timeout(600)
@pytest.mark.parametrize("after", [False, True], ids=["before-the-cloud", "between-cloud-and-catalog"])
@pytest.mark.parametrize("cloud", ["aws", "gcp", "aliyun", "azure"])
def test_a_prune_killed_inside_its_schedule_deletion_is_finished_by_the_next_apply(
        world: World, tmp_path: Path, cloud: str, after: bool) -> None:
    preload()
    data_dir = new_data_dir(tmp_path / "data")
    name = f"cut-prune-{cloud}-{int(after)}"
    keep = {"name": "keep", "targets": [cloud]}
    both = write_manifest(tmp_path / "both.yaml", {"manifest": name, "prune": True, "keys": [
        keep, {"name": "gone", "targets": [cloud], "aliases": [f"alias/{name}"]}]})
    code, report = run_sync(world, data_dir, "apply", both)
    assert code == 0, report
    (gone,) = [a["key_id"] for a in report["actions"] if a["entry"] == "gone"]
    one = write_manifest(tmp_path / "one.yaml", {"manifest": name, "prune": True, "keys": [keep]})
    _killed_apply(world, data_dir, one, _kill_at_the_schedule(cloud, after))
    con = _db(data_dir)
    try:
        assert con.execute("select state from keys where key_id = ?", (gone,)).fetchone()[0] == "Enabled"
    finally:
        con.close()
    code, report = run_sync(world, data_dir, "apply", one)
    assert code == 0, report
    assert [(a["kind"], a["key_id"], a["status"]) for a in report["actions"]] == [("delete", gone, "done")], report
    code, plan = run_sync(world, data_dir, "plan", one)
    assert code == 0 and plan["actions"] == [], plan
    assert [d for d in plan["drift"] if d["key_id"] == gone or gone in (d["cloud_key"] or "")] == [], plan
    con = _db(data_dir)
    try:
        assert con.execute("select state from keys where key_id = ?", (gone,)).fetchone()[0] == "PendingDeletion"
    finally:
        con.close()
    from providers.registry import build_provider

    provider = build_provider(cloud, providers_json(world.env)[cloud])
    try:
        live = [i.key_id for i in provider.inventory() if i.label and i.label.lower() == gone and i.enabled]
    finally:
        provider.close()
    assert live == []  # nothing live left labelled by the broker that the catalog does not hold live


# ------------------------------------------------------------------ a killed run's create that lands late


@pytest.mark.timeout(600)
def test_a_create_that_lands_after_the_resume_looked_is_scheduled_by_the_next_apply(world: World,
                                                                                    tmp_path: Path) -> None:
    """The killed run's CreateKey reaches AWS only after the resumed apply read the inventory and aborted its intent
    (a proxy holds it: a request the cloud finishes after its client died). No re-read inside the resumed run can
    close that window; the journal can: the next plan reports the key labelled with the aborted intent's id as a
    stray and the apply schedules it for deletion."""
    preload()
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "late", "keys": [{"name": "late",
                                                                                   "targets": ["aws"]}]})
    with wire_proxy(world, "aws") as proxy:
        rule = proxy.hold(b"TrentService.CreateKey")
        proc = start_forked_apply(through(world, proxy, "aws"), data_dir, manifest)
        assert rule.fired.wait(120), (data_dir.parent / ".killed.err").read_text()[-3000:]
        deadline = time.monotonic() + 30
        while not rule.held_http_request() and time.monotonic() < deadline:  # its body may follow its headers
            time.sleep(0.01)
        assert rule.held_http_request()
        proc.kill()
        proc.join()
        code, report = run_sync(world, data_dir, "apply", manifest)
        assert code == 0 and report["resumed"] == {"closed": 0, "adopted": 0, "cleaned": 0}, report
        con = _db(data_dir)
        try:
            (aborted,) = [r[0] for r in con.execute("select key_id from sync_journal where state = 'aborted'")]
        finally:
            con.close()
        assert labelled(world, "aws", aborted) == []
        proxy.release(rule)
        assert rule.answered.wait(60)
    (late,) = [i.key_id for i in labelled(world, "aws", aborted) if i.enabled]  # landed after the resume
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 2, plan
    assert [(d["kind"], d["key_id"], d["cloud_key"]) for d in plan["drift"] if d["key_id"] == aborted] == [
        ("stray", aborted, late)], plan
    assert [(a["kind"], a["key_id"], a["changes"]) for a in plan["actions"]] == [
        ("fix-drift", aborted, [f"discard:{late}"])], plan
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0 and [a["status"] for a in report["actions"]] == ["done"], report
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [], plan
    _assert_no_orphans(world, data_dir)
