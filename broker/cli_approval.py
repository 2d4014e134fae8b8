"""`kms-broker approval`: quorum-approved operations over the API (reads KMSB_ADDR and KMSB_TOKEN).

Each approver acts with their own token; nothing here decides anything (the broker's gate does).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from broker.client import BrokerClient

OUTPUT = click.option("--output", type=click.Choice(["text", "json"]), default="text")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str | None) -> int | None:
    """'72h', '3d', '30m', '0s' → seconds."""
    if value is None:
        return None
    match = _DURATION.match(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration such as 72h, 3d, 30m or 0s")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _emit(output: str, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if output == "json" else text)


def _describe(view: dict[str, Any]) -> str:
    lines = [f"{view['RequestId']}  {view['Operation']}  {view['State']}",
             f"  requested by {view['Requester']}" + (f": {view['Reason']}" if view.get("Reason") else ""),
             f"  params: {json.dumps(view['Params'], sort_keys=True)}",
             f"  digest: {view['Digest']}",
             f"  approvals {len(view['Approvals'])}/{view['Required']}: {', '.join(view['Approvals']) or '-'}"
             + (f"; vetoed by {', '.join(view['Vetoes'])}" if view.get("Vetoes") else ""),
             f"  expires {view['ExpiresAt']}"]
    if view.get("ExecutableAt"):
        lines.append(f"  executable from {view['ExecutableAt']}")
    return "\n".join(lines)


@click.group()
def approval() -> None:
    """Quorum-approved operations: escrow-release, key-destroy, root-token, node-join."""


@approval.command("configure")
@click.argument("operation")
@click.option("--approver", "approvers", multiple=True, required=True, help="a designated approver (repeatable)")
@click.option("--required", type=int, required=True, help="approvals needed (M of the N approvers)")
@click.option("--cooling-off", default=None, help="wait after the quorum before execution (default 72h)")
@click.option("--ttl", default=None, help="how long a request lives (default: cooling-off + 7d)")
@OUTPUT
def configure(operation: str, approvers: tuple[str, ...], required: int, cooling_off: str | None, ttl: str | None,
              output: str) -> None:
    body = {"Approvers": list(approvers), "Required": required, "CoolingOffSeconds": duration(cooling_off),
            "TtlSeconds": duration(ttl)}
    out = BrokerClient().call("PUT", f"/approvals/rules/{operation}", {k: v for k, v in body.items() if v is not None})
    _emit(output, out, f"{operation}: {out['Required']} of {len(out['Approvers'])} approvers, cooling-off "
                       f"{out['CoolingOffSeconds']}s")


@approval.command("request")
@click.argument("operation")
@click.option("--key", "key_ref", default=None, help="the key (escrow-release, key-destroy)")
@click.option("--recipient-public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM of the RSA public key an escrow release is wrapped for")
@click.option("--param", "params", multiple=True, help="another parameter NAME=VALUE (repeatable)")
@click.option("--reason", default="")
@OUTPUT
def request(operation: str, key_ref: str | None, recipient_public_key: Path | None, params: tuple[str, ...],
            reason: str, output: str) -> None:
    body: dict[str, Any] = {}
    if key_ref:
        body["KeyId"] = key_ref
    if recipient_public_key:
        body["RecipientPublicKey"] = recipient_public_key.read_text()
    for pair in params:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--param")
        body[name] = int(value) if value.isdigit() else value
    out = BrokerClient().call("POST", "/approvals", {"Operation": operation, "Params": body, "Reason": reason})
    _emit(output, out, _describe(out))


@approval.command("list")
@click.option("--state", type=click.Choice(["pending", "vetoed", "executed", "expired"]), default=None)
@OUTPUT
def list_(state: str | None, output: str) -> None:
    out = BrokerClient().call("GET", "/approvals", params={"State": state} if state else None)["Requests"]
    _emit(output, out, "\n".join(f"{v['RequestId']}  {v['Operation']}  {v['State']}  "
                                 f"{len(v['Approvals'])}/{v['Required']}" for v in out) or "no requests")


@approval.command("show")
@click.argument("request_id")
@OUTPUT
def show(request_id: str, output: str) -> None:
    out = BrokerClient().call("GET", f"/approvals/{request_id}")
    _emit(output, out, _describe(out))


@approval.command("approve")
@click.argument("request_id")
@click.option("--digest", default=None, help="the digest you reviewed (`approval show`): refuse if it changed")
@OUTPUT
def approve(request_id: str, digest: str | None, output: str) -> None:
    out = BrokerClient().call("POST", f"/approvals/{request_id}/approve", {"Digest": digest} if digest else {})
    _emit(output, out, _describe(out))


@approval.command("veto")
@click.argument("request_id")
@click.option("--reason", default="")
@OUTPUT
def veto(request_id: str, reason: str, output: str) -> None:
    out = BrokerClient().call("POST", f"/approvals/{request_id}/veto", {"Reason": reason})
    _emit(output, out, _describe(out))


@approval.command("execute")
@click.argument("request_id")
@click.option("--output", type=click.Choice(["text", "json"]), default="json")
def execute(request_id: str, output: str) -> None:
    """Execute an approved request; its result (a released wrapped key, a root token) is printed once."""
    out = BrokerClient().call("POST", f"/approvals/{request_id}/execute")
    if output == "json":
        click.echo(json.dumps(out, indent=2, sort_keys=True))
    else:
        click.echo(f"{out['RequestId']} executed ({out['Operation']})")
        json.dump(out["Result"], sys.stdout, indent=2, sort_keys=True)
        click.echo()
