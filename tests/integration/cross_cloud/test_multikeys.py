"""Multi-keys (envelope keyrings) over the real stack: wrap under every member, decrypt with any, rewrap."""

from __future__ import annotations

import base64

import pytest

from broker import ciphertext as ct

from .conftest import PROVIDERS, World, audit_records, b64

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def members(world: World) -> dict[str, str]:
    return {p: world.key(p, Description=f"member on {p}") for p in PROVIDERS}


def _mk(world: World, name: str, members: list[str], **extra: object) -> dict:
    r = world.api.post(world.broker.url("/multikeys"), json={"Name": name, "Members": members, **extra})
    assert r.status_code == 201, r.text
    return r.json()["MultiKey"]


def _wrap_keys(blob_b64: str) -> list[str]:
    parsed = ct.unpack(base64.b64decode(blob_b64))
    wraps, _, _ = ct.unpack_multi_wrap(parsed.body)
    return [ct.unpack(w).header.key_id for w in wraps]


def test_encrypt_wraps_under_every_member_and_decrypt_names_the_answering_member(world: World,
                                                                                  members: dict[str, str]) -> None:
    order = [members[p] for p in ("gcp", "aws", "azure", "aliyun", "hsm")]
    mk = _mk(world, "all-five", order)
    assert [m["Provider"] for m in mk["Members"]] == ["gcp", "aws", "azure", "aliyun", "hsm"]
    enc = world.api.post(world.broker.url(f"/multikeys/{mk['MultiKeyId']}/encrypt"),
                         json={"Plaintext": b64(b"five clouds"), "EncryptionContext": {"app": "x"}})
    assert enc.status_code == 200, enc.text
    blob = enc.json()["CiphertextBlob"]
    assert enc.json()["WrappedBy"] == order and enc.json()["Missing"] == []
    parsed = ct.unpack(base64.b64decode(blob))
    assert parsed.header.scheme is ct.Scheme.MULTI_WRAP and parsed.header.key_id == mk["MultiKeyId"]
    assert _wrap_keys(blob) == order
    dec = world.api.post(world.broker.url("/multikeys/decrypt"),
                         json={"CiphertextBlob": blob, "EncryptionContext": {"app": "x"}})
    assert dec.status_code == 200, dec.text
    assert base64.b64decode(dec.json()["Plaintext"]) == b"five clouds"
    assert dec.json()["AnsweredBy"] == {"KeyId": members["gcp"], "Provider": "gcp"}
    record = next(r for r in reversed(audit_records(world.broker)) if r["action"] == "kms:Decrypt")
    assert record["answered_by"] == members["gcp"] and record["answered_provider"] == "gcp"
    assert record["key_id"] == mk["MultiKeyId"] and "five clouds" not in str(record)
    bad = world.api.post(world.broker.url("/multikeys/decrypt"),
                         json={"CiphertextBlob": blob, "EncryptionContext": {"app": "y"}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidCiphertextException"
    # a scheme-3 blob is not a single-key ciphertext
    single = world.api.post(world.broker.url("/decrypt"), json={"CiphertextBlob": blob,
                                                                "EncryptionContext": {"app": "x"}})
    assert single.status_code == 400


def test_tampered_header_or_wrap_is_refused(world: World, members: dict[str, str]) -> None:
    mk = _mk(world, "tamper", [members["hsm"], members["aliyun"]])
    blob = base64.b64decode(world.api.post(world.broker.url(f"/multikeys/{mk['MultiKeyId']}/encrypt"),
                                           json={"Plaintext": b64(b"t")}).json()["CiphertextBlob"])
    for i in (len(blob) - 1, len(blob) - 40):
        edited = bytearray(blob)
        edited[i] ^= 1
        r = world.api.post(world.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": b64(bytes(edited))})
        assert r.status_code == 400, (i, r.text)


def test_generate_data_key(world: World, members: dict[str, str]) -> None:
    mk = _mk(world, "gdk", [members["aws"], members["azure"]])
    r = world.api.post(world.broker.url(f"/multikeys/{mk['Name']}/generate-data-key"), json={"KeySpec": "AES_256"})
    assert r.status_code == 200, r.text
    dec = world.api.post(world.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": r.json()["CiphertextBlob"]})
    assert dec.json()["Plaintext"] == r.json()["Plaintext"] and len(base64.b64decode(r.json()["Plaintext"])) == 32


def test_rewrap_after_membership_change_keeps_the_data(world: World, members: dict[str, str]) -> None:
    mk = _mk(world, "rewrap", [members["aws"], members["gcp"]])
    blob = world.api.post(world.broker.url(f"/multikeys/{mk['MultiKeyId']}/encrypt"),
                          json={"Plaintext": b64(b"keep me"), "EncryptionContext": {"k": "v"}}).json()["CiphertextBlob"]
    new_members = [members["aliyun"], members["gcp"], members["hsm"]]
    r = world.api.patch(world.broker.url(f"/multikeys/{mk['MultiKeyId']}"), json={"Members": new_members})
    assert r.status_code == 200 and r.json()["MultiKey"]["Generation"] == 2, r.text
    rw = world.api.post(world.broker.url("/multikeys/rewrap"), json={"CiphertextBlob": blob,
                                                                     "EncryptionContext": {"k": "v"}})
    assert rw.status_code == 200, rw.text
    out = rw.json()
    assert sorted(out["Added"]) == sorted([members["aliyun"], members["hsm"]])
    assert out["Removed"] == [members["aws"]]
    assert _wrap_keys(out["CiphertextBlob"]) == new_members
    old, new = base64.b64decode(blob), base64.b64decode(out["CiphertextBlob"])
    sealed_len = len(b"keep me") + 12 + 16
    assert old[-sealed_len:] == new[-sealed_len:]  # the data was not re-encrypted
    assert old[:ct.unpack(old).header_bytes.__len__()] == new[:len(ct.unpack(new).header_bytes)]
    # the rewrapped blob no longer carries the aws wrap: disabling that key does not matter to it
    assert world.api.post(world.broker.url(f"/keys/{members['aws']}/disable")).status_code == 200
    try:
        dec = world.api.post(world.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": out["CiphertextBlob"],
                                                                           "EncryptionContext": {"k": "v"}})
        assert dec.status_code == 200 and base64.b64decode(dec.json()["Plaintext"]) == b"keep me"
        assert dec.json()["AnsweredBy"]["Provider"] == "aliyun"
        # the old blob still decrypts: gcp is a current member, aws (no longer one) would only be tried last
        dec_old = world.api.post(world.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": blob,
                                                                               "EncryptionContext": {"k": "v"}})
        assert dec_old.status_code == 200, dec_old.text
        assert dec_old.json()["AnsweredBy"]["Provider"] == "gcp"
        assert [a["Outcome"] for a in dec_old.json()["Attempts"]] == ["ok"]
        # a blob whose first-priority member is refused falls through to the next one
        mk2 = _mk(world, "disabled-first", [members["aws"], members["hsm"]])
        world.api.post(world.broker.url(f"/keys/{members['aws']}/enable"))
        blob2 = world.api.post(world.broker.url(f"/multikeys/{mk2['MultiKeyId']}/encrypt"),
                               json={"Plaintext": b64(b"z")}).json()["CiphertextBlob"]
        world.api.post(world.broker.url(f"/keys/{members['aws']}/disable"))
        dec2 = world.api.post(world.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": blob2})
        assert dec2.status_code == 200 and dec2.json()["AnsweredBy"]["Provider"] == "hsm"
        assert [a["Outcome"] for a in dec2.json()["Attempts"]] == ["DisabledException", "ok"]
    finally:
        world.api.post(world.broker.url(f"/keys/{members['aws']}/enable"))


def test_validation(world: World, members: dict[str, str]) -> None:
    url = world.broker.url("/multikeys")
    assert world.api.post(url, json={"Name": "dup", "Members": [members["hsm"], members["hsm"]]}).status_code == 400
    assert world.api.post(url, json={"Name": "q", "Members": [members["hsm"]], "Quorum": 2}).status_code == 400
    rsa = world.key("hsm", KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    assert world.api.post(url, json={"Name": "rsa", "Members": [rsa]}).status_code == 400
    _mk(world, "named-once", [members["hsm"]])
    assert world.api.post(url, json={"Name": "named-once", "Members": [members["hsm"]]}).status_code == 409
    listed = world.api.get(url).json()["MultiKeys"]
    assert "named-once" in [m["Name"] for m in listed]


def test_policy_needs_encrypt_on_every_member_and_decrypt_on_the_answering_one(world: World,
                                                                               members: dict[str, str]) -> None:
    from broker.auth import TokenAuth
    from broker.store import Store

    a, b = members["aws"], members["aliyun"]
    mk = _mk(world, "policy", [a, b])["MultiKeyId"]

    def doc(statements: list[tuple[list[str], str]]) -> dict:
        return {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": acts, "Resource": f"key/{k}"} for acts, k in statements]}

    policies = {"mk-enc-a": doc([(["kms:Encrypt"], a)]),
                "mk-enc-both-dec-b": doc([(["kms:Encrypt"], a), (["kms:Encrypt", "kms:Decrypt"], b)])}
    for name, d in policies.items():
        assert world.api.put(world.broker.url(f"/policies/{name}"), json={"Document": d}).status_code == 200
    store = Store(f"sqlite:///{world.broker.data_dir / 'broker.db'}")
    try:
        tokens = TokenAuth(store)
        only_a = world.broker.session(tokens.create("mk-only-a", ["mk-enc-a"])[0])
        both = world.broker.session(tokens.create("mk-both", ["mk-enc-both-dec-b"])[0])
    finally:
        store.dispose()
    refused = only_a.post(world.broker.url(f"/multikeys/{mk}/encrypt"), json={"Plaintext": b64(b"p")})
    assert refused.status_code == 403, refused.text
    enc = both.post(world.broker.url(f"/multikeys/{mk}/encrypt"), json={"Plaintext": b64(b"p")})
    assert enc.status_code == 200, enc.text
    dec = both.post(world.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": enc.json()["CiphertextBlob"]})
    assert dec.status_code == 200, dec.text
    assert dec.json()["AnsweredBy"]["KeyId"] == b
    assert [x["Outcome"] for x in dec.json()["Attempts"]] == ["AccessDeniedException", "ok"]
    none = only_a.post(world.broker.url("/multikeys/decrypt"), json={"CiphertextBlob": enc.json()["CiphertextBlob"]})
    assert none.status_code == 403
