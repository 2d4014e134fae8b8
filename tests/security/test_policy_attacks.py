"""Attacks on policies, key policies and grants: no principal writes or grants more than it holds.

In process (KeyService + PolicyAdmin over SQLite and the session's SoftHSM token, the real gate and audit log):
every refusal is an AccessDenied or ValidationError, changes nothing in the store and is audited. The same attacks
through the native REST API and the AWS door (boto3) run in tests/integration/policy/test_no_escalation_doors.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from broker import errors
from broker.audit import AuditLog
from broker.auth import Principal
from broker.policy import PolicyEngine
from broker.policy_admin import PolicyAdmin
from broker.service import KeyService, RequestContext
from broker.store import Store
from broker.store.policies import PolicyRepository
from broker.store.tables import GrantRow
from providers.pkcs11 import Pkcs11Provider

CRYPTO = ["Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
          "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"]


class World:
    """One broker's services in process, and helpers that prove "refused, nothing changed, audited"."""

    def __init__(self, keys: KeyService, admin: PolicyAdmin) -> None:
        self.keys, self.admin = keys, admin
        self.root = ctx("root", "root")

    def records(self) -> list[dict]:
        path: Path = self.keys.audit.path
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def snapshot(self) -> dict[str, list[tuple]]:
        out = {}
        with self.keys.store.engine.connect() as conn:
            for table in sorted(inspect(conn).get_table_names()):
                if not table.startswith("audit"):
                    out[table] = sorted((tuple(r) for r in conn.execute(text(f'SELECT * FROM "{table}"'))), key=repr)
        return out

    def refused(self, error: type[errors.BrokerError], fn: Callable[..., Any], *args: Any,
                **kwargs: Any) -> errors.BrokerError:
        before = self.snapshot()
        with pytest.raises(error) as caught:
            fn(*args, **kwargs)
        assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
        assert self.snapshot() == before, "a refused request changed the store"
        last = self.records()[-1]
        assert last["outcome"] == ("denied" if error is errors.AccessDenied else "error")
        assert last["error_code"] == error.code
        return caught.value

    def key(self, **kwargs: Any) -> str:
        return self.keys.create_key(self.root, **kwargs)["KeyId"]

    def policy(self, name: str, *statements: dict) -> None:
        self.admin.put_policy(self.root, name, {"Version": "2012-10-17", "Statement": list(statements)})

    def grant(self, who: RequestContext, key: str, grantee: str, operations: list, **kwargs: Any) -> dict:
        return self.admin.create_grant(who, key, grantee, operations, **kwargs)


def ctx(name: str, *policies: str) -> RequestContext:
    return RequestContext(Principal(name, "token", tuple(policies)), source_ip="127.0.0.1", front_door="test")


def allow(actions: Any, resource: Any = "*", **extra: Any) -> dict:
    return {"Effect": "Allow", "Action": actions, "Resource": resource, **extra}


def kp_allow(principal: Any, actions: Any, **extra: Any) -> dict:
    return {"Effect": "Allow", "Principal": principal, "Action": actions, "Resource": "*", **extra}


def key_policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


@pytest.fixture
def w(tmp_path: Path, hsm_provider: Pkcs11Provider) -> Iterator[World]:
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    store.migrate()
    repo = PolicyRepository(store)
    engine = PolicyEngine(repo, store, cache_seconds=0)
    keys = KeyService(store, {"hsm": hsm_provider}, "hsm", engine, AuditLog(tmp_path / "audit.jsonl",
                                                                            hsm_provider.root_of_trust().audit_hmac))
    yield World(keys, PolicyAdmin(keys, repo))
    store.dispose()


def encrypts(w: World, who: RequestContext, key: str, context: dict | None = None) -> bool:
    try:
        w.keys.encrypt(who, key, b"x", context=context)
        return True
    except errors.AccessDenied:
        return False


def decrypts(w: World, who: RequestContext, blob: bytes, context: dict | None = None) -> bool:
    try:
        w.keys.decrypt(who, blob, context=context)
        return True
    except errors.AccessDenied:
        return False


# ============================================================================================ grants


