"""`kms-broker node`: join a node to a cluster (two steps around a quorum approval), list and remove nodes.

    kms-broker node join --data-dir B --store-url URL --name b    # on host B: HSM token + transport key, asks
    kms-broker approval approve|execute ...                          # approvers, then anyone allowed, on a member
    kms-broker node join --data-dir B                               # on host B again: unwrap the root inside its HSM
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import click

from broker.client import BrokerClient

OUTPUT = click.option("--output", type=click.Choice(["text", "json"]), default="text")
JOIN_STATE = "join.json"


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
def node() -> None:
    """Cluster nodes: each with its own HSM holding the same root keys."""


def _prepare(folder: Path, store_url: str) -> None:
    """A data folder whose HSM token has no root keys yet, pointing at the cluster's store."""
    from broker.settings import CONFIG_NAME, embedded_defaults, write_settings
    from providers.softhsm_token import create_token

    if folder.exists() and any(folder.iterdir()):
        _fail(f"{folder} is not empty: a joining node starts from a new data folder", 2)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    try:
        create_token(folder / "hsm", root_keys=False)
    except (OSError, RuntimeError) as exc:
        _fail(f"cannot create the SoftHSM token ({type(exc).__name__})")
    raw = embedded_defaults(folder)
    raw["store_url"] = store_url
    write_settings(folder / CONFIG_NAME, raw)


def _root(settings):
    from providers.registry import build_provider, root_of_trust

    return root_of_trust(build_provider(settings.root_of_trust, settings.providers[settings.root_of_trust]))


@node.command("join")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="this node's (new) data folder")
@click.option("--store-url", default=None, help="the cluster's store (first step)")
@click.option("--name", default=None, help="this node's name in the cluster (first step)")
@click.option("--reason", default="", help="why (shown to the approvers)")
@OUTPUT
def join(data_dir: Path, store_url: str | None, name: str | None, reason: str, output: str) -> None:
    """First run: make this node's HSM token and transport key, and ask for `node-join` (KMSB_ADDR/KMSB_TOKEN of a
    member). Run again once the request was approved and executed: the root keys are unwrapped in this HSM."""
    from broker.settings import CONFIG_NAME, SettingsError, load_settings

    folder = data_dir.resolve()
    state_file = folder / JOIN_STATE
    if name is not None:
        from broker.errors import ValidationError
        from broker.nodes import check_name

        try:
            check_name(name)
        except ValidationError as exc:
            _fail(exc.message, 2)
    if not (folder / CONFIG_NAME).exists():
        if not store_url or not name:
            _fail("the first `node join` needs --store-url (the cluster's store) and --name", 2)
        _prepare(folder, store_url)
    try:
        settings = load_settings(folder)
    except SettingsError as exc:
        _fail(str(exc), 2)
    root = _root(settings)
    if not state_file.exists():
        if not name:
            _fail("give --name", 2)
        transport = root.transport_key()
        out = BrokerClient().call("POST", "/approvals", {
            "Operation": "node-join", "Reason": reason,
            "Params": {"Name": name, "TransportKey": base64.b64encode(transport).decode()}})
        state_file.write_text(json.dumps({"name": name, "request_id": out["RequestId"]}))
        data = {"name": name, "request_id": out["RequestId"], "state": "requested", "digest": out["Digest"]}
        click.echo(json.dumps(data) if output == "json" else
                   f"node {name} asked to join: approval request {out['RequestId']} (digest {out['Digest']}).\n"
                   f"Once it is approved and executed, run `kms-broker node join --data-dir {folder}` again.")
        return
    state = json.loads(state_file.read_text())
    if root.has_root():
        _fail(f"node {state['name']} has joined already", 2)
    _complete(settings, root, state, output)


def _complete(settings, root, state: dict, output: str) -> None:
    from broker.app import build_service
    from broker.auth import Principal
    from broker.errors import BrokerError
    from broker.gate import RequestContext
    from broker.nodes import install
    from broker.services import Services
    from broker.store import Store
    from broker.store.trust import TrustRepository

    store = Store(settings.store_url)
    try:
        fingerprint = install(TrustRepository(store), root, state["name"])
    except BrokerError as exc:
        _fail(f"{exc.code}: {exc.message}")
    finally:
        store.dispose()
    keys = build_service(settings)  # now the audit keys are in this HSM: the completion is audited here
    try:
        ctx = RequestContext(Principal("local-operator", "local", ("root",)), front_door="cli")
        Services.over(keys, settings).nodes.complete_join(ctx, state["name"])
    except BrokerError as exc:
        _fail(f"{exc.code}: {exc.message}")
    finally:
        keys.audit.close()
        keys.store.dispose()
    data = {"name": state["name"], "state": "joined", "root_fingerprint": fingerprint}
    click.echo(json.dumps(data) if output == "json" else
               f"node {state['name']} joined (root {fingerprint}); serve it with "
               f"`kms-broker serve --data-dir {settings.data_dir}`")


@node.command("list")
@OUTPUT
def list_(output: str) -> None:
    out = BrokerClient().call("GET", "/nodes")["Nodes"]
    click.echo(json.dumps(out, indent=2) if output == "json" else
               "\n".join(f"{n['Name']}  {n['State']}  {n['RootFingerprint']}" for n in out) or "no nodes")


@node.command("remove")
@click.argument("name")
@OUTPUT
def remove(name: str, output: str) -> None:
    """Forget a node (then wipe its HSM token: the root keys it holds cannot be taken back remotely)."""
    out = BrokerClient().call("DELETE", f"/nodes/{name}")
    click.echo(json.dumps(out) if output == "json" else f"node {name} removed")
