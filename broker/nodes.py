"""Cluster nodes: a node joins by receiving the root keys wrapped HSM to HSM, after a quorum approved it.

The joining node's HSM makes a transport key pair (its private half never leaves that HSM) and the node asks for
`node-join` with the public half. Once M approvers agreed and the cooling-off passed, executing the request on any
member node has that node's security officer trust the transport key, wraps the root KEK and the audit keys for it
inside the HSM, and leaves the package (useless to anyone but the joining HSM) in the shared store; the joining
node unwraps it inside its own HSM and serves. With a network HSM the same steps run against its partition.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from broker import errors
from broker.approval_kinds import recipient_der
from broker.approvals import Kind
from broker.gate import Call, Need, Service, Target, fixed, internal, operation, resource
from broker.service import KeyService
from broker.store.trust import TrustRepository
from providers.base import ProviderError, RootOfTrust, RootPackage, key_fingerprint

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise errors.ValidationError("node Name is 1-63 lower-case letters, digits and '-'")
    return name


def _join_check(keys: KeyService, params: Mapping[str, Any]) -> dict[str, Any]:
    der = recipient_der(params.get("TransportKey", params.get("transport_key")))
    return {"name": check_name(params.get("Name", params.get("name"))),
            "transport_key": base64.b64encode(der).decode()}


class NodeService(Service):
    def __init__(self, keys: KeyService, repo: TrustRepository, root: RootOfTrust) -> None:
        self.keys = keys
        self.repo = repo
        self.root = root
        self.gate = keys.gate

    def _mac(self, name: str, transport_key: str) -> str:
        return self.root.audit_hmac(b"kms-broker node v1\n" + json.dumps([name, transport_key]).encode()).hex()

    @internal
    def join_kind(self) -> Kind:
        """The `node-join` kind of quorum-approved operation, executed by `_admit` on a member node."""
        return Kind("node-join", "broker:JoinNode", _join_check,
                    lambda keys, params: Target(resource=f"node/{params['name']}"), self._admit)

    def _admit(self, keys: KeyService, call: Call, params: dict[str, Any], target: Target) -> dict[str, Any]:
        name, transport_hex = params["name"], base64.b64decode(params["transport_key"]).hex()
        existing = self.repo.get_node(name)
        if existing is not None and existing["state"] in ("admitted", "joined"):
            raise errors.AlreadyExists(f"node {name} is already {existing['state']}")
        transport = bytes.fromhex(transport_hex)
        fp = self.root.trust(transport)
        try:
            package = self.root.export_root(transport)
        finally:
            self.root.forget(fp)
        now = datetime.now(UTC)
        fields = {"transport_key": transport_hex, "state": "admitted", "package": json.dumps(package.to_dict()),
                  "fingerprint": self.root.fingerprint(), "updated_at": now, "mac": self._mac(name, transport_hex)}
        if existing is None:
            self.repo.add_node(name=name, created_at=now, **fields)
        else:
            self.repo.update_node(name, **fields)
        call.entry.extra.update(node=name, transport_key=fp)
        return {"Name": name, "State": "admitted", "RootFingerprint": fields["fingerprint"], "TransportKey": fp}

    @operation("broker:ListNodes", Need("broker:ListNodes", fixed("node/*")))
    def list_nodes(self, call: Call) -> list[dict[str, Any]]:
        return [{"Name": n["name"], "State": n["state"], "RootFingerprint": n["fingerprint"],
                 "TransportKey": key_fingerprint(bytes.fromhex(n["transport_key"])),
                 "UpdatedAt": n["updated_at"].isoformat()} for n in self.repo.list_nodes()]

    @operation("broker:RemoveNode", Need("broker:RemoveNode", resource(lambda a: f"node/{check_name(a['name'])}")),
               mutates=True)
    def remove(self, call: Call, name: str) -> dict[str, Any]:
        """Forget a node: its pending package is dropped and its transport key untrusted. The root keys it already
        holds stay in its HSM: wipe that token (docs/operations.md)."""
        node = self.repo.get_node(name)
        if node is None:
            raise errors.NotFound(f"node {name} not found")
        self.root.forget(key_fingerprint(bytes.fromhex(node["transport_key"])))
        self.repo.update_node(name, state="removed", package="", updated_at=datetime.now(UTC))
        call.entry.extra["node"] = name
        return {"Name": name, "State": "removed"}

    @operation("broker:JoinNode", Need("broker:JoinNode", resource(lambda a: f"node/{check_name(a['name'])}")),
               mutates=True)
    def complete_join(self, call: Call, name: str) -> dict[str, Any]:
        """On the joining node, after `install`: mark it joined (audited in its own, new chain)."""
        node = self.repo.get_node(name)
        if node is None or node["state"] != "admitted":
            raise errors.InvalidState(f"node {name} is not admitted")
        if node["fingerprint"] != self.root.fingerprint():
            raise errors.InvalidState("this HSM's root is not the cluster's")
        self.repo.update_node(name, state="joined", package="", updated_at=datetime.now(UTC))
        call.entry.extra["node"] = name
        return {"Name": name, "State": "joined", "RootFingerprint": node["fingerprint"]}


def install(repo: TrustRepository, root: RootOfTrust, name: str) -> str:
    """On the joining node, before it has root keys (so outside the gate: nothing here can be authorized or audited
    yet; it only reads its own package and unwraps it inside its HSM). Returns the root fingerprint."""
    node = repo.get_node(name)
    if node is None or node["state"] != "admitted" or not node["package"]:
        state = node["state"] if node is not None else "not admitted"
        raise errors.InvalidState(f"node {name} is {state}: its join request is not approved and executed yet")
    try:
        root.import_root(RootPackage.from_dict(json.loads(node["package"])))
    except ProviderError as exc:
        raise errors.InvalidState(f"the root keys could not be installed: {exc}") from None
    fingerprint = root.fingerprint()
    if not secrets.compare_digest(fingerprint, node["fingerprint"]):
        raise errors.InvalidState("the installed root is not the one the cluster recorded")
    return fingerprint
