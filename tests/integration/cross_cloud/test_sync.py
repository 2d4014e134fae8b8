"""`kms-broker sync plan|apply` over the real stack: create, idempotence, changes, prune, drift, report, --every."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from .conftest import World
from .sync_support import new_data_dir, preload, run_sync, run_sync_subprocess, write_manifest

pytestmark = pytest.mark.integration


def _manifest(**overrides: object) -> dict:
    doc = {
        "manifest": "team-a",
        "defaults": {"tags": {"team": "a"}},
        "keys": [
            {"name": "orders", "targets": ["hsm", "aws", "gcp"], "rotation_days": 365,
             "aliases": ["alias/team-a/orders"], "description": "orders db"},
            {"name": "audit", "targets": ["azure", "aliyun"], "enabled": False},
            {"name": "shared", "replicate": True, "targets": ["aws", "azure-mhsm", "gcp", "aliyun"]},
        ],
    }
    doc.update(overrides)
    return doc


@pytest.fixture(scope="module", autouse=True)
def _preloaded() -> None:
    preload()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_data_dir(tmp_path_factory.mktemp("sync") / "data")


def _by(report: dict, kind: str) -> list[dict]:
    return [a for a in report["actions"] if a["kind"] == kind]


def _aws(world: World):
    cfg = world.env["aws"]
    return boto3.client("kms", endpoint_url=cfg["endpoint_url"], region_name=cfg["region"],
                        aws_access_key_id=cfg["access_key_id"], aws_secret_access_key=cfg["secret_access_key"])


def _aws_key_for(world: World, broker_key_id: str) -> str:
    kms = _aws(world)
    found = [k["KeyId"] for k in kms.list_keys(Limit=1000)["Keys"]
             if {"TagKey": "kmsb:key-id", "TagValue": broker_key_id} in kms.list_resource_tags(KeyId=k["KeyId"])["Tags"]]
    assert len(found) == 1, found
    return found[0]


def test_plan_apply_is_idempotent(world: World, data_dir: Path, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", _manifest())
    code, plan = run_sync(world, data_dir, "plan", m)
    assert code == 2 and plan["mode"] == "plan", plan
    assert sorted((a["entry"], a["target"]) for a in _by(plan, "create")) == sorted(
        [("orders", "hsm"), ("orders", "aws"), ("orders", "gcp"), ("audit", "azure"), ("audit", "aliyun"),
         ("shared", "@primary"), ("shared", "aws"), ("shared", "azure-mhsm"), ("shared", "gcp"), ("shared", "aliyun")])
    code, applied = run_sync(world, data_dir, "apply", m)
    assert code == 0 and applied["status"] == "converged", json.dumps(applied, indent=1)
    assert all(a["status"] == "done" for a in applied["actions"])
    assert set(applied["per_provider"]) == {"hsm", "aws", "gcp", "azure", "aliyun", "azure-mhsm"}
    code, again = run_sync(world, data_dir, "plan", m)
    assert code == 0 and again["actions"] == [], again
    code, second = run_sync_subprocess(world, data_dir, "apply", m)  # the console entry, as users run it
    assert code == 0 and second["actions"] == []
    # what the broker now holds: one key per (entry, target), tagged, aliased, disabled where asked
    orders_hsm = next(a["key_id"] for a in applied["actions"] if (a["entry"], a["target"]) == ("orders", "hsm"))
    world_api = world.api  # noqa: F841 - the session broker is another store; the sync's broker is `data_dir`
    from broker.store import Store
    store = Store(f"sqlite:///{data_dir / 'broker.db'}")
    try:
        key = store.get_key(orders_hsm)
        assert key.tags["kmsb:sync"] == "team-a/orders" and key.tags["team"] == "a"
        assert key.aliases == ["alias/team-a/orders"] and key.rotation_period_days == 365
        audit = [store.get_key(a["key_id"]) for a in applied["actions"] if a["entry"] == "audit"]
        assert {k.state.value for k in audit} == {"Disabled"}
    finally:
        store.dispose()
    records = [json.loads(line) for line in (data_dir / "audit" / "audit.jsonl").read_text().splitlines()]
    creates = [r for r in records if r.get("action") == "kms:CreateKey" and r["front_door"] == "sync"
               and r.get("phase") != "intent"]  # one outcome per key (each after its intent)
    assert len(creates) == 10 and all(r["principal"] == "sync" and r["outcome"] == "allowed" for r in creates)


def test_changes_prune_and_drift(world: World, data_dir: Path, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", _manifest())
    code, _ = run_sync(world, data_dir, "apply", m)
    assert code == 0
    doc = _manifest(prune=True)
    doc["keys"][0].update(tags={"team": "b", "tier": "gold"}, aliases=["alias/team-a/orders2"], enabled=False)
    doc["keys"] = [k for k in doc["keys"] if k["name"] != "audit"]
    m2 = write_manifest(tmp_path / "m2.yaml", doc)
    code, plan = run_sync(world, data_dir, "plan", m2)
    assert code == 2
    updates = {a["target"]: a["changes"] for a in _by(plan, "update") if a["entry"] == "orders"}
    assert set(updates) == {"hsm", "aws", "gcp"}
    assert {"disable", "tag:team", "tag:tier", "alias:alias/team-a/orders2", "unalias:alias/team-a/orders"} <= set(
        updates["hsm"])
    assert sorted(a["target"] for a in _by(plan, "delete")) == ["aliyun", "azure"]
    code, applied = run_sync(world, data_dir, "apply", m2)
    assert code == 0, applied
    assert run_sync(world, data_dir, "plan", m2)[0] == 0

    # drift: someone enables the AWS copy of a key the broker holds disabled, directly in AWS
    orders_aws = next(a["key_id"] for a in _by(applied, "update") if a["target"] == "aws")
    kms = _aws(world)
    cloud_key = _aws_key_for(world, orders_aws)
    assert kms.describe_key(KeyId=cloud_key)["KeyMetadata"]["Enabled"] is False
    kms.enable_key(KeyId=cloud_key)
    # ... and someone creates a key in AWS by hand
    stray = kms.create_key(Description="made by hand")["KeyMetadata"]["KeyId"]
    code, plan = run_sync(world, data_dir, "plan", m2)
    assert code == 2
    kinds = {(d["kind"], d["key_id"] or d["cloud_key"]) for d in plan["drift"]}
    assert ("changed-outside", orders_aws) in kinds and ("unmanaged", stray) in kinds
    code, applied = run_sync(world, data_dir, "apply", m2)
    assert code == 0 and [a["kind"] for a in applied["actions"]] == ["fix-drift"], applied
    assert kms.describe_key(KeyId=cloud_key)["KeyMetadata"]["Enabled"] is False

    # drift the broker cannot repair: the cloud key was deleted outside it -> exit 2 (drift left)
    shared_aws = next(k for k in _replicas(data_dir) if k[1] == "aws")[0]
    kms.schedule_key_deletion(KeyId=_aws_key_for(world, shared_aws), PendingWindowInDays=7)
    code, applied = run_sync(world, data_dir, "apply", m2)
    assert code == 2 and applied["status"] == "drift", json.dumps(applied, indent=1)
    assert [(a["kind"], a["key_id"], a["status"]) for a in applied["actions"]] == [
        ("fix-drift", shared_aws, "unfixable")]


def _replicas(data_dir: Path) -> list[tuple[str, str]]:
    import sqlite3
    con = sqlite3.connect(f"file:{data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        return con.execute("select replica_key_id, target from key_replicas").fetchall()
    finally:
        con.close()


def test_invalid_manifest_and_every(world: World, tmp_path: Path) -> None:
    data = new_data_dir(tmp_path / "data")
    bad = write_manifest(tmp_path / "bad.yaml", {"manifest": "x", "keys": [{"name": "k", "targets": ["hsm"],
                                                                             "spec": "RSA_2048", "replicate": True}]})
    import subprocess

    from .sync_support import CLI, sync_env
    out = subprocess.run([*CLI, "sync", "plan", str(bad), "--data-dir", str(data)], env=sync_env(world),
                         capture_output=True, text=True)
    assert out.returncode == 1 and "replicate" in out.stderr
    m = write_manifest(tmp_path / "m.yaml", {"manifest": "loop", "keys": [{"name": "k", "targets": ["hsm", "gcp"]}]})
    code, report = run_sync(world, data, "apply", m, "--every", "1s", "--max-runs", "2")
    # JSON Lines, one report per run; the last: the first run created both keys, the second found nothing to do
    assert code == 0 and report["actions"] == [], report


def test_replicated_entry_rotates_every_copy_when_due(world: World, tmp_path: Path) -> None:
    import sqlite3
    from datetime import UTC, datetime, timedelta

    data = new_data_dir(tmp_path / "data")
    m = write_manifest(tmp_path / "m.yaml", {"manifest": "rot", "keys": [
        {"name": "r", "replicate": True, "targets": ["aws", "gcp"], "rotation_days": 90}]})
    code, applied = run_sync(world, data, "apply", m)
    assert code == 0, applied
    primary = next(a["key_id"] for a in applied["actions"] if a["target"] == "@primary")
    assert run_sync(world, data, "plan", m)[0] == 0  # not due yet
    con = sqlite3.connect(data / "broker.db")
    try:  # the primary's material is now 100 days old
        con.execute("update key_versions set created_at = ? where key_id = ?",
                    ((datetime.now(UTC) - timedelta(days=100)).isoformat(), primary))
        con.commit()
    finally:
        con.close()
    code, plan = run_sync(world, data, "plan", m)
    assert code == 2 and [(a["target"], a["changes"]) for a in plan["actions"]] == [("@primary", ["rotate-replicas"])]
    code, applied = run_sync(world, data, "apply", m)
    assert code == 0, applied
    con = sqlite3.connect(f"file:{data / 'broker.db'}?mode=ro", uri=True)
    try:
        versions = dict(con.execute("select k.provider, k.primary_version from keys k join key_tags t "
                                    "on t.key_id = k.key_id where t.tag_key = 'kmsb:sync'").fetchall())
    finally:
        con.close()
    assert versions == {"hsm": 2, "aws": 2, "gcp": 2}
    assert run_sync(world, data, "plan", m)[0] == 0