def test_a_grantee_with_encrypt_and_create_grant_cannot_grant_itself_decrypt(w: World) -> None:
    key = w.key()
    w.grant(w.root, key, "mallory", ["Encrypt", "CreateGrant"])
    mallory = ctx("mallory")
    err = w.refused(errors.AccessDenied, w.grant, mallory, key, "mallory", ["Decrypt"])
    assert "may not grant Decrypt" in err.message
    w.refused(errors.AccessDenied, w.grant, mallory, key, "mallory", ["Encrypt", "Decrypt"])
    w.refused(errors.AccessDenied, w.grant, mallory, key, "friend", ["GenerateDataKey"])
    blob = w.keys.encrypt(w.root, key, b"secret")["CiphertextBlob"]
    assert not decrypts(w, mallory, blob)
    # what it holds, it may pass on
    w.grant(mallory, key, "friend", ["Encrypt"])
    assert encrypts(w, ctx("friend"), key)


@pytest.mark.parametrize("grantee", ["*", "?", "a*", "app-?", "[ab]", "", "   ", "\ud800", "x" * 257, None, 5])
def test_no_wildcard_empty_or_hostile_grantee(w: World, grantee: Any) -> None:
    key = w.key()
    w.refused(errors.ValidationError, w.grant, w.root, key, grantee, ["Encrypt"])
    w.refused(errors.ValidationError, w.grant, w.root, key, "bob", ["Encrypt"], retiring=grantee or "*")


def test_a_stored_pattern_grantee_matches_nobody(w: World) -> None:
    """A grant written before patterns were refused (grantee "*") is matched literally, not as a glob."""
    key = w.key()
    w.admin.repo.add_grant(GrantRow(grant_id="legacy", key_id=key, name="", grantee="*", retiring="",
                                    operations='["Encrypt"]', constraints="{}", token_hash="x" * 64,
                                    created_at=datetime.now(UTC)))
    assert not encrypts(w, ctx("anyone"), key)


@pytest.mark.parametrize("operations", [[["Decrypt"]], [{"op": "Decrypt"}], "Decrypt", [], ["Frobnicate"],
                                        ["Decrypt", 7], None, ["kms:Decrypt"]])
def test_malformed_operations_are_a_validation_error(w: World, operations: Any) -> None:
    key = w.key()
    err = w.refused(errors.ValidationError, w.grant, w.root, key, "bob", operations)
    assert "Operations" in err.message


@pytest.mark.parametrize("constraints", [{"EncryptionContextSubset": {"a": 1}}, {"Other": {}},
                                         {"EncryptionContextSubset": {"a": "\ud800"}},
                                         {"EncryptionContextSubset": {f"k{i}": "v" for i in range(65)}},
                                         {"EncryptionContextSubset": {"a": "b"}, "EncryptionContextEquals": {}},
                                         ["EncryptionContextSubset"]])
def test_malformed_constraints_are_a_validation_error(w: World, constraints: Any) -> None:
    w.refused(errors.ValidationError, w.grant, w.root, w.key(), "bob", ["Encrypt"], constraints=constraints)


def test_key_admin_cannot_grant_itself_or_anyone_crypto(w: World) -> None:
    key = w.key()
    admin = ctx("admin", "key-admin")
    for operation in [*CRYPTO, "Sign", "Verify", "GenerateMac", "VerifyMac", "GetPublicKey"]:
        w.refused(errors.AccessDenied, w.grant, admin, key, "admin", [operation])
        w.refused(errors.AccessDenied, w.grant, admin, key, "accomplice", [operation])
    assert not encrypts(w, admin, key)
    # lifecycle rights it holds itself may be passed on: DescribeKey, CreateGrant (which then passes on nothing more)
    w.grant(admin, key, "helper", ["DescribeKey", "CreateGrant"])
    w.refused(errors.AccessDenied, w.grant, ctx("helper"), key, "admin", ["Decrypt"])


