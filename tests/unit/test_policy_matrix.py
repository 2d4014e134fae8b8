"""The policy decision matrix: every operator, deny-overrides, key policy vs identity policy, grants with context
constraints, IP and time windows. Each case asserts the decision AND the statement that decided it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from broker.auth import Principal
from broker.model import Key, KeySpec, KeyState, KeyUsage, Origin
from broker.policy.document import parse_document
from broker.policy.evaluate import Facts, Grant, evaluate

KEY = Key(key_id="k-1", provider="hsm", spec=KeySpec.SYMMETRIC_DEFAULT, usage=KeyUsage.ENCRYPT_DECRYPT,
          state=KeyState.ENABLED, origin=Origin.BROKER, description="", created_at=datetime(2026, 1, 1, tzinfo=UTC),
          tags={"team": "payments", "env": "prod"}, aliases=["alias/payments"])
SIGN_KEY = Key(key_id="k-2", provider="aws-main", spec=KeySpec.ECC_NIST_P256, usage=KeyUsage.SIGN_VERIFY,
               state=KeyState.ENABLED, origin=Origin.EXTERNAL, description="", created_at=KEY.created_at)
NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def allow(action="kms:Encrypt", resource="*", sid="A", **extra):
    return {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action="kms:Encrypt", resource="*", sid="D", **extra):
    return {"Sid": sid, "Effect": "Deny", "Action": action, "Resource": resource, **extra}


def doc(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def cond(op, key, value):
    return {"Condition": {op: {key: value}}}


@dataclass
class Case:
    name: str
    identity: dict = field(default_factory=dict)
    key_policy: dict | None = None
    grants: list = field(default_factory=list)
    action: str = "kms:Encrypt"
    key: Key | None = field(default_factory=lambda: KEY)
    resource: str | None = None
    context: dict = field(default_factory=dict)
    ip: str = "10.1.2.3"
    now: datetime = NOON
    principal: str = "alice"
    attributes: dict = field(default_factory=dict)
    policies: tuple | None = None
    request: dict = field(default_factory=dict)
    expect: bool = True
    source: str = "identity:p"
    sid: str = "A"
    index: int | None = 0


def one(statement, **kw) -> Case:
    """A case with a single identity policy `p` holding one statement."""
    return Case(identity={"p": doc(statement)}, **kw)


D = {"expect": False, "source": "default", "sid": "", "index": None}  # default deny

CASES = [
    # --- actions and resources
    one(allow(), name="plain allow"),
    Case(name="no policy at all is default deny", **D),
    one(allow("kms:Decrypt"), name="other action does not allow", **D),
    one(allow("kms:*"), name="action wildcard"),
    one(allow("kms:Gen*"), action="kms:GenerateDataKey", name="action prefix wildcard"),
    one({"Sid": "A", "Effect": "Allow", "NotAction": "kms:Decrypt", "Resource": "*"}, name="NotAction allows the rest"),
    one({"Sid": "A", "Effect": "Allow", "NotAction": "kms:Encrypt", "Resource": "*"}, name="NotAction excludes", **D),
    one(allow(resource="key/k-1"), name="resource by key id"),
    one(allow(resource="key/k-9"), name="resource other key", **D),
    one(allow(resource="alias/payments"), name="resource by alias"),
    one(allow(resource="alias/pay*"), name="resource alias glob"),
    one(allow(resource="provider/hsm"), name="resource by provider"),
    one(allow(resource="provider/aws-*"), name="resource other provider", **D),
    one(allow(resource="arn:aws:kms:eu-west-1:111122223333:key/k-1"), name="resource by ARN"),
    one(allow("kms:CreateKey", resource="provider/hsm"), action="kms:CreateKey", key=None, resource="provider/hsm",
        name="CreateKey on a provider"),
    one(allow("kms:CreateKey", resource="provider/hsm"), action="kms:CreateKey", key=None, resource="provider/aws",
        name="CreateKey on another provider", **D),
    one(allow("keyring:*", resource="keyring/mdb/*"), action="keyring:Read", key=None, resource="keyring/mdb/1",
        name="keyring resource"),
    # --- deny overrides
    Case(name="deny beats allow in another policy", identity={"p": doc(allow()), "q": doc(deny())},
         expect=False, source="identity:q", sid="D", index=0),
    Case(name="deny beats allow in same policy", identity={"p": doc(allow(), deny(sid="D2"))},
         expect=False, sid="D2", index=1),
    Case(name="deny in key policy beats identity allow", identity={"p": doc(allow())},
         key_policy=doc({**deny(), "Principal": {"Broker": "alice"}}), expect=False, source="key-policy", sid="D"),
    Case(name="key policy deny for other principal does not apply", identity={"p": doc(allow())},
         key_policy=doc({**deny(), "Principal": {"Broker": "bob"}},
                        {**allow("kms:*", sid="root"), "Principal": {"Account": "self"}})),
    one(deny(), name="a lone deny denies", expect=False, sid="D"),
    Case(name="conditional deny not met lets allow through",
         identity={"p": doc(allow(), deny(**cond("StringEquals", "kms:EncryptionContext:env", "prod")))}),
    Case(name="conditional deny met", context={"env": "prod"},
         identity={"p": doc(allow(), deny(**cond("StringEquals", "kms:EncryptionContext:env", "prod")))},
         expect=False, sid="D", index=1),
    # --- key policy vs identity policy
    Case(name="key policy allows principal directly (no identity policy)",
         key_policy=doc({**allow(), "Principal": {"Broker": "alice"}}), source="key-policy"),
    Case(name="key policy allows principal by glob", principal="svc-billing",
         key_policy=doc({**allow(), "Principal": {"Broker": "svc-*"}}), source="key-policy"),
    Case(name="key policy without Account:self disables identity policies", identity={"p": doc(allow())},
         key_policy=doc({**allow("kms:Decrypt"), "Principal": {"Broker": "bob"}}), **D),
    Case(name="key policy Account:self delegates to identity", identity={"p": doc(allow(sid="ID"))},
         key_policy=doc({**allow("kms:*", sid="Delegate"), "Principal": {"Account": "self"}}), sid="ID"),
    Case(name="Account:self limited to some actions", identity={"p": doc(allow())}, action="kms:Encrypt",
         key_policy=doc({**allow("kms:Decrypt"), "Principal": {"Account": "self"}}), **D),
    Case(name="default key policy enables identity policies", identity={"p": doc(allow())}),
    Case(name="key policy Principal * allows everyone", principal="anyone",
         key_policy=doc({**allow(), "Principal": "*"}), source="key-policy"),
    Case(name="identity policy does not reach non-key action via key policy", action="kms:ListKeys", key=None,
         key_policy=doc({**allow("kms:*"), "Principal": "*"}), **D),
    # --- grants
    Case(name="grant allows its operation", grants=[Grant("g1", "k-1", "alice", ("Encrypt",), name="G")],
         source="grant:g1", sid="G", index=None),
    Case(name="grant other operation", action="kms:Decrypt",
         grants=[Grant("g1", "k-1", "alice", ("Encrypt",))], **D),
    Case(name="grant other grantee", principal="bob", grants=[Grant("g1", "k-1", "alice", ("Encrypt",))], **D),
    Case(name="grant on other key", grants=[Grant("g1", "k-9", "alice", ("Encrypt",))], **D),
    Case(name="grant subset constraint met", context={"app": "a", "x": "y"},
         grants=[Grant("g1", "k-1", "alice", ("Encrypt",), {"EncryptionContextSubset": {"app": "a"}})],
         source="grant:g1", sid="", index=None),
    Case(name="grant subset constraint not met", context={"app": "b"},
         grants=[Grant("g1", "k-1", "alice", ("Encrypt",), {"EncryptionContextSubset": {"app": "a"}})], **D),
    Case(name="grant equals constraint met", context={"app": "a"},
         grants=[Grant("g1", "k-1", "alice", ("Encrypt",), {"EncryptionContextEquals": {"app": "a"}})],
         source="grant:g1", sid="", index=None),
    Case(name="grant equals constraint with extra key", context={"app": "a", "x": "y"},
         grants=[Grant("g1", "k-1", "alice", ("Encrypt",), {"EncryptionContextEquals": {"app": "a"}})], **D),
    Case(name="explicit deny beats a grant", identity={"p": doc(deny())},
         grants=[Grant("g1", "k-1", "alice", ("Encrypt",))], expect=False, sid="D"),
    # --- string operators
    one(allow(**cond("StringEquals", "kms:EncryptionContext:app", "billing")), context={"app": "billing"},
        name="StringEquals met"),
    one(allow(**cond("StringEquals", "kms:EncryptionContext:app", "billing")), context={"app": "Billing"},
        name="StringEquals is case sensitive", **D),
    one(allow(**cond("StringEquals", "kms:EncryptionContext:app", "billing")), name="StringEquals missing key", **D),
    one(allow(**cond("StringEqualsIfExists", "kms:EncryptionContext:app", "billing")),
        name="StringEqualsIfExists missing key"),
    one(allow(**cond("StringEqualsIfExists", "kms:EncryptionContext:app", "billing")), context={"app": "x"},
        name="StringEqualsIfExists present and different", **D),
    one(allow(**cond("StringNotEquals", "kms:EncryptionContext:app", "billing")), context={"app": "hr"},
        name="StringNotEquals met"),
    one(allow(**cond("StringNotEquals", "kms:EncryptionContext:app", "billing")), context={"app": "billing"},
        name="StringNotEquals not met", **D),
    one(allow(**cond("StringEqualsIgnoreCase", "kms:EncryptionContext:app", "BILLING")), context={"app": "billing"},
        name="StringEqualsIgnoreCase"),
    one(allow(**cond("StringLike", "kms:EncryptionContext:tenant", "acme-*")), context={"tenant": "acme-eu"},
        name="StringLike met"),
    one(allow(**cond("StringLike", "kms:EncryptionContext:tenant", "acme-*")), context={"tenant": "other"},
        name="StringLike not met", **D),
    one(allow(**cond("StringNotLike", "kms:EncryptionContext:tenant", "test-*")), context={"tenant": "prod-1"},
        name="StringNotLike met"),
    one(allow(**cond("StringEquals", "kms:EncryptionContext:app", ["hr", "billing"])), context={"app": "billing"},
        name="StringEquals any of a list"),
    # --- multi-valued: encryption context keys
    one(allow(**cond("ForAllValues:StringEquals", "kms:EncryptionContextKeys", ["app", "tenant"])),
        context={"app": "a"}, name="ForAllValues subset of allowed keys"),
    one(allow(**cond("ForAllValues:StringEquals", "kms:EncryptionContextKeys", ["app"])),
        context={"app": "a", "extra": "x"}, name="ForAllValues extra key refused", **D),
    one(allow(**cond("ForAnyValue:StringEquals", "kms:EncryptionContextKeys", ["tenant"])),
        context={"app": "a", "tenant": "t"}, name="ForAnyValue one matches"),
    one(allow(**cond("ForAnyValue:StringEquals", "kms:EncryptionContextKeys", ["tenant"])),
        name="ForAnyValue with no context", **D),
    # --- key attributes
    one(allow(**cond("StringEquals", "kms:KeySpec", "SYMMETRIC_DEFAULT")), name="kms:KeySpec"),
    one(allow("kms:Sign", **cond("StringEquals", "kms:KeyUsage", "ENCRYPT_DECRYPT")), action="kms:Sign",
        key=SIGN_KEY, name="kms:KeyUsage mismatch", **D),
    one(allow(**cond("StringEquals", "kms:ResourceTag/team", "payments")), name="kms:ResourceTag met"),
    one(allow(**cond("StringEquals", "kms:ResourceTag/team", "hr")), name="kms:ResourceTag not met", **D),
    one(allow("kms:Sign", **cond("StringEquals", "kms:Provider", "aws-main")), action="kms:Sign", key=SIGN_KEY,
        name="kms:Provider"),
    one(allow(**cond("StringEquals", "kms:KeyOrigin", "EXTERNAL")), name="kms:KeyOrigin mismatch", **D),
    # --- numeric, bool, null
    one(allow(**cond("NumericLessThan", "kms:EncryptionContext:level", "3")), context={"level": "2"},
        name="NumericLessThan met"),
    one(allow(**cond("NumericLessThan", "kms:EncryptionContext:level", "3")), context={"level": "3"},
        name="NumericLessThan boundary", **D),
    one(allow(**cond("NumericGreaterThanEquals", "kms:EncryptionContext:level", "3")), context={"level": "3"},
        name="NumericGreaterThanEquals boundary"),
    one(allow(**cond("NumericEquals", "kms:EncryptionContext:level", "3")), context={"level": "three"},
        name="Numeric with non-number request value", **D),
    one(allow(**cond("Bool", "kms:EncryptionContext:audited", "true")), context={"audited": "true"}, name="Bool"),
    one(allow(**cond("Null", "kms:EncryptionContext:app", "false")), context={"app": "x"}, name="Null false = present"),
    one(allow(**cond("Null", "kms:EncryptionContext:app", "true")), context={"app": "x"}, name="Null true = absent",
        **D),
    # --- IP and time windows
    one(allow(**cond("IpAddress", "broker:SourceIp", "10.0.0.0/8")), name="IpAddress in CIDR"),
    one(allow(**cond("IpAddress", "broker:SourceIp", "192.168.0.0/16")), name="IpAddress outside CIDR", **D),
    one(allow(**cond("NotIpAddress", "broker:SourceIp", "192.168.0.0/16")), name="NotIpAddress"),
    one(deny(**cond("NotIpAddress", "broker:SourceIp", ["10.0.0.0/8", "127.0.0.1/32"])), ip="203.0.113.9",
        name="deny outside the network", expect=False, sid="D"),
    one(allow(**cond("IpAddress", "broker:SourceIp", "::1/128")), ip="::1", name="IPv6 address"),
    one(allow(**cond("DateLessThan", "broker:CurrentTime", "2026-12-31T00:00:00Z")), name="DateLessThan"),
    one(allow(**cond("DateGreaterThan", "broker:CurrentTime", "2026-12-31T00:00:00Z")), name="DateGreaterThan", **D),
    one(allow(Condition={"DateGreaterThanEquals": {"broker:TimeOfDay": "01:00"},
                         "DateLessThan": {"broker:TimeOfDay": "03:00"}}),
        now=datetime(2026, 11, 22, 2, 30, tzinfo=UTC), name="backup window inside"),
    one(allow(Condition={"DateGreaterThanEquals": {"broker:TimeOfDay": "01:00"},
                         "DateLessThan": {"broker:TimeOfDay": "03:00"}}),
        name="backup window outside (noon)", **D),
    # --- principals and variables
    one(allow(**cond("StringEquals", "broker:PrincipalTag/team", "payments")), attributes={"team": "payments"},
        name="principal tag"),
    one(allow(**cond("StringEquals", "kms:ResourceTag/team", "${broker:PrincipalTag/team}")),
        attributes={"team": "payments"}, name="variable: principal tag equals resource tag"),
    one(allow(**cond("StringEquals", "kms:ResourceTag/team", "${broker:PrincipalTag/team}")),
        attributes={"team": "hr"}, name="variable mismatch", **D),
    one(allow(**cond("StringEquals", "kms:ResourceTag/team", "${broker:PrincipalTag/team}")),
        name="variable unresolved matches nothing", **D),
    one(allow("keyring:Read", resource="keyring/${broker:PrincipalName}/*"), action="keyring:Read", key=None,
        resource="keyring/alice/7", name="variable in Resource"),
    one(allow(**cond("StringEquals", "broker:AuthMethod", "ldap")), name="auth method condition", **D),
    # --- kms:ReEncrypt names both of ReEncrypt's checks
    one(allow("kms:ReEncrypt"), action="kms:ReEncryptFrom", name="ReEncrypt allows ReEncryptFrom"),
    one(allow("kms:ReEncrypt"), action="kms:ReEncryptTo", name="ReEncrypt allows ReEncryptTo"),
    Case(name="Deny ReEncrypt denies ReEncryptFrom", action="kms:ReEncryptFrom",
         identity={"p": doc(allow("kms:*"), deny("kms:ReEncrypt"))}, expect=False, sid="D", index=1),
    Case(name="Deny ReEncrypt denies ReEncryptTo", action="kms:ReEncryptTo",
         identity={"p": doc(allow("kms:*"), deny("kms:ReEncrypt"))}, expect=False, sid="D", index=1),
    one(allow("kms:ReEncrypt"), action="kms:Decrypt", name="ReEncrypt does not allow Decrypt", **D),
    # --- resource patterns stay within their type; variables are matched literally, within one segment
    one(allow("keyring:Read", resource="keyring/mdb/*"), action="keyring:Read", key=None,
        resource="keyring-admin/mdb/1", name="keyring pattern does not reach keyring-admin", **D),
    one(allow(resource="key/*"), action="kms:Encrypt", key=None, resource="keyring/x/1",
        name="key pattern does not reach keyring", **D),
    one(allow(resource="arn:aws:kms:eu-west-1:111122223333:alias/payments"), name="resource by alias ARN"),
    one(allow(resource="key/${broker:PrincipalName}"), principal="*", name="variable value is literal", **D),
    one(allow(resource="key/${broker:PrincipalName}"), principal="k-1", name="variable value matches"),
    one(allow("keyring:Read", resource="keyring/${broker:PrincipalName}/*"), action="keyring:Read", key=None,
        principal="mdb/x", resource="keyring/mdb/x/1", name="variable value never spans a slash", **D),
    one(allow(**cond("StringLike", "kms:EncryptionContext:owner", "${broker:PrincipalName}")),
        principal="*", context={"owner": "bob"}, name="variable in StringLike is literal", **D),
    # --- grants: exact grantee, RetireGrant only on the grant itself
    Case(name="grant grantee is not a pattern", principal="bob", grants=[Grant("g1", "k-1", "*", ("Encrypt",))], **D),
    Case(name="grant RetireGrant is no right on the key", action="kms:RetireGrant",
         grants=[Grant("g1", "k-1", "alice", ("RetireGrant",))], **D),
    # --- policy conditions on CreateGrant requests
    one(allow("kms:CreateGrant", **cond("ForAllValues:StringEquals", "kms:GrantOperations", ["Encrypt"])),
        action="kms:CreateGrant", name="GrantOperations within"),
    one(allow("kms:CreateGrant", **cond("ForAllValues:StringEquals", "kms:GrantOperations", ["Encrypt"])),
        action="kms:CreateGrant", name="GrantOperations beyond", **D),
    one(allow("kms:CreateGrant", **cond("StringEquals", "kms:GranteePrincipal", "bob")),
        action="kms:CreateGrant", name="GranteePrincipal condition"),
    # --- built-in policies
    Case(name="built-in key-user encrypts", policies=("key-user",), source="identity:key-user",
         sid="CryptoOnPermittedKeys"),
    Case(name="built-in key-admin cannot encrypt", policies=("key-admin",), **D),
    Case(name="built-in key-admin disables", policies=("key-admin",), action="kms:DisableKey",
         source="identity:key-admin", sid="KeyLifecycleNoCrypto"),
    Case(name="built-in auditor reads audit", policies=("auditor",), action="broker:ReadAudit", key=None,
         source="identity:auditor", sid="ReadMetadataAndAudit"),
    Case(name="built-in auditor cannot decrypt", policies=("auditor",), action="kms:Decrypt", **D),
    Case(name="root allows everything", policies=("root",), source="root", sid="", index=None),
]


_REQUESTS = {
    "GrantOperations within": {"kms:GrantOperations": ["Encrypt"]},
    "GrantOperations beyond": {"kms:GrantOperations": ["Encrypt", "Decrypt"]},
    "GranteePrincipal condition": {"kms:GranteePrincipal": ["bob"], "kms:GrantOperations": ["Encrypt"]},
}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_and_deciding_statement(case: Case):
    from broker.policy.builtin import builtin

    identity = [(name, parse_document(d)) for name, d in case.identity.items()]
    for name in case.policies or ():
        if name != "root":
            identity.append((name, builtin(name)))
    principal = Principal(case.principal, "token", tuple(case.policies or case.identity), attributes=case.attributes)
    request = case.request or _REQUESTS.get(case.name, {})
    facts = Facts(principal=principal, action=case.action, key=case.key, resource=case.resource,
                  context=case.context, source_ip=case.ip, now=case.now, request=request)
    key_policy = parse_document(case.key_policy, key_policy=True) if case.key_policy else None
    decision = evaluate(facts, identity, key_policy, case.grants)
    assert (decision.allowed, decision.source, decision.sid, decision.index) == \
        (case.expect, case.source, case.sid, case.index), decision.reason


def test_matrix_is_large_enough():
    assert len(CASES) >= 60
    assert {c.expect for c in CASES} == {True, False}


@pytest.mark.parametrize("document, path", [
    ("not an object", "policy"),
    ({"Statement": []}, "Statement"),
    ({"Statement": [{"Effect": "Maybe", "Action": "kms:Encrypt"}]}, "Statement[0].Effect"),
    ({"Statement": [{"Effect": "Allow", "Action": "kms:Encrpyt"}]}, "Statement[0].Action"),
    ({"Statement": [allow(), {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:Nope"]}]}, "Statement[1].Action[1]"),
    ({"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Condition": {"StringEqulas": {"kms:KeySpec": "x"}}}]},
     "Statement[0].Condition.StringEqulas"),
    ({"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Condition": {"StringEquals": {"kms:Nope": "x"}}}]},
     "Statement[0].Condition.StringEquals.kms:Nope"),
    ({"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt",
                     "Condition": {"IpAddress": {"broker:SourceIp": "not-an-ip"}}}]},
     "Statement[0].Condition.IpAddress.broker:SourceIp"),
    ({"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt",
                     "Condition": {"NumericLessThan": {"kms:EncryptionContext:n": "ten"}}}]},
     "Statement[0].Condition.NumericLessThan.kms:EncryptionContext:n"),
    ({"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Principal": "*"}]}, "Statement[0].Principal"),
    ({"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Bogus": 1}]}, "Statement[0].Bogus"),
    ({"Statement": [{"Effect": "Allow"}]}, "Statement[0]"),
])
def test_invalid_documents_name_the_bad_element(document, path):
    from broker.errors import ValidationError

    with pytest.raises(ValidationError) as err:
        parse_document(document)
    assert err.value.message.startswith(path + ":"), err.value.message


def test_key_policy_requires_principal():
    from broker.errors import ValidationError

    with pytest.raises(ValidationError, match=r"Statement\[0\].Principal"):
        parse_document(doc(allow()), key_policy=True)


# ------------------------------------------------------------------------------------------- retiring a grant


@pytest.mark.parametrize(("who", "request_", "expect"), [
    ("rita", {"kms:RetiringPrincipal": ["rita"], "kms:GranteePrincipal": ["bob"], "kms:GrantOperations": ["Encrypt"]},
     True),
    ("bob", {"kms:GranteePrincipal": ["bob"], "kms:GrantOperations": ["Encrypt", "RetireGrant"]}, True),
    ("bob", {"kms:GranteePrincipal": ["bob"], "kms:GrantOperations": ["Encrypt"]}, False),
    ("eve", {"kms:RetiringPrincipal": ["rita"], "kms:GranteePrincipal": ["bob"],
             "kms:GrantOperations": ["RetireGrant"]}, False),
])
def test_retiring_a_grant(who: str, request_: dict, expect: bool) -> None:
    facts = Facts(principal=Principal(who, "token", ()), action="kms:RetireGrant", key=KEY, request=request_)
    decision = evaluate(facts, [])
    assert (decision.allowed, decision.source) == (expect, "grant-retirement" if expect else "default")
    denied = evaluate(facts, [("p", parse_document(doc(deny("kms:RetireGrant"))))])
    assert not denied.allowed


# ------------------------------------------------------------------------------------------- open contexts


def test_an_open_context_decides_for_every_context_containing_it() -> None:
    from broker.policy.evaluate import ContextAtLeast

    alice = Principal("alice", "token", ("p",))
    guarded = [("p", parse_document(doc(allow("kms:Decrypt"), deny("kms:Decrypt", **cond(
        "StringEquals", "kms:EncryptionContext:classified", "yes")))))]

    def decide(context, identity=guarded, grants=()):
        return evaluate(Facts(alice, "kms:Decrypt", KEY, context=context), identity, None, grants).allowed

    assert decide({"app": "x"}) and not decide(ContextAtLeast({"app": "x"}))
    assert decide(ContextAtLeast({"classified": "no"})) and not decide(ContextAtLeast({"classified": "yes"}))
    conditional = [("p", parse_document(doc(allow("kms:Decrypt", **cond(
        "ForAllValues:StringEquals", "kms:EncryptionContextKeys", ["app"])))))]
    assert decide({"app": "x"}, conditional) and not decide(ContextAtLeast({"app": "x"}), conditional)
    subset = Grant("g", "k-1", "alice", ("Decrypt",), {"EncryptionContextSubset": {"app": "x"}})
    equals = Grant("g", "k-1", "alice", ("Decrypt",), {"EncryptionContextEquals": {"app": "x"}})
    assert decide(ContextAtLeast({"app": "x", "b": "c"}), [], [subset])
    assert not decide(ContextAtLeast({"b": "c"}), [], [subset])
    assert decide({"app": "x"}, [], [equals]) and not decide(ContextAtLeast({"app": "x"}), [], [equals])


@pytest.mark.parametrize(("field", "pattern", "action", "expected"), [
    ("Action", "kms:*crypt", "kms:Encrypt", True),
    ("Action", "KMS:ENCRYPT", "kms:Encrypt", True),  # action names match case-insensitively
    ("Action", "kms:Encrypt", "kms:Decrypt", False),
    ("Action", "kms:Get?ublicKey", "kms:GetPublicKey", True),
    ("NotAction", "kms:Encrypt", "kms:Encrypt", False),
    ("NotAction", "kms:Encrypt", "kms:Decrypt", True),
    ("NotAction", "kms:*", "broker:ReadAudit", True),
])
def test_a_statement_answers_the_same_about_an_action_every_time(field, pattern, action, expected):
    """matches_action keeps its answers for the language's actions: the first answer and every later one agree,
    for Action and NotAction, and a name no operation has is answered but never kept (requests cannot grow it)."""
    (statement,) = parse_document(doc({"Effect": "Allow", field: pattern, "Resource": "*"})).statements
    assert [statement.matches_action(action) for _ in range(3)] == [expected] * 3
    made_up = "kms:MadeUp" + "x" * 40
    assert statement.matches_action(made_up) is ((field == "NotAction") != (pattern == "kms:*"))
    assert set(statement._action_hits) == {action}
