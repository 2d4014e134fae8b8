"""Policy documents: parsing and validation on write.

    {"Version": "2012-10-17",
     "Statement": [{"Sid": "...", "Effect": "Allow" | "Deny",
                    "Principal": "*" | {"AWS": arn | account | [...], "Broker": "name-glob" | [...],
                                        "Account": "self", "Service": …}   or "NotPrincipal"   (key policies only)
                    "Action": "kms:Encrypt" | ["kms:*", ...]   or "NotAction",
                    "Resource": "*" | "key/<id>" | "alias/<name>" | "provider/<name>" | "keyring/<mount>/<id>" | [...]
                                or "NotResource",
                    "Condition": {"<Operator>": {"<condition key>": "value" | [...]}}}]}

Invalid documents are refused with the JSON path of the first bad element. One language for both dialects: the
broker's own principal elements and AWS's (broker/policy/principals.py maps AWS principals onto broker principals),
AWS's condition keys next to the broker's, action names matched case-insensitively as AWS does. A key policy may
name `kms:` actions that do not exist (AWS accepts them; they match nothing).

Two rules keep a statement from meaning more than it says:
* a resource pattern is "*" or "<type>/<name glob>" with a literal type ("key*" would also name "keyring/…"), or a KMS
  key/alias ARN (read as "key/<id>" / "alias/<name>");
* "kms:ReEncrypt" is what AWS users write for re-encryption: it names both checks a ReEncrypt makes,
  kms:ReEncryptFrom (the source key) and kms:ReEncryptTo (the destination key), in Allow and in Deny alike.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from broker.auth import Principal
from broker.errors import ValidationError
from broker.policy.principals import Named, grant_principal_value, parse_principal

KMS_ACTIONS = frozenset(f"kms:{name}" for name in """
CreateKey DescribeKey ListKeys UpdateKeyDescription EnableKey DisableKey ScheduleKeyDeletion CancelKeyDeletion
Encrypt Decrypt ReEncryptFrom ReEncryptTo ReEncrypt GenerateDataKey GenerateDataKeyWithoutPlaintext
GenerateDataKeyPair GenerateDataKeyPairWithoutPlaintext GenerateRandom Sign Verify GetPublicKey GenerateMac VerifyMac
CreateAlias UpdateAlias DeleteAlias ListAliases TagResource UntagResource ListResourceTags EnableKeyRotation
DisableKeyRotation GetKeyRotationStatus RotateKeyOnDemand ListKeyRotations ListKeyVersions GetParametersForImport
ImportKeyMaterial DeleteImportedKeyMaterial PutKeyPolicy GetKeyPolicy ListKeyPolicies CreateGrant ListGrants
ListRetirableGrants RetireGrant RevokeGrant DescribeCustomKeyStores ReplicateKey
""".split())
BROKER_ACTIONS = frozenset(f"broker:{name}" for name in """
PutPolicy GetPolicy ListPolicies DeletePolicy SimulatePolicy ReadAudit VerifyAudit CreateToken RevokeToken LookupToken
CreateAwsCredentials ListAwsCredentials RevokeAwsCredentials ManageAuth DestroyKey RotateKey
LookupSelfToken RenewSelfToken RevokeSelfToken Login Sync ReadMetrics
ConfigureApprovals ListApprovals ListApprovalRules RequestApproval GetApproval Approve Veto ExecuteApproval EscrowRelease
DestroyKeyNow GenerateRootToken JoinNode ListNodes RemoveNode CreateBackup ManageCustodians RestoreBackup
""".split())
KEYRING_ACTIONS = frozenset(f"keyring:{name}" for name in """
Read ReadMetadata Write Delete Undelete Destroy List Create Rotate SetRotation Import Export Request DescribeMount
CreateMount
CreateToken CreateAppRole AppRoleLogin
""".split())
ALL_ACTIONS = KMS_ACTIONS | BROKER_ACTIONS | KEYRING_ACTIONS
# "kms:ReEncrypt" is the audited operation; policies decide it as these two checks.
ACTION_ALIASES = {"kms:ReEncrypt": ("kms:ReEncryptFrom", "kms:ReEncryptTo")}
# Operations a grant may carry (AWS's GrantOperation values; each is the policy action "kms:<operation>").
GRANT_OPERATIONS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo",
    "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
})
_RESOURCE_TYPE = re.compile(r"[a-z][a-z0-9-]*")
_KMS_ARN = re.compile(r"arn:[a-z-]+:kms:[^:]*:[^:]*:((?:key|alias)/.+)")

_STRING_OPS = {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
               "StringLike", "StringNotLike"}
_NUMERIC_OPS = {"NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals",
                "NumericGreaterThan", "NumericGreaterThanEquals"}
_DATE_OPS = {"DateEquals", "DateNotEquals", "DateLessThan", "DateLessThanEquals", "DateGreaterThan",
             "DateGreaterThanEquals"}
_ARN_OPS = {"ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"}
BASE_OPERATORS = _STRING_OPS | _NUMERIC_OPS | _DATE_OPS | _ARN_OPS | {"IpAddress", "NotIpAddress", "Bool", "Null"}

_FIXED_KEYS = {"kms:EncryptionContextKeys", "kms:KeySpec", "kms:KeyUsage", "kms:KeyOrigin", "kms:Provider",
               "kms:GrantOperations", "kms:GranteePrincipal", "kms:RetiringPrincipal", "kms:ResourceAliases",
               "kms:CallerAccount", "kms:ViaService", "kms:GrantIsForAWSResource", "kms:RequestAlias",
               "broker:SourceIp", "broker:CurrentTime", "broker:TimeOfDay",
               "broker:PrincipalName", "broker:AuthMethod",
               "aws:EpochTime", "aws:PrincipalArn", "aws:PrincipalAccount", "aws:ViaAWSService",
               "aws:PrincipalIsAWSService", "aws:TagKeys",
               # AWS's keys for a request's parameters (their values come from the operation's arguments)
               "kms:EncryptionAlgorithm", "kms:SigningAlgorithm", "kms:MessageType", "kms:MacAlgorithm",
               "kms:DataKeyPairSpec", "kms:GrantConstraintType", "kms:RotationPeriodInDays",
               "kms:ScheduleKeyDeletionPendingWindowInDays", "kms:WrappingAlgorithm", "kms:WrappingKeySpec",
               "kms:ExpirationModel", "kms:BypassPolicyLockoutSafetyCheck", "kms:ReEncryptOnSameKey",
               "kms:MultiRegion"}
# AWS global keys with the same meaning as a broker key: read as that key.
_SAME_AS = {"aws:SourceIp": "broker:SourceIp", "aws:CurrentTime": "broker:CurrentTime",
            # AWS's deprecated names of kms:KeySpec and kms:KeyUsage
            "kms:CustomerMasterKeySpec": "kms:KeySpec", "kms:CustomerMasterKeyUsage": "kms:KeyUsage"}
_PREFIX_KEYS = ("kms:EncryptionContext:", "kms:ResourceTag/", "broker:PrincipalTag/", "aws:RequestTag/",
                # Nitro Enclaves attestation (a Recipient parameter, which the broker refuses): never in a request
                "kms:RecipientAttestation:")
_SAME_PREFIX = {"aws:PrincipalTag/": "broker:PrincipalTag/", "aws:ResourceTag/": "kms:ResourceTag/"}
# AWS global keys about AWS infrastructure the broker does not have (VPCs, organizations, calling services, MFA,
# federation): accepted, and absent from every request, exactly as in an AWS request that has none of them.
ABSENT_KEYS = frozenset({
    "aws:SourceVpc", "aws:SourceVpce", "aws:VpcSourceIp", "aws:SourceArn", "aws:SourceAccount", "aws:SourceOrgID",
    "aws:SourceOrgPaths", "aws:PrincipalOrgID", "aws:PrincipalOrgPaths", "aws:PrincipalServiceName",
    "aws:PrincipalServiceNamesList", "aws:CalledVia", "aws:CalledViaFirst", "aws:CalledViaLast",
    "aws:MultiFactorAuthPresent", "aws:MultiFactorAuthAge", "aws:TokenIssueTime", "aws:SourceIdentity",
    "aws:FederatedProvider",
    # KMS keys about what the broker does not have: expiring imported material (kms:ValidTo), key agreement,
    # multi-Region keys (ReplicateKey, UpdatePrimaryRegion are not served)
    "kms:ValidTo", "kms:KeyAgreementAlgorithm", "kms:MultiRegionKeyType", "kms:PrimaryRegion", "kms:ReplicaRegion"})
# Condition keys whose values are a grant's principals: written as user ARNs (AWS) or names, compared as names.
_GRANT_PRINCIPAL_KEYS = {"kms:GranteePrincipal", "kms:RetiringPrincipal"}
MULTI_VALUED_KEYS = {"kms:EncryptionContextKeys", "kms:GrantOperations", "kms:ResourceAliases", "aws:TagKeys",
                     "aws:PrincipalOrgPaths", "aws:PrincipalServiceNamesList", "aws:CalledVia", "aws:SourceOrgPaths"}
_CANONICAL = {k.lower(): k for k in (*_FIXED_KEYS, *ABSENT_KEYS)} | {k.lower(): v for k, v in _SAME_AS.items()}
_PREFIXES = [(p.lower(), p) for p in _PREFIX_KEYS] + [(p.lower(), v) for p, v in _SAME_PREFIX.items()]


def canonical_condition_key(key: str) -> str | None:
    """The key a condition tests, in its canonical spelling (condition key names are case-insensitive, as in AWS;
    AWS global keys with a broker equivalent read as it), or None for a key the language does not know. The part
    after a prefix (a tag or context key) keeps its spelling."""
    fixed = _CANONICAL.get(key.lower())
    if fixed is not None:
        return fixed
    lowered = key.lower()
    for prefix, canonical in _PREFIXES:
        if lowered.startswith(prefix) and len(key) > len(prefix):
            return canonical + key[len(prefix):]
    return None


def known_condition_key(key: str) -> bool:
    return canonical_condition_key(key) is not None


def split_operator(op: str) -> tuple[str | None, str, bool]:
    """'ForAnyValue:StringLikeIfExists' -> ('ForAnyValue', 'StringLike', True)."""
    qualifier = None
    for q in ("ForAnyValue:", "ForAllValues:"):
        if op.startswith(q):
            qualifier, op = q[:-1], op[len(q):]
    if_exists = op.endswith("IfExists") and op != "IfExists"
    return qualifier, op[: -len("IfExists")] if if_exists else op, if_exists


@dataclass(frozen=True)
class Condition:
    operator: str
    qualifier: str | None
    base: str
    if_exists: bool
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    index: int
    sid: str
    effect: str
    actions: tuple[str, ...]  # lower-cased patterns: action names match case-insensitively (as in AWS)
    not_actions: bool
    resources: tuple[str, ...]
    principals: tuple[Named, ...] | None  # None: identity policy statement (no Principal element)
    account_self: bool  # the Principal names this account: the statement hands the key to identity policies
    conditions: tuple[Condition, ...] = field(default_factory=tuple)
    not_principal: bool = False  # NotPrincipal: every principal but the ones named
    not_resources: bool = False  # NotResource: every resource but the ones named
    # matches_action's answers for the actions of the language (a few dozen), kept with the parsed statement: the
    # decision on every request asks each statement about one of them, and fnmatch per pattern cost ~1-2 us each
    _action_hits: dict[str, bool] = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    def matches_action(self, action: str) -> bool:
        hit = self._action_hits.get(action)
        if hit is None:
            lowered = action.lower()
            hit = any(fnmatch.fnmatchcase(lowered, pattern) for pattern in self.actions) != self.not_actions
            if action in ALL_ACTIONS:  # bounded: never a name a request made up
                self._action_hits[action] = hit
        return hit

    def names(self, principal: Principal) -> bool:
        """Whether the Principal (NotPrincipal: anything but it) names `principal` directly."""
        hit = any(entry.names(principal) for entry in self.principals or ())
        return not hit if self.not_principal else hit

    def action_names(self) -> frozenset[str]:
        """Every action of the language this statement names (NotAction: every other one)."""
        return frozenset(a for a in ALL_ACTIONS if a not in ACTION_ALIASES and self.matches_action(a))


@dataclass(frozen=True)
class PolicyDocument:
    statements: tuple[Statement, ...]
    raw: dict[str, Any]


def _as_list(value: Any, path: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValidationError(f"{path}: must be a string or a non-empty list of strings")


_LOWER_ACTIONS = frozenset(a.lower() for a in ALL_ACTIONS)
_LOWER_ALIASES = {k.lower(): tuple(v.lower() for v in vs) for k, vs in ACTION_ALIASES.items()}


def _check_action(pattern: str, path: str, *, key_policy: bool = False) -> tuple[str, ...]:
    """A valid action pattern, as the lower-cased patterns it is matched by ("kms:ReEncrypt" names its two checks).
    A key policy may name a `kms:` action that does not exist, as AWS accepts: it matches nothing."""
    if not re.fullmatch(r"[A-Za-z]+:[A-Za-z*?]+|\*", pattern):
        raise ValidationError(f"{path}: {pattern!r} is not an action")
    lowered = pattern.lower()
    if not any(fnmatch.fnmatchcase(a, lowered) for a in _LOWER_ACTIONS) \
            and not (key_policy and lowered.startswith("kms:")):
        raise ValidationError(f"{path}: unknown action {pattern!r}")
    return _LOWER_ALIASES.get(lowered, (lowered,))


def resource_pattern(pattern: str, path: str) -> str:
    """A valid resource pattern in its canonical form: "*", or "<literal type>/<name glob>" (KMS ARNs → key/alias)."""
    if pattern == "*":
        return pattern
    if pattern.startswith("arn:"):
        arn = _KMS_ARN.fullmatch(pattern)
        if arn is None:
            raise ValidationError(f"{path}: {pattern!r} is not a KMS key or alias ARN")
        pattern = arn.group(1)
    kind, slash, name = pattern.partition("/")
    if not slash or not name or not _RESOURCE_TYPE.fullmatch(kind):
        raise ValidationError(f"{path}: {pattern!r} must be \"*\" or \"<type>/<name>\" with a literal type "
                              "(key/…, alias/…, provider/…, keyring/…, policy/…)")
    return pattern


def _check_values(base: str, key: str, values: list[str], path: str) -> None:
    for i, value in enumerate(values):
        if "${" in value:
            continue  # a policy variable, substituted at evaluation
        where = f"{path}[{i}]" if len(values) > 1 else path
        if base in _NUMERIC_OPS:
            try:
                float(value)
            except ValueError:
                raise ValidationError(f"{where}: {value!r} is not a number") from None
        elif base in ("IpAddress", "NotIpAddress"):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValidationError(f"{where}: {value!r} is not an IP address or CIDR") from None
        elif base in ("Bool", "Null") and value.lower() not in ("true", "false"):
            raise ValidationError(f"{where}: {value!r} must be true or false")
        elif base in _DATE_OPS:
            from broker.policy.evaluate import parse_time_value
            if parse_time_value(value) is None:
                raise ValidationError(f"{where}: {value!r} is not an ISO 8601 date-time or HH:MM")


MAX_DOCUMENT_CHARS = 32_768  # AWS's key policy limit (32 KB)
_MAX_DEPTH = 8  # policy > Statement > [i] > Condition > operator > key > [values]: 7 levels are enough


def _check_shape(document: Any) -> None:
    """Bounded size and depth, every string valid Unicode: checked before anything else reads the document."""
    chars, stack = 0, [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ValidationError(f"policy: nested deeper than {_MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(k, depth + 1) for k in value] + [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, str):
            chars += len(value)
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ValidationError("policy: contains a string that is not valid Unicode") from None
        else:
            chars += 8
        if chars > MAX_DOCUMENT_CHARS:
            raise ValidationError(f"policy: larger than {MAX_DOCUMENT_CHARS} characters")


def parse_document(document: Any, *, key_policy: bool = False) -> PolicyDocument:
    """Validate and compile. key_policy=True requires a Principal in every statement (as AWS does)."""
    if not isinstance(document, dict):
        raise ValidationError("policy: must be a JSON object")
    _check_shape(document)
    unknown = set(document) - {"Version", "Id", "Statement"}
    if unknown:
        raise ValidationError(f"policy: unknown field {sorted(unknown)[0]!r}")
    raw_statements = document.get("Statement")
    if isinstance(raw_statements, dict):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise ValidationError("Statement: must be a non-empty list")
    statements = []
    for index, st in enumerate(raw_statements):
        path = f"Statement[{index}]"
        if not isinstance(st, dict):
            raise ValidationError(f"{path}: must be an object")
        extra = set(st) - {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
                           "NotResource", "Condition"}
        if extra:
            raise ValidationError(f"{path}.{sorted(extra)[0]}: unknown element")
        effect = st.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise ValidationError(f"{path}.Effect: must be Allow or Deny")
        if ("Action" in st) == ("NotAction" in st):
            raise ValidationError(f"{path}: exactly one of Action or NotAction is required")
        action_field = "Action" if "Action" in st else "NotAction"
        listed = isinstance(st[action_field], list)
        actions = [pattern for i, a in enumerate(_as_list(st[action_field], f"{path}.{action_field}"))
                   for pattern in _check_action(a, f"{path}.{action_field}[{i}]" if listed else f"{path}.{action_field}",
                                                key_policy=key_policy)]
        if "Resource" in st and "NotResource" in st:
            raise ValidationError(f"{path}: give Resource or NotResource, not both")
        resource_field = "NotResource" if "NotResource" in st else "Resource"
        listed = isinstance(st.get(resource_field), list)
        resources = [resource_pattern(r, f"{path}.{resource_field}[{i}]" if listed else f"{path}.{resource_field}")
                     for i, r in enumerate(_as_list(st.get(resource_field, "*"), f"{path}.{resource_field}"))]
        principals, account_self, not_principal = _parse_principal(st, path, key_policy)
        conditions = _parse_conditions(st.get("Condition"), f"{path}.Condition")
        statements.append(Statement(index, str(st.get("Sid", "")), effect, tuple(actions), action_field == "NotAction",
                                    tuple(resources), principals, account_self, tuple(conditions),
                                    not_principal=not_principal, not_resources=resource_field == "NotResource"))
    return PolicyDocument(tuple(statements), document)


def _parse_principal(st: dict[str, Any], path: str,
                     key_policy: bool) -> tuple[tuple[Named, ...] | None, bool, bool]:
    """(entries, names this account, NotPrincipal) of a statement's Principal or NotPrincipal element."""
    present = [f for f in ("Principal", "NotPrincipal") if f in st]
    if not present:
        if key_policy:
            raise ValidationError(f"{path}.Principal: a key policy statement needs a Principal")
        return None, False, False
    if not key_policy:
        raise ValidationError(f"{path}.{present[0]}: identity policies take no Principal (they apply to whoever "
                              "holds them)")
    if len(present) == 2:
        raise ValidationError(f"{path}: give Principal or NotPrincipal, not both")
    field_name = present[0]
    entries = parse_principal(st[field_name], f"{path}.{field_name}")
    negated = field_name == "NotPrincipal"
    # In a NotPrincipal the account names no one: AWS asks for it beside a user there, and excludes only the user.
    return entries, not negated and any(e.kind == "account" for e in entries), negated


def _scalar(value: Any) -> Any:
    """AWS takes JSON booleans and numbers as condition values: compared as their text ("true", "30")."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float) else value


def _parse_conditions(value: Any, path: str) -> list[Condition]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ValidationError(f"{path}: must be an object")
    out = []
    for operator, block in value.items():
        qualifier, base, if_exists = split_operator(operator)
        if base not in BASE_OPERATORS or (if_exists and base == "Null"):
            raise ValidationError(f"{path}.{operator}: unknown condition operator")
        if not isinstance(block, dict) or not block:
            raise ValidationError(f"{path}.{operator}: must be an object of condition keys")
        for written, raw in block.items():
            where = f"{path}.{operator}.{written}"
            key = canonical_condition_key(written)
            if key is None:
                raise ValidationError(f"{where}: unknown condition key")
            values = _as_list([_scalar(v) for v in raw] if isinstance(raw, list) else _scalar(raw), where)
            if key in _GRANT_PRINCIPAL_KEYS:
                values = [grant_principal_value(v) for v in values]
            _check_values(base, key, values, where)
            out.append(Condition(operator, qualifier, base, if_exists, key, tuple(values)))
    return out
