"""A cloud create whose answer is lost after the cloud made the key, retried by the official SDK, unmodified.

A proxy on the wire (tests/support/wire.py) lets the first CreateKey / CreateCryptoKey / CreateCryptoKeyVersion /
ImportCryptoKeyVersion reach LocalStack or the GCP emulator, throws its answer away and cuts the connection; the
SDK's own retry sends the same request again:

- Cloud KMS answers the retry ALREADY_EXISTS (the broker names its CryptoKeys): the provider must take that key as
  the one it made (it carries the broker's label), neither fail nor make a third;
- Cloud KMS's ImportCryptoKeyVersion is not idempotent (a retry imports a second version): the provider finds the
  version its import job made before it retries, so there is one;
- Cloud KMS's CreateCryptoKeyVersion is not idempotent and carries nothing to find its version by: the retry makes a
  second version, the catalog registers the one the retry answered, and the sync's next plan finds the skipped
  version number, reports it and destroys it (never a version the catalog holds, nor one made after its latest);
- AWS KMS's CreateKey is not idempotent: the retry makes a second key with the same broker label. The provider
  cannot tell; the sync's next plan finds the key the catalog does not hold, reports it and schedules it for
  deletion (never the one the catalog points to), an empty one (a copy's import create) as well.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.model import KeySpec, KeyUsage
from tests.support.wire import WireProxy

from .conftest import World, providers_json
from .sync_support import labelled, new_data_dir, preload, run_sync, through, wire_proxy, write_manifest

pytestmark = pytest.mark.integration

AWS_CREATE = b"TrentService.CreateKey"
GCP_CREATE = b"kms-broker-label"  # a string field only CreateCryptoKey requests carry (the key's labels)


def _gcp_ring(world: World) -> str:
    cfg = world.env["gcp"]
    return f"projects/{cfg['project']}/locations/{cfg['location']}/keyRings/{cfg.get('key_ring', 'kms-broker')}"


def _gcp_import(world: World) -> bytes:
    """An ImportCryptoKeyVersion request of symmetric material, in protobuf: field 2 (algorithm) = 1
    (GOOGLE_SYMMETRIC_ENCRYPTION), then field 4 (import_job) = one of the broker's import jobs (length-prefixed)."""
    prefix = f"{_gcp_ring(world)}/importJobs/kmsb-import-"
    return b'\x10\x01"' + bytes([len(prefix) + 16]) + prefix.encode()


def _gcp_version_create(key_name: str) -> bytes:
    """A CreateCryptoKeyVersion request for `key_name`: field 1 (parent), then an empty field 2 (the version)."""
    return key_name.encode() + b"\x12\x00"


def _gcp_client(world: World):
    """The official client straight to the emulator (not through any proxy), over REST: gRPC's threads in this
    process would deadlock the sync runs `run_sync` forks from it (a child stuck in grpc's Channel.__init__)."""
    from providers.gcp import build_client

    cfg = world.env["gcp"]
    return build_client("rest", rest_endpoint=cfg["rest_endpoint"], token=cfg.get("token"))


def _gcp_versions(world: World, key_name: str) -> dict[str, str]:
    """version number -> state, read directly (not through any proxy)."""
    client = _gcp_client(world)
    try:
        return {v.name.rsplit("/", 1)[1]: v.state.name
                for v in client.list_crypto_key_versions(request={"parent": key_name})}
    finally:
        client.transport.close()


@pytest.fixture
def gcp_proxy(world: World) -> Iterator[WireProxy]:
    with wire_proxy(world, "gcp") as proxy:
        yield proxy


@pytest.fixture
def aws_proxy(world: World) -> Iterator[WireProxy]:
    with wire_proxy(world, "aws") as proxy:
        yield proxy


# ------------------------------------------------------------------------------------------ at the adapter


