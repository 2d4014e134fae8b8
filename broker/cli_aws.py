"""`kms-broker aws-credentials create|list|revoke`: SigV4 credentials of the AWS-compatible front door (over HTTP).

Reads KMSB_ADDR and KMSB_TOKEN like the other client commands. The secret access key is printed once, by create.
Credentials die with the token that created them (KMSB_TOKEN), or earlier with --ttl.
"""

from __future__ import annotations

import json
from typing import Any

import click

from broker.client import BrokerClient

OUTPUT = click.option("--output", "output", type=click.Choice(["text", "json"]), default="text",
                      help="text for people, json for scripts")


def _emit(output: str, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if output == "json" else text)


@click.group("aws-credentials")
def aws_credentials() -> None:
    """SigV4 access keys for boto3 / the AWS CLI pointed at the broker (--endpoint-url)."""


@aws_credentials.command("create")
@click.option("--policy", "policies", multiple=True, help="policy name the credentials run with (repeatable)")
@click.option("--name", default="", help="principal name the requests run as (default: the access key id)")
@click.option("--ttl", default=None, help="e.g. 15m, 8h (default and ceiling: the life of your token)")
@OUTPUT
def create(policies: tuple[str, ...], name: str, ttl: str | None, output: str) -> None:
    """Issue an access key id and secret; the secret is shown only now."""
    body: dict[str, Any] = {"Policies": list(policies), "Name": name}
    if ttl:
        # imported here: broker.auth pulls in the store, which a client command does not need
        from broker.auth.config import parse_duration

        try:
            body["TtlSeconds"] = parse_duration(ttl)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--ttl") from None
    out = BrokerClient().call("POST", "/aws-credentials", body)
    expiry = f"expires_at: {out['expires_at']}\n" if out.get("expires_at") else ""
    _emit(output, out, f"access_key_id: {out['access_key_id']}\nsecret_access_key: {out['secret_access_key']}\n"
                       f"{expiry}(the secret is shown once; store it now)")


@aws_credentials.command("list")
@OUTPUT
def list_credentials(output: str) -> None:
    """Access key ids with their principal, policies and status (never secrets)."""
    creds = BrokerClient().call("GET", "/aws-credentials")["Credentials"]
    _emit(output, creds, "\n".join(f"{c['AccessKeyId']}  {c['Status']:<8}  {c['Name']}  {','.join(c['Policies'])}"
                                   for c in creds))


@aws_credentials.command("revoke")
@click.argument("access_key_id")
@OUTPUT
def revoke(access_key_id: str, output: str) -> None:
    """Revoke an access key id (its sealed secret is dropped)."""
    out = BrokerClient().call("DELETE", f"/aws-credentials/{access_key_id}")
    _emit(output, out, f"revoked {access_key_id}")
