"""Lost answers on the clouds whose SDK does not retry them: the request reaches the cloud, which does the work,
and its answer is lost on the wire (tests/support/wire.py); what the official SDK, unmodified, does next.

Aliyun (alibabacloud_kms20160120 on darabonba): a call is retried only under `Config.retry_options`, which the
provider does not set, so a CreateKey or ImportKeyMaterial whose answer is lost is sent once and fails
(ProviderUnavailable). No second key: the key it made is labelled with the sync's intent, which the next apply
settles (the key destroyed, the intent aborted, the key created again).

Azure (azure-keyvault-keys on azure-core, the provider's default `retries = 2`; the proxy ends the emulator's TLS
with its own certificate): Key Vault makes a version for every create, rotate or import request that lands.
azure-core retried the import (a PUT) after a lost answer, which made a second version of the key, live and
registered by nobody; create and rotate (POSTs) it did not retry, so their call failed after the version was made.
The provider now sends each of them once and, after a lost answer, takes the version tagged with its call's nonce.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from broker.model import KeySpec, KeyUsage
from providers.base import ProviderUnavailable
from tests.support.wire import WireProxy

from .conftest import World, providers_json
from .sync_support import labelled, new_data_dir, preload, run_sync, through, wire_proxy, write_manifest

pytestmark = pytest.mark.integration


def _aliyun(action: str) -> bytes:
    """The header the SDK names its action with (ACS3 signature; the emulator reads it too)."""
    return f"x-acs-action: {action}\r\n".encode()


def _oaep_wrap(material: bytes) -> Callable[[bytes, str], bytes]:
    """Stands in for the broker's HSM: RSAES_OAEP_SHA_1 of the material, for Aliyun's import key."""
    def wrap(public_der: bytes, algorithm: str) -> bytes:
        assert algorithm == "RSAES_OAEP_SHA_1"
        pub = serialization.load_der_public_key(public_der)
        assert isinstance(pub, rsa.RSAPublicKey)
        return pub.encrypt(material, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    return wrap


@pytest.fixture
def azure_proxy(world: World) -> Iterator[WireProxy]:
    with wire_proxy(world, "azure") as proxy:
        yield proxy


@pytest.fixture
def aliyun_proxy(world: World) -> Iterator[WireProxy]:
    with wire_proxy(world, "aliyun") as proxy:
        yield proxy


@pytest.mark.parametrize("action", ["CreateKey", "ImportKeyMaterial"])
def test_aliyun_sdk_sends_a_request_whose_answer_was_lost_once(world: World, aliyun_proxy: WireProxy,
                                                                action: str) -> None:
    from providers.registry import build_provider

    provider = build_provider("aliyun", providers_json(through(world, aliyun_proxy, "aliyun").env)["aliyun"])
    label = f"lost-{action.lower()}-{uuid.uuid4().hex[:8]}"
    aliyun_proxy.watch(_aliyun(action))
    rule = aliyun_proxy.lose_answer(_aliyun(action))
    with pytest.raises(ProviderUnavailable):
        provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, _oaep_wrap(os.urandom(32)),
                             label=label)
    assert rule.fired.is_set() and rule.answered.is_set()
    assert aliyun_proxy.seen(_aliyun(action)) == 1  # sent once: no retry
    (item,) = labelled(world, "aliyun", label)  # one key
    # the create's key waits for material; after a lost import answer the material is in (the cloud did the work)
    assert (item.awaiting_material, item.enabled) == ((True, False) if action == "CreateKey" else (False, True))


def _aborted(data_dir: Path) -> list[str]:
    con = sqlite3.connect(f"file:{data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("select key_id from sync_journal where state = 'aborted'")]
    finally:
        con.close()


@pytest.mark.parametrize(("entry", "action"), [({"name": "one", "targets": ["aliyun"]}, "CreateKey"),
                                               ({"name": "copy", "replicate": True, "targets": ["aliyun"]},
                                                "ImportKeyMaterial")], ids=["create", "copy-import"])
def test_a_sync_whose_aliyun_answer_was_lost_converges_on_the_next_apply(world: World, aliyun_proxy: WireProxy,
                                                                          tmp_path: Path, entry: dict,
                                                                          action: str) -> None:
    preload()
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": f"lost-aliyun-{action.lower()}", "keys": [entry]})
    rule = aliyun_proxy.lose_answer(_aliyun(action))
    code, report = run_sync(through(world, aliyun_proxy, "aliyun"), data_dir, "apply", manifest)
    assert rule.fired.is_set() and rule.answered.is_set()
    assert code == 1, report
    assert [a["status"] for a in report["actions"] if a["target"] == "aliyun"] == ["failed"], report
    code, report = run_sync(world, data_dir, "apply", manifest)
    assert code == 0 and report["resumed"]["cleaned"] == 1, report
    (aborted,) = _aborted(data_dir)
    left = labelled(world, "aliyun", aborted)
    assert len(left) == 1 and not left[0].enabled, left  # the lost answer's key: disabled, scheduled
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [], plan
    assert [d for d in plan["drift"] if d["key_id"] == aborted or d["cloud_key"] == left[0].key_id] == [], plan


# ------------------------------------------------------------------------------------------------ Azure


def _azure_versions(world: World, name: str) -> list[bool]:
    """The enabled flag of every version of key `name`, read directly (not through the proxy)."""
    from providers.registry import build_provider

    provider = build_provider("azure-mhsm", providers_json(world.env)["azure-mhsm"])
    try:
        return [bool(p.enabled) for p in provider._keys.list_properties_of_key_versions(name)]
    finally:
        provider.close()


@pytest.mark.parametrize("operation", ["create", "rotate", "import"])
def test_azure_create_rotate_or_import_whose_answer_was_lost_makes_one_version(world: World, azure_proxy: WireProxy,
                                                                               operation: str) -> None:
    from providers.registry import build_provider
    from tests.integration.gcp_provider.test_provider import software_wrap

    cfg = {**providers_json(through(world, azure_proxy, "azure").env)["azure-mhsm"], "retries": 2}
    provider = build_provider("azure-mhsm", cfg)
    try:
        provider.check_health()  # Key Vault's auth challenge is done: the next request carries the work
        label = f"lost-{operation}-{uuid.uuid4().hex[:8]}"
        first = None
        if operation == "rotate":
            first = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=label)
        marker = b"PUT /keys/kmsb-" if operation == "import" else b"POST /keys/kmsb-"
        azure_proxy.watch(marker)
        rule = azure_proxy.lose_answer(marker)
        if operation == "create":
            ref = provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=label)
        elif operation == "rotate":
            assert first is not None
            ref = provider.create_version(first, KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label=label)
        else:
            ref = provider.byok_import(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT,
                                       software_wrap(os.urandom(32)), label=label)
        assert rule.fired.is_set() and rule.answered.is_set()
        assert azure_proxy.seen(marker) == 1  # sent once: the version it made was found, not made again
        assert _azure_versions(world, ref.key_id) == [True] * (2 if operation == "rotate" else 1)
        assert provider.decrypt(ref, provider.encrypt(ref, b"data", b"aad"), b"aad") == b"data"
    finally:
        provider.close()


@pytest.mark.parametrize(("entry", "marker"), [({"name": "one", "targets": ["azure-mhsm"]}, b"POST /keys/kmsb-"),
                                               ({"name": "copy", "replicate": True, "targets": ["azure-mhsm"]},
                                                b"PUT /keys/kmsb-")], ids=["create", "copy-import"])
def test_a_sync_whose_azure_answer_was_lost_converges_in_one_apply(world: World, azure_proxy: WireProxy,
                                                                    tmp_path: Path, entry: dict, marker: bytes) -> None:
    """The world's Azure provider has `retries = 0`: the version a lost answer's request made is still found."""
    import json

    preload()
    proxied = through(world, azure_proxy, "azure")
    data_dir = new_data_dir(tmp_path / "data")
    manifest = write_manifest(tmp_path / "m.yaml", {"manifest": f"lost-azure-{entry['name']}", "keys": [entry]})
    code, _ = run_sync(proxied, data_dir, "plan", manifest)
    assert code == 2
    rule = azure_proxy.lose_answer(marker)
    code, report = run_sync(proxied, data_dir, "apply", manifest)
    assert rule.fired.is_set() and rule.answered.is_set()
    assert code == 0 and report["resumed"]["cleaned"] == 0, report
    (key_id,) = [a["key_id"] for a in report["actions"] if a["target"] == "azure-mhsm"]
    con = sqlite3.connect(f"file:{data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        (ref,) = [json.loads(r[0]) for r in con.execute("select provider_ref from key_versions where key_id = ?",
                                                        (key_id,))]
    finally:
        con.close()
    assert _azure_versions(world, ref["key_id"]) == [True]
    code, plan = run_sync(world, data_dir, "plan", manifest)
    assert code == 0 and plan["actions"] == [], plan