@pytest.mark.parametrize("import_only", [False, True], ids=["create", "byok-import"])
def test_gcp_create_retried_after_a_lost_answer_is_the_key_it_made(world: World, gcp_proxy: WireProxy,
                                                                    import_only: bool) -> None:
    from providers.registry import build_provider

    provider = build_provider("gcp", providers_json(through(world, gcp_proxy, "gcp").env)["gcp"])
    try:
        provider.check_health()  # the key ring exists before the rule is armed
        label = f"retried-{'import' if import_only else 'create'}-{uuid.uuid4().hex[:8]}"
        rule = gcp_proxy.lose_answer(GCP_CREATE)
        if import_only:
            from tests.integration.gcp_provider.test_provider import software_wrap

            ref = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                       software_wrap(os.urandom(32)), label=label)
        else:
            ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=label)
        assert rule.fired.is_set() and rule.answered.is_set()  # the first answer was made, and lost
        items = labelled(world, "gcp", label)
        assert [i.key_id for i in items] == [ref.key_id]  # one key: the one the server made first
        assert items[0].enabled
        assert provider.decrypt(ref, provider.encrypt(ref, b"data", b"aad"), b"aad") == b"data"
    finally:
        provider.close()


def test_gcp_import_retried_after_a_lost_answer_is_the_version_it_made(world: World, gcp_proxy: WireProxy) -> None:
    """A first import (a new import-only key) and a rotation's import into that key: each answer lost once."""
    from providers.registry import build_provider
    from tests.integration.gcp_provider.test_provider import software_wrap

    provider = build_provider("gcp", providers_json(through(world, gcp_proxy, "gcp").env)["gcp"])
    try:
        provider.check_health()
        label = f"retried-import-{uuid.uuid4().hex[:8]}"
        rule = gcp_proxy.lose_answer(_gcp_import(world))
        ref = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, software_wrap(os.urandom(32)),
                                   label=label)
        assert rule.fired.is_set() and rule.answered.is_set()
        assert _gcp_versions(world, ref.key_id) == {"1": "ENABLED"} and ref.version == "1"
        rule = gcp_proxy.lose_answer(_gcp_import(world))
        rotated = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                       software_wrap(os.urandom(32)), label=label, ref=ref)
        assert rule.fired.is_set() and rule.answered.is_set()
        assert _gcp_versions(world, ref.key_id) == {"1": "ENABLED", "2": "ENABLED"} and rotated.version == "2"
        assert provider.decrypt(rotated, provider.encrypt(rotated, b"data", b"aad"), b"aad") == b"data"
    finally:
        provider.close()


def test_gcp_version_create_retried_after_a_lost_answer_makes_a_second_version(world: World,
                                                                               gcp_proxy: WireProxy) -> None:
    """What the sync has to clean up: the retry makes version 3, version 2 (the lost answer's) is live; the
    provider names it from the refs the catalog would hold, and nothing above the latest of them."""
    from providers.registry import build_provider

    provider = build_provider("gcp", providers_json(through(world, gcp_proxy, "gcp").env)["gcp"])
    try:
        ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                  label=f"retried-version-{uuid.uuid4().hex[:8]}")
        rule = gcp_proxy.lose_answer(_gcp_version_create(ref.key_id))
        rotated = provider.create_version(ref, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="x")
        assert rule.fired.is_set() and rule.answered.is_set()
        assert rotated.version == "3" and _gcp_versions(world, ref.key_id) == {
            "1": "ENABLED", "2": "ENABLED", "3": "ENABLED"}
        assert list(provider.stray_versions([ref, rotated])) == [f"{ref.key_id}/cryptoKeyVersions/2"]
        assert provider.stray_versions([ref]) == {}  # 2 and 3 may be rotations in flight
        provider.discard(provider.stray_versions([ref, rotated])[f"{ref.key_id}/cryptoKeyVersions/2"])
        assert _gcp_versions(world, ref.key_id)["2"] == "DESTROY_SCHEDULED"
        assert provider.stray_versions([ref, rotated]) == {}
    finally:
        provider.close()


