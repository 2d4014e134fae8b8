"""KeyService semantics directly (SQLite store + SoftHSM): happy paths, the bad inputs of the foundation issue, one
audit record per call (denied calls too), and "a failing call changes nothing in the store"."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from sqlalchemy import inspect, select, text, update

from broker import ciphertext as ct
from broker import errors
from broker.audit import verify_file
from broker.auth import Principal
from broker.model import KeySpec, signing_algorithms_for
from broker.service import MAX_PLAINTEXT, KeyService, RequestContext
from broker.store.tables import ImportTokenRow, KeyVersionRow

OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
_HASH = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def snapshot(svc: KeyService) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    out = {}
    with svc.store.engine.connect() as conn:
        for table in sorted(inspect(conn).get_table_names()):
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            out[table] = sorted((tuple(r) for r in rows), key=repr)
    return out


class Harness:
    """Calls the service and checks the audit contract: exactly one outcome record per call, with the right outcome;
    a call that changes state has its intent record first (durable before the change), which the outcome names."""

    def __init__(self, svc: KeyService, ctx: RequestContext) -> None:
        self.svc, self.ctx = svc, ctx

    def records(self) -> list[dict]:
        path = self.svc.audit.path
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def outcomes(self) -> list[dict]:
        """The one record per call: every record but the intents."""
        return [r for r in self.records() if r.get("phase") != "intent"]

    def _new(self, method: str, before: int, *, intent_due: bool | None) -> dict:
        """The records `method` wrote since `before`: its outcome, after its intent when one is due (None: an
        intent is allowed, e.g. a body that failed after authorization, but not required)."""
        new = self.records()[before:]
        outcomes = [r for r in new if r.get("phase") != "intent"]
        intents = [r for r in new if r.get("phase") == "intent"]
        assert len(outcomes) == 1, f"{method} wrote {len(outcomes)} outcome records"
        outcome = outcomes[0]
        mutates = getattr(type(self.svc), method).__declaration__.mutates
        if intent_due is None:
            intent_due = bool(intents) if mutates else False
        if intent_due and mutates:
            assert len(intents) == 1 and new.index(intents[0]) < new.index(outcome), f"{method}: no intent first"
            intent = intents[0]
            assert outcome["intent_seq"] == intent["seq"] and intent["outcome"] == "pending"
            assert (intent["action"], intent["request_id"]) == (outcome["action"], outcome["request_id"])
        else:
            assert not intents and "intent_seq" not in outcome, f"{method} wrote an intent it should not have"
        return outcome

    def ok(self, method: str, *args: Any, ctx: RequestContext | None = None, **kwargs: Any) -> Any:
        before = len(self.records())
        out = getattr(self.svc, method)(ctx or self.ctx, *args, **kwargs)
        record = self._new(method, before, intent_due=True)
        assert record["outcome"] == "allowed" and record["error_code"] is None
        return out

    def fails(self, error: type[errors.BrokerError], method: str, *args: Any, ctx: RequestContext | None = None,
              **kwargs: Any) -> errors.BrokerError:
        """The call raises `error`, leaves every table as it was, and writes one error/denied outcome record."""
        before_rows, before = snapshot(self.svc), len(self.records())
        with pytest.raises(error) as caught:
            getattr(self.svc, method)(ctx or self.ctx, *args, **kwargs)
        assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
        assert snapshot(self.svc) == before_rows, f"{method} changed the store although it failed"
        record = self._new(method, before, intent_due=False if error is errors.AccessDenied else None)
        expected_outcome = "denied" if error is errors.AccessDenied else "error"
        assert (record["outcome"], record["error_code"]) == (expected_outcome, error.code)
        return caught.value

    def key(self, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None, **kwargs: Any) -> str:
        key_id = self.ok("create_key", key_spec=spec, key_usage=usage, **kwargs)["KeyId"]
        assert self.records()[-2]["key_id"] == key_id  # the intent named the key before it existed
        return key_id

    def verify_audit(self) -> int:
        count, problem = verify_file(self.svc.audit.path)
        assert problem is None, problem
        return count


@pytest.fixture
def h(key_service: KeyService, root_ctx: RequestContext) -> Harness:
    harness = Harness(key_service, root_ctx)
    yield harness
    assert harness.verify_audit() == len(harness.records())


@pytest.fixture
def app_ctx() -> RequestContext:
    return RequestContext(Principal("app", "token", ("reader",)), front_door="test")


def later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


# ============================================================================================ lifecycle


@pytest.mark.parametrize(("spec", "usage"), [
    ("SYMMETRIC_DEFAULT", None), ("HMAC_256", None), ("HMAC_384", None), ("HMAC_512", None),
    ("RSA_2048", "ENCRYPT_DECRYPT"), ("RSA_2048", "SIGN_VERIFY"), ("ECC_NIST_P256", None), ("ECC_NIST_P384", None),
])
def test_create_and_describe(h: Harness, spec: str, usage: str | None) -> None:
    meta = h.ok("create_key", key_spec=spec, key_usage=usage, description="d", tags={"team": "x"})
    expected_usage = usage or {"SYMMETRIC_DEFAULT": "ENCRYPT_DECRYPT", "HMAC": "GENERATE_VERIFY_MAC",
                               "ECC": "SIGN_VERIFY"}[spec if spec == "SYMMETRIC_DEFAULT" else spec.split("_")[0]]
    assert (meta["KeySpec"], meta["KeyUsage"], meta["KeyState"], meta["Enabled"]) == (spec, expected_usage,
                                                                                       "Enabled", True)
    assert meta["Origin"] == "AWS_KMS" and meta["Provider"] == "hsm" and meta["PrimaryVersion"] == 1
    described = h.ok("describe_key", meta["KeyId"])
    assert described == meta
    assert h.ok("list_resource_tags", meta["KeyId"])["Tags"] == [{"TagKey": "team", "TagValue": "x"}]
    record = h.records()[-3]
    assert (record["action"], record["key_id"], record["provider"]) == ("kms:CreateKey", meta["KeyId"], "hsm")


@pytest.mark.parametrize("kwargs", [
    {"key_spec": "AES_256"},
    {"key_spec": "HMAC_256", "key_usage": "ENCRYPT_DECRYPT"},
    {"key_spec": "ECC_NIST_P256", "key_usage": "ENCRYPT_DECRYPT"},
    {"key_spec": "SYMMETRIC_DEFAULT", "key_usage": "SIGN"},
    {"origin": "CLOUD"},
    {"description": 5},
    {"description": "x" * 8193},
    {"tags": {"": "v"}},
    {"tags": [{"Key": "a"}]},
    {"tags": {f"t{i}": "v" for i in range(51)}},
    {"provider": "nowhere"},
], ids=lambda kw: ",".join(kw))
def test_create_key_bad_input(h: Harness, kwargs: dict) -> None:
    h.fails(errors.ValidationError, "create_key", **kwargs)


def test_list_keys_paginates(h: Harness) -> None:
    ids = sorted(h.key() for _ in range(5))
    seen, marker = [], None
    while True:
        page = h.ok("list_keys", limit=2, marker=marker)
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert seen == ids
    for limit in (0, 1001, "2"):
        h.fails(errors.ValidationError, "list_keys", limit=limit)


def test_list_keys_pages_past_destroyed_keys(h: Harness) -> None:
    ids = sorted(h.key() for _ in range(6))
    for doomed in ids[1:4]:
        h.ok("schedule_key_deletion", doomed, 7)
    assert sorted(h.svc.run_due_jobs(h.ctx, now=later(8))["destroyed"]) == ids[1:4]
    seen, marker = [], None
    while True:
        page = h.ok("list_keys", limit=2, marker=marker)
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert seen == [ids[0], *ids[4:]]


def test_unknown_key_is_not_found(h: Harness) -> None:
    for method, args in [("describe_key", ("00000000-0000-0000-0000-000000000000",)),
                         ("encrypt", ("alias/none", b"x")), ("disable_key", ("nope",)),
                         ("describe_key", ("x" * 300,))]:
        h.fails(errors.NotFound, method, *args)
    h.fails(errors.ValidationError, "describe_key", "")


def test_update_description_enable_disable(h: Harness) -> None:
    key = h.key()
    h.ok("update_key_description", key, "new words")
    assert h.ok("describe_key", key)["Description"] == "new words"
    h.fails(errors.ValidationError, "update_key_description", key, None)
    h.ok("disable_key", key)
    assert h.ok("describe_key", key)["KeyState"] == "Disabled"
    h.ok("disable_key", key)  # idempotent, as in AWS
    h.ok("enable_key", key)
    assert h.ok("describe_key", key)["Enabled"] is True


def test_schedule_and_cancel_deletion(h: Harness) -> None:
    key = h.key()
    for days in (6, 31, True, "7"):
        h.fails(errors.ValidationError, "schedule_key_deletion", key, days)
    out = h.ok("schedule_key_deletion", key, 7)
    assert out["KeyState"] == "PendingDeletion" and out["PendingWindowInDays"] == 7
    meta = h.ok("describe_key", key)
    assert meta["KeyState"] == "PendingDeletion" and "DeletionDate" in meta
    h.fails(errors.InvalidState, "schedule_key_deletion", key, 7)
    h.fails(errors.InvalidState, "enable_key", key)
    h.fails(errors.InvalidState, "disable_key", key)
    h.ok("cancel_key_deletion", key)
    meta = h.ok("describe_key", key)
    assert meta["KeyState"] == "Disabled" and "DeletionDate" not in meta
    h.fails(errors.InvalidState, "cancel_key_deletion", key)


def test_describe_of_an_old_key_pending_deletion(h: Harness) -> None:
    """DescribeKey reports the deletion date; it must not invent a window from the key's age."""
    from broker.store.tables import KeyRow

    key = h.key()
    with h.svc.store.session() as s:
        s.execute(update(KeyRow).where(KeyRow.key_id == key).values(created_at=datetime.now(UTC) - timedelta(days=100)))
    scheduled = h.ok("schedule_key_deletion", key, 7)
    meta = h.ok("describe_key", key)
    assert meta["DeletionDate"] == scheduled["DeletionDate"]
    assert meta.get("PendingDeletionWindowInDays", 7) == 7