def test_grant_chains_never_widen(w: World) -> None:
    key = w.key()
    w.grant(w.root, key, "alice", ["Encrypt", "CreateGrant"], constraints={"EncryptionContextSubset": {"t": "1"}})
    alice = ctx("alice")
    # without the constraint alice holds nothing: a grant without it would reach every context
    w.refused(errors.AccessDenied, w.grant, alice, key, "bob", ["Encrypt"])
    w.refused(errors.AccessDenied, w.grant, alice, key, "bob", ["Encrypt"],
              constraints={"EncryptionContextSubset": {"t": "2"}})
    w.grant(alice, key, "bob", ["Encrypt", "CreateGrant"], constraints={"EncryptionContextEquals": {"t": "1"}})
    bob = ctx("bob")
    assert encrypts(w, bob, key, {"t": "1"}) and not encrypts(w, bob, key, {"t": "1", "x": "y"})
    # bob's grant is "exactly {t: 1}": a Subset grant would reach {t: 1, x: y}, which bob may not use
    w.refused(errors.AccessDenied, w.grant, bob, key, "carol", ["Encrypt"],
              constraints={"EncryptionContextSubset": {"t": "1"}})
    w.refused(errors.AccessDenied, w.grant, bob, key, "carol", ["Decrypt"],
              constraints={"EncryptionContextEquals": {"t": "1"}})
    w.grant(bob, key, "carol", ["Encrypt"], constraints={"EncryptionContextEquals": {"t": "1"}})


def test_grant_operations_condition_key(w: World) -> None:
    key = w.key()
    w.policy("delegator",
             allow(["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]),
             allow("kms:CreateGrant", Condition={"ForAllValues:StringEquals": {"kms:GrantOperations": [
                 "Encrypt", "Decrypt"]}}),
             {"Effect": "Deny", "Action": "kms:CreateGrant", "Resource": "*",
              "Condition": {"StringEquals": {"kms:GranteePrincipal": "eve"}}})
    who = ctx("delegator", "delegator")
    w.grant(who, key, "bob", ["Encrypt", "Decrypt"])
    w.refused(errors.AccessDenied, w.grant, who, key, "bob", ["GenerateDataKey"])
    w.refused(errors.AccessDenied, w.grant, who, key, "bob", ["Encrypt", "GenerateDataKey"])
    w.refused(errors.AccessDenied, w.grant, who, key, "eve", ["Encrypt"])


def test_a_grant_constraint_is_the_context_the_grantor_is_checked_with(w: World) -> None:
    key = w.key()
    w.policy("billing", allow(["kms:Encrypt", "kms:Decrypt", "kms:CreateGrant"], f"key/{key}",
                              Condition={"StringEquals": {"kms:EncryptionContext:app": "billing"}}),
             allow("kms:CreateGrant", f"key/{key}"))
    who = ctx("billing-svc", "billing")
    w.refused(errors.AccessDenied, w.grant, who, key, "bob", ["Decrypt"])
    w.refused(errors.AccessDenied, w.grant, who, key, "bob", ["Decrypt"],
              constraints={"EncryptionContextSubset": {"app": "hr"}})
    w.grant(who, key, "bob", ["Decrypt"], constraints={"EncryptionContextSubset": {"app": "billing"}})
    w.grant(who, key, "bob", ["Encrypt"], constraints={"EncryptionContextEquals": {"app": "billing"}})
    record = w.records()[-1]
    assert record["action"] == "kms:CreateGrant" and record["grantee"] == "bob"
    assert record["encryption_context"]["app"].startswith("hmac-sha256:")


def test_a_subset_grant_is_checked_for_every_context_it_reaches(w: World) -> None:
    """A Subset grant reaches every context containing its pairs: a Deny the grantor meets in some of those contexts
    (here: classified data) keeps it from passing the operation on; an Equals grant fixes the context."""
    key = w.key()
    w.policy("careful", allow(["kms:Decrypt", "kms:CreateGrant"]), {
        "Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:classified": "yes"}}})
    who = ctx("careful", "careful")
    w.refused(errors.AccessDenied, w.grant, who, key, "bob", ["Decrypt"])
    w.refused(errors.AccessDenied, w.grant, who, key, "bob", ["Decrypt"],
              constraints={"EncryptionContextSubset": {"app": "x"}})
    w.grant(who, key, "bob", ["Decrypt"], constraints={"EncryptionContextSubset": {"app": "x", "classified": "no"}})
    w.grant(who, key, "bob", ["Decrypt"], constraints={"EncryptionContextEquals": {"app": "x"}})
    w.refused(errors.AccessDenied, w.grant, who, key, "bob", ["Decrypt"],
              constraints={"EncryptionContextEquals": {"classified": "yes"}})


