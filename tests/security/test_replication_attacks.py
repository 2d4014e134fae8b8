"""Attacks on multi-keys, replicated keys and the sync, in process, on the real SoftHSM and a real SQLite store.

Each test is what an attacker would try: use members it may not use, reach another tenant's multi-key or
replicated key, steer a sync manifest at keys outside its scope, send hostile names. Every refusal is a clear
error (a 4xx class with a stable code) and changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from broker import ciphertext as ct
from broker import errors
from broker.audit import AuditLog
from broker.auth import Principal
from broker.policy import PolicyEngine
from broker.replication.manifest import ManifestError, parse_manifest
from broker.service import KeyService, RequestContext
from broker.services import Services
from broker.store import Store
from broker.store.policies import PolicyRepository
from providers.pkcs11 import Pkcs11Provider
from tests.support.broker import RunningBroker, start_broker

ROOT = RequestContext(Principal("root", "token", ("root",)), front_door="test")
HOSTILE = ["\ud800", "x" * 100_000, "", "../x", "alias/\ud800", "mk-\udfff"]
HOSTILE_IDS = ["surrogate", "huge", "empty", "dotdot", "alias-surrogate", "mk-surrogate"]


@pytest.fixture
def world(tmp_path: Path, hsm_provider: Pkcs11Provider) -> Iterator[Services]:
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    audit = AuditLog(data / "audit.jsonl", hsm_provider.root_of_trust().audit_hmac)
    engine = PolicyEngine(PolicyRepository(store), store, cache_seconds=0)
    services = Services.over(KeyService(store, {"hsm": hsm_provider}, "hsm", engine, audit))
    yield services
    store.dispose()


def _records(services: Services) -> list[dict]:
    path = services.keys.audit.path
    return [json.loads(line) for line in path.read_text().splitlines()]


def _principal(services: Services, name: str, statements: list[tuple[list[str], str | list[str]]]) -> RequestContext:
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": res}
                                                  for actions, res in statements]}
    services.keys.policy.repository.put_policy(f"p-{name}", doc, datetime.now(UTC))
    return RequestContext(Principal(name, "token", (f"p-{name}",)), front_door="test")


def _key(services: Services, **kw: object) -> str:
    return services.keys.create_key(ROOT, **kw)["KeyId"]


def _wrap_keys(blob: bytes) -> list[str]:
    wraps, _, _ = ct.unpack_multi_wrap(ct.unpack(blob).body)
    return [ct.unpack(w).header.key_id for w in wraps]


# ================================================================================================ multi-keys


def test_encrypt_needs_the_action_on_every_member(world: Services) -> None:
    a, b = _key(world), _key(world)
    mk = world.multikeys.create(ROOT, name="two", members=[a, b])["MultiKey"]["MultiKeyId"]
    some = _principal(world, "some", [(["kms:Encrypt", "kms:GenerateDataKey*"], f"key/{a}")])
    calls = [lambda ctx: world.multikeys.encrypt(ctx, mk, b"p"),
             lambda ctx: world.multikeys.generate_data_key(ctx, mk, key_spec="AES_256"),
             lambda ctx: world.multikeys.generate_data_key_without_plaintext(ctx, mk, number_of_bytes=16)]
    for call in calls:
        before = len(_records(world))
        with pytest.raises(errors.AccessDenied, match=b):
            call(some)
        new = _records(world)[before:]
        assert [r["outcome"] for r in new] == ["denied"]  # one record, and no wrap was made under `a` either
        assert new[0]["key_id"] == mk
    every = _principal(world, "every", [(["kms:Encrypt", "kms:GenerateDataKey*"], [f"key/{a}", f"key/{b}"])])
    out = world.multikeys.encrypt(every, mk, b"p")
    assert out["WrappedBy"] == [a, b] and _wrap_keys(out["CiphertextBlob"]) == [a, b]
    # GenerateDataKey and GenerateDataKeyWithoutPlaintext are distinct actions, as in AWS
    only_plain = _principal(world, "gdk", [(["kms:GenerateDataKey"], [f"key/{a}", f"key/{b}"])])
    assert "Plaintext" in world.multikeys.generate_data_key(only_plain, mk, key_spec="AES_256")
    with pytest.raises(errors.AccessDenied):
        world.multikeys.generate_data_key_without_plaintext(only_plain, mk, key_spec="AES_256")


def test_rewrap_needs_reencrypt_on_the_answering_member_and_every_new_one(world: Services) -> None:
    a, b = _key(world), _key(world)
    mk = world.multikeys.create(ROOT, name="grow", members=[a])["MultiKey"]["MultiKeyId"]
    blob = world.multikeys.encrypt(ROOT, mk, b"secret", context={"t": "1"})["CiphertextBlob"]
    world.multikeys.update(ROOT, mk, members=[a, b])
    # Encrypt/Decrypt on some members is not ReEncrypt, and ReEncryptTo on the old member only cannot add `b`
    crypto = _principal(world, "crypto", [(["kms:Encrypt", "kms:Decrypt"], [f"key/{a}", f"key/{b}"])])
    half = _principal(world, "half", [(["kms:ReEncryptFrom", "kms:ReEncryptTo"], f"key/{a}")])
    for ctx in (crypto, half):
        with pytest.raises(errors.AccessDenied):
            world.multikeys.rewrap(ctx, blob, context={"t": "1"})
    full = _principal(world, "full", [(["kms:ReEncryptFrom"], f"key/{a}"), (["kms:ReEncryptTo"], f"key/{b}")])
    out = world.multikeys.rewrap(full, blob, context={"t": "1"})
    assert out["Added"] == [b] and _wrap_keys(out["CiphertextBlob"]) == [a, b]
    # a blob that does not authenticate under the given context gets no new wraps
    with pytest.raises(errors.InvalidCiphertext):
        world.multikeys.rewrap(full, blob, context={"t": "2"})
    # wraps are not authenticated: a junk wrap slipped in is skipped by decrypt and dropped by rewrap
    parsed = ct.unpack(blob)
    wraps, commitment, sealed = ct.unpack_multi_wrap(parsed.body)
    junk = parsed.header_bytes + ct.pack_multi_wrap([b"\x09junk", *wraps], commitment, sealed)
    assert world.multikeys.decrypt(ROOT, junk, context={"t": "1"})["Plaintext"] == b"secret"
    cleaned = world.multikeys.rewrap(full, junk, context={"t": "1"})
    assert _wrap_keys(cleaned["CiphertextBlob"]) == [a, b]


def test_decrypt_skips_a_member_the_caller_may_not_use(world: Services) -> None:
    a, b = _key(world), _key(world)
    mk = world.multikeys.create(ROOT, name="fallback", members=[a, b])["MultiKey"]["MultiKeyId"]
    blob = world.multikeys.encrypt(ROOT, mk, b"p")["CiphertextBlob"]
    only_b = _principal(world, "only-b", [(["kms:Decrypt"], f"key/{b}")])
    out = world.multikeys.decrypt(only_b, blob)
    assert out["Plaintext"] == b"p" and out["AnsweredBy"]["KeyId"] == b
    assert out["Attempts"] == [{"KeyId": a, "Outcome": "AccessDeniedException"},
                               {"KeyId": b, "Provider": "hsm", "Outcome": "ok"}]  # nothing about `a` but its id
    record = _records(world)[-1]
    assert (record["action"], record["outcome"], record["answered_by"]) == ("kms:Decrypt", "allowed", b)
    neither = _principal(world, "neither", [(["kms:Decrypt"], "key/not-these")])
    with pytest.raises(errors.AccessDenied):
        world.multikeys.decrypt(neither, blob)
    assert _records(world)[-1]["outcome"] == "denied"


def test_another_tenants_multikey_is_unreachable(world: Services) -> None:
    ka, kb = _key(world), _key(world)
    tenant = _principal(world, "tenant-b", [(["kms:*"], ["multikey/team-b/*", f"key/{kb}"])])
    mk_a = world.multikeys.create(ROOT, name="team-a/db", members=[ka])["MultiKey"]
    blob = world.multikeys.encrypt(ROOT, mk_a["MultiKeyId"], b"a's data")["CiphertextBlob"]
    for ref in (mk_a["MultiKeyId"], mk_a["Name"]):
        for call in (lambda r: world.multikeys.describe(tenant, r),
                     lambda r: world.multikeys.update(tenant, r, members=[kb]),
                     lambda r: world.multikeys.delete(tenant, r),
                     lambda r: world.multikeys.encrypt(tenant, r, b"x")):
            with pytest.raises(errors.AccessDenied):
                call(ref)
    with pytest.raises(errors.AccessDenied):
        world.multikeys.decrypt(tenant, blob)
    with pytest.raises(errors.AccessDenied):
        world.multikeys.rewrap(tenant, blob)
    # its own multi-key may not list another tenant's key as a member, nor be named into team-a's space
    with pytest.raises(errors.AccessDenied):
        world.multikeys.create(tenant, name="team-b/steal", members=[kb, ka])
    with pytest.raises(errors.AccessDenied):
        world.multikeys.create(tenant, name="team-a/mine", members=[kb])
    own = world.multikeys.create(tenant, name="team-b/ok", members=[kb])["MultiKey"]
    assert [m["Name"] for m in world.multikeys.list_multikeys(tenant)["MultiKeys"]] == ["team-b/ok"]
    assert own["Members"] == [{"KeyId": kb, "Priority": 1, "Provider": "hsm", "KeyState": "Enabled",
                               "Health": "ok"}]
    assert world.multikeys.describe(ROOT, mk_a["MultiKeyId"])["MultiKey"]["Members"][0]["KeyId"] == ka


@pytest.mark.parametrize("name", ["team-b/../team-a/x", "team-b/./x", "team-b//x", "/team-b", "team-b/", "..",
                                  "team-b/*", "mk-00000000-0000-0000-0000-000000000000", "\ud800", "a" * 201,
                                  "team b", ""], ids=lambda n: repr(n)[:40])
def test_multikey_names_that_nest_glob_or_pose_as_ids_are_refused(world: Services, name: str) -> None:
    k = _key(world)
    tenant = _principal(world, "namer", [(["kms:*"], ["multikey/team-b/*", f"key/{k}"])])
    with pytest.raises(errors.ValidationError):
        world.multikeys.create(tenant, name=name, members=[k])
    with pytest.raises(errors.ValidationError):
        world.multikeys.create(ROOT, name=name, members=[k])
    assert world.multikeys.list_multikeys(ROOT)["MultiKeys"] == []


@pytest.mark.parametrize("ref", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_ids_are_validation_errors(world: Services, ref: str) -> None:
    k = _key(world)
    mk = world.multikeys.create(ROOT, name="m", members=[k])["MultiKey"]["MultiKeyId"]
    expected = (errors.ValidationError, errors.NotFound)
    for call in (lambda: world.multikeys.describe(ROOT, ref), lambda: world.multikeys.encrypt(ROOT, ref, b"x"),
                 lambda: world.multikeys.delete(ROOT, ref),
                 lambda: world.multikeys.create(ROOT, name="n", members=[k, ref]),
                 lambda: world.multikeys.update(ROOT, mk, members=[ref]),
                 lambda: world.replicated.describe(ROOT, ref), lambda: world.replicated.rotate(ROOT, ref)):
        with pytest.raises(expected) as caught:
            call()
        assert 400 <= caught.value.status < 500
    hostile_text = "\ud800" in ref or "\udfff" in ref or len(ref) > 8192
    for context in ([{"k": ref}, {ref: "v"}] if hostile_text else []) + [{f"k{i}": "v" for i in range(10_000)},
                                                                           ["not", "a", "map"], {"k": 5}]:
        with pytest.raises(errors.ValidationError):
            world.multikeys.encrypt(ROOT, mk, b"x", context=context)
    with pytest.raises(errors.ValidationError):
        world.multikeys.encrypt(ROOT, mk, b"x" * 5000)
    for blob in (b"", b"\x00" * 10, b"x" * (64 * 1024 + 1), "not bytes"):
        with pytest.raises((errors.ValidationError, errors.InvalidCiphertext)):
            world.multikeys.decrypt(ROOT, blob)
    assert world.multikeys.describe(ROOT, mk)["MultiKey"]["Members"][0]["KeyId"] == k  # nothing changed


def test_a_forty_member_multikey_encrypts_decrypts_and_rewraps_promptly(world: Services) -> None:
    """40 wraps in flight on the 32-worker pool (twice at once): no task waits on the pool it runs on."""
    members = [_key(world) for _ in range(40)]
    mk = world.multikeys.create(ROOT, name="forty", members=members[:39])["MultiKey"]["MultiKeyId"]
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: world.multikeys.encrypt(ROOT, mk, f"data {i}".encode(), context={"i": str(i)}),
                             range(2)))
    assert all(o["WrappedBy"] == members[:39] and o["Missing"] == [] for o in outs)
    world.multikeys.update(ROOT, mk, members=members)
    blob = world.multikeys.encrypt(ROOT, mk, b"forty", context={"n": "40"})["CiphertextBlob"]
    assert len(_wrap_keys(blob)) == 40
    assert world.multikeys.decrypt(ROOT, blob, context={"n": "40"})["Plaintext"] == b"forty"
    rewrapped = world.multikeys.rewrap(ROOT, outs[0]["CiphertextBlob"], context={"i": "0"}, refresh=True)
    assert rewrapped["Added"] == sorted(members) and _wrap_keys(rewrapped["CiphertextBlob"]) == members
    assert world.multikeys.decrypt(ROOT, rewrapped["CiphertextBlob"], context={"i": "0"})["Plaintext"] == b"data 0"
    elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed  # a starved pool fails each wrap only after the 3 s per-provider timeout


# ================================================================================================ replicated keys


def test_replicated_key_operations_are_declared_on_the_primary_and_refuse_other_tenants(world: Services) -> None:
    """The HSM-only world has no import target: creating one is refused with the reason and leaves nothing; a
    plain key is not a replicated primary; another tenant reaches none of it."""
    before = world.keys.list_keys(ROOT)["Keys"]
    with pytest.raises(errors.ValidationError, match="holds the primary"):
        world.replicated.create(ROOT, targets=["hsm"])
    with pytest.raises(errors.ValidationError):
        world.replicated.create(ROOT, targets=["nowhere"])
    with pytest.raises(errors.ValidationError):
        world.replicated.create(ROOT, targets=["\ud800"])
    with pytest.raises(errors.ValidationError):
        world.replicated.create(ROOT, targets=["aws"] * 2)
    assert world.keys.list_keys(ROOT)["Keys"] == before
    k = _key(world)
    with pytest.raises(errors.ValidationError, match="not the primary"):
        world.replicated.rotate(ROOT, k)
    tenant = _principal(world, "other", [(["kms:*"], "key/someone-else")])
    with pytest.raises(errors.AccessDenied):
        world.replicated.describe(tenant, k)
    with pytest.raises(errors.AccessDenied):
        world.replicated.rotate(tenant, k)
    with pytest.raises(errors.AccessDenied):
        world.replicated.create(tenant, targets=["aws"])


# ================================================================================================ sync


def _manifest(doc: str) -> object:
    return parse_manifest(doc)


def test_a_sync_manifest_touches_nothing_outside_its_scope(world: Services) -> None:
    victim = _key(world, description="someone's", tags={"team": "x"})
    world.keys.create_alias(ROOT, "alias/victim", victim)
    # someone tags their own key into the manifest's scope, hoping the sync manages (or deletes) it
    planted = _key(world, tags={"kmsb:sync": "m/orders", "kmsb:target": "hsm"})
    other = world.sync.apply(ROOT, _manifest("manifest: m-other\nkeys: [{name: orders, targets: [hsm]}]"))
    assert other.status == "converged"
    m = _manifest("""