def test_hsm_unavailable_is_a_dependency_error_and_changes_nothing(h: Harness, hsm_token) -> None:
    key = h.key()
    blob = h.ok("encrypt", key, b"x")["CiphertextBlob"]
    h.svc.providers["hsm"] = hsm_token.provider("hsm", token_label="unplugged")  # a fresh process' view
    h.fails(errors.DependencyTimeout, "create_key")
    h.fails(errors.DependencyTimeout, "encrypt", key, b"x")
    h.fails(errors.DependencyTimeout, "decrypt", blob)
    h.fails(errors.DependencyTimeout, "rotate_key_on_demand", key)
    assert set(h.svc.readiness()) == {"hsm"} and h.svc.readiness()["hsm"].startswith("unavailable")


# ============================================================================================ symmetric


def test_encrypt_decrypt_round_trip(h: Harness) -> None:
    key = h.key()
    context = {"tenant": "t-1", "purpose": "test"}
    for size in (1, 100, MAX_PLAINTEXT):
        plaintext = os.urandom(size)
        out = h.ok("encrypt", key, plaintext, context=context)
        assert out["KeyId"] == key and out["KeyVersion"] == 1
        blob = out["CiphertextBlob"]
        assert size < 16 or plaintext not in blob
        back = h.ok("decrypt", blob, context=dict(reversed(list(context.items()))))
        assert back["Plaintext"] == plaintext and back["KeyId"] == key
        assert h.ok("decrypt", blob, key_ref=key, context=context)["Plaintext"] == plaintext
    h.ok("create_alias", "alias/app", key)
    blob = h.ok("encrypt", "alias/app", b"via alias")["CiphertextBlob"]
    assert h.ok("decrypt", blob, key_ref="alias/app")["Plaintext"] == b"via alias"
    # the encryption context never reaches the audit log in clear
    assert "t-1" not in h.svc.audit.path.read_text()
    assert h.records()[-1]["action"] == "kms:Decrypt"


@pytest.mark.parametrize("plaintext", [b"", b"x" * (MAX_PLAINTEXT + 1), "text", None])
def test_encrypt_rejects_bad_plaintext(h: Harness, plaintext: Any) -> None:
    key = h.key()
    h.fails(errors.ValidationError, "encrypt", key, plaintext)


@pytest.mark.parametrize("context", [{"a": 1}, ["a"], "a=b", {1: "a"}])
def test_encrypt_rejects_bad_context(h: Harness, context: Any) -> None:
    key = h.key()
    h.fails(errors.ValidationError, "encrypt", key, b"x", context=context)