def test_aws_create_retried_after_a_lost_answer_makes_a_second_key(world: World, aws_proxy: WireProxy) -> None:
    """What the sync has to clean up: boto3 retries CreateKey, and AWS makes a second key with the same tags."""
    from providers.registry import build_provider

    provider = build_provider("aws", providers_json(through(world, aws_proxy, "aws").env)["aws"])
    try:
        label = f"retried-aws-{uuid.uuid4().hex[:8]}"
        rule = aws_proxy.lose_answer(AWS_CREATE)
        ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=label)
        assert rule.fired.is_set() and rule.answered.is_set()
        items = labelled(world, "aws", label)
        assert len(items) == 2 and ref.key_id in {i.key_id for i in items}, items
    finally:
        provider.close()


# ------------------------------------------------------------------------------------------ through a sync


def _catalog_refs(data_dir: Path) -> dict[str, str]:
    """key id -> the cloud key id of its version 1."""
    import json

    con = sqlite3.connect(f"file:{data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        return {k: json.loads(ref)["key_id"] for k, ref in
                con.execute("select key_id, provider_ref from key_versions where version = 1")}
    finally:
        con.close()


def test_a_sync_whose_gcp_create_is_retried_converges_in_one_apply(world: World, gcp_proxy: WireProxy,
                                                                     tmp_path: Path) -> None:
    preload()
    proxied = through(world, gcp_proxy, "gcp")
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "retried-gcp", "keys": [
        {"name": "one", "targets": ["gcp"]}, {"name": "copy", "replicate": True, "targets": ["gcp"]}]})
    code, _ = run_sync(proxied, data_dir, "plan", manifest)  # the key ring and the channel exist: arm after
    assert code == 2
    rule = gcp_proxy.lose_answer(GCP_CREATE)
    code, report = run_sync(proxied, data_dir, "apply", manifest)
    assert rule.fired.is_set() and rule.answered.is_set()
    assert code == 0, report
    assert sorted((a["kind"], a["target"], a["status"]) for a in report["actions"]) == [
        ("create", "@primary", "done"), ("create", "gcp", "done"), ("create", "gcp", "done")], report
    refs = _catalog_refs(data_dir)
    for key_id, action in ((a["key_id"], a) for a in report["actions"] if a["target"] == "gcp"):
        assert [i.key_id for i in labelled(world, "gcp", key_id)] == [refs[key_id]], action
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [] and _ours(plan["drift"], refs) == [], plan


def _ours(drift: list[dict], refs: dict[str, str]) -> list[dict]:
    """Drift about this test's keys (the world's clouds hold other tests' keys too)."""
    return [d for d in drift if d["key_id"] in refs or d["cloud_key"] in refs.values()
            or any(k in (d["cloud_key"] or "") for k in refs)]


def test_a_duplicate_aws_key_is_reported_and_scheduled_for_deletion(world: World, aws_proxy: WireProxy,
                                                                      tmp_path: Path) -> None:
    preload()
    proxied = through(world, aws_proxy, "aws")
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "retried-aws", "keys": [
        {"name": "one", "targets": ["aws"]}]})
    rule = aws_proxy.lose_answer(AWS_CREATE)
    code, report = run_sync(proxied, data_dir, "apply", manifest)
    assert rule.fired.is_set() and rule.answered.is_set()
    assert code == 0, report
    (key_id,) = [a["key_id"] for a in report["actions"]]
    held = _catalog_refs(data_dir)[key_id]
    twins = labelled(world, "aws", key_id)
    assert len(twins) == 2 and held in {i.key_id for i in twins}
    (extra,) = [i.key_id for i in twins if i.key_id != held]

    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 2, plan
    assert [(d["kind"], d["key_id"], d["cloud_key"]) for d in _ours(plan["drift"], {key_id: held})] == [
        ("stray", key_id, extra)], plan
    assert [(a["kind"], a["key_id"], a["changes"]) for a in plan["actions"]] == [
        ("fix-drift", key_id, [f"discard:{extra}"])], plan

    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0 and [a["status"] for a in report["actions"]] == ["done"], report
    state = {i.key_id: i.enabled for i in labelled(world, "aws", key_id)}
    assert state == {held: True, extra: False}, state  # the catalog's key untouched, the extra one gone
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [] and _ours(plan["drift"], _catalog_refs(data_dir)) == [], plan


