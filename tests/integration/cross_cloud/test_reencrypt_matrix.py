"""Cross-provider ReEncrypt for every ordered pair of the five providers, through the broker's REST API.

The plaintext exists only inside the broker: the ReEncrypt response carries no plaintext field, and a non-root
principal needs Decrypt-side (ReEncryptFrom) on the source and Encrypt-side (ReEncryptTo) on the destination."""

from __future__ import annotations

import base64
import itertools

import pytest

from broker.auth import TokenAuth
from broker.store import Store

from .conftest import PROVIDERS, World, audit_records, b64

pytestmark = pytest.mark.integration
SECRET = b"cross-cloud secret \x00\xff"


@pytest.fixture(scope="module")
def keys(world: World) -> dict[str, str]:
    return {p: world.key(p, Description=f"matrix {p}") for p in PROVIDERS}


@pytest.fixture(scope="module")
def blobs(world: World, keys: dict[str, str]) -> dict[str, str]:
    out = {}
    for p, key_id in keys.items():
        r = world.api.post(world.broker.url(f"/keys/{key_id}/encrypt"),
                           json={"Plaintext": b64(SECRET), "EncryptionContext": {"src": p}})
        assert r.status_code == 200, r.text
        out[p] = r.json()["CiphertextBlob"]
    return out


@pytest.mark.parametrize(("source", "destination"), list(itertools.permutations(PROVIDERS, 2)))
def test_reencrypt_pair(world: World, keys: dict[str, str], blobs: dict[str, str], source: str,
                        destination: str) -> None:
    r = world.api.post(world.broker.url("/re-encrypt"), json={
        "CiphertextBlob": blobs[source], "DestinationKeyId": keys[destination],
        "SourceEncryptionContext": {"src": source}, "DestinationEncryptionContext": {"dst": destination}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["SourceKeyId"] == keys[source] and body["KeyId"] == keys[destination]
    assert "Plaintext" not in body and b64(SECRET) not in r.text
    out = world.api.post(world.broker.url("/decrypt"), json={"CiphertextBlob": body["CiphertextBlob"],
                                                             "EncryptionContext": {"dst": destination}})
    assert out.status_code == 200, out.text
    assert base64.b64decode(out.json()["Plaintext"]) == SECRET
    assert out.json()["KeyId"] == keys[destination]
    record = next(r for r in reversed(audit_records(world.broker)) if r["action"] == "kms:ReEncrypt")
    assert record["source_key_id"] == keys[source] and record["key_id"] == keys[destination]
    assert record["provider"] == destination and record["outcome"] == "allowed"


def test_reencrypt_policy_needs_decrypt_on_source_and_encrypt_on_destination(
        world: World, keys: dict[str, str], blobs: dict[str, str]) -> None:
    broker, root = world.broker, world.api
    src, dst = keys["aws"], keys["gcp"]

    def doc(*statements: tuple[list[str], str]) -> dict:
        return {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": actions, "Resource": f"key/{key}"} for actions, key in statements]}

    policies = {
        "xc-both": doc((["kms:ReEncryptFrom"], src), (["kms:ReEncryptTo"], dst)),
        "xc-source-only": doc((["kms:ReEncryptFrom"], src)),
        "xc-destination-only": doc((["kms:ReEncryptTo"], dst)),
    }
    for name, document in policies.items():
        assert root.put(broker.url(f"/policies/{name}"), json={"Document": document}).status_code == 200
    store = Store(f"sqlite:///{broker.data_dir / 'broker.db'}")
    try:
        tokens = TokenAuth(store)
        sessions = {name: broker.session(tokens.create(f"svc-{name}", [name])[0]) for name in policies}
    finally:
        store.dispose()
    body = {"CiphertextBlob": blobs["aws"], "DestinationKeyId": dst, "SourceEncryptionContext": {"src": "aws"}}
    ok = sessions["xc-both"].post(broker.url("/re-encrypt"), json=body)
    assert ok.status_code == 200, ok.text
    for name in ("xc-source-only", "xc-destination-only"):
        refused = sessions[name].post(broker.url("/re-encrypt"), json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "AccessDeniedException"
        assert b64(SECRET) not in refused.text
    # and the principal allowed to re-encrypt cannot decrypt either blob itself
    dec = sessions["xc-both"].post(broker.url("/decrypt"), json={"CiphertextBlob": ok.json()["CiphertextBlob"]})
    assert dec.status_code == 403
