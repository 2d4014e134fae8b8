"""Policies, key policies, grants and the simulator over a real broker, with non-root principals."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from broker.auth import TokenAuth
from broker.store import Store
from tests.support.broker import RunningBroker, start_broker


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> RunningBroker:
    base = tmp_path_factory.mktemp("policy-broker")
    # cache off: a policy change must show in the very next request, whichever worker serves it
    running = start_broker(base / "data", base / "logs", env={"KMSB_AUTH_CACHE_SECONDS": "0"}, name="policy-broker")
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def tokens(broker):
    store = Store(f"sqlite:///{broker.data_dir / 'broker.db'}")
    yield TokenAuth(store)
    store.dispose()


def session_for(broker, tokens, name: str, policies: list[str]) -> requests.Session:
    token, _ = tokens.create(name, policies)
    return broker.session(token)


@pytest.fixture(scope="module")
def root(broker):
    return broker.session()


@pytest.fixture(scope="module")
def key_id(broker, root):
    return root.post(broker.url("/keys"), json={"Tags": {"team": "payments"}}).json()["KeyMetadata"]["KeyId"]


def last_audit(broker) -> dict:
    return json.loads((broker.data_dir / "audit" / "audit.jsonl").read_text().splitlines()[-1])


def test_identity_policy_with_context_condition(broker, root, tokens, key_id):
    doc = {"Version": "2012-10-17", "Statement": [{
        "Sid": "BillingOnly", "Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": f"key/{key_id}",
        "Condition": {"StringEquals": {"kms:EncryptionContext:app": "billing"}}}]}
    assert root.put(broker.url("/policies/billing-app"), json={"Document": doc}).status_code == 200
    app = session_for(broker, tokens, "billing-svc", ["billing-app"])
    ok = app.post(broker.url(f"/keys/{key_id}/encrypt"),
                  json={"Plaintext": b64(b"x"), "EncryptionContext": {"app": "billing"}})
    assert ok.status_code == 200, ok.text
    refused = app.post(broker.url(f"/keys/{key_id}/encrypt"),
                       json={"Plaintext": b64(b"x"), "EncryptionContext": {"app": "hr"}})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "AccessDeniedException"
    record = last_audit(broker)
    assert record["outcome"] == "denied" and record["principal"] == "billing-svc" and record["key_id"] == key_id
    assert app.post(broker.url("/keys"), json={}).status_code == 403  # nothing else is allowed


def test_invalid_policy_is_refused_with_path_and_not_stored(broker, root):
    bad = {"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Condition": {"StringEquals": {"kms:Bad": "x"}}}]}
    before = broker.snapshot()
    r = root.put(broker.url("/policies/bad"), json={"Document": bad})
    assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationException"
    assert "Statement[0].Condition.StringEquals.kms:Bad" in r.json()["error"]["message"]
    assert broker.snapshot() == before
    assert root.get(broker.url("/policies/bad")).status_code == 404
    assert root.put(broker.url("/policies/root"), json={"Document": {"Statement": [
        {"Effect": "Allow", "Action": "kms:*"}]}}).status_code == 400


def test_key_policy_direct_grant_and_no_identity_delegation(broker, root, tokens):
    key = root.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Bob", "Effect": "Allow", "Principal": {"Broker": "bob"}, "Action": "kms:Encrypt", "Resource": "*"}]}
    assert root.put(broker.url(f"/keys/{key}/policy"), json={"Policy": policy}).status_code == 200
    assert root.get(broker.url(f"/keys/{key}/policy")).json()["Policy"] == policy
    bob = session_for(broker, tokens, "bob", [])
    assert bob.post(broker.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")}).status_code == 200
    # a key-user identity policy no longer reaches this key: its key policy does not delegate to identity policies
    user = session_for(broker, tokens, "eve", ["key-user"])
    assert user.post(broker.url(f"/keys/{key}/encrypt"), json={"Plaintext": b64(b"x")}).status_code == 403
    simulated = root.post(broker.url("/policies/simulate"), json={
        "Principal": {"Name": "bob"}, "Action": "kms:Encrypt", "KeyId": key}).json()
    assert simulated["Decision"] == "Allow" and simulated["Source"] == "key-policy" and simulated["Sid"] == "Bob"


def test_grant_with_context_constraint_then_retire(broker, root, tokens, key_id):
    created = root.post(broker.url(f"/keys/{key_id}/grants"), json={
        "GranteePrincipal": "carol", "Operations": ["Encrypt"], "RetiringPrincipal": "carol",
        "Constraints": {"EncryptionContextSubset": {"tenant": "t1"}}, "Name": "carol-t1"})
    assert created.status_code == 201, created.text
    carol = session_for(broker, tokens, "carol", [])
    enc = broker.url(f"/keys/{key_id}/encrypt")
    assert carol.post(enc, json={"Plaintext": b64(b"x"), "EncryptionContext": {"tenant": "t1"}}).status_code == 200
    assert carol.post(enc, json={"Plaintext": b64(b"x"), "EncryptionContext": {"tenant": "t2"}}).status_code == 403
    assert carol.post(broker.url("/decrypt"), json={"CiphertextBlob": b64(b"KB-not-really")}).status_code in (400, 403)
    grants = root.get(broker.url(f"/keys/{key_id}/grants")).json()["Grants"]
    assert [g["Name"] for g in grants] == ["carol-t1"]
    assert carol.post(broker.url("/grants/retire"), json={"GrantToken": created.json()["GrantToken"]}).status_code == 200
    assert carol.post(enc, json={"Plaintext": b64(b"x"), "EncryptionContext": {"tenant": "t1"}}).status_code == 403
    assert root.get(broker.url(f"/keys/{key_id}/grants")).json()["Grants"] == []


def test_explicit_deny_beats_key_user(broker, root, tokens, key_id):
    doc = {"Version": "2012-10-17", "Statement": [{"Sid": "NoDecryptFromOutside", "Effect": "Deny",
           "Action": "kms:Decrypt", "Resource": "*", "Condition": {"NotIpAddress": {"broker:SourceIp": "10.0.0.0/8"}}}]}
    assert root.put(broker.url("/policies/network-fence"), json={"Document": doc}).status_code == 200
    user = session_for(broker, tokens, "dave", ["key-user", "network-fence"])
    blob = user.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"x")}).json()["CiphertextBlob"]
    r = user.post(broker.url("/decrypt"), json={"CiphertextBlob": blob})
    assert r.status_code == 403  # the test client connects from 127.0.0.1, outside 10/8
    sim = root.post(broker.url("/policies/simulate"), json={
        "Principal": {"Name": "dave", "Policies": ["key-user", "network-fence"]}, "Action": "kms:Decrypt",
        "KeyId": key_id, "SourceIp": "127.0.0.1"}).json()
    assert (sim["Decision"], sim["Source"], sim["Sid"]) == ("Deny", "identity:network-fence", "NoDecryptFromOutside")
    inside = root.post(broker.url("/policies/simulate"), json={
        "Principal": {"Name": "dave", "Policies": ["key-user", "network-fence"]}, "Action": "kms:Decrypt",
        "KeyId": key_id, "SourceIp": "10.2.3.4"}).json()
    assert (inside["Decision"], inside["Source"]) == ("Allow", "identity:key-user")


def test_seed_roles(broker, root, tokens, key_id):
    admin = session_for(broker, tokens, "admin", ["key-admin"])
    auditor = session_for(broker, tokens, "auditor", ["auditor"])
    new_key = admin.post(broker.url("/keys"), json={})
    assert new_key.status_code == 201
    kid = new_key.json()["KeyMetadata"]["KeyId"]
    assert admin.post(broker.url(f"/keys/{kid}/disable")).status_code == 200
    assert admin.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"x")}).status_code == 403
    assert auditor.get(broker.url(f"/keys/{key_id}")).status_code == 200
    assert auditor.post(broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(b"x")}).status_code == 403
    assert auditor.post(broker.url(f"/keys/{kid}/enable")).status_code == 403


def test_simulate_validates_input(broker, root):
    r = root.post(broker.url("/policies/simulate"), json={"Principal": {"Name": "x", "Policies": ["nope"]},
                                                         "Action": "kms:Encrypt"})
    assert r.status_code == 400 and "unknown policy" in r.json()["error"]["message"]
    r = root.post(broker.url("/policies/simulate"), json={"Principal": {"Name": "x"}, "Action": "kms:Fly"})
    assert r.status_code == 400
