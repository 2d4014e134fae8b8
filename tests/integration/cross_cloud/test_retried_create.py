"""A cloud create whose answer is lost after the cloud made the key, retried by the official SDK, unmodified.

A proxy on the wire (tests/support/wire.py) lets the first CreateKey / CreateCryptoKey reach LocalStack or the GCP
emulator, throws its answer away and cuts the connection; the SDK's own retry sends the same request again:

- Cloud KMS answers the retry ALREADY_EXISTS (the broker names its CryptoKeys): the provider must take that key as
  the one it made (it carries the broker's label), neither fail nor make a third;
- AWS KMS's CreateKey is not idempotent: the retry makes a second key with the same broker label (reproduced
  here; the provider cannot tell).
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
