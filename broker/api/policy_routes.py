"""Native routes for policies, key policies, grants and the policy simulator: parse, call PolicyAdmin, render."""

from __future__ import annotations

from typing import Any

from flask import current_app

from broker.api import schemas as s
from broker.api.native import Ctx, Svc, op, parse_query


def _admin() -> Any:
    """The PolicyAdmin service of this process (broker.services.Services.policies)."""
    return current_app.extensions["kms"].policies


@op("/policies", "GET", "ListPolicies", "Names of identity policies (built-in and stored)")
def list_policies(svc: Svc, ctx: Ctx):
    return _admin().list_policies(ctx)


@op("/policies/<name>", "PUT", "PutPolicy", "Create or replace an identity policy (validated)", s.PutPolicy)
def put_policy(svc: Svc, ctx: Ctx, b: s.PutPolicy, name: str):
    return _admin().put_policy(ctx, name, b.Document)


@op("/policies/<name>", "GET", "GetPolicy", "An identity policy document")
def get_policy(svc: Svc, ctx: Ctx, name: str):
    return _admin().get_policy(ctx, name)


@op("/policies/<name>", "DELETE", "DeletePolicy", "Delete an identity policy")
def delete_policy(svc: Svc, ctx: Ctx, name: str):
    _admin().delete_policy(ctx, name)


@op("/policies/simulate", "POST", "SimulatePolicy", "Would this request be allowed, and which statement decides?",
    s.Simulate)
def simulate(svc: Svc, ctx: Ctx, b: s.Simulate):
    return _admin().simulate(ctx, principal=b.Principal.model_dump(), action=b.Action, key_ref=b.KeyId,
                             resource=b.Resource, context=b.EncryptionContext, source_ip=b.SourceIp, time=b.Time)


@op("/keys/<path:key>/policy", "PUT", "PutKeyPolicy", "Set the key policy (validated)", s.PutKeyPolicy)
def put_key_policy(svc: Svc, ctx: Ctx, b: s.PutKeyPolicy, key: str):
    _admin().put_key_policy(ctx, key, b.Policy, b.PolicyName, bypass_lockout=b.BypassPolicyLockoutSafetyCheck)


@op("/keys/<path:key>/policy", "GET", "GetKeyPolicy", "The key policy (the default one if none was set)",
    query=s.KeyPolicyQuery)
def get_key_policy(svc: Svc, ctx: Ctx, key: str):
    return _admin().get_key_policy(ctx, key, parse_query().name)


@op("/keys/<path:key>/policies", "GET", "ListKeyPolicies", "Names of the key's policies")
def list_key_policies(svc: Svc, ctx: Ctx, key: str):
    return _admin().list_key_policies(ctx, key)


@op("/keys/<path:key>/grants", "POST", "CreateGrant", "Grant operations on a key to a principal", s.CreateGrant, 201)
def create_grant(svc: Svc, ctx: Ctx, b: s.CreateGrant, key: str):
    return _admin().create_grant(ctx, key, b.GranteePrincipal, b.Operations, retiring=b.RetiringPrincipal,
                                 constraints=b.Constraints, name=b.Name)


@op("/keys/<path:key>/grants", "GET", "ListGrants", "Grants on a key")
def list_grants(svc: Svc, ctx: Ctx, key: str):
    return _admin().list_grants(ctx, key)


@op("/keys/<path:key>/grants/<grant_id>", "DELETE", "RevokeGrant", "Revoke a grant")
def revoke_grant(svc: Svc, ctx: Ctx, key: str, grant_id: str):
    _admin().revoke_grant(ctx, key, grant_id)


@op("/grants/retire", "POST", "RetireGrant", "Retire a grant (by token, or key + grant id)", s.RetireGrant)
def retire_grant(svc: Svc, ctx: Ctx, b: s.RetireGrant):
    _admin().retire_grant(ctx, grant_token=b.GrantToken, key_ref=b.KeyId, grant_id=b.GrantId)


@op("/grants/retirable", "GET", "ListRetirableGrants", "Grants a principal may retire (default: the caller)",
    query=s.RetirableQuery)
def list_retirable(svc: Svc, ctx: Ctx):
    return _admin().list_retirable_grants(ctx, parse_query().principal or ctx.principal.name)
