"""Replicated keys: HSM-born material imported into all four clouds through their own import protocols, an
HSM-wrapped escrow copy in the store, and rotation of every copy."""

from __future__ import annotations

import base64
import json
import sqlite3

import boto3
import pytest

from .conftest import World, b64

pytestmark = pytest.mark.integration
TARGETS = ["aws", "azure-mhsm", "gcp", "aliyun"]


def _enc_dec(world: World, key_id: str, data: bytes) -> str:
    enc = world.api.post(world.broker.url(f"/keys/{key_id}/encrypt"), json={"Plaintext": b64(data)})
    assert enc.status_code == 200, enc.text
    dec = world.api.post(world.broker.url("/decrypt"), json={"CiphertextBlob": enc.json()["CiphertextBlob"]})
    assert dec.status_code == 200 and base64.b64decode(dec.json()["Plaintext"]) == data, dec.text
    return enc.json()["CiphertextBlob"]


def test_replicate_into_all_four_clouds_then_rotate_every_copy(world: World) -> None:
    r = world.api.post(world.broker.url("/replicated-keys"),
                       json={"Targets": TARGETS, "Description": "payments master", "Tags": {"team": "pay"}})
    assert r.status_code == 201, r.text
    body = r.json()
    primary = body["KeyMetadata"]["KeyId"]
    assert body["KeyMetadata"]["Provider"] == "hsm"
    copies = {c["Target"]: c["KeyId"] for c in body["Replicas"]}
    assert sorted(copies) == sorted(TARGETS)

    # escrow: the primary's version holds the material only wrapped under the root KEK (RFC 5649: 32 -> 40 bytes)
    con = sqlite3.connect(f"file:{world.broker.data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        ref = json.loads(con.execute("select provider_ref from key_versions where key_id=? and version=1",
                                     (primary,)).fetchone()[0])
        origins = dict(con.execute(f"select key_id, origin from keys where key_id in ({','.join('?' * 4)})",
                                   list(copies.values())).fetchall())
    finally:
        con.close()
    assert len(bytes.fromhex(ref["material"])) == 40
    assert set(origins.values()) == {"EXTERNAL"}

    old = {t: _enc_dec(world, kid, f"v1 {t}".encode()) for t, kid in copies.items()}
    for kid in copies.values():
        meta = world.api.get(world.broker.url(f"/keys/{kid}")).json()["KeyMetadata"]
        assert meta["KeyState"] == "Enabled" and meta["Origin"] == "EXTERNAL"

    # the AWS copy really is an AWS key with imported (EXTERNAL) material
    aws_cfg = world.env["aws"]
    kms = boto3.client("kms", endpoint_url=aws_cfg["endpoint_url"], region_name=aws_cfg["region"],
                       aws_access_key_id=aws_cfg["access_key_id"], aws_secret_access_key=aws_cfg["secret_access_key"])
    aws_ref = world.api.get(world.broker.url(f"/keys/{copies['aws']}")).json()
    aws_keys = [k["KeyId"] for k in kms.list_keys()["Keys"]]
    tagged = [k for k in aws_keys if {"TagKey": "kmsb:key-id", "TagValue": copies["aws"]}
              in kms.list_resource_tags(KeyId=k)["Tags"]]
    assert len(tagged) == 1 and kms.describe_key(KeyId=tagged[0])["KeyMetadata"]["Origin"] == "EXTERNAL", aws_ref

    # a part rotated alone would leave the others behind: the plain rotation routes refuse, nothing changes
    for kid in (primary, copies["aws"]):
        for method, path, body in (("post", f"/keys/{kid}/rotate", None),
                                   ("put", f"/keys/{kid}/rotation", {"RotationPeriodInDays": 90})):
            refused = getattr(world.api, method)(world.broker.url(path), json=body)
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "KMSInvalidStateException"
            assert primary in refused.json()["error"]["message"]
        assert world.api.get(world.broker.url(f"/keys/{kid}/versions")).json()["PrimaryVersion"] == 1

    rot = world.api.post(world.broker.url(f"/replicated-keys/{primary}/rotate"))
    assert rot.status_code == 200, rot.text
    assert rot.json()["KeyVersion"] == 2
    assert {c["Target"]: c["KeyVersion"] for c in rot.json()["Replicas"]} == {t: 2 for t in TARGETS}
    for t, kid in copies.items():
        versions = world.api.get(world.broker.url(f"/keys/{kid}/versions"))
        assert versions.status_code == 200 and versions.json()["PrimaryVersion"] == 2, versions.text
        new_blob = _enc_dec(world, kid, b"after rotation")
        from broker import ciphertext as ct
        assert ct.unpack(base64.b64decode(new_blob)).header.key_version == 2
        dec = world.api.post(world.broker.url("/decrypt"), json={"CiphertextBlob": old[t]})
        assert dec.status_code == 200 and base64.b64decode(dec.json()["Plaintext"]) == f"v1 {t}".encode()
    described = world.api.get(world.broker.url(f"/replicated-keys/{primary}")).json()
    assert {c["Target"]: c["PrimaryVersion"] for c in described["Replicas"]} == {t: 2 for t in TARGETS}


