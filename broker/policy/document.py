"""Policy documents: parsing and validation on write.

    {"Version": "2012-10-17",
     "Statement": [{"Sid": "...", "Effect": "Allow" | "Deny",
                    "Principal": "*" | {"Broker": "name-glob" | [...], "Account": "self"},   (key policies only)
                    "Action": "kms:Encrypt" | ["kms:*", ...]   or "NotAction",
                    "Resource": "*" | "key/<id>" | "alias/<name>" | "provider/<name>" | "keyring/<mount>/<id>" | [...],
                    "Condition": {"<Operator>": {"<condition key>": "value" | [...]}}}]}

Invalid documents are refused with the JSON path of the first bad element.

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

from broker.errors import ValidationError

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
PutPolicy GetPolicy ListPolicies DeletePolicy SimulatePolicy ReadAudit CreateToken RevokeToken LookupToken
CreateAwsCredentials ListAwsCredentials RevokeAwsCredentials ManageAuth DestroyKey RotateKey
LookupSelfToken RenewSelfToken RevokeSelfToken Login Sync
ConfigureApprovals ListApprovals ListApprovalRules RequestApproval GetApproval Approve Veto ExecuteApproval EscrowRelease
DestroyKeyNow GenerateRootToken JoinNode ListNodes RemoveNode CreateBackup ManageCustodians RestoreBackup
""".split())
KEYRING_ACTIONS = frozenset(f"keyring:{name}" for name in """
Read ReadMetadata Write Delete List Create Rotate SetRotation Import Export Request DescribeMount CreateMount
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
BASE_OPERATORS = _STRING_OPS | _NUMERIC_OPS | _DATE_OPS | {"IpAddress", "NotIpAddress", "Bool", "Null"}

_FIXED_KEYS = {"kms:EncryptionContextKeys", "kms:KeySpec", "kms:KeyUsage", "kms:KeyOrigin", "kms:Provider",
               "kms:GrantOperations", "kms:GranteePrincipal", "kms:RetiringPrincipal", "kms:ResourceAliases",
               "broker:SourceIp", "broker:CurrentTime", "broker:TimeOfDay",
               "broker:PrincipalName", "broker:AuthMethod"}
_PREFIX_KEYS = ("kms:EncryptionContext:", "kms:ResourceTag/", "broker:PrincipalTag/")
MULTI_VALUED_KEYS = {"kms:EncryptionContextKeys", "kms:GrantOperations", "kms:ResourceAliases"}


def known_condition_key(key: str) -> bool:
    return key in _FIXED_KEYS or any(key.startswith(p) and len(key) > len(p) for p in _PREFIX_KEYS)


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
    actions: tuple[str, ...]
    not_actions: bool
    resources: tuple[str, ...]
    principals: tuple[str, ...] | None  # None: identity policy statement (no Principal element)
    account_self: bool
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    def matches_action(self, action: str) -> bool:
        hit = any(fnmatch.fnmatchcase(action, pattern) for pattern in self.actions)
        return not hit if self.not_actions else hit

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


def _check_action(pattern: str, path: str) -> tuple[str, ...]:
    """A valid action pattern, as the patterns it is matched by ("kms:ReEncrypt" names its two checks)."""
    if not re.fullmatch(r"[a-z]+:[A-Za-z*?]+|\*", pattern):
        raise ValidationError(f"{path}: {pattern!r} is not an action")
    if not any(fnmatch.fnmatchcase(a, pattern) for a in ALL_ACTIONS):
        raise ValidationError(f"{path}: unknown action {pattern!r}")
    return ACTION_ALIASES.get(pattern, (pattern,))


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
        extra = set(st) - {"Sid", "Effect", "Principal", "Action", "NotAction", "Resource", "Condition"}
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
                   for pattern in _check_action(a, f"{path}.{action_field}[{i}]" if listed else f"{path}.{action_field}")]
        listed = isinstance(st.get("Resource"), list)
        resources = [resource_pattern(r, f"{path}.Resource[{i}]" if listed else f"{path}.Resource")
                     for i, r in enumerate(_as_list(st.get("Resource", "*"), f"{path}.Resource"))]
        principals, account_self = _parse_principal(st.get("Principal"), f"{path}.Principal", key_policy)
        conditions = _parse_conditions(st.get("Condition"), f"{path}.Condition")
        statements.append(Statement(index, str(st.get("Sid", "")), effect, tuple(actions), action_field == "NotAction",
                                    tuple(resources), principals, account_self, tuple(conditions)))
    return PolicyDocument(tuple(statements), document)


def _parse_principal(value: Any, path: str, key_policy: bool) -> tuple[tuple[str, ...] | None, bool]:
    if value is None:
        if key_policy:
            raise ValidationError(f"{path}: a key policy statement needs a Principal")
        return None, False
    if not key_policy:
        raise ValidationError(f"{path}: identity policies take no Principal (they apply to whoever holds them)")
    if value == "*":
        return ("*",), False
    if not isinstance(value, dict) or not value or set(value) - {"Broker", "Account"}:
        raise ValidationError(f"{path}: must be \"*\" or an object with Broker and/or Account")
    account_self = False
    if "Account" in value:
        if value["Account"] != "self":
            raise ValidationError(f"{path}.Account: only \"self\" (the identity policies of this broker) is valid")
        account_self = True
    names = tuple(_as_list(value["Broker"], f"{path}.Broker")) if "Broker" in value else ()
    return names, account_self


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
        for key, raw in block.items():
            where = f"{path}.{operator}.{key}"
            if not known_condition_key(key):
                raise ValidationError(f"{where}: unknown condition key")
            if isinstance(raw, bool | int | float) and not isinstance(raw, str):
                raw = str(raw).lower() if isinstance(raw, bool) else str(raw)
            values = _as_list(raw, where)
            _check_values(base, key, values, where)
            out.append(Condition(operator, qualifier, base, if_exists, key, tuple(values)))
    return out