def test_retire_grant_through_the_gate(w: World) -> None:
    key = w.key()
    g1 = w.grant(w.root, key, "bob", ["Encrypt", "RetireGrant"])
    g2 = w.grant(w.root, key, "carol", ["Encrypt"], retiring="rita")
    g3 = w.grant(w.root, key, "dan", ["Encrypt"])
    # a grant's RetireGrant reaches that grant only: bob cannot retire carol's or dan's
    w.refused(errors.AccessDenied, w.admin.retire_grant, ctx("bob"), grant_token=g2["GrantToken"])
    w.refused(errors.AccessDenied, w.admin.retire_grant, ctx("bob"), key_ref=key, grant_id=g3["GrantId"])
    # a grantee without RetireGrant cannot retire its own grant; strangers cannot retire anything
    w.refused(errors.AccessDenied, w.admin.retire_grant, ctx("dan"), grant_token=g3["GrantToken"])
    w.refused(errors.AccessDenied, w.admin.retire_grant, ctx("carol"), key_ref=key, grant_id=g2["GrantId"])
    w.refused(errors.AccessDenied, w.admin.retire_grant, ctx("stranger", "key-user"), grant_token=g2["GrantToken"])
    # an explicit Deny still wins over being the retiring principal
    w.policy("no-retire", {"Effect": "Deny", "Action": "kms:RetireGrant", "Resource": "*"})
    w.refused(errors.AccessDenied, w.admin.retire_grant, ctx("rita", "no-retire"), grant_token=g2["GrantToken"])
    w.admin.retire_grant(ctx("bob"), grant_token=g1["GrantToken"])
    w.admin.retire_grant(ctx("rita"), key_ref=key, grant_id=g2["GrantId"])
    w.refused(errors.NotFound, w.admin.retire_grant, ctx("rita"), grant_token=g2["GrantToken"])
    w.refused(errors.ValidationError, w.admin.retire_grant, ctx("rita"))
    # kms:RetireGrant in a policy retires any grant on the keys it names (as in AWS)
    w.policy("retirer", allow("kms:RetireGrant", f"key/{key}"))
    w.admin.retire_grant(ctx("ops", "retirer"), key_ref=key, grant_id=g3["GrantId"])
    assert w.admin.list_grants(w.root, key)["Grants"] == []
    assert w.records()[-2]["grant_id"] == g3["GrantId"]


def test_a_grantee_cannot_list_or_revoke_without_rights(w: World) -> None:
    key = w.key()
    g = w.grant(w.root, key, "bob", ["Encrypt", "CreateGrant"])
    w.refused(errors.AccessDenied, w.admin.revoke_grant, ctx("bob"), key, g["GrantId"])
    w.refused(errors.AccessDenied, w.admin.list_grants, ctx("bob"), key)
    w.refused(errors.AccessDenied, w.admin.list_retirable_grants, ctx("bob"), "bob")
    other = w.key()
    w.refused(errors.NotFound, w.admin.revoke_grant, w.root, other, g["GrantId"])


# ============================================================================================ key policies


def test_key_admin_cannot_write_itself_into_a_key_policy(w: World) -> None:
    key = w.key()
    admin = ctx("admin", "key-admin")
    for statement in (kp_allow({"Broker": "admin"}, "kms:Decrypt"),
                      kp_allow({"Broker": "adm*"}, ["kms:Encrypt", "kms:DescribeKey"]),
                      kp_allow("*", "kms:*"),
                      kp_allow({"Account": "self"}, "kms:*"),
                      kp_allow({"Broker": "admin"}, "kms:ReEncrypt"),
                      {"Effect": "Allow", "Principal": {"Broker": "admin"}, "NotAction": "kms:ScheduleKeyDeletion",
                       "Resource": "*"}):
        err = w.refused(errors.AccessDenied, w.admin.put_key_policy, admin, key, key_policy(statement))
        assert "may not write a key policy" in err.message
    assert not encrypts(w, admin, key)
    # lifecycle it holds, it may write (and the key stays out of its crypto reach)
    w.admin.put_key_policy(admin, key, key_policy(kp_allow({"Broker": "admin"}, [
        "kms:DescribeKey", "kms:PutKeyPolicy", "kms:DisableKey", "kms:EnableKey"])))
    assert not encrypts(w, admin, key)