def test_wrong_context_is_invalid_ciphertext(h: Harness) -> None:
    key = h.key()
    blob = h.ok("encrypt", key, b"bound", context={"k": "v"})["CiphertextBlob"]
    for wrong in (None, {}, {"k": "w"}, {"k": "v", "extra": ""}, {"K": "v"}):
        h.fails(errors.InvalidCiphertext, "decrypt", blob, context=wrong)
    plain = h.ok("encrypt", key, b"unbound")["CiphertextBlob"]
    h.fails(errors.InvalidCiphertext, "decrypt", plain, context={"k": "v"})
    assert h.ok("decrypt", blob, context={"k": "v"})["Plaintext"] == b"bound"


def test_every_single_byte_change_and_truncation_is_rejected(h: Harness) -> None:
    key = h.key()
    blob = h.ok("encrypt", key, b"0123456789", context={"a": "b"})["CiphertextBlob"]
    before = snapshot(h.svc)
    for pos in range(len(blob)):
        for delta in (0x01, 0x80, 0xFF) if pos < 10 + 36 else (0x01,):  # the header: several changes per byte
            tampered = bytearray(blob)
            tampered[pos] ^= delta
            h.fails(errors.InvalidCiphertext, "decrypt", bytes(tampered), context={"a": "b"})
    for cut in range(1, len(blob)):
        h.fails(errors.InvalidCiphertext, "decrypt", blob[:cut], context={"a": "b"})
    h.fails(errors.InvalidCiphertext, "decrypt", blob + b"\x00", context={"a": "b"})
    for bad in (b"\x00" * 64, b"not a ciphertext at all", os.urandom(100)):
        h.fails(errors.InvalidCiphertext, "decrypt", bad)
    h.fails(errors.ValidationError, "decrypt", b"")
    h.fails(errors.ValidationError, "decrypt", "base64-text-not-bytes")
    assert snapshot(h.svc) == before
    assert h.ok("decrypt", blob, context={"a": "b"})["Plaintext"] == b"0123456789"


def test_ciphertext_claiming_the_envelope_scheme_is_invalid(h: Harness) -> None:
    """A blob whose header names the other scheme is a tampered ciphertext, not an unsupported operation."""
    key = h.key()
    blob = bytearray(h.ok("encrypt", key, b"data" * 20)["CiphertextBlob"])
    blob[3] = 2
    h.fails(errors.InvalidCiphertext, "decrypt", bytes(blob))
    # a well-formed envelope body under the key's real header: the HSM key is not an envelope key
    forged = ct.pack(ct.Header(ct.Scheme.ENVELOPE, key, 1), ct.pack_envelope(os.urandom(40), os.urandom(60)))
    h.fails(errors.InvalidCiphertext, "decrypt", forged)


def test_decrypt_with_the_wrong_key_named(h: Harness) -> None:
    a, b = h.key(), h.key()
    blob = h.ok("encrypt", a, b"for a")["CiphertextBlob"]
    h.fails(errors.IncorrectKey, "decrypt", blob, key_ref=b)


def test_disabled_key_refuses_use(h: Harness) -> None:
    key, mac, sig = h.key(), h.key("HMAC_256"), h.key("ECC_NIST_P256")
    blob = h.ok("encrypt", key, b"x")["CiphertextBlob"]
    for k in (key, mac, sig):
        h.ok("disable_key", k)
    h.fails(errors.Disabled, "encrypt", key, b"x")
    h.fails(errors.Disabled, "decrypt", blob)
    h.fails(errors.Disabled, "generate_data_key", key, key_spec="AES_256")
    h.fails(errors.Disabled, "re_encrypt", blob, key)
    h.fails(errors.Disabled, "generate_mac", mac, b"m", "HMAC_SHA_256")
    h.fails(errors.Disabled, "sign", sig, b"m", "ECDSA_SHA_256")
    h.fails(errors.Disabled, "get_public_key", sig)
    h.fails(errors.Disabled, "rotate_key_on_demand", key)
    h.ok("enable_key", key)
    assert h.ok("decrypt", blob)["Plaintext"] == b"x"


def test_pending_deletion_key_refuses_use(h: Harness) -> None:
    key, sig = h.key(), h.key("ECC_NIST_P256")
    blob = h.ok("encrypt", key, b"x")["CiphertextBlob"]
    h.ok("schedule_key_deletion", key, 7)
    h.ok("schedule_key_deletion", sig, 30)
    h.fails(errors.InvalidState, "encrypt", key, b"x")
    h.fails(errors.InvalidState, "decrypt", blob)
    h.fails(errors.InvalidState, "generate_data_key", key, number_of_bytes=16)
    h.fails(errors.InvalidState, "sign", sig, b"m", "ECDSA_SHA_256")
    h.ok("cancel_key_deletion", key)
    h.fails(errors.Disabled, "decrypt", blob)


def test_wrong_usage(h: Harness) -> None:
    sym, sig, mac = h.key(), h.key("ECC_NIST_P256"), h.key("HMAC_384")
    rsa_sign = h.key("RSA_2048", "SIGN_VERIFY")
    h.fails(errors.InvalidKeyUsage, "encrypt", sig, b"x")
    h.fails(errors.InvalidKeyUsage, "encrypt", mac, b"x")
    h.fails(errors.InvalidKeyUsage, "encrypt", rsa_sign, b"x", algorithm="RSAES_OAEP_SHA_1")
    h.fails(errors.InvalidKeyUsage, "generate_data_key", sig, key_spec="AES_256")
    h.fails(errors.InvalidKeyUsage, "sign", sym, b"m", "ECDSA_SHA_256")
    h.fails(errors.InvalidKeyUsage, "sign", mac, b"m", "ECDSA_SHA_256")
    h.fails(errors.InvalidKeyUsage, "sign", sig, b"m", "ECDSA_SHA_384")  # the wrong curve's algorithm
    h.fails(errors.InvalidKeyUsage, "sign", sig, b"m", "RSASSA_PSS_SHA_256")
    h.fails(errors.ValidationError, "sign", sig, b"m", "ECDSA_SHA_999")
    h.fails(errors.InvalidKeyUsage, "generate_mac", sym, b"m", "HMAC_SHA_256")
    h.fails(errors.InvalidKeyUsage, "generate_mac", mac, b"m", "HMAC_SHA_256")  # HMAC_384 key
    h.fails(errors.InvalidKeyUsage, "verify_mac", sig, b"m", b"0" * 32, "HMAC_SHA_256")


