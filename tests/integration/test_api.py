"""The native API over a real gunicorn broker backed by SoftHSM: semantics, bad input, auth, OpenAPI."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from broker.audit import verify_file
from tests.support.broker import RunningBroker, start_broker


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def api(broker: RunningBroker) -> requests.Session:
    return broker.session()


@pytest.fixture(scope="module")
def sym_key(broker: RunningBroker, api: requests.Session) -> str:
    r = api.post(broker.url("/keys"), json={"Description": "api tests"})
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


def test_encrypt_decrypt_round_trip_with_context(broker, api, sym_key):
    r = api.post(broker.url(f"/keys/{sym_key}/encrypt"),
                 json={"Plaintext": b64(b"top secret"), "EncryptionContext": {"tenant": "a"}})
    assert r.status_code == 200, r.text
    blob = r.json()["CiphertextBlob"]
    r = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"tenant": "a"}})
    assert r.status_code == 200
    assert base64.b64decode(r.json()["Plaintext"]) == b"top secret"
    assert r.json()["KeyId"] == sym_key


def test_alias_path_with_slashes_resolves(broker, api, sym_key):
    assert api.post(broker.url("/aliases"), json={"AliasName": "alias/team/app", "TargetKeyId": sym_key}).status_code == 201
    r = api.post(broker.url("/keys/alias/team/app/encrypt"), json={"Plaintext": b64(b"x")})
    assert r.status_code == 200, r.text
    assert r.json()["KeyId"] == sym_key
    assert api.get(broker.url("/keys/alias/team/app")).json()["KeyMetadata"]["KeyId"] == sym_key


def test_sign_verify_and_public_key(broker, api):
    key = api.post(broker.url("/keys"), json={"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY"}).json()
    key_id = key["KeyMetadata"]["KeyId"]
    msg = b64(b"document")
    sig = api.post(broker.url(f"/keys/{key_id}/sign"),
                   json={"Message": msg, "SigningAlgorithm": "RSASSA_PSS_SHA_256"}).json()["Signature"]
    ok = api.post(broker.url(f"/keys/{key_id}/verify"),
                  json={"Message": msg, "Signature": sig, "SigningAlgorithm": "RSASSA_PSS_SHA_256"})
    assert ok.status_code == 200 and ok.json()["SignatureValid"] is True
    bad = api.post(broker.url(f"/keys/{key_id}/verify"),
                   json={"Message": b64(b"other"), "Signature": sig, "SigningAlgorithm": "RSASSA_PSS_SHA_256"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "KMSInvalidSignatureException"
    pub = api.get(broker.url(f"/keys/{key_id}/public-key")).json()
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    assert load_der_public_key(base64.b64decode(pub["PublicKey"])).key_size == 2048


def test_rotation_keeps_old_ciphertexts(broker, api):
    key_id = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    old = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"v1 data")}).json()
    rotated = api.post(broker.url(f"/keys/{key_id}/rotate")).json()
    assert rotated["KeyVersion"] == 2
    new = api.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"v2 data")}).json()
    assert (old["KeyVersion"], new["KeyVersion"]) == (1, 2)
    for blob, expected in ((old, b"v1 data"), (new, b"v2 data")):
        out = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob["CiphertextBlob"]}).json()
        assert base64.b64decode(out["Plaintext"]) == expected
    versions = api.get(broker.url(f"/keys/{key_id}/versions")).json()
    assert [v["KeyVersion"] for v in versions["Versions"]] == [1, 2]


def test_list_keys_paginates(broker, api):
    for _ in range(3):
        api.post(broker.url("/keys"), json={})
    seen, marker = [], None
    while True:
        params = {"limit": 2, **({"marker": marker} if marker else {})}
        page = api.get(broker.url("/keys"), params=params).json()
        assert len(page["Keys"]) <= 2
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert len(seen) == len(set(seen)) >= 3


# --------------------------------------------------------------------------------------------- bad input


def _post_raw(broker, api, path, data, content_type="application/json"):
    return api.post(broker.url(path), data=data, headers={"Content-Type": content_type})


@pytest.mark.parametrize("path_tmpl, body, status, code", [
    ("/keys/{k}/encrypt", "{not json", 400, "ValidationException"),
    ("/keys/{k}/encrypt", json.dumps([1, 2]), 400, "ValidationException"),
    ("/keys/{k}/encrypt", json.dumps({"Plaintext": 123}), 400, "ValidationException"),
    ("/keys/{k}/encrypt", json.dumps({"Plaintext": "%%%notbase64"}), 400, "ValidationException"),
    ("/keys/{k}/encrypt", json.dumps({"Plaintext": b64(b"x"), "Surprise": 1}), 400, "ValidationException"),
    ("/keys/{k}/encrypt", json.dumps({"Plaintext": b64(b"x" * 4097)}), 400, "ValidationException"),
    ("/keys/{k}/encrypt", json.dumps({"Plaintext": b64(b"x"), "EncryptionContext": {"a": 1}}), 400, "ValidationException"),
    ("/keys/00000000-0000-0000-0000-000000000000/encrypt", json.dumps({"Plaintext": b64(b"x")}), 404, "NotFoundException"),
    ("/keys/alias/does-not-exist/encrypt", json.dumps({"Plaintext": b64(b"x")}), 404, "NotFoundException"),
    ("/decrypt", json.dumps({"CiphertextBlob": b64(b"garbage-bytes-here")}), 400, "InvalidCiphertextException"),
    ("/decrypt", json.dumps({"CiphertextBlob": "!!"}), 400, "ValidationException"),
    ("/keys", json.dumps({"KeySpec": "AES_999"}), 400, "ValidationException"),
    ("/keys", json.dumps({"KeySpec": "ECC_NIST_P256", "KeyUsage": "ENCRYPT_DECRYPT"}), 400, "ValidationException"),
    ("/keys", json.dumps({"Provider": "nope"}), 400, "ValidationException"),
    ("/keys/{k}/schedule-deletion", json.dumps({"PendingWindowInDays": 3}), 400, "ValidationException"),
    ("/keys/{k}/schedule-deletion", json.dumps({"PendingWindowInDays": "7"}), 400, "ValidationException"),
    ("/aliases", json.dumps({"AliasName": "no-prefix", "TargetKeyId": "{k}"}), 400, "ValidationException"),
    ("/aliases", json.dumps({"AliasName": "alias/aws/reserved", "TargetKeyId": "{k}"}), 400, "ValidationException"),
    ("/random", json.dumps({"NumberOfBytes": 0}), 400, "ValidationException"),
    ("/nowhere", "{}", 404, "UnknownOperationException"),
])
def test_bad_input_is_a_stable_4xx_and_changes_nothing(broker, api, sym_key, path_tmpl, body, status, code):
    before = broker.snapshot()
    r = _post_raw(broker, api, path_tmpl.format(k=sym_key), body.replace("{k}", sym_key))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["request_id"]
    assert "Traceback" not in r.text
    assert broker.snapshot() == before


def test_tampered_and_truncated_ciphertext(broker, api, sym_key):
    blob = base64.b64decode(api.post(broker.url(f"/keys/{sym_key}/encrypt"),
                                     json={"Plaintext": b64(b"payload")}).json()["CiphertextBlob"])
    for bad in (blob[:-1], blob[:10], blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:], blob[:8] + b"\x00" + blob[9:]):
        r = api.post(broker.url("/decrypt"), json={"CiphertextBlob": b64(bad)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidCiphertextException", r.text


def test_wrong_context_and_wrong_key(broker, api, sym_key):
    blob = api.post(broker.url(f"/keys/{sym_key}/encrypt"),
                    json={"Plaintext": b64(b"p"), "EncryptionContext": {"k": "v"}}).json()["CiphertextBlob"]
    r = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"k": "other"}})
    assert r.json()["error"]["code"] == "InvalidCiphertextException"
    other = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    r = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob, "EncryptionContext": {"k": "v"}, "KeyId": other})
    assert r.status_code == 400 and r.json()["error"]["code"] == "IncorrectKeyException"


def test_key_states_block_use(broker, api):
    key_id = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    enc = {"Plaintext": b64(b"x")}
    api.post(broker.url(f"/keys/{key_id}/disable"))
    r = api.post(broker.url(f"/keys/{key_id}/encrypt"), json=enc)
    assert r.status_code == 409 and r.json()["error"]["code"] == "DisabledException"
    api.post(broker.url(f"/keys/{key_id}/enable"))
    assert api.post(broker.url(f"/keys/{key_id}/encrypt"), json=enc).status_code == 200
    api.post(broker.url(f"/keys/{key_id}/schedule-deletion"), json={"PendingWindowInDays": 7})
    r = api.post(broker.url(f"/keys/{key_id}/encrypt"), json=enc)
    assert r.status_code == 409 and r.json()["error"]["code"] == "KMSInvalidStateException"
    api.post(broker.url(f"/keys/{key_id}/cancel-deletion"))
    assert api.get(broker.url(f"/keys/{key_id}")).json()["KeyMetadata"]["KeyState"] == "Disabled"
    pending = api.post(broker.url("/keys"), json={"Origin": "EXTERNAL"}).json()["KeyMetadata"]["KeyId"]
    r = api.post(broker.url(f"/keys/{pending}/encrypt"), json=enc)
    assert r.status_code == 409 and r.json()["error"]["code"] == "KMSInvalidStateException"
    signer = api.post(broker.url("/keys"), json={"KeySpec": "ECC_NIST_P256"}).json()["KeyMetadata"]["KeyId"]
    r = api.post(broker.url(f"/keys/{signer}/encrypt"), json=enc)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidKeyUsageException"


@pytest.mark.parametrize("headers", [{}, {"X-KMSB-Token": "kmsb.not-a-token"}, {"Authorization": "Bearer nope"}])
def test_missing_or_bad_token_is_401_and_audited(broker, headers):
    before = broker.snapshot()
    r = requests.post(broker.url("/keys"), json={}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UnrecognizedClientException"
    assert broker.snapshot() == before
    last = json.loads((broker.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])
    assert last["request_id"] == r.json()["error"]["request_id"]
    assert last["outcome"] == "denied" and last["error_code"] == "UnrecognizedClientException"


def test_every_request_is_audited_and_the_chain_holds(broker, api, sym_key):
    path = broker.data_dir / "audit" / "audit.jsonl"
    before = len(path.read_text().splitlines())
    api.post(broker.url(f"/keys/{sym_key}/encrypt"), json={"Plaintext": b64(b"secret-plaintext-marker"),
                                                           "EncryptionContext": {"user": "alice"}})
    api.post(broker.url(f"/keys/{sym_key}/encrypt"), data="{bad")
    lines = path.read_text().splitlines()
    assert len(lines) == before + 2
    text = "\n".join(lines[before:])
    assert "secret-plaintext-marker" not in text and "alice" not in text
    assert json.loads(lines[before])["encryption_context"]["user"].startswith("hmac-sha256:")
    count, problem = verify_file(path)
    assert problem is None and count == len(lines)


def test_openapi_documents_every_route(broker):
    doc = requests.get(broker.url("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")

    # The real app, with every route module it registers, built in a process of its own: its HSM provider is the
    # broker's own token, and SoftHSM serves one token configuration per process (this one's is the session's).
    script = ("import json, sys\nfrom broker.api.openapi import openapi_path\nfrom broker.app import create_app\n"
              "from broker.settings import load_settings\napp = create_app(load_settings(sys.argv[1]))\n"
              "print(json.dumps(sorted({(openapi_path(r.rule[len('/v1'):]), m.lower()) for r in "
              "app.url_map.iter_rules() if r.rule.startswith('/v1') for m in r.methods - {'HEAD', 'OPTIONS'}})))")
    out = subprocess.run([sys.executable, "-c", script, str(broker.data_dir)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    rules = {tuple(pair) for pair in json.loads(out.stdout.strip().splitlines()[-1])}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert rules and rules == documented


def test_health_and_ready(broker):
    assert requests.get(broker.url("/health")).json() == {"status": "ok"}
    r = requests.get(broker.url("/ready"))
    assert r.status_code == 200 and r.json()["providers"] == {"hsm": "ok"}


def test_locked_hsm_means_not_ready_and_503_without_crashing(tmp_path):
    """A wrong PIN: the broker still answers, reports not ready, and refuses key operations with 503."""
    running = start_broker(tmp_path / "data", tmp_path / "logs", env={"KMSB_HSM_PIN": "wrong-pin"},
                           workers=1, name="locked-broker")
    try:
        r = requests.get(running.url("/ready"))
        assert r.status_code == 503 and r.json()["providers"]["hsm"].startswith("unavailable")
        s = running.session()
        r = s.post(running.url("/keys"), json={})
        assert r.status_code == 503 and r.json()["error"]["code"] == "DependencyTimeoutException"
        assert running.server.proc.poll() is None
    finally:
        running.server.stop()