def test_a_key_policy_writer_passes_on_only_what_it_holds_on_that_key(w: World) -> None:
    key, other = w.key(), w.key()
    w.policy("writer", allow(["kms:Encrypt", "kms:PutKeyPolicy"], f"key/{key}"),
             allow(["kms:Encrypt", "kms:Decrypt", "kms:PutKeyPolicy"], f"key/{other}"))
    writer = ctx("writer", "writer")
    w.refused(errors.AccessDenied, w.admin.put_key_policy, writer, key,
              key_policy(kp_allow({"Broker": "bob"}, ["kms:Encrypt", "kms:Decrypt"])))
    w.admin.put_key_policy(writer, other, key_policy(kp_allow({"Broker": "bob"}, ["kms:Encrypt", "kms:Decrypt"]),
                                                     kp_allow({"Broker": "writer"}, "kms:PutKeyPolicy")))
    w.admin.put_key_policy(writer, key, key_policy(kp_allow({"Broker": "bob"}, "kms:Encrypt"),
                                                   kp_allow({"Account": "self"}, ["kms:Encrypt", "kms:PutKeyPolicy"])))
    assert encrypts(w, ctx("bob"), key)


def test_a_writer_locked_out_by_a_key_policy_cannot_write_itself_back_in(w: World) -> None:
    key = w.key()
    w.admin.put_key_policy(w.root, key, key_policy(kp_allow({"Broker": "writer"}, "kms:PutKeyPolicy")))
    writer = ctx("writer", "key-user")  # key-user: but this key's policy does not delegate to identity policies
    assert not encrypts(w, writer, key)
    w.refused(errors.AccessDenied, w.admin.put_key_policy, writer, key,
              key_policy(kp_allow({"Account": "self"}, ["kms:Encrypt", "kms:PutKeyPolicy"])))


def test_a_conditional_right_is_not_held_unconditionally(w: World) -> None:
    key = w.key()
    w.policy("billing", allow(["kms:Decrypt"], "*", Condition={"StringEquals": {
        "kms:EncryptionContext:app": "billing"}}), allow("kms:PutKeyPolicy"))
    w.refused(errors.AccessDenied, w.admin.put_key_policy, ctx("b", "billing"), key,
              key_policy(kp_allow({"Broker": "b"}, "kms:Decrypt")))


# ============================================================================================ identity policies


def test_a_policy_writer_cannot_write_a_policy_wider_than_itself(w: World) -> None:
    w.policy("app-admin", allow("broker:PutPolicy", "policy/app-*"), allow(["kms:Encrypt", "kms:Decrypt"], "key/*"))
    writer = ctx("app-admin", "app-admin")
    for statement in (allow("kms:*"), allow("*"), allow("kms:Decrypt", "*"), allow("broker:PutPolicy", "policy/*"),
                      allow("keyring:Read", "keyring/*"), allow("kms:ScheduleKeyDeletion", "key/*"),
                      {"Effect": "Allow", "NotAction": "kms:Decrypt", "Resource": "key/*"}):
        err = w.refused(errors.AccessDenied, w.admin.put_policy, writer, "app-x",
                        {"Statement": [statement]})
        assert "may not write a policy" in err.message
    w.refused(errors.AccessDenied, w.admin.put_policy, writer, "other", {"Statement": [allow("kms:Encrypt", "key/*")]})
    w.admin.put_policy(writer, "app-x", {"Statement": [allow("kms:Encrypt", "key/abc*"),
                                                       allow("kms:Decrypt", "key/${broker:PrincipalName}"),
                                                       {"Effect": "Deny", "Action": "*", "Resource": "*"}]})
    w.admin.put_policy(writer, "app-y", {"Statement": [allow(["kms:Encrypt", "kms:Decrypt"], "key/*")]})


