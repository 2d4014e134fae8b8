"""Quorum-approved operations, through the gate, with the real HSM and a clock the tests drive.

Attack tests first: self-approval, double approval, a replayed approval, approval after expiry, veto then execute,
execution before the cooling-off ends, a recipient key swapped after approval, a forged vote, an approver who does
not hold the action. Then the operations themselves: escrow release (the recipient unwraps the same material the
key encrypts with), immediate destruction, root-token generation.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from sqlalchemy import update

from broker import ciphertext as ct
from broker import errors
from broker.audit import AuditLog
from broker.auth import Principal, TokenAuth
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.services import Services
from broker.store import Store
from broker.store.policies import PolicyRepository
from broker.store.tables import ApprovalRequestRow, ApprovalVoteRow

HOUR = timedelta(hours=1)
KIND_ACTIONS = ["broker:EscrowRelease", "broker:DestroyKeyNow", "broker:GenerateRootToken"]
APPROVER = ["broker:RequestApproval", "broker:Approve", "broker:Veto", "broker:ExecuteApproval",
            "broker:GetApproval", "broker:ListApprovals"]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class World:
    def __init__(self, services: Services, clock: Clock, store: Store) -> None:
        self.services, self.clock, self.store = services, clock, store
        self.approvals = services.approvals
        self.keys = services.keys

    @staticmethod
    def ctx(name: str, *policies: str) -> RequestContext:
        return RequestContext(Principal(name, "token", policies or ("approver",), accessor=f"acc-{name}"),
                              front_door="test")


@pytest.fixture
def world(tmp_path: Path, hsm_provider) -> Iterator[World]:
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    repo = PolicyRepository(store)
    repo.put_policy("approver", {"Statement": [{"Effect": "Allow", "Action": APPROVER + KIND_ACTIONS,
                                                "Resource": "*"}]}, datetime.now(UTC))
    audit = AuditLog(data / "audit.jsonl", hsm_provider.root_of_trust().audit_hmac)
    keys = KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(repo, store, cache_seconds=0), audit)
    clock = Clock()
    services = Services.over(keys)
    services.approvals.clock = clock
    root = RequestContext(Principal("root", "token", ("root",)), front_door="test")
    for kind in ("escrow-release", "key-destroy", "root-token"):
        services.approvals.configure(root, kind, ["alice", "bob", "carol", "mallory", "dave"], 2)
    yield World(services, clock, store)
    audit.close()
    store.dispose()


def _recipient() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(65537, 2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, pem


def _key(w: World) -> str:
    """A key whose key policy lets the designated people escrow or destroy it (identity policies alone cannot:
    the default key policy enables them for kms:* only)."""
    root = World.ctx("root", "root")
    key_id = w.keys.create_key(root)["KeyId"]
    w.services.policies.put_key_policy(root, key_id, {"Statement": [
        {"Sid": "owner", "Effect": "Allow", "Principal": {"Account": "self"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "escrow", "Effect": "Allow", "Principal": {"Broker": ["alice", "bob", "carol", "mallory"]},
         "Action": ["broker:EscrowRelease", "broker:DestroyKeyNow"], "Resource": "*"}]})
    return key_id


def _escrow_request(w: World, key_id: str, pem: str, requester: str = "mallory") -> str:
    view = w.approvals.request(World.ctx(requester), "escrow-release", {"KeyId": key_id, "RecipientPublicKey": pem},
                               reason="legal hold")
    return view.request_id


def _approve_twice(w: World, request_id: str) -> None:
    w.approvals.approve(World.ctx("alice"), request_id)
    w.approvals.approve(World.ctx("bob"), request_id)


# ------------------------------------------------------------------------------------------------ attacks


def test_the_requester_cannot_approve_their_own_request(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    with pytest.raises(errors.AccessDenied, match="requester"):
        world.approvals.approve(World.ctx("mallory"), rid)


def test_one_approver_counts_once(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    world.approvals.approve(World.ctx("alice"), rid)
    with pytest.raises(errors.AlreadyExists):
        world.approvals.approve(World.ctx("alice"), rid)
    # another token of the same principal is the same approver
    with pytest.raises(errors.AlreadyExists):
        world.approvals.approve(RequestContext(Principal("alice", "approle", ("approver",), accessor="other")), rid)
    world.clock.advance(100 * HOUR)
    with pytest.raises(errors.InvalidState, match="1 of 2 approvals"):
        world.approvals.execute(World.ctx("alice"), rid)


def test_an_approval_is_not_replayed_onto_another_request(world: World) -> None:
    """An approval names its request and that request's digest: approving A does nothing for B (same params)."""
    _, pem = _recipient()
    key_id = _key(world)
    first = _escrow_request(world, key_id, pem)
    _approve_twice(world, first)
    second = _escrow_request(world, key_id, pem)
    world.clock.advance(73 * HOUR)
    with pytest.raises(errors.InvalidState, match="0 of 2"):
        world.approvals.execute(World.ctx("mallory"), second)
    # and a vote row copied from the first request onto the second does not count either (its MAC names the first)
    with world.store.session() as s:
        votes = s.query(ApprovalVoteRow).filter_by(request_id=first).all()
        for v in votes:
            s.add(ApprovalVoteRow(request_id=second, approver=v.approver, vote=v.vote, digest=v.digest, at=v.at,
                                  mac=v.mac))
    with pytest.raises(errors.InvalidState, match="0 of 2"):
        world.approvals.execute(World.ctx("mallory"), second)


