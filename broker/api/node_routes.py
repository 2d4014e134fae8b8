"""Native routes of cluster nodes (/v1/nodes). Joining is the quorum-approved `node-join` (/v1/approvals)."""

from __future__ import annotations

from flask import current_app

from broker.api.native import op
from broker.service import KeyService, RequestContext


@op("/nodes", "GET", "ListNodes", "Cluster nodes: name, state (admitted, joined, removed), root fingerprint")
def list_nodes(svc: KeyService, ctx: RequestContext):
    return {"Nodes": current_app.extensions["kms"].nodes.list_nodes(ctx)}


@op("/nodes/<name>", "DELETE", "RemoveNode", "Remove a node: drop its pending package, untrust its transport key")
def remove_node(svc: KeyService, ctx: RequestContext, name: str):
    return current_app.extensions["kms"].nodes.remove(ctx, name)