def test_a_policy_writer_with_a_deny_or_condition_holds_nothing_unconditionally(w: World) -> None:
    w.policy("fenced", allow(["broker:PutPolicy", "kms:Encrypt"]), allow("kms:Decrypt", Condition={
        "IpAddress": {"broker:SourceIp": "127.0.0.0/8"}}), {"Effect": "Deny", "Action": "kms:Encrypt",
                                                            "Resource": "key/secret"})
    writer = ctx("fenced", "fenced")
    w.refused(errors.AccessDenied, w.admin.put_policy, writer, "p", {"Statement": [allow("kms:Decrypt")]})
    w.refused(errors.AccessDenied, w.admin.put_policy, writer, "p", {"Statement": [allow("kms:Encrypt", "key/x")]})


@pytest.mark.parametrize("name", ["root", "key-admin", "keyring:kv", "a/b", "", "x" * 129, "\ud800", "*"])
def test_reserved_or_invalid_policy_names(w: World, name: str) -> None:
    w.refused(errors.ValidationError, w.admin.put_policy, w.root, name, {"Statement": [allow("kms:Encrypt")]})


@pytest.mark.parametrize("document", [
    {"Statement": [allow("kms:Encrypt", "key*")]},
    {"Statement": [allow("kms:Encrypt", "*/x")]},
    {"Statement": [allow("kms:Encrypt", "k?y/x")]},
    {"Statement": [allow("kms:Encrypt", "${broker:PrincipalName}/x")]},
    {"Statement": [allow("kms:Encrypt", "arn:aws:iam::1:role/x")]},
    {"Statement": [allow("kms:Encrypt", "key/")]},
    {"Statement": [{**allow("kms:Encrypt"), "Sid": "\ud800"}]},
    {"Statement": [allow("kms:Encrypt", "key/" + "x" * 40_000)]},
    {"Statement": [allow("kms:Encrypt", Condition={"StringEquals": {"kms:EncryptionContext:a": [[["x"]]]}})]},
])
def test_documents_that_would_mean_more_than_they_say_are_refused(w: World, document: dict) -> None:
    w.refused(errors.ValidationError, w.admin.put_policy, w.root, "p", document)
    w.refused(errors.MalformedPolicyDocument, w.admin.put_key_policy, w.root, w.key(), {"Statement": [
        {**s, "Principal": "*"} for s in document["Statement"]]})


# ============================================================================================ ReEncrypt


def test_a_policy_naming_kms_reencrypt_covers_both_checks(w: World) -> None:
    source, destination = w.key(), w.key()
    blob = w.keys.encrypt(w.root, source, b"x")["CiphertextBlob"]
    w.policy("re", allow("kms:ReEncrypt"))
    w.policy("no-re", {"Effect": "Deny", "Action": "kms:ReEncrypt", "Resource": "*"})
    assert w.keys.re_encrypt(ctx("r", "re"), blob, destination)["KeyId"] == destination
    w.refused(errors.AccessDenied, w.keys.re_encrypt, ctx("r", "key-user", "no-re"), blob, destination)
    w.refused(errors.AccessDenied, w.keys.re_encrypt, ctx("r", "key-user", "no-re"), blob, source)
    assert encrypts(w, ctx("r", "key-user", "no-re"), source)
    # in a key policy too
    w.admin.put_key_policy(w.root, destination, key_policy(
        {"Effect": "Deny", "Principal": {"Broker": "r"}, "Action": "kms:ReEncrypt", "Resource": "*"},
        kp_allow({"Account": "self"}, "kms:*")))
    w.refused(errors.AccessDenied, w.keys.re_encrypt, ctx("r", "re"), blob, destination)
    err = w.refused(errors.ValidationError, w.admin.simulate, w.root, principal={"Name": "r"}, action="kms:ReEncrypt")
    assert "kms:ReEncryptFrom and kms:ReEncryptTo" in err.message


# ============================================================================================ boundaries