def test_a_stale_review_cannot_approve(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    with pytest.raises(errors.ValidationError, match="digest"):
        world.approvals.approve(World.ctx("alice"), rid, digest="0" * 64)


def test_no_approval_after_expiry(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    world.approvals.approve(World.ctx("alice"), rid)
    world.clock.advance(72 * HOUR + 7 * 24 * HOUR)
    with pytest.raises(errors.InvalidState, match="expired"):
        world.approvals.approve(World.ctx("bob"), rid)
    assert world.approvals.show(World.ctx("alice"), rid).state == "expired"
    with pytest.raises(errors.InvalidState, match="expired"):
        world.approvals.execute(World.ctx("alice"), rid)


def test_veto_then_execute_is_refused(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    _approve_twice(world, rid)
    world.approvals.veto(World.ctx("carol"), rid, reason="not authorised by legal")
    world.clock.advance(100 * HOUR)
    with pytest.raises(errors.InvalidState, match="vetoed"):
        world.approvals.execute(World.ctx("alice"), rid)
    with pytest.raises(errors.InvalidState, match="vetoed"):
        world.approvals.approve(World.ctx("carol"), rid)


def test_execution_waits_for_the_cooling_off(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    world.clock.advance(10 * HOUR)  # the cooling-off starts at the quorum, not at the request
    _approve_twice(world, rid)
    world.clock.advance(72 * HOUR - timedelta(seconds=1))
    with pytest.raises(errors.InvalidState, match="cooling off until"):
        world.approvals.execute(World.ctx("alice"), rid)
    world.clock.advance(timedelta(seconds=1))
    assert world.approvals.execute(World.ctx("alice"), rid)["Operation"] == "escrow-release"
    with pytest.raises(errors.InvalidState, match="executed"):  # at most once
        world.approvals.execute(World.ctx("alice"), rid)


def test_a_recipient_key_swapped_after_approval_is_refused(world: World) -> None:
    _, pem = _recipient()
    _, attacker_pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    _approve_twice(world, rid)
    world.clock.advance(73 * HOUR)
    attacker_der = serialization.load_pem_public_key(attacker_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with world.store.session() as s:
        row = s.get(ApprovalRequestRow, rid)
        params = json.loads(row.params)
        params["recipient_public_key"] = base64.b64encode(attacker_der).decode()
        s.execute(update(ApprovalRequestRow).where(ApprovalRequestRow.request_id == rid).values(
            params=json.dumps(params, sort_keys=True, separators=(",", ":"))))
    with pytest.raises(errors.InvalidState, match="integrity"):
        world.approvals.execute(World.ctx("alice"), rid)
    with pytest.raises(errors.InvalidState, match="integrity"):
        world.approvals.approve(World.ctx("carol"), rid)


def test_a_forged_vote_does_not_count(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    world.approvals.approve(World.ctx("alice"), rid)
    with world.store.session() as s:
        digest = s.get(ApprovalRequestRow, rid).digest
        s.add(ApprovalVoteRow(request_id=rid, approver="bob", vote="approve", digest=digest,
                              at=world.clock.now, mac="00" * 32))
    world.clock.advance(100 * HOUR)
    with pytest.raises(errors.InvalidState, match="1 of 2"):
        world.approvals.execute(World.ctx("alice"), rid)


def test_an_approval_carries_nothing_beyond_what_the_approver_holds(world: World) -> None:
    _, pem = _recipient()
    rid = _escrow_request(world, _key(world), pem)
    with pytest.raises(errors.AccessDenied, match="EscrowRelease"):
        world.approvals.approve(World.ctx("dave"), rid)  # designated, but the key policy does not name dave
    with pytest.raises(errors.AccessDenied, match="designated"):
        world.approvals.approve(World.ctx("eve"), rid)
    # and a requester without the action cannot even ask
    key_id = _key(world)
    with pytest.raises(errors.AccessDenied, match="EscrowRelease"):
        world.approvals.request(World.ctx("dave"), "escrow-release",
                                {"KeyId": key_id, "RecipientPublicKey": pem})


def test_bad_input_is_a_clear_error_and_changes_nothing(world: World) -> None:
    ctx = World.ctx("mallory")
    for params, match in [({"KeyId": "nope", "RecipientPublicKey": "x"}, "RecipientPublicKey"),
                          ({"RecipientPublicKey": _recipient()[1]}, "KeyId"),
                          ({"KeyId": "\ud800", "RecipientPublicKey": _recipient()[1]}, "Unicode")]:
        with pytest.raises(errors.ValidationError, match=match):
            world.approvals.request(ctx, "escrow-release", params)
    with pytest.raises(errors.ValidationError, match="unknown operation"):
        world.approvals.request(ctx, "format-disk", {})
    with pytest.raises(errors.ValidationError, match="RequestId"):
        world.approvals.approve(ctx, "../etc")
    with pytest.raises(errors.NotFound):
        world.approvals.approve(ctx, "apr-" + "0" * 24)
    assert world.approvals.list_requests(World.ctx("root", "root")) == []


def test_an_alias_repointed_after_approval_changes_nothing(world: World) -> None:
    private, pem = _recipient()
    root = World.ctx("root", "root")
    good, other = _key(world), _key(world)
    world.keys.create_alias(root, "alias/escrowed", good)
    rid = _escrow_request(world, "alias/escrowed", pem)
    _approve_twice(world, rid)
    world.keys.update_alias(root, "alias/escrowed", other)
    world.clock.advance(73 * HOUR)
    assert world.approvals.execute(World.ctx("alice"), rid)["Result"]["KeyId"] == good


# ------------------------------------------------------------------------------------------------ operations


def test_escrow_release_wraps_the_key_for_the_recipient_only(world: World) -> None:
    private, pem = _recipient()
    root = World.ctx("root", "root")
    key_id = _key(world)
    blob = world.keys.encrypt(root, key_id, b"escrowed secret")["CiphertextBlob"]
    rid = _escrow_request(world, key_id, pem)
    _approve_twice(world, rid)
    world.clock.advance(72 * HOUR)
    result = world.approvals.execute(World.ctx("carol"), rid)["Result"]
    (version,) = result["Versions"]
    wrapped = base64.b64decode(version["WrappedKeyMaterial"])
    ephemeral = private.decrypt(wrapped[:256], padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    material = aes_key_unwrap_with_padding(ephemeral, wrapped[256:])
    # the released material is the key's: outside the broker, it opens a ciphertext the broker made
    parsed = ct.unpack(blob)
    body = parsed.body
    assert AESGCM(material).decrypt(body[:12], body[12:], parsed.aad({})) == b"escrowed secret"
    # an eavesdropper with another private key gets nothing
    other, _ = _recipient()
    with pytest.raises(ValueError):
        other.decrypt(wrapped[:256], padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))


def test_immediate_destruction_after_quorum(world: World) -> None:
    root = World.ctx("root", "root")
    key_id = _key(world)
    rid = world.approvals.request(World.ctx("mallory"), "key-destroy", {"KeyId": key_id}).request_id
    _approve_twice(world, rid)
    world.clock.advance(72 * HOUR)
    world.approvals.execute(World.ctx("alice"), rid)
    with pytest.raises(errors.NotFound):
        world.keys.describe_key(root, key_id)


def test_root_token_generation_after_quorum(world: World) -> None:
    rid = world.approvals.request(World.ctx("mallory"), "root-token", {"TtlSeconds": 600}).request_id
    _approve_twice(world, rid)
    world.clock.advance(72 * HOUR)
    result = world.approvals.execute(World.ctx("alice"), rid)["Result"]
    principal = TokenAuth(world.store).authenticate(result["Token"])
    assert principal.is_root


def test_every_step_is_audited_without_secrets(world: World, tmp_path: Path) -> None:
    rid = world.approvals.request(World.ctx("mallory"), "root-token", {}).request_id
    _approve_twice(world, rid)
    world.clock.advance(72 * HOUR)
    token = world.approvals.execute(World.ctx("alice"), rid)["Result"]["Token"]
    lines = (tmp_path / "data" / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [(r["action"], r["principal"], r["outcome"]) for r in records if r.get("request") == rid]
    assert steps == [("broker:RequestApproval", "mallory", "allowed"), ("broker:Approve", "alice", "allowed"),
                     ("broker:Approve", "bob", "allowed"), ("broker:ExecuteApproval", "alice", "allowed")]
    assert token not in "\n".join(lines)
