"""Broker keys on the aws provider through the broker's own REST API (a real gunicorn broker), on LocalStack
and on moto_server. Emulator gaps are strict xfails on the backend concerned (see conftest.emulator_gap)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.support.broker import RunningBroker, start_broker

from .conftest import BACKENDS, emulator_gap, moto_gap, start_aws

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _start(tmp: Path, name: str, settings: dict) -> RunningBroker:
    providers = {"aws": {"kind": "aws", **settings, "max_attempts": 2, "connect_timeout": 1}}
    return start_broker(tmp / "data", tmp / "logs", name=name, workers=1,
                        env={"KMSB_PROVIDERS_JSON": json.dumps(providers)})


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request: pytest.FixtureRequest, aws_servers: dict,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningBroker, dict, str]]:
    backend = request.param
    settings = aws_servers[backend][1]
    running = _start(tmp_path_factory.mktemp(f"broker-aws-{backend}"), f"broker-aws-{backend}", settings)
    yield running, settings, backend
    running.server.stop()


@pytest.fixture(scope="module")
def broker(setup) -> RunningBroker:
    return setup[0]


@pytest.fixture(scope="module")
def api(broker: RunningBroker) -> requests.Session:
    return broker.session()


@pytest.fixture(scope="module")
def kms(setup):
    s = setup[1]
    return boto3.client("kms", endpoint_url=s["endpoint_url"], region_name=s["region"],
                        aws_access_key_id=s["access_key_id"], aws_secret_access_key=s["secret_access_key"])


@pytest.fixture
def backend(setup) -> str:
    return setup[2]


def _key(broker: RunningBroker, api: requests.Session, **body: object) -> str:
    r = api.post(broker.url("/keys"), json={"Provider": "aws", **body})
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


def _aws_keys(kms, broker_key_id: str) -> list[dict]:
    """The AWS keys the provider made for a broker key (tagged with the broker key id), oldest first."""
    found = []
    for entry in kms.list_keys()["Keys"]:
        tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=entry["KeyId"]).get("Tags", [])}
        if tags.get("kmsb:key-id") == broker_key_id:
            found.append(kms.describe_key(KeyId=entry["KeyId"])["KeyMetadata"])
    return sorted(found, key=lambda m: m["CreationDate"])


def _encrypt(broker, api, key_id: str, plaintext: bytes, context: dict | None = None) -> str:
    r = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(plaintext),
                                                              "EncryptionContext": context})
    assert r.status_code == 200, r.text
    return r.json()["CiphertextBlob"]


def _decrypt(broker, api, blob: str, context: dict | None = None) -> requests.Response:
    return api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": context})


def test_readiness_reports_the_aws_provider(broker: RunningBroker) -> None:
    r = requests.get(broker.url("/ready"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["providers"]["aws"] == "ok"


def test_encrypt_decrypt_with_context_lands_in_aws(broker, api, kms) -> None:
    key_id = _key(broker, api)
    [aws_key] = _aws_keys(kms, key_id)
    assert (aws_key["KeySpec"], aws_key["KeyState"]) == ("SYMMETRIC_DEFAULT", "Enabled")
    blob = _encrypt(broker, api, key_id, b"cloud data", {"tenant": "a"})
    dec = _decrypt(broker, api, blob, {"tenant": "a"})
    assert dec.status_code == 200 and base64.b64decode(dec.json()["Plaintext"]) == b"cloud data"
    bad = _decrypt(broker, api, blob, {"tenant": "b"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidCiphertextException"


def test_rotation_adds_an_aws_key_and_keeps_old_ciphertexts(broker, api, kms) -> None:
    key_id = _key(broker, api)
    old = _encrypt(broker, api, key_id, b"v1")
    assert api.post(broker.url(f"/keys/{key_id}/rotate")).json()["KeyVersion"] == 2
    assert len(_aws_keys(kms, key_id)) == 2
    new = _encrypt(broker, api, key_id, b"v2")
    for blob, expected in ((old, b"v1"), (new, b"v2")):
        out = _decrypt(broker, api, blob)
        assert out.status_code == 200 and base64.b64decode(out.json()["Plaintext"]) == expected


def test_data_keys_and_reencrypt_between_aws_keys(broker, api) -> None:
    a, b = _key(broker, api), _key(broker, api)
    gdk = api.post(broker.url(f"/keys/{a}/generate-data-key"), json={"KeySpec": "AES_256",
                                                                     "EncryptionContext": {"f": "1"}})
    assert gdk.status_code == 200, gdk.text
    plain = base64.b64decode(gdk.json()["Plaintext"])
    assert len(plain) == 32
    out = _decrypt(broker, api, gdk.json()["CiphertextBlob"], {"f": "1"})
    assert base64.b64decode(out.json()["Plaintext"]) == plain
    wp = api.post(broker.url(f"/keys/{a}/generate-data-key-without-plaintext"), json={"NumberOfBytes": 16})
    assert wp.status_code == 200 and "Plaintext" not in wp.json()
    assert len(base64.b64decode(_decrypt(broker, api, wp.json()["CiphertextBlob"]).json()["Plaintext"])) == 16
    re = api.post(broker.url("/re-encrypt"), json={"CiphertextBlob": gdk.json()["CiphertextBlob"],
                                                   "SourceEncryptionContext": {"f": "1"}, "DestinationKeyId": b,
                                                   "DestinationEncryptionContext": {"f": "2"}})
    assert re.status_code == 200, re.text
    moved = _decrypt(broker, api, re.json()["CiphertextBlob"], {"f": "2"})
    assert moved.status_code == 200 and base64.b64decode(moved.json()["Plaintext"]) == plain


def test_random_from_the_aws_provider(broker, api) -> None:
    r = api.post(broker.url("/random"), json={"NumberOfBytes": 24, "Provider": "aws"})
    assert r.status_code == 200, r.text
    assert len(base64.b64decode(r.json()["Plaintext"])) == 24


@pytest.mark.parametrize(("spec", "algorithm"), [("RSA_2048", "RSASSA_PSS_SHA_256"), ("ECC_NIST_P256", "ECDSA_SHA_256"),
                                                 ("ECC_NIST_P384", "ECDSA_SHA_384")])
def test_sign_verify(broker, api, backend, request, spec: str, algorithm: str) -> None:
    moto_gap(request, backend, "Sign with MessageType=DIGEST")
    key_id = _key(broker, api, KeySpec=spec, KeyUsage="SIGN_VERIFY")
    body = {"Message": b64(b"signed"), "SigningAlgorithm": algorithm}
    sig = api.post(broker.url(f"/keys/{key_id}/sign"), json=body)
    assert sig.status_code == 200, sig.text
    ok = api.post(broker.url(f"/keys/{key_id}/verify"), json={**body, "Signature": sig.json()["Signature"]})
    assert ok.status_code == 200 and ok.json()["SignatureValid"] is True
    bad = api.post(broker.url(f"/keys/{key_id}/verify"),
                   json={**body, "Message": b64(b"other"), "Signature": sig.json()["Signature"]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "KMSInvalidSignatureException"


def test_hmac(broker, api) -> None:
    key_id = _key(broker, api, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    body = {"Message": b64(b"mac me"), "MacAlgorithm": "HMAC_SHA_256"}
    mac = api.post(broker.url(f"/keys/{key_id}/generate-mac"), json=body)
    assert mac.status_code == 200, mac.text
    ok = api.post(broker.url(f"/keys/{key_id}/verify-mac"), json={**body, "Mac": mac.json()["Mac"]})
    assert ok.status_code == 200 and ok.json()["MacValid"] is True


def test_rsa_public_key_encrypt_then_decrypt_through_the_broker(broker, api, backend, request) -> None:
    moto_gap(request, backend, "RSA OAEP decryption of ciphertext made with the real public key")
    key_id = _key(broker, api, KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    der = base64.b64decode(api.get(broker.url(f"/keys/{key_id}/public-key")).json()["PublicKey"])
    pub = serialization.load_der_public_key(der)
    ct = pub.encrypt(b"rsa data", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    out = api.post(broker.url("/decrypt"), json={"CiphertextBlob": b64(ct), "KeyId": key_id,
                                                 "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})
    assert out.status_code == 200, out.text
    assert base64.b64decode(out.json()["Plaintext"]) == b"rsa data"


def test_disable_enable_and_deletion_are_mirrored(broker, api, kms) -> None:
    key_id = _key(broker, api)
    [aws_key] = _aws_keys(kms, key_id)
    state = lambda: kms.describe_key(KeyId=aws_key["KeyId"])["KeyMetadata"]["KeyState"]  # noqa: E731
    assert api.post(broker.url(f"/keys/{key_id}/disable")).status_code < 300
    assert state() == "Disabled"
    assert api.post(broker.url(f"/keys/{key_id}/enable")).status_code < 300
    assert state() == "Enabled"
    r = api.post(broker.url(f"/keys/{key_id}/schedule-deletion"), json={"PendingWindowInDays": 7})
    assert r.status_code < 300, r.text
    assert state() == "PendingDeletion"
    assert api.post(broker.url(f"/keys/{key_id}/cancel-deletion")).status_code < 300
    assert state() == "Disabled"  # AWS semantics, and the broker's too
    assert api.get(broker.url(f"/keys/{key_id}")).json()["KeyMetadata"]["KeyState"] == "Disabled"


def test_caller_wrapped_import(broker, api, kms, backend, request) -> None:
    emulator_gap(request, backend, moto="GetParametersForImport (HTTP 500)")
    key_id = _key(broker, api, Origin="EXTERNAL")
    params = api.post(broker.url(f"/keys/{key_id}/import-parameters"), json={"WrappingAlgorithm": "RSAES_OAEP_SHA_1"})
    assert params.status_code == 200, params.text
    pub = serialization.load_der_public_key(base64.b64decode(params.json()["PublicKey"]))
    material = os.urandom(32)
    wrapped = pub.encrypt(material, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    r = api.post(broker.url(f"/keys/{key_id}/import"), json={"ImportToken": params.json()["ImportToken"],
                                                            "EncryptedKeyMaterial": b64(wrapped)})
    assert r.status_code == 200, r.text
    [aws_key] = _aws_keys(kms, key_id)
    assert (aws_key["Origin"], aws_key["KeyState"]) == ("EXTERNAL", "Enabled")
    blob = _encrypt(broker, api, key_id, b"imported", {"k": "v"})
    assert base64.b64decode(_decrypt(broker, api, blob, {"k": "v"}).json()["Plaintext"]) == b"imported"


@pytest.mark.parametrize("which", BACKENDS)
def test_emulator_stopped_mid_test_is_a_503_dependency_timeout(which: str, tmp_path: Path) -> None:
    server, settings = start_aws(which, tmp_path / "aws")
    running = _start(tmp_path / "broker", f"broker-down-{which}", settings)
    try:
        api = running.session()
        key_id = _key(running, api)
        blob = _encrypt(running, api, key_id, b"before")
        server.stop()
        out = _decrypt(running, api, blob)
        assert out.status_code == 503, out.text
        assert out.json()["error"]["code"] == "DependencyTimeoutException"
        assert out.json()["error"]["request_id"]
        ready = requests.get(running.url("/ready"), timeout=30)
        assert ready.status_code == 503 and ready.json()["providers"]["aws"] != "ok"
    finally:
        server.stop()
        running.server.stop()