def test_globs_do_not_cross_resource_types_or_variables(w: World) -> None:
    key = w.key()
    w.policy("names", allow("kms:Encrypt", "key/${broker:PrincipalName}"),
             allow("keyring:Read", "keyring/${broker:PrincipalName}/*"))
    engine = w.keys.policy
    decide = engine.decide
    described = w.keys.resolve_key(key)
    assert decide(Principal(key, "token", ("names",)), "kms:Encrypt", described).allowed
    for name in ("*", "?" * 36, "[" + key[0] + "]" + key[1:]):
        assert not decide(Principal(name, "token", ("names",)), "kms:Encrypt", described).allowed
    assert decide(Principal("kv", "token", ("names",)), "keyring:Read", None, resource="keyring/kv/1").allowed
    for name in ("*", "kv/mdb", "k?"):
        assert not decide(Principal(name, "token", ("names",)), "keyring:Read", None,
                          resource="keyring/kv/mdb/1").allowed
    # alias patterns match a key by its aliases, never by its id or provider
    w.policy("alias-only", allow("kms:Encrypt", "alias/team/*"))
    teammate = Principal("a", "token", ("alias-only",))
    assert not decide(teammate, "kms:Encrypt", described).allowed
    w.keys.create_alias(w.root, "alias/team/app", key)
    assert decide(teammate, "kms:Encrypt", w.keys.resolve_key(key, details=True)).allowed
    assert not decide(teammate, "kms:Encrypt", None, resource="provider/team/x").allowed


def test_stored_documents_the_language_now_refuses_deny_everything(w: World) -> None:
    key = w.key()
    w.admin.repo.put_policy("old", {"Statement": [allow("kms:Encrypt", "key*"),
                                                  {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}]},
                            datetime.now(UTC))
    assert not encrypts(w, ctx("o", "key-user", "old"), key)
    w.admin.repo.put_key_policy(key, json.dumps({"Statement": [kp_allow("*", "kms:*", Resource="k*")]}),
                                datetime.now(UTC))
    assert not encrypts(w, ctx("u", "key-user"), key)


# ============================================================================================ tags and aliases (ABAC)


def test_key_admin_alone_retags_and_realiases_freely_and_still_has_no_crypto(w: World) -> None:
    key, other = w.key(), w.key()
    admin = ctx("admin", "key-admin")
    w.keys.tag_resource(admin, key, {"team": "sandbox"})
    w.keys.untag_resource(admin, key, ["team"])
    w.keys.create_alias(admin, "alias/admin-made", key)
    w.keys.update_alias(admin, "alias/admin-made", other)
    assert not encrypts(w, admin, "alias/admin-made") and not encrypts(w, admin, key)
    w.keys.delete_alias(admin, "alias/admin-made")


def test_tags_cannot_widen_their_authors_abac_reach(w: World) -> None:
    sandbox, prod = w.key(tags={"team": "sandbox"}), w.key(tags={"team": "prod", "classified": "yes"})
    w.policy("sandbox-crypto", allow(["kms:Encrypt", "kms:Decrypt"], Condition={
        "StringEquals": {"kms:ResourceTag/team": "${broker:PrincipalTag/team}"}}))
    w.policy("context-crypto", allow("kms:Decrypt", Condition={"StringEquals": {
        "kms:ResourceTag/team": "sandbox", "kms:EncryptionContext:app": "x"}}))
    w.policy("no-classified", {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*",
                               "Condition": {"StringEquals": {"kms:ResourceTag/classified": "yes"}}})
    admin = RequestContext(Principal("admin", "token", ("key-admin", "sandbox-crypto"), attributes={"team": "sandbox"}))
    assert encrypts(w, admin, sandbox) and not encrypts(w, admin, prod)
    err = w.refused(errors.AccessDenied, w.keys.tag_resource, admin, prod, {"team": "sandbox"})
    assert "kms:Decrypt" in err.message and "kms:Encrypt" in err.message
    w.keys.tag_resource(admin, prod, {"owner": "ops"})  # a tag no policy tests changes nothing
    w.keys.tag_resource(admin, sandbox, {"team": "prod"})  # narrowing its own reach is fine
    ctx_admin = ctx("c", "key-admin", "context-crypto")
    w.refused(errors.AccessDenied, w.keys.tag_resource, ctx_admin, prod, {"team": "sandbox"})
    fenced = ctx("f", "key-admin", "key-user", "no-classified")
    w.refused(errors.AccessDenied, w.keys.untag_resource, fenced, prod, ["classified"])
    w.refused(errors.AccessDenied, w.keys.tag_resource, fenced, prod, {"classified": "no"})
    w.keys.untag_resource(fenced, prod, ["owner"])
    w.keys.tag_resource(fenced, sandbox, {"classified": "yes"})  # adding a Deny's tag only narrows


