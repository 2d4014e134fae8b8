"""Broker keys on the gcp provider through the broker's own REST API (a real gunicorn broker), both transports."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from google.cloud import kms_v1

from providers.gcp import build_client
from tests.support.broker import RunningBroker, start_broker
from tests.support.procs import free_port

from .conftest import TOKEN, config

State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _start(tmp: Path, name: str, providers: dict) -> RunningBroker:
    return start_broker(tmp / "data", tmp / "logs", name=name, workers=1,
                        env={"KMSB_PROVIDERS_JSON": json.dumps(providers)})


@pytest.fixture(scope="module", params=["grpc", "rest"])
def setup(request: pytest.FixtureRequest, gcp_emulator: dict,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningBroker, dict, str]]:
    transport = request.param
    cfg = config(gcp_emulator, transport)
    running = _start(tmp_path_factory.mktemp(f"broker-gcp-{transport}"), f"broker-gcp-{transport}", {"gcp": cfg})
    yield running, cfg, transport
    running.server.stop()


@pytest.fixture(scope="module")
def broker(setup: tuple[RunningBroker, dict, str]) -> RunningBroker:
    return setup[0]


@pytest.fixture(scope="module")
def api(broker: RunningBroker) -> requests.Session:
    return broker.session()


@pytest.fixture(scope="module")
def kms(setup: tuple[RunningBroker, dict, str], gcp_emulator: dict) -> kms_v1.KeyManagementServiceClient:
    return build_client(setup[2], grpc_target=gcp_emulator["grpc_target"],
                        rest_endpoint=gcp_emulator["rest_endpoint"], token=TOKEN)


def _ring(setup: tuple[RunningBroker, dict, str]) -> str:
    cfg = setup[1]
    return f"projects/{cfg['project']}/locations/{cfg['location']}/keyRings/{cfg['key_ring']}"


def _key(broker: RunningBroker, api: requests.Session, **body: object) -> str:
    r = api.post(broker.url("/keys"), json={"Provider": "gcp", **body})
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


def _crypto_key(kms: kms_v1.KeyManagementServiceClient, setup: tuple, broker_key_id: str) -> kms_v1.CryptoKey:
    """The CryptoKey the provider made for a broker key (labelled with the broker key id)."""
    found = [k for k in kms.list_crypto_keys(parent=_ring(setup))
             if k.labels.get("kms-broker-label") == broker_key_id.lower()]
    assert len(found) == 1, [k.name for k in found]
    return found[0]


def _versions(kms: kms_v1.KeyManagementServiceClient, key: kms_v1.CryptoKey) -> list[State]:
    return [v.state for v in kms.list_crypto_key_versions(parent=key.name)]


def test_readiness_reports_the_gcp_provider(broker: RunningBroker) -> None:
    r = requests.get(broker.url("/ready"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["providers"]["gcp"] == "ok"


def test_encrypt_decrypt_with_context_lands_in_gcp(broker: RunningBroker, api: requests.Session,
                                                    kms: kms_v1.KeyManagementServiceClient, setup: tuple) -> None:
    key_id = _key(broker, api)
    crypto_key = _crypto_key(kms, setup, key_id)
    assert crypto_key.purpose == kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT
    enc = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"cloud data"),
                                                                "EncryptionContext": {"tenant": "a"}})
    assert enc.status_code == 200, enc.text
    blob = enc.json()["CiphertextBlob"]
    dec = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"tenant": "a"}})
    assert dec.status_code == 200 and base64.b64decode(dec.json()["Plaintext"]) == b"cloud data"
    bad = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"tenant": "b"}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidCiphertextException"


def test_rotation_moves_the_gcp_primary_and_keeps_old_ciphertexts(
        broker: RunningBroker, api: requests.Session, kms: kms_v1.KeyManagementServiceClient, setup: tuple) -> None:
    key_id = _key(broker, api)
    old = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"v1")}).json()
    assert api.post(broker.url(f"/keys/{key_id}/rotate")).json()["KeyVersion"] == 2
    assert _crypto_key(kms, setup, key_id).primary.name.endswith("/cryptoKeyVersions/2")
    new = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"v2")}).json()
    for blob, expected in ((old, b"v1"), (new, b"v2")):
        out = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob["CiphertextBlob"]})
        assert out.status_code == 200 and base64.b64decode(out.json()["Plaintext"]) == expected


@pytest.mark.parametrize(("spec", "algorithm"), [("RSA_2048", "RSASSA_PSS_SHA_256"), ("ECC_NIST_P256", "ECDSA_SHA_256"),
                                                 ("ECC_NIST_P384", "ECDSA_SHA_384")])
def test_sign_verify(broker: RunningBroker, api: requests.Session, spec: str, algorithm: str) -> None:
    key_id = _key(broker, api, KeySpec=spec, KeyUsage="SIGN_VERIFY")
    msg = b64(b"document")
    sig = api.post(broker.url(f"/keys/{key_id}/sign"), json={"Message": msg, "SigningAlgorithm": algorithm})
    assert sig.status_code == 200, sig.text
    ok = api.post(broker.url(f"/keys/{key_id}/verify"),
                  json={"Message": msg, "Signature": sig.json()["Signature"], "SigningAlgorithm": algorithm})
    assert ok.status_code == 200 and ok.json()["SignatureValid"] is True
    bad = api.post(broker.url(f"/keys/{key_id}/verify"), json={
        "Message": b64(b"other"), "Signature": sig.json()["Signature"], "SigningAlgorithm": algorithm})
    assert bad.status_code >= 400 or bad.json()["SignatureValid"] is False


def test_ecdsa_signature_verifies_outside_the_broker(broker: RunningBroker, api: requests.Session) -> None:
    key_id = _key(broker, api, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    sig = api.post(broker.url(f"/keys/{key_id}/sign"), json={"Message": b64(b"m"), "SigningAlgorithm": "ECDSA_SHA_256"})
    pub = api.get(broker.url(f"/keys/{key_id}/public-key"))
    assert pub.status_code == 200, pub.text
    public = serialization.load_der_public_key(base64.b64decode(pub.json()["PublicKey"]))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(sig.json()["Signature"]), b"m", ec.ECDSA(hashes.SHA256()))


def test_mac(broker: RunningBroker, api: requests.Session) -> None:
    key_id = _key(broker, api, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    body = {"Message": b64(b"payload"), "MacAlgorithm": "HMAC_SHA_256"}
    mac = api.post(broker.url(f"/keys/{key_id}/generate-mac"), json=body)
    assert mac.status_code == 200, mac.text
    ok = api.post(broker.url(f"/keys/{key_id}/verify-mac"), json={**body, "Mac": mac.json()["Mac"]})
    assert ok.status_code == 200 and ok.json()["MacValid"] is True


def test_key_states_are_mirrored(broker: RunningBroker, api: requests.Session, kms: kms_v1.KeyManagementServiceClient,
                                 setup: tuple) -> None:
    key_id = _key(broker, api)
    crypto_key = _crypto_key(kms, setup, key_id)
    enc = {"Plaintext": b64(b"x")}
    assert api.post(broker.url(f"/keys/{key_id}/disable")).status_code < 300
    assert _versions(kms, crypto_key) == [State.DISABLED]
    r = api.post(broker.url(f"/keys/{key_id}/encrypt"), json=enc)
    assert r.status_code == 409 and r.json()["error"]["code"] == "DisabledException"
    assert api.post(broker.url(f"/keys/{key_id}/enable")).status_code < 300
    assert _versions(kms, crypto_key) == [State.ENABLED]
    assert api.post(broker.url(f"/keys/{key_id}/encrypt"), json=enc).status_code == 200
    r = api.post(broker.url(f"/keys/{key_id}/schedule-deletion"), json={"PendingWindowInDays": 7})
    assert r.status_code < 300, r.text
    assert _versions(kms, crypto_key) == [State.DESTROY_SCHEDULED]
    assert api.post(broker.url(f"/keys/{key_id}/cancel-deletion")).status_code < 300
    assert _versions(kms, crypto_key) == [State.DISABLED]
    assert api.get(broker.url(f"/keys/{key_id}")).json()["KeyMetadata"]["KeyState"] == "Disabled"


def test_import_external_material(broker: RunningBroker, api: requests.Session, kms: kms_v1.KeyManagementServiceClient,
                                  setup: tuple) -> None:
    key_id = _key(broker, api, Origin="EXTERNAL")
    params = api.post(broker.url(f"/keys/{key_id}/import-parameters"),
                      json={"WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_1", "WrappingKeySpec": "RSA_2048"})
    assert params.status_code == 200, params.text
    public = serialization.load_der_public_key(base64.b64decode(params.json()["PublicKey"]))
    ephemeral = os.urandom(32)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    wrapped = public.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, os.urandom(32))  # type: ignore[union-attr]
    r = api.post(broker.url(f"/keys/{key_id}/import"), json={"ImportToken": params.json()["ImportToken"],
                                                               "EncryptedKeyMaterial": b64(wrapped)})
    assert r.status_code < 300, r.text
    enc = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"imported")})
    assert enc.status_code == 200, enc.text
    dec = api.post(broker.url("/decrypt"), json={"CiphertextBlob": enc.json()["CiphertextBlob"]})
    assert base64.b64decode(dec.json()["Plaintext"]) == b"imported"
    assert _crypto_key(kms, setup, key_id).import_only


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_gcp_down_is_a_dependency_timeout(gcp_emulator: dict, tmp_path: Path, transport: str) -> None:
    port = free_port()
    dead = {"gcp": config(gcp_emulator, transport, grpc_target=f"127.0.0.1:{port}",
                          rest_endpoint=f"http://127.0.0.1:{port}", timeout=2)}
    running = _start(tmp_path, f"broker-gcp-down-{transport}", dead)
    try:
        r = running.session().post(running.url("/keys"), json={"Provider": "gcp"})
        assert r.status_code >= 500 and r.json()["error"]["code"] == "DependencyTimeoutException", r.text
        assert TOKEN not in r.text
    finally:
        running.server.stop()