# ============================================================================================ re-encrypt, data keys


def test_re_encrypt(h: Harness) -> None:
    a, b = h.key(), h.key()
    blob = h.ok("encrypt", a, b"move me", context={"from": "a"})["CiphertextBlob"]
    out = h.ok("re_encrypt", blob, b, source_context={"from": "a"}, destination_context={"to": "b"})
    assert (out["SourceKeyId"], out["KeyId"]) == (a, b)
    record = h.records()[-1]
    assert (record["action"], record["key_id"], record["source_key_id"]) == ("kms:ReEncrypt", b, a)
    assert h.ok("decrypt", out["CiphertextBlob"], context={"to": "b"})["Plaintext"] == b"move me"
    h.fails(errors.InvalidCiphertext, "decrypt", out["CiphertextBlob"], context={"from": "a"})
    h.fails(errors.InvalidCiphertext, "re_encrypt", blob, b, source_context={"from": "x"})
    h.fails(errors.IncorrectKey, "re_encrypt", blob, b, source_context={"from": "a"}, source_key_ref=b)
    h.fails(errors.NotFound, "re_encrypt", blob, "alias/missing", source_context={"from": "a"})
    rsa_key = h.key("RSA_2048", "ENCRYPT_DECRYPT")
    h.fails(errors.Unsupported, "re_encrypt", blob, rsa_key, source_context={"from": "a"})
    h.ok("disable_key", b)
    h.fails(errors.Disabled, "re_encrypt", blob, b, source_context={"from": "a"})


def test_generate_data_key(h: Harness) -> None:
    key = h.key()
    out = h.ok("generate_data_key", key, key_spec="AES_256", context={"c": "1"})
    assert len(out["Plaintext"]) == 32
    assert h.ok("decrypt", out["CiphertextBlob"], context={"c": "1"})["Plaintext"] == out["Plaintext"]
    out = h.ok("generate_data_key_without_plaintext", key, number_of_bytes=7)
    assert "Plaintext" not in out and len(h.ok("decrypt", out["CiphertextBlob"])["Plaintext"]) == 7
    assert h.records()[-2]["action"] == "kms:GenerateDataKeyWithoutPlaintext"
    for kwargs in ({}, {"key_spec": "AES_256", "number_of_bytes": 32}, {"key_spec": "AES_512"},
                   {"number_of_bytes": 0}, {"number_of_bytes": 1025}):
        h.fails(errors.ValidationError, "generate_data_key", key, **kwargs)


@pytest.mark.parametrize("pair_spec", ["ECC_NIST_P256", "RSA_2048"])
def test_generate_data_key_pair(h: Harness, pair_spec: str) -> None:
    key = h.key()
    out = h.ok("generate_data_key_pair", key, pair_spec, context={"p": "q"})
    private = serialization.load_der_private_key(out["PrivateKeyPlaintext"], None)
    assert private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == out["PublicKey"]
    sealed = h.ok("decrypt", out["PrivateKeyCiphertextBlob"], context={"p": "q"})["Plaintext"]
    assert sealed == out["PrivateKeyPlaintext"]
    h.fails(errors.ValidationError, "generate_data_key_pair", key, "DSA_1024")


def test_generate_random(h: Harness) -> None:
    a = h.ok("generate_random", 32)["Plaintext"]
    assert len(a) == 32 and a != h.ok("generate_random", 32)["Plaintext"]
    for n in (0, 1025, "8"):
        h.fails(errors.ValidationError, "generate_random", n)
    h.fails(errors.ValidationError, "generate_random", 8, provider="nowhere")


# ============================================================================================ asymmetric, MAC


def _verify_locally(public_der: bytes, algorithm: str, message: bytes, signature: bytes) -> None:
    public = serialization.load_der_public_key(public_der)
    hash_name = "sha" + algorithm.rsplit("_", 1)[1]
    h = _HASH[hash_name]()
    digest = hashlib.new(hash_name, message).digest()
    if algorithm.startswith("ECDSA"):
        public.verify(signature, digest, ec.ECDSA(Prehashed(h)))
    elif "PSS" in algorithm:
        public.verify(signature, digest, padding.PSS(padding.MGF1(h), h.digest_size), Prehashed(h))
    else:
        public.verify(signature, digest, padding.PKCS1v15(), Prehashed(h))


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1", "RSA_2048"])
def test_sign_verify_every_algorithm(h: Harness, spec: str) -> None:
    key = h.key(spec, "SIGN_VERIFY")
    public = h.ok("get_public_key", key)
    assert public["SigningAlgorithms"] == [a.value for a in signing_algorithms_for(KeySpec(spec))]
    for algorithm in public["SigningAlgorithms"]:
        message = f"signed with {algorithm}".encode()
        signature = h.ok("sign", key, message, algorithm)["Signature"]
        _verify_locally(public["PublicKey"], algorithm, message, signature)
        assert h.ok("verify", key, message, signature, algorithm)["SignatureValid"] is True
        digest = hashlib.new("sha" + algorithm.rsplit("_", 1)[1], message).digest()
        assert h.ok("verify", key, digest, signature, algorithm, message_type="DIGEST")["SignatureValid"]
        h.fails(errors.InvalidSignature, "verify", key, message + b"!", signature, algorithm)
        h.fails(errors.ValidationError, "sign", key, digest[:-1], algorithm, message_type="DIGEST")
    h.fails(errors.ValidationError, "sign", key, b"m", public["SigningAlgorithms"][0], message_type="HEX")


def test_rsa_encryption_routing_needs_a_provider_that_decrypts_oaep_sha256(h: Harness) -> None:
    """`rsa_encryption_provider` is checked when the service starts: SoftHSM 2.6.1 cannot decrypt OAEP-SHA-256,
    so it cannot be the target; an unknown name neither. Without routing, RSA encryption keys stay on the HSM."""
    svc = h.svc
    for name in ("hsm", "nope"):
        with pytest.raises(ValueError, match="RSAES_OAEP_SHA_256"):
            KeyService(svc.store, svc.providers, "hsm", svc.policy, svc.audit, root=svc.root,
                       rsa_encryption_provider=name)
    assert svc.provider_for_new_key(None, "RSA_2048", "ENCRYPT_DECRYPT") == "hsm"
    assert h.ok("describe_key", h.key("RSA_2048", "ENCRYPT_DECRYPT"))["Provider"] == "hsm"


