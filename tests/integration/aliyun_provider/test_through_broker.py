"""Broker keys on the aliyun provider, driven through the broker's own REST API (a real gunicorn broker)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import requests
from alibabacloud_kms20160120 import models as km
from alibabacloud_tea_util.models import RuntimeOptions

from tests.support.broker import RunningBroker, start_broker
from tests.support.procs import free_port


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _start(tmp, name: str, providers: dict) -> RunningBroker:
    return start_broker(tmp / "data", tmp / "logs", name=name, workers=1,
                        env={"KMSB_PROVIDERS_JSON": json.dumps(providers)})


@pytest.fixture(scope="module")
def broker(aliyun, tmp_path_factory) -> Iterator[RunningBroker]:
    running = _start(tmp_path_factory.mktemp("broker-aliyun"), "broker-aliyun", {"aliyun": aliyun.config()})
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def api(broker) -> requests.Session:
    return broker.session()


def _key(broker, api, **body) -> str:
    r = api.post(broker.url("/keys"), json={"Provider": "aliyun", **body})
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


def test_readiness_reports_the_aliyun_provider(broker):
    r = requests.get(broker.url("/ready"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["providers"]["aliyun"] == "ok"


def test_encrypt_decrypt_with_context_lands_in_aliyun(broker, api, aliyun):
    before = aliyun.sdk().list_keys_with_options(km.ListKeysRequest(), RuntimeOptions(autoretry=False)).body.total_count
    key_id = _key(broker, api)
    after = aliyun.sdk().list_keys_with_options(km.ListKeysRequest(), RuntimeOptions(autoretry=False)).body.total_count
    assert after == before + 1
    enc = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"cloud data"),
                                                                "EncryptionContext": {"tenant": "a"}})
    assert enc.status_code == 200, enc.text
    blob = enc.json()["CiphertextBlob"]
    dec = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"tenant": "a"}})
    assert dec.status_code == 200 and base64.b64decode(dec.json()["Plaintext"]) == b"cloud data"
    bad = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"tenant": "b"}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidCiphertextException"


def test_rotation_keeps_old_ciphertexts(broker, api):
    key_id = _key(broker, api)
    old = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"v1")}).json()
    assert api.post(broker.url(f"/keys/{key_id}/rotate")).json()["KeyVersion"] == 2
    new = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"v2")}).json()
    for blob, expected in ((old, b"v1"), (new, b"v2")):
        out = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob["CiphertextBlob"]})
        assert out.status_code == 200 and base64.b64decode(out.json()["Plaintext"]) == expected


@pytest.mark.parametrize(("spec", "algorithm"), [("RSA_2048", "RSASSA_PSS_SHA_256"), ("ECC_NIST_P256", "ECDSA_SHA_256")])
def test_sign_verify(broker, api, spec, algorithm):
    key_id = _key(broker, api, KeySpec=spec, KeyUsage="SIGN_VERIFY")
    msg = b64(b"document")
    sig = api.post(broker.url(f"/keys/{key_id}/sign"), json={"Message": msg, "SigningAlgorithm": algorithm})
    assert sig.status_code == 200, sig.text
    ok = api.post(broker.url(f"/keys/{key_id}/verify"),
                  json={"Message": msg, "Signature": sig.json()["Signature"], "SigningAlgorithm": algorithm})
    assert ok.status_code == 200 and ok.json()["SignatureValid"] is True


def test_key_states_are_mirrored(broker, api, aliyun):
    key_id = _key(broker, api)
    enc = {"Plaintext": b64(b"x")}
    assert api.post(broker.url(f"/keys/{key_id}/disable")).status_code < 300
    assert _aliyun_state(aliyun, key_id) == "Disabled"
    r = api.post(broker.url(f"/keys/{key_id}/encrypt"), json=enc)
    assert r.status_code == 409 and r.json()["error"]["code"] == "DisabledException"
    assert api.post(broker.url(f"/keys/{key_id}/enable")).status_code < 300
    assert api.post(broker.url(f"/keys/{key_id}/encrypt"), json=enc).status_code == 200
    r = api.post(broker.url(f"/keys/{key_id}/schedule-deletion"), json={"PendingWindowInDays": 7})
    assert r.status_code < 300, r.text
    assert _aliyun_state(aliyun, key_id) == "PendingDeletion"
    assert api.post(broker.url(f"/keys/{key_id}/cancel-deletion")).status_code < 300
    assert _aliyun_state(aliyun, key_id) == "Disabled"
    assert api.get(broker.url(f"/keys/{key_id}")).json()["KeyMetadata"]["KeyState"] == "Disabled"


def _aliyun_state(aliyun, broker_key_id: str) -> str:
    """The state of the Aliyun key the provider made for a broker key (it carries the broker id as its label)."""
    sdk, rt = aliyun.sdk(), RuntimeOptions(autoretry=False)
    total = sdk.list_keys_with_options(km.ListKeysRequest(page_size=1), rt).body.total_count
    states = []
    for page in range(1, total // 100 + 2):
        for row in sdk.list_keys_with_options(km.ListKeysRequest(page_number=page, page_size=100), rt).body.keys.key:
            meta = sdk.describe_key_with_options(km.DescribeKeyRequest(key_id=row.key_id), rt).body.key_metadata
            if meta.description == f"kms-broker {broker_key_id}":
                states.append(meta.key_state)
    assert len(states) == 1, states
    return states[0]


def test_aliyun_down_is_a_dependency_timeout(aliyun, tmp_path):
    dead = {"aliyun": aliyun.config(endpoint=f"http://127.0.0.1:{free_port()}", timeout=2)}
    running = _start(tmp_path, "broker-aliyun-down", dead)
    try:
        r = running.session().post(running.url("/keys"), json={"Provider": "aliyun"})
        assert r.status_code >= 500 and r.json()["error"]["code"] == "DependencyTimeoutException", r.text
        assert aliyun.secret not in r.text
    finally:
        running.server.stop()