def test_a_retried_aws_create_inside_a_copy_import_leaves_an_empty_key_the_next_apply_schedules(
        world: World, aws_proxy: WireProxy, tmp_path: Path) -> None:
    """A replicated copy's CreateKey (Origin EXTERNAL) retried the same way: the first key never gets material
    (PendingImport, nothing live) but would stay forever; the plan reports it and the apply schedules its deletion.
    The copy is the key the retry answered, untouched."""
    import boto3
    preload()
    proxied = through(world, aws_proxy, "aws")
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "retried-aws-copy", "keys": [
        {"name": "copy", "replicate": True, "targets": ["aws"]}]})
    rule = aws_proxy.lose_answer(AWS_CREATE)
    code, report = run_sync(proxied, data_dir, "apply", manifest)
    assert rule.fired.is_set() and rule.answered.is_set()
    assert code == 0, report
    (copy,) = [a["key_id"] for a in report["actions"] if a["target"] == "aws"]
    held = _catalog_refs(data_dir)[copy]
    cfg = world.env["aws"]
    kms = boto3.client("kms", endpoint_url=cfg["endpoint_url"], region_name=cfg["region"],
                       aws_access_key_id=cfg["access_key_id"], aws_secret_access_key=cfg["secret_access_key"])

    def states() -> dict[str, str]:
        return {i.key_id: kms.describe_key(KeyId=i.key_id)["KeyMetadata"]["KeyState"]
                for i in labelled(world, "aws", copy)}

    state = states()
    assert len(state) == 2 and state.pop(held) == "Enabled" and list(state.values()) == ["PendingImport"], state
    (empty,) = state
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 2, plan
    assert [(d["kind"], d["key_id"], d["cloud_key"]) for d in _ours(plan["drift"], {copy: held})] == [
        ("stray", copy, empty)], plan
    assert [(a["kind"], a["key_id"], a["changes"]) for a in plan["actions"]] == [
        ("fix-drift", copy, [f"discard:{empty}"])], plan
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0 and [a["status"] for a in report["actions"]] == ["done"], report
    assert states() == {held: "Enabled", empty: "PendingDeletion"}
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [] and _ours(plan["drift"], _catalog_refs(data_dir)) == [], plan


def test_a_sync_whose_gcp_copy_import_is_retried_converges_with_one_version(world: World, gcp_proxy: WireProxy,
                                                                             tmp_path: Path) -> None:
    preload()
    proxied = through(world, gcp_proxy, "gcp")
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "retried-gcp-import", "keys": [
        {"name": "copy", "replicate": True, "targets": ["gcp"]}]})
    code, _ = run_sync(proxied, data_dir, "plan", manifest)  # the key ring and the channel exist: arm after
    rule = gcp_proxy.lose_answer(_gcp_import(world))
    code, report = run_sync(proxied, data_dir, "apply", manifest)
    assert rule.fired.is_set() and rule.answered.is_set()
    assert code == 0, report
    (copy,) = [a["key_id"] for a in report["actions"] if a["target"] == "gcp"]
    key_name = _catalog_refs(data_dir)[copy]
    assert _gcp_versions(world, key_name) == {"1": "ENABLED"}
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [] and _ours(plan["drift"], _catalog_refs(data_dir)) == [], plan