def test_asymmetric_replication_is_refused_where_the_hsm_cannot_wrap_exactly(world: World) -> None:
    """SoftHSM zero-pads a private key's PKCS#8 to a multiple of 8 bytes before AES-KWP: an RSA key (whose length
    varies) and P-256 / P-521 (67 and 98 bytes) would reach the importer padded, so they are refused, saying why,
    before anything is made."""
    before = world.api.get(world.broker.url("/keys"), params={"limit": 1000}).json()["Keys"]
    r = world.api.post(world.broker.url("/replicated-keys"), json={"Targets": ["aws"], "KeySpec": "RSA_2048"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "UnsupportedOperationException"
    assert "PKCS#8" in r.json()["error"]["message"]
    for spec in ("ECC_NIST_P256", "ECC_NIST_P521"):
        r = world.api.post(world.broker.url("/replicated-keys"), json={"Targets": ["gcp"], "KeySpec": spec})
        assert r.status_code == 400 and r.json()["error"]["code"] == "UnsupportedOperationException", r.text
        assert "exactly" in r.json()["error"]["message"] and "pads" in r.json()["error"]["message"]
    after = world.api.get(world.broker.url("/keys"), params={"limit": 1000}).json()["Keys"]
    assert len(after) == len(before)


def test_a_p384_signing_key_is_replicated_where_the_hsm_wraps_it_exactly(world: World) -> None:
    """SoftHSM's P-384 PKCS#8 is 80 bytes, wrapped exactly: the copies in Cloud KMS and a managed HSM are the same
    key pair, so each one's signature verifies under the primary's public key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    r = world.api.post(world.broker.url("/replicated-keys"),
                       json={"Targets": ["gcp", "azure-mhsm"], "KeySpec": "ECC_NIST_P384"})
    assert r.status_code == 201, r.text
    primary = r.json()["KeyMetadata"]["KeyId"]
    assert r.json()["KeyMetadata"]["KeyUsage"] == "SIGN_VERIFY"
    public = world.api.get(world.broker.url(f"/keys/{primary}/public-key")).json()["PublicKey"]
    key = serialization.load_der_public_key(base64.b64decode(public))
    for copy in r.json()["Replicas"]:
        assert world.api.get(world.broker.url(f"/keys/{copy['KeyId']}/public-key")).json()["PublicKey"] == public
        message = f"signed by the {copy['Target']} copy".encode()
        signed = world.api.post(world.broker.url(f"/keys/{copy['KeyId']}/sign"),
                                json={"Message": b64(message), "SigningAlgorithm": "ECDSA_SHA_384"})
        assert signed.status_code == 200, signed.text
        key.verify(base64.b64decode(signed.json()["Signature"]), message, ec.ECDSA(hashes.SHA384()))
    rotated = world.api.post(world.broker.url(f"/replicated-keys/{primary}/rotate"))
    assert rotated.status_code == 400  # asymmetric keys do not rotate (as in AWS)


def test_target_without_import_is_refused_and_nothing_is_left(world: World) -> None:
    before = world.api.get(world.broker.url("/keys"), params={"limit": 1000}).json()["Keys"]
    r = world.api.post(world.broker.url("/replicated-keys"), json={"Targets": ["gcp", "azure"]})
    assert r.status_code == 400, r.text  # a standard vault has no symmetric BYOK
    after = world.api.get(world.broker.url("/keys"), params={"limit": 1000}).json()["Keys"]
    assert len(after) == len(before)


def test_another_tenants_replicated_key_is_unreachable(world: World) -> None:
    """A replicated key (primary + copies) belongs to whoever may use its keys: another tenant reaches neither the
    primary nor a copy, and rotation needs the right on the primary and on every copy."""
    from broker.auth import TokenAuth
    from broker.store import Store

    r = world.api.post(world.broker.url("/replicated-keys"), json={"Targets": ["aws", "aliyun"]})
    assert r.status_code == 201, r.text
    primary = r.json()["KeyMetadata"]["KeyId"]
    copies = {c["Target"]: c["KeyId"] for c in r.json()["Replicas"]}
    mine = world.key("hsm")

    def doc(resources: list[str]) -> dict:
        return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": resources}]}

    creator = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:CreateKey",
                                                      "Resource": ["provider/hsm", "provider/aws"]}]}
    policies = {"repl-other": doc([f"key/{mine}"]), "repl-primary-only": doc([f"key/{primary}"]),
                "repl-creator": creator}
    for name, d in policies.items():
        assert world.api.put(world.broker.url(f"/policies/{name}"), json={"Document": d}).status_code == 200
    store = Store(f"sqlite:///{world.broker.data_dir / 'broker.db'}")
    try:
        tokens = TokenAuth(store)
        other = world.broker.session(tokens.create("repl-other", ["repl-other"])[0])
        primary_only = world.broker.session(tokens.create("repl-primary-only", ["repl-primary-only"])[0])
        creator_api = world.broker.session(tokens.create("repl-creator", ["repl-creator"])[0])
    finally:
        store.dispose()
    for path, method in [(f"/replicated-keys/{primary}", "GET"), (f"/replicated-keys/{primary}/rotate", "POST"),
                         (f"/keys/{copies['aws']}", "GET"), (f"/keys/{copies['aliyun']}/encrypt", "POST")]:
        r = other.request(method, world.broker.url(path), json={"Plaintext": b64(b"x")} if "encrypt" in path else None)
        assert r.status_code == 403, (path, r.text)
    # the primary's owner without rights on the copies: sees the copies' ids only, and cannot rotate them
    described = primary_only.get(world.broker.url(f"/replicated-keys/{primary}")).json()
    assert [sorted(c) for c in described["Replicas"]] == [["KeyId", "Target"], ["KeyId", "Target"]]
    before = world.api.get(world.broker.url(f"/replicated-keys/{primary}")).json()
    refused = primary_only.post(world.broker.url(f"/replicated-keys/{primary}/rotate"))
    assert refused.status_code == 403, refused.text
    assert world.api.get(world.broker.url(f"/replicated-keys/{primary}")).json() == before
    # creating needs kms:CreateKey on the HSM and on every target, and answers what it made (as CreateKey does)
    count = len(world.api.get(world.broker.url("/keys"), params={"limit": 1000}).json()["Keys"])
    denied = creator_api.post(world.broker.url("/replicated-keys"), json={"Targets": ["aws", "aliyun"]})
    assert denied.status_code == 403, denied.text
    assert len(world.api.get(world.broker.url("/keys"), params={"limit": 1000}).json()["Keys"]) == count
    made = creator_api.post(world.broker.url("/replicated-keys"), json={"Targets": ["aws"]})
    assert made.status_code == 201, made.text
    assert made.json()["KeyMetadata"]["Provider"] == "hsm" and made.json()["Replicas"][0]["KeyState"] == "Enabled"
    assert creator_api.get(world.broker.url(f"/replicated-keys/{made.json()['KeyMetadata']['KeyId']}")
                           ).status_code == 403  # creating a key is not describing it afterwards
    # a copy is not a primary; tags cannot turn a key into one
    assert world.api.post(world.broker.url(f"/replicated-keys/{copies['aws']}/rotate")).status_code == 400
    planted = world.api.post(world.broker.url("/replicated-keys"), json={"Targets": ["aws"],
                                                                         "Tags": {"kmsb:replica-of": primary}})
    assert planted.status_code == 400, planted.text