def test_rsa_encrypt_decrypt(h: Harness) -> None:
    key = h.key("RSA_2048", "ENCRYPT_DECRYPT")
    public = serialization.load_der_public_key(h.ok("get_public_key", key)["PublicKey"])
    blob = h.ok("encrypt", key, b"rsa secret", algorithm="RSAES_OAEP_SHA_1")["CiphertextBlob"]
    assert h.ok("decrypt", blob, key_ref=key, algorithm="RSAES_OAEP_SHA_1")["Plaintext"] == b"rsa secret"
    local = public.encrypt(b"made locally", OAEP_SHA1)
    assert h.ok("decrypt", local, key_ref=key, algorithm="RSAES_OAEP_SHA_1")["Plaintext"] == b"made locally"
    h.fails(errors.ValidationError, "encrypt", key, b"x" * 215, algorithm="RSAES_OAEP_SHA_1")
    h.fails(errors.ValidationError, "encrypt", key, b"x", algorithm="SYMMETRIC_DEFAULT")
    h.fails(errors.InvalidCiphertext, "decrypt", blob[:-1] + bytes([blob[-1] ^ 1]), key_ref=key,
            algorithm="RSAES_OAEP_SHA_1")


def test_every_advertised_rsa_encryption_algorithm_decrypts(h: Harness) -> None:
    """What Encrypt accepts (and DescribeKey advertises), Decrypt must be able to undo; the rest is refused up front."""
    key = h.key("RSA_2048", "ENCRYPT_DECRYPT")
    advertised = h.ok("describe_key", key)["EncryptionAlgorithms"]
    assert advertised == ["RSAES_OAEP_SHA_1"]  # the pkcs11 provider declares what SoftHSM can do
    blob = h.ok("encrypt", key, b"x" * 190, algorithm="RSAES_OAEP_SHA_1")["CiphertextBlob"]
    assert h.ok("decrypt", blob, key_ref=key, algorithm="RSAES_OAEP_SHA_1")["Plaintext"] == b"x" * 190
    h.fails(errors.Unsupported, "encrypt", key, b"x", algorithm="RSAES_OAEP_SHA_256")
    h.fails(errors.Unsupported, "decrypt", blob, key_ref=key, algorithm="RSAES_OAEP_SHA_256")


def test_get_public_key_of_a_symmetric_key(h: Harness) -> None:
    h.fails(errors.Unsupported, "get_public_key", h.key())


@pytest.mark.parametrize("bits", [256, 384, 512])
def test_mac(h: Harness, bits: int) -> None:
    key = h.key(f"HMAC_{bits}")
    algorithm = f"HMAC_SHA_{bits}"
    mac = h.ok("generate_mac", key, b"message", algorithm)["Mac"]
    assert len(mac) == bits // 8
    assert h.ok("generate_mac", key, b"message", algorithm)["Mac"] == mac
    assert h.ok("verify_mac", key, b"message", mac, algorithm)["MacValid"] is True
    h.fails(errors.InvalidMac, "verify_mac", key, b"message!", mac, algorithm)
    h.fails(errors.InvalidMac, "verify_mac", key, b"message", bytes([mac[0] ^ 1]) + mac[1:], algorithm)
    h.fails(errors.ValidationError, "generate_mac", key, b"", algorithm)


# ============================================================================================ aliases, tags


def test_aliases(h: Harness) -> None:
    a, b = h.key(), h.key()
    h.ok("create_alias", "alias/one", a)
    h.fails(errors.AlreadyExists, "create_alias", "alias/one", b)
    for bad in ("one", "alias/", "alias/aws/x", "alias/sp ace", None):
        h.fails(errors.ValidationError, "create_alias", bad, a)
    h.fails(errors.NotFound, "create_alias", "alias/two", "missing-key")
    assert h.ok("describe_key", "alias/one")["KeyId"] == a
    h.ok("update_alias", "alias/one", b)
    assert h.ok("describe_key", "alias/one")["KeyId"] == b
    h.fails(errors.NotFound, "update_alias", "alias/none", b)
    listed = h.ok("list_aliases")["Aliases"]
    assert [(x["AliasName"], x["TargetKeyId"]) for x in listed] == [("alias/one", b)]
    assert h.ok("list_aliases", a)["Aliases"] == []
    h.ok("delete_alias", "alias/one")
    h.fails(errors.NotFound, "delete_alias", "alias/one")
    h.fails(errors.NotFound, "describe_key", "alias/one")


def test_tags(h: Harness) -> None:
    key = h.key(tags=[{"TagKey": "a", "TagValue": "1"}])
    h.ok("tag_resource", key, {"b": "2", "a": "3"})
    assert h.ok("list_resource_tags", key)["Tags"] == [{"TagKey": "a", "TagValue": "3"},
                                                         {"TagKey": "b", "TagValue": "2"}]
    h.ok("untag_resource", key, ["a"])
    assert h.ok("list_resource_tags", key)["Tags"] == [{"TagKey": "b", "TagValue": "2"}]
    h.fails(errors.LimitExceeded, "tag_resource", key, {f"t{i}": "v" for i in range(50)})
    h.fails(errors.ValidationError, "tag_resource", key, {"k": 1})
    h.fails(errors.ValidationError, "untag_resource", key, "b")


# ============================================================================================ rotation, due jobs


def test_rotation_on_demand_keeps_old_ciphertexts(h: Harness) -> None:
    key = h.key()
    old = h.ok("encrypt", key, b"old", context={"v": "1"})["CiphertextBlob"]
    assert h.ok("rotate_key_on_demand", key)["KeyVersion"] == 2
    new = h.ok("encrypt", key, b"new", context={"v": "2"})
    assert new["KeyVersion"] == 2
    back = h.ok("decrypt", old, context={"v": "1"})
    assert (back["Plaintext"], back["KeyVersion"]) == (b"old", 1)
    assert h.ok("decrypt", new["CiphertextBlob"], context={"v": "2"})["Plaintext"] == b"new"
    assert [(r["KeyVersion"], r["RotationType"]) for r in h.ok("list_key_rotations", key)["Rotations"]] == [
        (2, "ON_DEMAND")]
    versions = h.ok("list_key_versions", key)
    assert versions["PrimaryVersion"] == 2 and [v["KeyVersion"] for v in versions["Versions"]] == [1, 2]
    h.fails(errors.Unsupported, "rotate_key_on_demand", h.key("HMAC_256"))
    external = h.key(origin="EXTERNAL")
    h.fails(errors.Unsupported, "rotate_key_on_demand", external)


