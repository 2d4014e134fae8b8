"""Native routes that issue, list and revoke the AWS-compatible front door's SigV4 credentials.

Thin: parse, call one declared operation of the identity service, render. The secret access key is returned once,
by the create call, and stored only sealed under the root of trust. A caller that is not root binds only policies it
holds, under its own name; the credentials die with the caller's token (revoked or expired) and may be given a
shorter TTL of their own.
"""

from __future__ import annotations

from datetime import datetime

from flask import current_app
from pydantic import Field

from broker.api.native import Ctx, Svc, op
from broker.api.schemas import Body
from broker.identity import IdentityService


class CreateAwsCredentials(Body):
    Policies: list[str] = Field(default_factory=list)
    Name: str = Field(default="", max_length=256)
    TtlSeconds: int | None = None


def _identity() -> IdentityService:
    return current_app.extensions["kms"].identity


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@op("/aws-credentials", "POST", "CreateAwsCredentials",
    "Issue a SigV4 access key id / secret for the AWS-compatible front door (the secret is shown once; the "
    "credentials die with the caller's token, or after TtlSeconds)", CreateAwsCredentials, 201)
def create(svc: Svc, ctx: Ctx, b: CreateAwsCredentials):
    issued = _identity().create_aws_credentials(ctx, policies=b.Policies, name=b.Name, ttl_seconds=b.TtlSeconds)
    return {"access_key_id": issued.access_key_id, "secret_access_key": issued.secret_access_key,
            "expires_at": _iso(issued.expires_at)}


@op("/aws-credentials", "GET", "ListAwsCredentials", "SigV4 credentials: ids, names, policies, status (no secrets)")
def list_all(svc: Svc, ctx: Ctx):
    out = []
    for c in _identity().list_aws_credentials(ctx):
        item = {"AccessKeyId": c.access_key_id, "Name": c.name, "Policies": list(c.policies),
                "CreatedAt": _iso(c.created_at), "CreatedBy": c.created_by, "Status": c.status}
        if c.revoked_at is not None:
            item["RevokedAt"] = _iso(c.revoked_at)
        if c.expires_at is not None:
            item["ExpiresAt"] = _iso(c.expires_at)
        out.append(item)
    return {"Credentials": out}


@op("/aws-credentials/<access_key_id>", "DELETE", "RevokeAwsCredentials",
    "Revoke SigV4 credentials (the sealed secret is dropped; every process refuses them within the auth cache TTL)")
def revoke(svc: Svc, ctx: Ctx, access_key_id: str):
    _identity().revoke_aws_credentials(ctx, access_key_id)
    return {"AccessKeyId": access_key_id, "Status": "Inactive"}