def test_a_gcp_version_a_retried_rotation_left_is_reported_and_destroyed(world: World, gcp_proxy: WireProxy,
                                                                         tmp_path: Path) -> None:
    """The rotation's CreateCryptoKeyVersion answer is lost: the SDK's retry makes version 3, which the catalog
    registers; version 2 is live and nobody's. The plan reports it, the apply destroys it and nothing else: not the
    catalog's versions 1 and 3, nor a version 4 made after the latest registered one (a rotation in flight)."""
    preload()
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "retried-gcp-rotation", "keys": [
        {"name": "one", "targets": ["gcp"]}]})
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0, report
    (key_id,) = [a["key_id"] for a in report["actions"]]
    key_name = _catalog_refs(data_dir)[key_id]
    rule = gcp_proxy.lose_answer(_gcp_version_create(key_name))
    _rotate_in_child(through(world, gcp_proxy, "gcp"), data_dir, key_id)
    assert rule.fired.is_set() and rule.answered.is_set()
    client = _gcp_client(world)
    try:
        client.create_crypto_key_version(request={"parent": key_name, "crypto_key_version": {}})
    finally:
        client.transport.close()
    assert _gcp_versions(world, key_name) == {"1": "ENABLED", "2": "ENABLED", "3": "ENABLED", "4": "ENABLED"}
    stray = f"{key_name}/cryptoKeyVersions/2"

    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 2, plan
    assert [(d["kind"], d["key_id"], d["cloud_key"]) for d in _ours(plan["drift"], {key_id: key_name})] == [
        ("stray-version", key_id, stray)], plan
    assert [(a["kind"], a["key_id"], a["changes"]) for a in plan["actions"]] == [
        ("fix-drift", key_id, [f"discard-version:{stray}"])], plan
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0 and [a["status"] for a in report["actions"]] == ["done"], report
    assert _gcp_versions(world, key_name) == {"1": "ENABLED", "2": "DESTROY_SCHEDULED", "3": "ENABLED",
                                              "4": "ENABLED"}
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [] and _ours(plan["drift"], {key_id: key_name}) == [], plan


# ------------------------------------------------------------------------------------------ what is never a stray


def _rotate_in_child(world: World, data_dir: Path, key_id: str) -> None:
    """Rotate a key of the sync's data folder on demand, as the sync's own process would (a forked child)."""
    import multiprocessing

    from .sync_support import sync_env

    def rotate() -> None:
        os.environ.update(sync_env(world))
        from broker.cli_sync import _ctx, _services

        services = _services(data_dir)
        try:
            services.keys.rotate_key_on_demand(_ctx(), key_id)
        finally:
            services.keys.store.dispose()

    proc = multiprocessing.get_context("fork").Process(target=rotate)
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0


def test_a_rotated_keys_material_and_a_key_labelled_after_its_last_version_are_never_strays(
        world: World, tmp_path: Path) -> None:
    """AWS rotation makes one AWS key per version, all labelled with the broker key's id: both are the catalog's.
    A cloud key labelled with it but made after its latest version may be a rotation in flight (made in the cloud,
    not registered yet): the plan must not take it for a stray, whoever labelled it (here: someone, by hand)."""
    import boto3

    from providers.aws import LABEL_TAG

    preload()
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": "never-stray", "keys": [
        {"name": "one", "targets": ["aws"]}]})
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0, report
    (key_id,) = [a["key_id"] for a in report["actions"]]
    _rotate_in_child(world, data_dir, key_id)
    cfg = world.env["aws"]
    kms = boto3.client("kms", endpoint_url=cfg["endpoint_url"], region_name=cfg["region"],
                       aws_access_key_id=cfg["access_key_id"], aws_secret_access_key=cfg["secret_access_key"])
    planted = kms.create_key(Tags=[{"TagKey": LABEL_TAG, "TagValue": key_id}])["KeyMetadata"]["KeyId"]
    items = labelled(world, "aws", key_id)
    assert len(items) == 3 and all(i.enabled for i in items)
    refs = _catalog_refs(data_dir)
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [], plan
    assert _ours(plan["drift"], {key_id: refs[key_id]}) == [], plan
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0 and report["actions"] == [], report
    assert {i.key_id: i.enabled for i in labelled(world, "aws", key_id)} == {i.key_id: True for i in items}
    assert planted in {i.key_id for i in items}