def test_rotation_schedule_and_due_job(h: Harness) -> None:
    key = h.key()
    old = h.ok("encrypt", key, b"before rotation")["CiphertextBlob"]
    for period in (89, 2561, "90", True):
        h.fails(errors.ValidationError, "enable_key_rotation", key, period)
    h.ok("enable_key_rotation", key, 90)
    status = h.ok("get_key_rotation_status", key)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 90
    before = len(h.records())
    assert h.svc.run_due_jobs(h.ctx, now=later(89)) == {"destroyed": [], "rotated": []}
    assert len(h.records()) == before  # nothing was due, nothing happened
    assert h.svc.run_due_jobs(h.ctx, now=later(91)) == {"destroyed": [], "rotated": [key]}
    records = h.records()[before:]
    assert [(r["action"], r["key_id"], r["key_version"], r["outcome"]) for r in records] == [
        ("broker:RotateKey", key, None, "pending"), ("broker:RotateKey", key, 2, "allowed")]
    assert h.svc.run_due_jobs(h.ctx, now=later(91)) == {"destroyed": [], "rotated": []}  # next one is 90 days on
    assert [(r["KeyVersion"], r["RotationType"]) for r in h.ok("list_key_rotations", key)["Rotations"]] == [
        (2, "AUTOMATIC")]
    assert h.ok("describe_key", key)["PrimaryVersion"] == 2
    next_at = datetime.fromisoformat(h.ok("get_key_rotation_status", key)["NextRotationDate"])
    assert later(180) < next_at < later(182)
    assert h.ok("decrypt", old)["Plaintext"] == b"before rotation"
    assert h.ok("encrypt", key, b"x")["KeyVersion"] == 2
    h.ok("disable_key_rotation", key)
    assert h.ok("get_key_rotation_status", key)["KeyRotationEnabled"] is False
    assert h.svc.run_due_jobs(h.ctx, now=later(1000))["rotated"] == []


def test_due_job_destroys_a_key_scheduled_for_deletion(h: Harness) -> None:
    key, keep = h.key(), h.key()
    blob = h.ok("encrypt", key, b"doomed")["CiphertextBlob"]
    h.ok("rotate_key_on_demand", key)
    h.ok("create_alias", "alias/doomed", key)
    h.ok("schedule_key_deletion", key, 7)
    assert h.svc.run_due_jobs(h.ctx, now=later(6.9)) == {"destroyed": [], "rotated": []}
    before = len(h.records())
    assert h.svc.run_due_jobs(h.ctx, now=later(7.1)) == {"destroyed": [key], "rotated": []}
    assert [(r["action"], r["key_id"], r["outcome"]) for r in h.records()[before:]] == [
        ("broker:DestroyKey", key, "pending"), ("broker:DestroyKey", key, "allowed")]
    with h.svc.store.session() as s:
        rows = s.execute(select(KeyVersionRow.version, KeyVersionRow.provider_ref, KeyVersionRow.state)
                         .where(KeyVersionRow.key_id == key)).all()
    assert [(v, state) for v, _, state in rows] == [(1, "Destroyed"), (2, "Destroyed")]
    assert all("material" not in json.loads(ref) for _, ref, _ in rows)
    h.fails(errors.NotFound, "describe_key", key)
    h.fails(errors.NotFound, "describe_key", "alias/doomed")
    h.fails(errors.InvalidCiphertext, "decrypt", blob)
    assert key not in [k["KeyId"] for k in h.ok("list_keys")["Keys"]]
    assert h.ok("describe_key", keep)["KeyState"] == "Enabled"
    assert h.svc.run_due_jobs(h.ctx, now=later(30)) == {"destroyed": [], "rotated": []}


# ============================================================================================ import


def _wrap(public_der: bytes, material: bytes, algorithm: str) -> bytes:
    public = serialization.load_der_public_key(public_der)
    if algorithm == "RSAES_OAEP_SHA_1":
        return public.encrypt(material, OAEP_SHA1)
    ephemeral = os.urandom(32)
    return public.encrypt(ephemeral, OAEP_SHA1) + aes_key_wrap_with_padding(ephemeral, material)


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"])
def test_import_key_material(h: Harness, algorithm: str) -> None:
    key = h.key(origin="EXTERNAL")
    meta = h.ok("describe_key", key)
    assert (meta["KeyState"], meta["Origin"]) == ("PendingImport", "EXTERNAL")
    h.fails(errors.InvalidState, "encrypt", key, b"x")
    h.fails(errors.ValidationError, "get_parameters_for_import", key, "RSAES_OAEP_SHA_256")
    h.fails(errors.ValidationError, "get_parameters_for_import", key, algorithm, wrapping_key_spec="RSA_4096")
    h.fails(errors.Unsupported, "get_parameters_for_import", h.key(), algorithm)
    params = h.ok("get_parameters_for_import", key, algorithm)
    known = os.urandom(32)
    h.fails(errors.InvalidImportToken, "import_key_material", key, b"bogus", _wrap(params["PublicKey"], known,
                                                                                   algorithm))
    h.fails(errors.IncorrectKeyMaterial, "import_key_material", key, params["ImportToken"], os.urandom(256))
    h.fails(errors.IncorrectKeyMaterial, "import_key_material", key, params["ImportToken"],
            _wrap(params["PublicKey"], os.urandom(16), algorithm))
    h.ok("import_key_material", key, params["ImportToken"], _wrap(params["PublicKey"], known, algorithm))
    assert h.ok("describe_key", key)["KeyState"] == "Enabled"
    blob = h.ok("encrypt", key, b"under imported", context={"a": "b"})["CiphertextBlob"]
    header_len = 10 + len(key)
    body = blob[header_len:]
    assert AESGCM(known).decrypt(body[:12], body[12:], blob[:header_len] + b'{"a":"b"}') == b"under imported"
    # the token was used up
    h.fails(errors.InvalidImportToken, "import_key_material", key, params["ImportToken"],
            _wrap(params["PublicKey"], known, algorithm))
    h.fails(errors.Unsupported, "delete_imported_key_material", h.key())
    h.ok("delete_imported_key_material", key)
    assert h.ok("describe_key", key)["KeyState"] == "PendingImport"
    h.fails(errors.InvalidState, "encrypt", key, b"x")
    h.fails(errors.InvalidState, "delete_imported_key_material", key)
    again = h.ok("get_parameters_for_import", key, algorithm)
    h.ok("import_key_material", key, again["ImportToken"], _wrap(again["PublicKey"], known, algorithm))
    assert h.ok("decrypt", blob, context={"a": "b"})["Plaintext"] == b"under imported"