manifest: m
prune: true
keys:
  - {name: orders, targets: [hsm], aliases: [alias/victim], description: mine}
""")
    plan = world.sync.plan(ROOT, m)
    assert [(a.kind, a.entry) for a in plan.actions] == [("create", "orders")]
    assert [(d.kind, d.key_id) for d in plan.drift] == [("not-owned", planted)]
    applied = world.sync.apply(ROOT, m)
    assert [(a.kind, a.status) for a in applied.actions] == [("create", "unfixable")]
    assert "does not manage" in applied.actions[0].error
    mine = applied.actions[0].key_id
    assert world.keys.resolve_key("alias/victim").key_id == victim  # the alias was not taken
    planted_now = world.keys.describe_key(ROOT, planted)
    assert planted_now["KeyState"] == "Enabled" and planted_now["Description"] == ""
    # dropping the entry with prune: true deletes only what the manifest made
    pruned = world.sync.apply(ROOT, _manifest("manifest: m\nprune: true\nkeys: []"))
    assert [(a.kind, a.key_id) for a in pruned.actions] == [("delete", mine)]
    assert world.keys.describe_key(ROOT, planted)["KeyState"] == "Enabled"
    assert world.keys.describe_key(ROOT, victim)["KeyState"] == "Enabled"
    assert world.sync.plan(ROOT, _manifest("manifest: m-other\nkeys: [{name: orders, targets: [hsm]}]")).actions == []


def test_sync_runs_only_as_far_as_its_caller_may(world: Services) -> None:
    m = _manifest("manifest: team\nkeys: [{name: a, targets: [hsm]}]")
    nobody = _principal(world, "nobody", [(["kms:ListKeys"], "*")])
    with pytest.raises(errors.AccessDenied):
        world.sync.plan(nobody, m)
    other_manifest = _principal(world, "syncer-b", [(["broker:Sync"], "sync/team-b"), (["kms:*"], "*")])
    with pytest.raises(errors.AccessDenied):
        world.sync.apply(other_manifest, m)
    no_create = _principal(world, "no-create", [(["broker:Sync"], "sync/team"), (["kms:ListKeys"], "*")])
    report = world.sync.apply(no_create, m)
    assert [(a.kind, a.status) for a in report.actions] == [("create", "failed")]
    assert "AccessDenied" in report.actions[0].error
    assert world.keys.list_keys(ROOT)["Keys"] == []
    with pytest.raises(errors.ValidationError):
        world.sync.plan(ROOT, {"manifest": "team"})


@pytest.mark.parametrize("doc", ["manifest: \"\\ud800\"\nkeys: []", "manifest: m\nkeys: [{name: \"\\ud800\", targets: [hsm]}]",
                                 "manifest: ../m\nkeys: []", "manifest: m\nkeys: [{name: a, targets: [hsm], "
                                 "aliases: [\"alias/\\ud800\"]}]", "[" * 100_000, "manifest: " + "m" * 200],
                         ids=lambda d: repr(d)[:30])
def test_hostile_manifests_are_refused_with_a_clear_error(doc: str) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(doc)


# ================================================================================================ over HTTP


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("replication-http")
    running = start_broker(base / "data", base / "logs", workers=1, name="broker-replication-attacks",
                           env={"KMSB_AUTH_CACHE_SECONDS": "0"})
    yield running
    running.server.stop()


def _token(served: RunningBroker, name: str, statements: list[dict]) -> str:
    api = served.session()
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **s} for s in statements]}
    assert api.put(served.url(f"/policies/p-{name}"), json={"Document": doc}).status_code == 200
    r = api.post(served.url("/auth/token/create"), json={"policies": [f"p-{name}"], "display_name": name})
    assert r.status_code == 200, r.text
    return r.json()["auth"]["client_token"]


def _raw(session: requests.Session, method: str, url: str, text: str) -> requests.Response:
    return session.request(method, url, data=text.encode(), headers={"Content-Type": "application/json"})


def test_over_http_hostile_input_is_a_4xx_with_a_stable_code_and_changes_nothing(served: RunningBroker) -> None:
    api = served.session()
    key = api.post(served.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
    mk = api.post(served.url("/multikeys"), json={"Name": "http", "Members": [key]}).json()["MultiKey"]["MultiKeyId"]
    before = served.snapshot()
    cases = [
        ("POST", "/multikeys", '{"Name": "\\ud800", "Members": ["' + key + '"]}'),
        ("POST", "/multikeys", '{"Name": "a/../b", "Members": ["' + key + '"]}'),
        ("POST", "/multikeys", '{"Name": "ok", "Members": ["\\ud800"]}'),
        ("POST", "/multikeys", '{"Name": "ok", "Members": [["' + key + '"]]}'),
        ("POST", "/multikeys", "[" * 100_000 + "]" * 100_000),
        ("POST", f"/multikeys/{mk}/encrypt", '{"Plaintext": "eA==", "EncryptionContext": {"k": "\\ud800"}}'),
        ("POST", f"/multikeys/{mk}/encrypt", '{"Plaintext": "eA==", "EncryptionContext": {"k": ' + "{" * 50_000 + "}"),
        ("POST", "/multikeys/decrypt", '{"CiphertextBlob": "AAAA"}'),
        ("POST", "/multikeys/rewrap", '{"CiphertextBlob": "' + "A" * 120_000 + '"}'),
        ("PATCH", f"/multikeys/{mk}", '{"Quorum": 5}'),
        ("POST", "/replicated-keys", '{"Targets": ["\\ud800"]}'),
        ("POST", "/replicated-keys", '{"Targets": ["hsm", "hsm"]}'),
        ("POST", "/replicated-keys", '{"Targets": "aws"}'),
        ("GET", "/multikeys/%ED%A0%80", ""),
        ("GET", "/multikeys/" + "m" * 3000, ""),
        ("GET", "/replicated-keys/%ED%A0%80", ""),
        ("POST", "/replicated-keys/" + "k" * 3000 + "/rotate", ""),
    ]
    for method, path, text in cases:
        r = _raw(api, method, served.url(path), text)
        assert 400 <= r.status_code < 500, (method, path[:60], r.status_code, r.text[:200])
        if r.headers.get("Content-Type", "").startswith("application/json"):
            assert r.json()["error"]["code"].endswith("Exception"), r.text[:200]
    assert served.snapshot() == before


def test_over_http_another_tenants_multikey_and_members_are_unreachable(served: RunningBroker) -> None:
    api = served.session()
    ka, kb = (api.post(served.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"] for _ in range(2))
    mk_a = api.post(served.url("/multikeys"), json={"Name": "tenant-a/db", "Members": [ka]}).json()["MultiKey"]
    blob = api.post(served.url(f"/multikeys/{mk_a['MultiKeyId']}/encrypt"),
                    json={"Plaintext": "YQ=="}).json()["CiphertextBlob"]
    b = served.session(_token(served, "tenant-b", [{"Action": "kms:*", "Resource": ["multikey/tenant-b/*",
                                                                                   f"key/{kb}"]}]))
    for method, path, body in [("GET", f"/multikeys/{mk_a['MultiKeyId']}", None),
                               ("GET", "/multikeys/tenant-a/db", None),
                               ("PATCH", "/multikeys/tenant-a/db", {"Members": [kb]}),
                               ("DELETE", "/multikeys/tenant-a/db", None),
                               ("POST", "/multikeys/tenant-a/db/encrypt", {"Plaintext": "YQ=="}),
                               ("POST", "/multikeys/decrypt", {"CiphertextBlob": blob}),
                               ("POST", "/multikeys/rewrap", {"CiphertextBlob": blob}),
                               ("POST", "/multikeys", {"Name": "tenant-b/x", "Members": [kb, ka]}),
                               ("GET", f"/replicated-keys/{ka}", None),
                               ("POST", f"/replicated-keys/{ka}/rotate", None)]:
        r = b.request(method, served.url(path), json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "AccessDeniedException", (method, path, r.text)
    assert api.get(served.url("/multikeys/tenant-a/db")).json()["MultiKey"]["Members"][0]["KeyId"] == ka


def test_through_the_aws_door_a_multikey_is_guarded_the_same(served: RunningBroker) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    api = served.session()

    def client(policies: list[str]) -> object:
        r = api.post(served.url("/aws-credentials"), json={"Policies": policies, "Name": "-".join(policies)})
        assert r.status_code == 201, r.text
        return boto3.client("kms", endpoint_url=served.addr, region_name="us-east-1",
                            aws_access_key_id=r.json()["access_key_id"],
                            aws_secret_access_key=r.json()["secret_access_key"],
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}))

    ka, kb = (api.post(served.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"] for _ in range(2))
    assert api.post(served.url("/multikeys"), json={"Name": "aws-door/ab", "Members": [ka, kb]}).status_code == 201
    root = client(["root"])
    blob = root.encrypt(KeyId="multikey/aws-door/ab", Plaintext=b"via aws")["CiphertextBlob"]
    _token(served, "aws-a", [{"Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": f"key/{ka}"}])
    only_a = client(["p-aws-a"])
    for call in (lambda: only_a.encrypt(KeyId="multikey/aws-door/ab", Plaintext=b"x"),
                 lambda: only_a.generate_data_key(KeyId="multikey/aws-door/ab", KeySpec="AES_256"),
                 lambda: only_a.generate_data_key_without_plaintext(KeyId="multikey/aws-door/ab", NumberOfBytes=16)):
        with pytest.raises(ClientError) as denied:
            call()
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert only_a.decrypt(CiphertextBlob=blob)["Plaintext"] == b"via aws"  # answered by `a`, the member it may use
    for key_id in ("multikey/\ud800", "multikey/" + "m" * 3000, "multikey/", "multikey/a/../b"):
        with pytest.raises(ClientError) as bad:
            root.encrypt(KeyId=key_id, Plaintext=b"x")
        assert bad.value.response["Error"]["Code"] in ("ValidationException", "NotFoundException"), key_id[:40]
        assert 400 <= bad.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500
