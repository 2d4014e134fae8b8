"""AWS key-policy semantics in the one policy engine: AWS principals mapped onto broker principals, NotPrincipal,
NotResource, AWS's condition keys, unknown kms: actions, case rules, the default key policy, one evaluation order
(explicit deny first) whatever the dialect, and the no-escalation reading of AWS statements. Pure: no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from broker.auth import Principal
from broker.errors import MalformedPolicyDocument, ValidationError
from broker.model import Key, KeySpec, KeyState, KeyUsage, Origin
from broker.policy.document import parse_document
from broker.policy.escalation import identity_policy_excess, key_policy_excess
from broker.policy.evaluate import (
    DEFAULT_KEY_POLICY,
    DEFAULT_KEY_POLICY_TEXT,
    Facts,
    attribute_statements,
    change_widens,
    evaluate,
)
from broker.policy.key_policies import read_key_policy
from broker.policy.principals import login_role

ACCT = "111122223333"
ROOT = f"arn:aws:iam::{ACCT}:root"
KEY = Key(key_id="k-1", provider="hsm", spec=KeySpec.SYMMETRIC_DEFAULT, usage=KeyUsage.ENCRYPT_DECRYPT,
          state=KeyState.ENABLED, origin=Origin.BROKER, description="", created_at=datetime(2026, 1, 1, tzinfo=UTC),
          tags={"team": "payments"}, aliases=["alias/payments"])
NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ALICE = Principal("alice", "token", ("nothing",))
BOB = Principal("bob", "sigv4", ("nothing",))
LDAP = Principal("ldap/carol", "ldap", ("nothing",))
APPROLE = Principal("approle/billing", "approle", ("nothing",))
JWT = Principal("jwt/ci/repo:acme/app", "jwt", ("nothing",))
POSER = Principal("approle/billing", "token", ("nothing",))  # a token named like an AppRole login, not one
USER = Principal("u", "token", ("key-user",), attributes={"dept": "finance"})


def kp(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def st(effect: str, principal, action="kms:Encrypt", *, field="Principal", **extra) -> dict:
    return {"Effect": effect, field: principal, "Action": action, "Resource": "*", **extra}


def decide(principal: Principal, key_policy: dict | None, action="kms:Encrypt", *, context=None, identity=None,
           ip="10.1.2.3", request=None, key=KEY, now=NOON) -> bool:
    docs = [(n, parse_document(d)) for n, d in (identity or {}).items()]
    if identity is None and "key-user" in principal.policies:
        from broker.policy.builtin import BUILTIN
        docs = [("key-user", BUILTIN["key-user"])]
    facts = Facts(principal=principal, action=action, key=key, context=context or {}, source_ip=ip, now=now,
                  request=request or {})
    return evaluate(facts, docs, parse_document(key_policy, key_policy=True) if key_policy else None).allowed


def iam(kind: str, name: str, account: str = ACCT) -> dict:
    return {"AWS": f"arn:aws:iam::{account}:{kind}/{name}"}


# ------------------------------------------------------------------------------------------------ principals


def test_an_iam_user_arn_names_the_broker_principal_of_that_name_exactly():
    policy = kp(st("Allow", iam("user", "alice")), st("Allow", iam("user", "ldap/carol")))
    assert decide(ALICE, policy) and decide(LDAP, policy)
    assert not decide(BOB, policy)
    assert not decide(Principal("Alice", "token", ()), policy)  # exact, case-sensitive
    assert not decide(Principal("alice2", "token", ()), policy)


def test_a_role_arn_names_the_principals_of_that_login_role_only():
    policy = kp(st("Allow", iam("role", "billing")), st("Allow", iam("role", "ci")))
    assert login_role(APPROLE) == "billing" and login_role(JWT) == "ci" and login_role(POSER) is None
    assert decide(APPROLE, policy) and decide(JWT, policy)
    assert not decide(POSER, policy)  # a token merely *named* approle/billing is not that role
    assert not decide(ALICE, policy)
    assert not decide(APPROLE, kp(st("Allow", iam("role", "path/billing"))))  # a path names no login role


def test_account_root_and_account_id_hand_the_key_to_identity_policies():
    for principal in ({"AWS": ROOT}, {"AWS": ACCT}, {"AWS": [ROOT, "arn:aws:iam::444455556666:root"]},
                      {"Account": "self"}):
        policy = kp(st("Allow", principal, "kms:*"))
        assert decide(USER, policy)  # key-user's identity policy now reaches the key
        assert not decide(ALICE, policy)  # nothing in alice's identity policies
    # another account (its root, its users), an AWS service, a unique id: nobody here
    for principal in ({"AWS": "arn:aws:iam::444455556666:root"}, iam("user", "alice", "444455556666"),
                      {"Service": "logs.us-east-1.amazonaws.com"}, {"AWS": "AIDAIVA3UXATCEV3JOVNK"},
                      {"AWS": "444455556666"}):
        assert not decide(ALICE, kp(st("Allow", principal))) and not decide(USER, kp(st("Allow", principal)))


def test_star_names_everyone_in_both_spellings():
    for principal in ("*", {"AWS": "*"}):
        assert decide(ALICE, kp(st("Allow", principal))) and decide(APPROLE, kp(st("Allow", principal)))


@pytest.mark.parametrize("principal", [
    iam("user", "ali*"), iam("role", "*"), {"AWS": f"arn:aws:sts::{ACCT}:assumed-role/r/s"},
    {"AWS": f"arn:aws:iam::{ACCT}:federated-user/x"}, {"AWS": "alice"}, {"AWS": ""}, {"AWS": []},
    {"CanonicalUser": "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"}, {"Federated": "x"},
    {"Account": "444455556666"}, {}, "alice", ["*"]])
def test_principals_the_broker_cannot_mean_are_malformed(principal):
    with pytest.raises(MalformedPolicyDocument) as bad:
        read_key_policy(json.dumps(kp(st("Allow", principal))))
    assert "Statement[0]." in bad.value.message


def test_not_principal_denies_everyone_but_the_named():
    policy = kp(st("Allow", "*", "kms:*"),
                st("Deny", {"AWS": [f"arn:aws:iam::{ACCT}:user/bob", ROOT]}, "kms:Decrypt", field="NotPrincipal"))
    assert decide(BOB, policy, "kms:Decrypt")
    assert not decide(ALICE, policy, "kms:Decrypt")  # the account root in NotPrincipal excludes only itself
    assert decide(ALICE, policy, "kms:Encrypt")
    allow_others = kp(st("Allow", {"AWS": f"arn:aws:iam::{ACCT}:user/bob"}, field="NotPrincipal"))
    assert decide(ALICE, allow_others) and not decide(BOB, allow_others)


def test_principal_and_not_principal_together_are_malformed():
    with pytest.raises(MalformedPolicyDocument):
        read_key_policy(kp({**st("Allow", "*"), "NotPrincipal": {"AWS": ROOT}}))
    with pytest.raises(ValidationError):  # identity policies take neither
        parse_document(kp({"Effect": "Allow", "NotPrincipal": "*", "Action": "kms:Encrypt", "Resource": "*"}))


# ------------------------------------------------------------------------------------------------ resources, actions


def test_not_resource_matches_everything_but_its_patterns():
    policy = kp({"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "NotResource": "key/other"})
    assert decide(ALICE, policy)
    policy = kp({"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "NotResource": f"key/{KEY.key_id}"},
                st("Allow", "*"))
    assert decide(ALICE, policy)
    policy = kp({"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "NotResource": "alias/other"},
                st("Allow", "*"))
    assert not decide(ALICE, policy)
    with pytest.raises(MalformedPolicyDocument):
        read_key_policy(kp({**st("Allow", "*"), "NotResource": "key/x"}))  # Resource and NotResource


def test_unknown_kms_actions_are_accepted_in_key_policies_and_match_nothing():
    policy = read_key_policy(json.dumps(kp(st("Allow", "*", ["kms:FutureThing", "kms:Encrypt"]))))
    assert decide(ALICE, json.loads(policy.text))
    assert not decide(ALICE, kp(st("Allow", "*", "kms:FutureThing")))
    with pytest.raises(ValidationError):  # identity policies keep refusing a typo
        parse_document(kp({"Effect": "Allow", "Action": "kms:FutureThing", "Resource": "*"}))
    with pytest.raises(MalformedPolicyDocument):  # and other services' actions are no KMS action
        read_key_policy(kp(st("Allow", "*", "s3:GetObject")))


def test_action_names_match_case_insensitively_so_a_deny_cannot_be_dodged_by_case():
    policy = kp(st("Allow", "*", "KMS:*"), st("Deny", "*", "kms:decrypt"))
    assert decide(ALICE, policy, "kms:Encrypt")
    assert not decide(ALICE, policy, "kms:Decrypt")
    assert decide(ALICE, kp(st("Allow", "*", "kms:reencrypt")), "kms:ReEncryptFrom")


# ------------------------------------------------------------------------------------------------ condition keys


def when(op: str, key: str, value) -> dict:
    return {"Condition": {op: {key: value}}}


def test_caller_account_via_service_and_grant_for_aws_resource():
    assert decide(ALICE, kp(st("Allow", "*", **when("StringEquals", "kms:CallerAccount", ACCT))))
    assert not decide(ALICE, kp(st("Allow", "*", **when("StringEquals", "kms:CallerAccount", "444455556666"))))
    # no AWS service is ever in front of the broker: "only via EC2" never applies, "deny unless via EC2" always does
    via = ["ec2.us-west-2.amazonaws.com", "rds.us-west-2.amazonaws.com"]
    assert not decide(ALICE, kp(st("Allow", "*", **when("StringEquals", "kms:ViaService", via))))
    assert not decide(ALICE, kp(st("Allow", "*"), st("Deny", "*", **when("StringNotEquals", "kms:ViaService", via))))
    persistent = kp(st("Allow", "*", ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
                       **when("Bool", "kms:GrantIsForAWSResource", True)))
    for action in ("kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"):
        assert not decide(ALICE, persistent, action)
    assert decide(ALICE, kp(st("Allow", "*", "kms:CreateGrant", **when("Bool", "kms:GrantIsForAWSResource", "false"))),
                  "kms:CreateGrant")


def test_request_alias_is_the_alias_the_request_named():
    policy = kp(st("Allow", "*", **when("StringLike", "kms:RequestAlias", "alias/payments*")))
    assert decide(ALICE, policy, request={"kms:RequestAlias": ("alias/payments",)})
    assert not decide(ALICE, policy)  # named by key id
    assert not decide(ALICE, policy, request={"kms:RequestAlias": ("alias/other",)})


def test_aws_global_keys_read_the_request():
    assert decide(ALICE, kp(st("Allow", "*", **when("IpAddress", "aws:SourceIp", "10.0.0.0/8"))))
    assert not decide(ALICE, kp(st("Allow", "*", **when("IpAddress", "aws:SourceIp", "10.0.0.0/8"))), ip="8.8.8.8")
    assert decide(ALICE, kp(st("Allow", "*", **when("DateLessThan", "aws:CurrentTime", "2026-12-01T00:00:00Z"))))
    assert not decide(ALICE, kp(st("Allow", "*", **when("DateGreaterThan", "aws:CurrentTime", "2026-12-01T00:00:00Z"))))
    epoch = str(int(NOON.timestamp()))
    assert decide(ALICE, kp(st("Allow", "*", **when("NumericLessThanEquals", "aws:EpochTime", epoch))))
    assert not decide(ALICE, kp(st("Allow", "*", **when("DateLessThan", "aws:EpochTime", str(int(epoch) - 1)))))
    assert decide(USER, kp(st("Allow", "*", **when("StringEquals", "aws:PrincipalTag/dept", "finance"))))
    assert decide(USER, kp(st("Allow", "*", **when("StringEquals", "aws:ResourceTag/team", "payments"))))
    assert not decide(USER, kp(st("Allow", "*", **when("StringEquals", "aws:ResourceTag/team", "other"))))
    assert decide(LDAP, kp(st("Allow", "*", **when("ArnLike", "aws:PrincipalArn", f"arn:aws:iam::{ACCT}:user/ldap/*"))))
    assert not decide(ALICE, kp(st("Allow", "*", **when("ArnLike", "aws:PrincipalArn",
                                                        f"arn:aws:iam::{ACCT}:user/ldap/*"))))


def test_condition_key_names_are_case_insensitive():
    assert decide(ALICE, kp(st("Allow", "*", **when("StringEquals", "KMS:callerAccount", ACCT))))
    policy = kp(st("Allow", "*"), st("Deny", "*", **when("StringEquals", "kms:encryptioncontext:Tenant", "evil")))
    assert not decide(ALICE, policy, context={"tenant": "evil"})  # the context key's case does not dodge a Deny
    assert decide(ALICE, policy, context={"tenant": "good"})


def test_context_keys_differing_only_by_case_are_decided_for_the_worst_case():
    allow_app = kp(st("Allow", "*", "kms:Decrypt", **when("StringEquals", "kms:EncryptionContext:AppName", "Example")))
    assert decide(ALICE, allow_app, "kms:Decrypt", context={"appname": "Example"})
    assert not decide(ALICE, allow_app, "kms:Decrypt", context={"AppName": "Evil", "appname": "Example"})
    deny_app = kp(st("Allow", "*", "kms:Decrypt"),
                  st("Deny", "*", "kms:Decrypt", **when("StringEquals", "kms:EncryptionContext:AppName", "Evil")))
    assert not decide(ALICE, deny_app, "kms:Decrypt", context={"AppName": "Example", "appname": "Evil"})


def test_encryption_context_keys_with_set_operators():
    only = kp(st("Allow", "*", "kms:Encrypt", **when("ForAllValues:StringEquals", "kms:EncryptionContextKeys",
                                                     ["Department", "Project"])))
    assert decide(ALICE, only, context={"Department": "x"})
    assert not decide(ALICE, only, context={"Department": "x", "Other": "y"})
    some = kp(st("Allow", "*", "kms:Encrypt", **when("ForAnyValue:StringEquals", "kms:EncryptionContextKeys",
                                                     "Department")))
    assert decide(ALICE, some, context={"Department": "x", "Other": "y"}) and not decide(ALICE, some)


def test_aws_keys_about_infrastructure_the_broker_lacks_are_absent():
    assert not decide(ALICE, kp(st("Allow", "*", **when("StringEquals", "aws:PrincipalOrgID", "o-123"))))
    mfa = kp(st("Allow", "*"), st("Deny", "*", **when("BoolIfExists", "aws:MultiFactorAuthPresent", "false")))
    assert not decide(ALICE, mfa)  # long-term credentials carry no MFA: AWS's own reading
    with pytest.raises(MalformedPolicyDocument):
        read_key_policy(kp(st("Allow", "*", **when("StringEquals", "kms:EncryptionContextKey", "x"))))  # a typo


# ------------------------------------------------------------------------------------------------ evaluation order


def test_explicit_deny_first_whatever_the_dialect():
    mixed = kp(st("Allow", iam("user", "alice"), "kms:*"), st("Deny", {"Broker": "ali*"}, "kms:Decrypt"))
    assert decide(ALICE, mixed, "kms:Encrypt") and not decide(ALICE, mixed, "kms:Decrypt")
    mixed = kp(st("Allow", {"Broker": "alice"}, "kms:*"), st("Deny", {"AWS": ROOT}, "kms:Decrypt"))
    assert not decide(ALICE, mixed, "kms:Decrypt")  # a Deny naming the account applies to everyone in it
    identity_deny = {"p": kp({"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"})}
    assert not decide(ALICE, kp(st("Allow", iam("user", "alice"))), identity=identity_deny)


def test_the_default_key_policy_is_aws_s_and_means_identity_policies():
    default = json.loads(DEFAULT_KEY_POLICY_TEXT)
    assert default == {"Version": "2012-10-17", "Id": "key-default-1", "Statement": [{
        "Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*",
        "Resource": "*"}]}
    assert DEFAULT_KEY_POLICY.statements[0].account_self
    assert decide(USER, None) and not decide(ALICE, None)


def test_a_key_policy_text_is_kept_as_written():
    text = ('{ "Statement" : [ {"Effect":"Allow", "Principal":{"AWS":"' + ROOT
            + '"}, "Action":"kms:*", "Resource":"*"} ] }')
    assert read_key_policy(text).text == text
    for bad in ("not json", "", "[1, 2]", "{", '{"Statement": NaN}', "[" * 5000):
        with pytest.raises(MalformedPolicyDocument):
            read_key_policy(bad)


# ------------------------------------------------------------------------------------------------ no escalation


def test_no_escalation_reads_aws_statements_by_their_actions():
    held = {"kms:DescribeKey", "kms:PutKeyPolicy"}
    policy = parse_document(kp(st("Allow", iam("user", "bob"), ["kms:Describe*", "kms:FutureThing"]),
                               st("Allow", {"AWS": "arn:aws:iam::444455556666:root"}, "kms:Decrypt"),
                               st("Deny", "*", "kms:*")), key_policy=True)
    assert key_policy_excess(policy, lambda a: a in held) == ["kms:Decrypt", "kms:DescribeCustomKeyStores"]
    everyone_else = parse_document(kp(st("Allow", {"AWS": ROOT}, "kms:Encrypt", field="NotPrincipal")),
                                   key_policy=True)
    assert key_policy_excess(everyone_else, lambda a: a in held) == ["kms:Encrypt"]


def test_an_identity_not_resource_statement_is_checked_as_everything():
    document = parse_document(kp({"Effect": "Allow", "Action": "kms:Encrypt", "NotResource": "key/secret"}))
    asked = []
    identity_policy_excess(document, lambda action, scope: asked.append(scope) or scope != "*")
    assert asked == ["*"]


def test_a_new_alias_that_satisfies_a_request_alias_condition_is_a_widening():
    policy = parse_document(kp(st("Allow", "*", "kms:Decrypt", **when("StringLike", "kms:RequestAlias",
                                                                      "alias/finance-*"))), key_policy=True)
    statements = attribute_statements(ALICE, [], policy)
    assert statements
    before = Facts(ALICE, "kms:Decrypt", KEY, now=NOON)
    after = Facts(ALICE, "kms:Decrypt", KEY, now=NOON,
                  request={"kms:ResourceAliases": ("alias/payments", "alias/finance-mine")})
    assert change_widens(before, after, statements)
    harmless = Facts(ALICE, "kms:Decrypt", KEY, now=NOON, request={"kms:ResourceAliases": ("alias/payments", "alias/x")})
    assert not change_widens(before, harmless, statements)


# ------------------------------------------------------------------------------------------------ request parameters


# Every condition key AWS documents for KMS (its "AWS KMS condition keys" page), as a documented example would spell
# it: each is accepted, whether the broker gives it a value or it is absent from every request.
AWS_KMS_KEYS = [
    "kms:BypassPolicyLockoutSafetyCheck", "kms:CallerAccount", "kms:CustomerMasterKeySpec",
    "kms:CustomerMasterKeyUsage", "kms:DataKeyPairSpec", "kms:EncryptionAlgorithm", "kms:EncryptionContext:Dept",
    "kms:EncryptionContextKeys", "kms:ExpirationModel", "kms:GrantConstraintType", "kms:GrantIsForAWSResource",
    "kms:GrantOperations", "kms:GranteePrincipal", "kms:KeyAgreementAlgorithm", "kms:KeyOrigin", "kms:KeySpec",
    "kms:KeyUsage", "kms:MacAlgorithm", "kms:MessageType", "kms:MultiRegion", "kms:MultiRegionKeyType",
    "kms:PrimaryRegion", "kms:ReEncryptOnSameKey", "kms:RecipientAttestation:ImageSha384",
    "kms:RecipientAttestation:PCR0", "kms:ReplicaRegion", "kms:RequestAlias", "kms:ResourceAliases",
    "kms:RetiringPrincipal", "kms:RotationPeriodInDays", "kms:ScheduleKeyDeletionPendingWindowInDays",
    "kms:SigningAlgorithm", "kms:ValidTo", "kms:ViaService", "kms:WrappingAlgorithm", "kms:WrappingKeySpec",
    "aws:RequestTag/Project", "aws:TagKeys", "aws:ResourceTag/Project", "aws:PrincipalTag/Dept"]


@pytest.mark.parametrize("key", AWS_KMS_KEYS)
def test_every_condition_key_aws_documents_for_kms_is_accepted(key):
    read_key_policy(kp(st("Allow", "*", **when("StringEquals", key, "x"))))


def test_request_parameters_decide_as_condition_values():
    only_oaep256 = kp(st("Allow", "*", "kms:Encrypt", **when("StringEquals", "kms:EncryptionAlgorithm",
                                                               "RSAES_OAEP_SHA_256")))
    assert decide(ALICE, only_oaep256, request={"kms:EncryptionAlgorithm": ("RSAES_OAEP_SHA_256",)})
    assert not decide(ALICE, only_oaep256, request={"kms:EncryptionAlgorithm": ("RSAES_OAEP_SHA_1",)})
    assert not decide(ALICE, only_oaep256)  # a request without the parameter never satisfies it
    long_window = kp(st("Allow", "*", "kms:ScheduleKeyDeletion",
                        **when("NumericGreaterThanEquals", "kms:ScheduleKeyDeletionPendingWindowInDays", 21)))
    assert decide(ALICE, long_window, "kms:ScheduleKeyDeletion",
                  request={"kms:ScheduleKeyDeletionPendingWindowInDays": ("30",)})
    assert not decide(ALICE, long_window, "kms:ScheduleKeyDeletion",
                      request={"kms:ScheduleKeyDeletionPendingWindowInDays": ("7",)})
    legacy = kp(st("Allow", "*", **when("StringEquals", "kms:CustomerMasterKeySpec", "SYMMETRIC_DEFAULT")))
    assert decide(ALICE, legacy)  # the deprecated name reads the key's spec
    assert decide(ALICE, kp(st("Allow", "*", **when("Bool", "kms:MultiRegion", False))))
    assert not decide(ALICE, kp(st("Allow", "*", **when("Null", "kms:ValidTo", "false"))))  # never present


def test_request_facts_are_text_and_refuse_what_they_cannot_read():
    from broker.errors import ValidationError as BrokerValidation
    from broker.gate import request_facts
    assert request_facts({"kms:RotationPeriodInDays": 180, "kms:BypassPolicyLockoutSafetyCheck": True,
                          "kms:SigningAlgorithm": "ECDSA_SHA_256", "aws:TagKeys": ["a", "b"], "kms:MessageType": None,
                          "aws:TagKeys2": []}) == {
        "kms:RotationPeriodInDays": ("180",), "kms:BypassPolicyLockoutSafetyCheck": ("true",),
        "kms:SigningAlgorithm": ("ECDSA_SHA_256",), "aws:TagKeys": ("a", "b")}
    for hostile in ({"x": 1}, [1], 1.5, b"bytes", ["a", 1]):
        with pytest.raises(BrokerValidation):
            request_facts({"kms:SigningAlgorithm": hostile})


def test_grant_principal_conditions_written_as_user_arns_compare_names():
    """Grants store their principals by name; AWS writes kms:GranteePrincipal conditions with ARNs."""
    def create_grant(policy: dict, grantee: str) -> bool:
        return decide(ALICE, policy, "kms:CreateGrant", request={"kms:GranteePrincipal": (grantee,),
                                                                 "kms:GrantOperations": ("Decrypt",)})
    exact = kp(st("Allow", "*", "kms:CreateGrant", **when("StringEquals", "kms:GranteePrincipal", iam("user", "app")["AWS"])))
    assert create_grant(exact, "app") and not create_grant(exact, "app2")
    globbed = kp(st("Allow", "*", "kms:CreateGrant", **when("ArnLike", "kms:GranteePrincipal",
                                                            iam("user", "svc-*")["AWS"])))
    assert create_grant(globbed, "svc-billing") and not create_grant(globbed, "app")
    for nobody in (iam("role", "app")["AWS"], iam("user", "app", "444455556666")["AWS"]):
        assert not create_grant(kp(st("Allow", "*", "kms:CreateGrant",
                                      **when("StringEquals", "kms:GranteePrincipal", nobody))), "app")
    assert create_grant(kp(st("Allow", "*", "kms:CreateGrant", **when("StringEquals", "kms:GranteePrincipal", "app"))),
                        "app")  # the broker's own spelling still works
    text = json.dumps(exact)
    assert read_key_policy(text).text == text  # the document itself is kept as written