def test_reimport_into_a_key_with_material_needs_the_same_material(h: Harness) -> None:
    """As in AWS KMS: re-importing is allowed only with the same material, else old ciphertexts would be lost."""
    key = h.key(origin="EXTERNAL")
    known = os.urandom(32)
    params = h.ok("get_parameters_for_import", key, "RSAES_OAEP_SHA_1")
    h.ok("import_key_material", key, params["ImportToken"], _wrap(params["PublicKey"], known, "RSAES_OAEP_SHA_1"))
    blob = h.ok("encrypt", key, b"keep me")["CiphertextBlob"]
    params = h.ok("get_parameters_for_import", key, "RSA_AES_KEY_WRAP_SHA_1")
    h.fails(errors.IncorrectKeyMaterial, "import_key_material", key, params["ImportToken"],
            _wrap(params["PublicKey"], os.urandom(32), "RSA_AES_KEY_WRAP_SHA_1"))
    assert h.ok("decrypt", blob)["Plaintext"] == b"keep me"
    h.ok("import_key_material", key, params["ImportToken"],
         _wrap(params["PublicKey"], known, "RSA_AES_KEY_WRAP_SHA_1"))
    assert h.ok("decrypt", blob)["Plaintext"] == b"keep me"


def test_cancelled_deletion_of_a_key_without_material_is_pending_import(h: Harness) -> None:
    key = h.key(origin="EXTERNAL")
    params = h.ok("get_parameters_for_import", key, "RSAES_OAEP_SHA_1")
    h.ok("import_key_material", key, params["ImportToken"], _wrap(params["PublicKey"], os.urandom(32),
                                                                  "RSAES_OAEP_SHA_1"))
    h.ok("delete_imported_key_material", key)
    h.ok("schedule_key_deletion", key, 7)
    h.ok("cancel_key_deletion", key)
    assert h.ok("describe_key", key)["KeyState"] == "PendingImport"
    h.fails(errors.InvalidState, "enable_key", key)


