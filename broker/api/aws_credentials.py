"""Native routes that issue, list and revoke the AWS-compatible front door's SigV4 credentials.

The secret access key is returned once, by the create call, and stored only sealed under the root KEK. Every call
goes through KeyService's choke point (authorized as broker:*AwsCredentials, audited once). A caller that is not
root may bind only policies it holds itself, and only under its own principal name (grants name principals), so
issuing credentials never widens anyone's rights.
"""

from __future__ import annotations

from flask import current_app
from pydantic import Field

from broker import errors
from broker.api.native import Ctx, Svc, op
from broker.api.schemas import Body
from broker.auth.sigv4 import AwsCredentials


class CreateAwsCredentials(Body):
    Policies: list[str] = Field(default_factory=list)
    Name: str = Field(default="", max_length=256)


def _credentials() -> AwsCredentials:
    return current_app.extensions["kms_aws_credentials"]


@op("/aws-credentials", "POST", "CreateAwsCredentials",
    "Issue a SigV4 access key id / secret for the AWS-compatible front door (the secret is shown once)",
    CreateAwsCredentials, 201)
def create(svc: Svc, ctx: Ctx, b: CreateAwsCredentials):
    with svc.operation(ctx, "broker:CreateAwsCredentials") as entry:
        svc.authorize(ctx, entry, "broker:CreateAwsCredentials", None, resource="aws-credentials/*")
        policies = list(dict.fromkeys(p.strip() for p in b.Policies))
        if any(not p for p in policies):
            raise errors.ValidationError("Policies: names must not be empty")
        beyond = sorted(set(policies) - set(ctx.principal.policies))
        if beyond and not ctx.principal.is_root:
            raise errors.AccessDenied(f"{ctx.principal.name} may bind only policies it holds; not {beyond}")
        name = b.Name.strip()
        if not ctx.principal.is_root:
            if name and name != ctx.principal.name:
                raise errors.AccessDenied(f"{ctx.principal.name} may issue credentials only under its own name")
            name = ctx.principal.name
        issued = _credentials().issue(name, policies, created_by=ctx.principal.name)
        entry.extra["access_key_id"] = issued.access_key_id
        entry.extra["policies"] = list(issued.policies)
        return {"access_key_id": issued.access_key_id, "secret_access_key": issued.secret_access_key}


@op("/aws-credentials", "GET", "ListAwsCredentials", "SigV4 credentials: ids, names, policies, status (no secrets)")
def list_all(svc: Svc, ctx: Ctx):
    with svc.operation(ctx, "broker:ListAwsCredentials") as entry:
        svc.authorize(ctx, entry, "broker:ListAwsCredentials", None, resource="aws-credentials/*")
        return {"Credentials": _credentials().list()}


@op("/aws-credentials/<access_key_id>", "DELETE", "RevokeAwsCredentials",
    "Revoke SigV4 credentials (the sealed secret is dropped; every process refuses them within the auth cache TTL)")
def revoke(svc: Svc, ctx: Ctx, access_key_id: str):
    with svc.operation(ctx, "broker:RevokeAwsCredentials") as entry:
        svc.authorize(ctx, entry, "broker:RevokeAwsCredentials", None, resource=f"aws-credentials/{access_key_id}")
        entry.extra["access_key_id"] = access_key_id
        if not _credentials().revoke(access_key_id):
            raise errors.NotFound(f"active AWS credentials {access_key_id} not found")
        return {"AccessKeyId": access_key_id, "Status": "Inactive"}