def test_aliases_cannot_widen_their_authors_reach(w: World) -> None:
    sandbox, prod = w.key(), w.key()
    w.keys.create_alias(w.root, "alias/sandbox-a", sandbox)
    w.keys.create_alias(w.root, "alias/protected-db", prod)
    w.policy("sandbox-aliases", allow(["kms:Encrypt", "kms:Decrypt"], "alias/sandbox-*"))
    w.policy("protect", {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "alias/protected-*"})
    admin = ctx("admin", "key-admin", "sandbox-aliases")
    assert encrypts(w, admin, sandbox) and not encrypts(w, admin, prod)
    w.refused(errors.AccessDenied, w.keys.create_alias, admin, "alias/sandbox-b", prod)
    w.refused(errors.AccessDenied, w.keys.update_alias, admin, "alias/sandbox-a", prod)
    w.keys.create_alias(admin, "alias/other", prod)
    w.keys.update_alias(admin, "alias/other", sandbox)
    fenced = ctx("f", "key-admin", "key-user", "protect")
    w.refused(errors.AccessDenied, w.keys.delete_alias, fenced, "alias/protected-db")
    w.refused(errors.AccessDenied, w.keys.update_alias, fenced, "alias/protected-db", sandbox)
    w.keys.create_alias(fenced, "alias/protected-more", sandbox)  # adding a Deny's alias only narrows
    assert not encrypts(w, admin, prod)


def test_key_admin_cannot_import_material_it_would_know(w: World) -> None:
    """Importing key material means knowing the key: it is no lifecycle right."""
    external = w.keys.create_key(ctx("admin", "key-admin"), origin="EXTERNAL")["KeyId"]
    admin = ctx("admin", "key-admin")
    w.refused(errors.AccessDenied, w.keys.get_parameters_for_import, admin, external, "RSAES_OAEP_SHA_256")
    w.refused(errors.AccessDenied, w.keys.import_key_material, admin, external, b"token", b"material")


def test_an_alias_cannot_be_moved_onto_a_key_its_mover_controls(w: World) -> None:
    """The alias hijack: a principal with every right on its own key KA but none on alias/bob or on bob's key moves
    alias/bob onto KA, so bob's next Encrypt through the alias lands under a key the attacker decrypts. As in AWS,
    UpdateAlias needs kms:UpdateAlias on the alias and on the old and the new key; Create/DeleteAlias likewise."""
    bob_key, attacker_key = w.key(), w.key()
    w.keys.create_alias(w.root, "alias/bob", bob_key)
    w.policy("own-key", allow("kms:*", f"key/{attacker_key}"))
    attacker = ctx("mallory", "own-key")
    w.refused(errors.AccessDenied, w.keys.update_alias, attacker, "alias/bob", attacker_key)
    w.refused(errors.AccessDenied, w.keys.delete_alias, attacker, "alias/bob")
    assert w.keys.describe_key(w.root, "alias/bob")["KeyId"] == bob_key
    # rights on the alias and the new key but not on the old one: still refused
    w.policy("alias-too", allow("kms:UpdateAlias", "alias/bob"))
    w.refused(errors.AccessDenied, w.keys.update_alias, ctx("mallory", "own-key", "alias-too"), "alias/bob",
              attacker_key)
    # a new alias pointing at a key the creator has no rights on is refused too
    w.refused(errors.AccessDenied, w.keys.create_alias, attacker, "alias/mallory-bob", bob_key)
    # with the right on all three, the move is allowed (an alias-pattern right such as "alias/bob" would start
    # matching the new key as well: that is a widening of its own, refused, so the right here is not by alias)
    w.policy("alias-admin", allow("kms:UpdateAlias", "*"))
    w.keys.update_alias(ctx("alice", "alias-admin"), "alias/bob", attacker_key)
    assert w.keys.describe_key(w.root, "alias/bob")["KeyId"] == attacker_key