def test_expired_import_token(h: Harness) -> None:
    key, other = h.key(origin="EXTERNAL"), h.key(origin="EXTERNAL")
    params = h.ok("get_parameters_for_import", key, "RSAES_OAEP_SHA_1")
    other_params = h.ok("get_parameters_for_import", other, "RSAES_OAEP_SHA_1")
    wrapped = _wrap(params["PublicKey"], os.urandom(32), "RSAES_OAEP_SHA_1")
    h.fails(errors.InvalidImportToken, "import_key_material", key, other_params["ImportToken"], wrapped)
    with h.svc.store.session() as s:
        s.execute(update(ImportTokenRow).where(ImportTokenRow.key_id == key)
                  .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    h.fails(errors.ExpiredImportToken, "import_key_material", key, params["ImportToken"], wrapped)
    assert h.ok("describe_key", key)["KeyState"] == "PendingImport"


# ============================================================================================ authorization, audit


def test_denied_calls_are_audited_and_change_nothing(h: Harness, app_ctx: RequestContext) -> None:
    key = h.key()
    blob = h.ok("encrypt", key, b"x")["CiphertextBlob"]
    h.fails(errors.AccessDenied, "create_key", ctx=app_ctx)
    h.fails(errors.AccessDenied, "encrypt", key, b"x", ctx=app_ctx)
    h.fails(errors.AccessDenied, "decrypt", blob, ctx=app_ctx)
    h.fails(errors.AccessDenied, "disable_key", key, ctx=app_ctx)
    h.fails(errors.AccessDenied, "schedule_key_deletion", key, 7, ctx=app_ctx)
    h.fails(errors.AccessDenied, "create_alias", "alias/x", key, ctx=app_ctx)
    h.fails(errors.AccessDenied, "list_keys", ctx=app_ctx)
    h.fails(errors.AccessDenied, "generate_random", 8, ctx=app_ctx)
    denied = [r for r in h.records() if r["outcome"] == "denied"]
    assert len(denied) == 8
    assert all(r["principal"] == "app" and r["error_code"] == "AccessDeniedException" for r in denied)
    assert {r["key_id"] for r in denied if r["action"] in ("kms:Encrypt", "kms:DisableKey")} == {key}
    assert h.ok("describe_key", key)["KeyState"] == "Enabled"


def test_audit_chain_verifies_and_detects_edits(h: Harness) -> None:
    key = h.key()
    h.ok("encrypt", key, b"x", context={"secret-looking": "value-123"})
    h.fails(errors.NotFound, "describe_key", "missing")
    count = h.verify_audit()
    assert count == len(h.records()) == 4  # CreateKey's intent and outcome, Encrypt, DescribeKey
    text_ = h.svc.audit.path.read_text()
    assert "value-123" not in text_
    assert h.records()[2]["encryption_context"]["secret-looking"].startswith("hmac-sha256:")
    lines = text_.splitlines()
    edited = json.loads(lines[2])
    edited["principal"] = "someone-else"
    tampered = h.svc.audit.path.with_name("tampered.jsonl")
    tampered.write_text("\n".join([*lines[:2], json.dumps(edited), lines[3]]) + "\n")
    assert verify_file(tampered)[1] is not None
    tampered.write_text("\n".join([*lines[:2], lines[3]]) + "\n")
    assert verify_file(tampered)[1] is not None


@pytest.mark.parametrize(("call", "intent"), [
    (lambda h, k: h.svc.encrypt(h.ctx, k, b"x"), False),
    (lambda h, k: h.svc.describe_key(h.ctx, k), False),
    (lambda h, k: h.svc.list_keys(h.ctx), False),
    (lambda h, k: h.svc.generate_random(h.ctx, 4), False),
    (lambda h, k: h.svc.tag_resource(h.ctx, k, {"a": "b"}), True),
    (lambda h, k: h.svc.get_key_rotation_status(h.ctx, k), False),
], ids=["encrypt", "describe", "list", "random", "tag", "rotation-status"])
def test_every_call_writes_exactly_one_record(h: Harness, call: Callable, intent: bool) -> None:
    """One record per read-only call; a state change (TagResource) writes its intent first, then its outcome."""
    key = h.key()
    before = len(h.records())
    call(h, key)
    new = h.records()[before:]
    assert len(new) == (2 if intent else 1)
    assert new[-1]["outcome"] == "allowed" and new[-1].get("phase") is None
    if intent:
        assert new[0]["phase"] == "intent" and new[-1]["intent_seq"] == new[0]["seq"]


# ============================================================================================ state in the store


def test_state_is_shared_between_service_instances(h: Harness, hsm_token) -> None:
    """Two brokers (own Store engine, own provider instance and caches) over one store see each other's changes."""
    from broker.audit import AuditLog
    from broker.policy import PolicyEngine
    from broker.store import Store

    store_b = Store(h.svc.store.url)
    provider_b = hsm_token.provider("hsm")
    svc_b = KeyService(store_b, {"hsm": provider_b}, "hsm", PolicyEngine(),
                       AuditLog(h.svc.audit.path, provider_b.root_of_trust().audit_hmac))
    b = Harness(svc_b, h.ctx)
    try:
        key = h.key()
        blob = h.ok("encrypt", key, b"shared", context={"c": "d"})["CiphertextBlob"]
        assert b.ok("decrypt", blob, context={"c": "d"})["Plaintext"] == b"shared"
        b.ok("disable_key", key)
        h.fails(errors.Disabled, "encrypt", key, b"x")
        b.ok("enable_key", key)
        assert b.ok("rotate_key_on_demand", key)["KeyVersion"] == 2
        assert h.ok("encrypt", key, b"x")["KeyVersion"] == 2
        b.ok("create_alias", "alias/shared", key)
        assert h.ok("describe_key", "alias/shared")["KeyId"] == key
        b.ok("schedule_key_deletion", key, 7)
        h.fails(errors.InvalidState, "decrypt", blob, context={"c": "d"})
        assert svc_b.run_due_jobs(h.ctx, now=later(8))["destroyed"] == [key]
        h.fails(errors.InvalidCiphertext, "decrypt", blob, context={"c": "d"})
        h.fails(errors.NotFound, "describe_key", key)
        assert h.verify_audit() == len(h.records())  # two writers, one intact chain
    finally:
        store_b.dispose()
        provider_b.close()


def test_service_over_postgresql(postgres_url: str, hsm_provider, root_ctx: RequestContext, tmp_path) -> None:
    """The same semantics with the store on a real PostgreSQL server, two broker instances sharing it."""
    from sqlalchemy import create_engine

    from broker.audit import AuditLog
    from broker.policy import PolicyEngine
    from broker.store import Store

    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    stores = [Store(postgres_url), Store(postgres_url)]
    stores[0].migrate()
    audit_path = tmp_path / "audit.jsonl"
    a, b = (Harness(KeyService(s, {"hsm": hsm_provider}, "hsm", PolicyEngine(),
                               AuditLog(audit_path, hsm_provider.root_of_trust().audit_hmac)), root_ctx) for s in stores)
    try:
        key = a.key(tags={"db": "pg"})
        blob = a.ok("encrypt", key, b"on postgres", context={"x": "y"})["CiphertextBlob"]
        assert b.ok("rotate_key_on_demand", key)["KeyVersion"] == 2
        assert a.ok("encrypt", key, b"v2")["KeyVersion"] == 2
        assert a.ok("decrypt", blob, context={"x": "y"})["Plaintext"] == b"on postgres"
        a.fails(errors.InvalidCiphertext, "decrypt", blob, context={"x": "z"})
        b.ok("create_alias", "alias/pg", key)
        assert a.ok("describe_key", "alias/pg")["KeyId"] == key
        b.ok("disable_key", key)
        a.fails(errors.Disabled, "encrypt", key, b"x")
        b.ok("schedule_key_deletion", key, 7)
        assert a.svc.run_due_jobs(root_ctx, now=later(8))["destroyed"] == [key]
        b.fails(errors.NotFound, "describe_key", key)
        assert a.ok("list_keys")["Keys"] == []
        assert a.verify_audit() == len(a.records())
    finally:
        for s in stores:
            s.dispose()


def test_concurrent_calls_from_threads(h: Harness) -> None:
    from concurrent.futures import ThreadPoolExecutor

    key = h.key()
    before = len(h.records())

    def work(i: int) -> int:
        for n in range(25):
            data = f"{i}:{n}".encode()
            blob = h.svc.encrypt(h.ctx, key, data, context={"t": str(i)})["CiphertextBlob"]
            assert h.svc.decrypt(h.ctx, blob, context={"t": str(i)})["Plaintext"] == data
        return 25

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(work, range(8))) == 200
    assert len(h.records()) == before + 400  # one record per call, none lost or interleaved
    assert h.verify_audit() == len(h.records())


def test_due_jobs_go_on_past_a_key_whose_provider_is_down(h: Harness, hsm_token) -> None:
    """One unavailable backend must not stop deletions and rotations of every other key; it is retried later."""
    h.svc.providers["flaky"] = hsm_token.provider("flaky")
    down_del = h.key(provider="flaky")
    down_rot = h.key(provider="flaky")
    up_del, up_rot = h.key(), h.key()
    for key in (down_del, up_del):
        h.ok("schedule_key_deletion", key, 7)
    for key in (down_rot, up_rot):
        h.ok("enable_key_rotation", key, 90)
    h.svc.providers["flaky"] = hsm_token.provider("flaky", token_label="unplugged")
    before = len(h.records())
    assert h.svc.run_due_jobs(h.ctx, now=later(100)) == {"destroyed": [up_del], "rotated": [up_rot]}
    failed = [(r["action"], r["key_id"], r["error_code"]) for r in h.records()[before:]
              if r["outcome"] not in ("allowed", "pending")]
    assert sorted(failed) == [("broker:DestroyKey", down_del, "DependencyTimeoutException"),
                              ("broker:RotateKey", down_rot, "DependencyTimeoutException")]
    assert h.ok("describe_key", down_del)["KeyState"] == "PendingDeletion"
    assert h.ok("describe_key", down_rot)["PrimaryVersion"] == 1
    h.svc.providers["flaky"] = hsm_token.provider("flaky")  # back up: the next run finishes the work
    assert h.svc.run_due_jobs(h.ctx, now=later(100)) == {"destroyed": [down_del], "rotated": [down_rot]}
