"""Who a key-policy statement names: the broker's own principal elements and AWS's, mapped onto broker principals.

The broker is one AWS account, `ACCOUNT` (the one in every ARN its AWS door answers with). Each broker principal is,
to an AWS statement:

* the IAM user `arn:aws:iam::<ACCOUNT>:user/<principal name>` — the whole name after `user/`, slashes included
  (`user/billing-app`, `user/ldap/alice`, `user/jwt/ci/repo:x`), matched exactly, case-sensitively;
* when it logged in through a login role, the IAM role `arn:aws:iam::<ACCOUNT>:role/<role>`: AppRole principals
  (`approle/<role>`, auth method approle) and JWT/OIDC principals (`jwt/<role>/<subject>`, auth method jwt). AppRole
  and JWT role names share this one namespace: name them apart. A role ARN with a path names no broker principal.
* a member of the account: `arn:aws:iam::<ACCOUNT>:root` or the bare account id means what `{"Account": "self"}`
  means — the statement hands the key to the principals' identity policies (AWS: "enable IAM policies").

`"*"` (or `{"AWS": "*"}`) names every principal. Principals of other accounts, AWS service principals
(`{"Service": …}`) and AWS unique ids (`AIDA…`, what AWS shows for a deleted principal) are accepted and name no
broker principal (nothing outside the broker calls it as those). Principal ARNs take no wildcards (as in AWS), role
sessions and federated users do not exist here: such elements are refused with the reason.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from broker.auth import Principal
from broker.errors import ValidationError

ACCOUNT = "111122223333"
ACCOUNT_ROOT = f"arn:aws:iam::{ACCOUNT}:root"

_IAM_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):(root|user/.+|role/.+)")
_OWN_USER_ARN = re.compile(rf"arn:aws[a-z-]*:iam::{ACCOUNT}:user/(.+)")
_UNIQUE_ID = re.compile(r"A[A-Z]{3}[A-Z0-9]{13,30}")
_ACCOUNT_ID = re.compile(r"\d{12}")
_ELEMENTS = {"AWS", "Broker", "Account", "Service"}


@dataclass(frozen=True)
class Named:
    """One entry of a Principal/NotPrincipal element.

    kind: "any" (every principal) · "broker" (a broker name glob) · "user" (one exact principal name) ·
          "role" (principals logged in through that login role) · "account" (this account: identity policies) ·
          "none" (another account, an AWS service, a unique id: never a broker principal)
    """

    kind: str
    value: str = ""

    def names(self, principal: Principal) -> bool:
        """Whether this entry names `principal` itself (an "account" entry delegates; it names nobody here)."""
        if self.kind == "any":
            return True
        if self.kind == "broker":
            return fnmatch.fnmatchcase(principal.name, self.value)
        if self.kind == "user":
            return principal.name == self.value
        if self.kind == "role":
            return login_role(principal) == self.value
        return False


def login_role(principal: Principal) -> str | None:
    """The login role a principal came through (AppRole or JWT/OIDC), read from its name and auth method."""
    parts = principal.name.split("/")
    if principal.auth_method == "approle" and len(parts) == 2 and parts[0] == "approle":
        return parts[1]
    if principal.auth_method == "jwt" and len(parts) >= 3 and parts[0] == "jwt":
        return parts[1]
    return None


def user_arn(principal: Principal) -> str:
    """The IAM user ARN a broker principal is (aws:PrincipalArn)."""
    return f"arn:aws:iam::{ACCOUNT}:user/{principal.name}"


def parse_principal(value: Any, path: str) -> tuple[Named, ...]:
    """A Principal / NotPrincipal element → its entries (ValidationError naming the first bad one)."""
    if value == "*":
        return (Named("any"),)
    if not isinstance(value, dict) or not value or set(value) - _ELEMENTS:
        raise ValidationError(f"{path}: must be \"*\" or an object with AWS, Service, Broker and/or Account")
    out: list[Named] = []
    if "Account" in value:
        if value["Account"] != "self":
            raise ValidationError(f"{path}.Account: only \"self\" (the identity policies of this broker) is valid")
        out.append(Named("account"))
    for _, name in _entries(value.get("Broker"), f"{path}.Broker"):
        out.append(Named("broker", name))
    for i, text in _entries(value.get("AWS"), f"{path}.AWS"):
        out.append(_aws(text, f"{path}.AWS[{i}]" if isinstance(value["AWS"], list) else f"{path}.AWS"))
    for _ in _entries(value.get("Service"), f"{path}.Service"):
        out.append(Named("none"))  # AWS services never call the broker
    return tuple(out)


def _entries(value: Any, path: str) -> list[tuple[int, str]]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValidationError(f"{path}: must be a string or a non-empty list of strings")
    return list(enumerate(items))


def _aws(text: str, path: str) -> Named:
    if text == "*":
        return Named("any")
    if _ACCOUNT_ID.fullmatch(text):
        return Named("account") if text == ACCOUNT else Named("none")
    if _UNIQUE_ID.fullmatch(text):
        return Named("none")
    arn = _IAM_ARN.fullmatch(text)
    if arn is None:
        raise ValidationError(f"{path}: {text[:256]!r} is not a principal the broker knows (an account id, "
                              "arn:aws:iam::<account>:root, :user/<name> or :role/<name>; the broker has no role "
                              "sessions or federated users)")
    account, resource = arn.group(1), arn.group(2)
    if any(c in resource for c in "*?"):
        raise ValidationError(f"{path}: a principal ARN cannot contain wildcards (use \"*\" or a condition)")
    if account != ACCOUNT:
        return Named("none")
    if resource == "root":
        return Named("account")
    kind, _, name = resource.partition("/")
    if kind == "user":
        return Named("user", name)
    return Named("role", name) if "/" not in name else Named("none")


def grant_principal_value(value: str) -> str:
    """A kms:GranteePrincipal / kms:RetiringPrincipal condition value as grants store the principal: its name, for a
    user ARN of this account (AWS writes these conditions with ARNs; a glob after `user/` stays a glob). Anything else
    as written: no grant is ever for a role, another account or a service, so such a value matches nothing."""
    own = _OWN_USER_ARN.fullmatch(value)
    return own.group(1) if own else value
