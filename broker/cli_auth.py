"""`kms-broker token …` and `kms-broker login …`: tokens and logins over the native API (KMSB_ADDR, KMSB_TOKEN).

Secrets never travel in argv: a JWT is read from stdin, an LDAP password from KMSB_LDAP_PASSWORD or a prompt,
an AppRole secret_id from KMSB_SECRET_ID or stdin.
"""

from __future__ import annotations

import json
import os
import sys

import click

from broker.client import BrokerClient, BrokerClientError

OUTPUT = click.option("--output", "output", type=click.Choice(["text", "json"]), default="text",
                      help="text for people, json for scripts")


def _anonymous() -> BrokerClient:
    return BrokerClient(anonymous=True)  # a login presents no token, even if KMSB_TOKEN is set


def _call(client: BrokerClient, method: str, path: str, body: dict | None = None) -> dict:
    try:
        return client.call(method, path, body)
    except BrokerClientError as exc:
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        sys.exit(1)


def _emit_auth(output: str, data: dict) -> None:
    auth = data.get("auth") or {}
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"token: {auth.get('client_token', '')}")
    click.echo(f"accessor: {auth.get('accessor', '')}")
    click.echo(f"policies: {', '.join(auth.get('policies', []))}")
    click.echo(f"ttl: {auth.get('lease_duration', 0)}s renewable: {auth.get('renewable')}")


def _emit(output: str, data: dict) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for k, v in data.items():
            click.echo(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}")


# ------------------------------------------------------------------------------------------------- token


@click.group()
def token() -> None:
    """Create, look up, renew and revoke broker tokens (reads KMSB_ADDR and KMSB_TOKEN)."""


@token.command("create")
@click.option("--policy", "policies", multiple=True, help="policy name (repeat); default: the caller's policies")
@click.option("--ttl", default=None, help="e.g. 30m, 1h, 7d")
@click.option("--explicit-max-ttl", default=None, help="renewals never go past this")
@click.option("--display-name", default=None, help="root only; a child keeps its parent's name")
@click.option("--meta", multiple=True, help="KEY=VALUE metadata (repeat); becomes principal attributes")
@click.option("--no-renew", is_flag=True, help="the token cannot be renewed")
@click.option("--orphan", is_flag=True, help="no parent (root only)")
@OUTPUT
def token_create(policies: tuple[str, ...], ttl: str | None, explicit_max_ttl: str | None, display_name: str | None,
                 meta: tuple[str, ...], no_renew: bool, orphan: bool, output: str) -> None:
    body: dict = {"renewable": not no_renew, "no_parent": orphan}
    if display_name:
        body["display_name"] = display_name
    if policies:
        body["policies"] = list(policies)
    if ttl:
        body["ttl"] = ttl
    if explicit_max_ttl:
        body["explicit_max_ttl"] = explicit_max_ttl
    pairs = {}
    for item in meta:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        k, v = item.split("=", 1)
        pairs[k] = v
    if pairs:
        body["meta"] = pairs
    _emit_auth(output, _call(BrokerClient(), "POST", "/auth/token/create", body))


@token.command("lookup")
@click.option("--accessor", default=None, help="look up another token by accessor (default: your own)")
@OUTPUT
def token_lookup(accessor: str | None, output: str) -> None:
    client = BrokerClient()
    data = (_call(client, "POST", "/auth/token/lookup-accessor", {"accessor": accessor}) if accessor
            else _call(client, "GET", "/auth/token/lookup-self"))
    _emit(output, data["data"])


@token.command("renew")
@click.option("--increment", default=None, help="e.g. 1h (default: the token's TTL)")
@OUTPUT
def token_renew(increment: str | None, output: str) -> None:
    body = {"increment": increment} if increment else {}
    _emit(output, _call(BrokerClient(), "POST", "/auth/token/renew-self", body)["auth"])


@token.command("revoke")
@click.option("--accessor", default=None, help="revoke the token with this accessor (and its children)")
@click.option("--self", "revoke_self", is_flag=True, help="revoke your own token (KMSB_TOKEN)")
@OUTPUT
def token_revoke(accessor: str | None, revoke_self: bool, output: str) -> None:
    """Revoke a token and all its descendants: --accessor A, --self, or the token on stdin."""
    client = BrokerClient()
    if accessor and revoke_self:
        raise click.UsageError("give --accessor or --self, not both")
    if accessor:
        data = _call(client, "POST", "/auth/token/revoke", {"accessor": accessor})
    elif revoke_self:
        data = _call(client, "POST", "/auth/token/revoke-self")
    else:
        value = sys.stdin.readline().strip()
        if not value:
            raise click.UsageError("give --accessor, --self, or the token to revoke on stdin")
        data = _call(client, "POST", "/auth/token/revoke", {"token": value})
    _emit(output, data)


# ------------------------------------------------------------------------------------------------- login


@click.group()
def login() -> None:
    """Log in (JWT, LDAP, AppRole) and print a broker token (reads KMSB_ADDR)."""


@login.command("jwt")
@click.option("--role", required=True)
@OUTPUT
def login_jwt(role: str, output: str) -> None:
    """The JWT is read from stdin (never from the command line)."""
    value = sys.stdin.read().strip()
    if not value:
        raise click.UsageError("pipe the JWT on stdin")
    _emit_auth(output, _call(_anonymous(), "POST", "/auth/jwt/login", {"role": role, "jwt": value}))


@login.command("ldap")
@click.option("--username", required=True)
@OUTPUT
def login_ldap(username: str, output: str) -> None:
    """The password comes from KMSB_LDAP_PASSWORD or a hidden prompt (never from the command line)."""
    password = os.environ.get("KMSB_LDAP_PASSWORD")
    if password is None:
        password = click.prompt("LDAP password", hide_input=True, err=True)
    _emit_auth(output, _call(_anonymous(), "POST", "/auth/ldap/login",
                             {"username": username, "password": password}))


@login.command("approle")
@click.option("--role-id", required=True)
@OUTPUT
def login_approle(role_id: str, output: str) -> None:
    """The secret_id comes from KMSB_SECRET_ID or stdin."""
    secret_id = os.environ.get("KMSB_SECRET_ID") or sys.stdin.readline().strip()
    _emit_auth(output, _call(_anonymous(), "POST", "/auth/approle/login",
                             {"role_id": role_id, "secret_id": secret_id}))


GROUPS = [token, login]
