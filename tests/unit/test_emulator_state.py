"""The emulators' time-driven rules (a heap of deadlines, not a scan) and their state file (per-object JSON, written
outside the backend lock), exercised in-process on the backends with an injected clock.

Over the wire, the same behaviours are covered by tests/integration/{gcp,aliyun,azure}_emulator; here the clock is
moved freely and the state file is compared with the backend's whole state after every kind of change.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "localstack") not in sys.path:
    sys.path.insert(0, str(ROOT / "localstack"))

from aliyun_kms_emulator.models import KmsBackend as AliyunBackend  # noqa: E402
from aliyun_kms_emulator.server import _writer as aliyun_writer  # noqa: E402
from azure_keyvault_emulator.models import Vault  # noqa: E402
from emulator_state import snapshot  # noqa: E402
from emulator_state.deadlines import Deadlines  # noqa: E402
from gcp_kms_emulator import persistence  # noqa: E402
from gcp_kms_emulator.models import KmsBackend as GcpBackend  # noqa: E402
from google.cloud import kms_v1 as k  # noqa: E402
from google.protobuf import field_mask_pb2  # noqa: E402

LOCATION = "projects/p/locations/global"
DAY = 86400


# ---- Deadlines ---------------------------------------------------------------------------------------------------

def test_a_deadline_moved_later_is_not_due_at_its_old_time() -> None:
    d = Deadlines()
    d.set("a", 10)
    d.set("a", 20)
    assert list(d.due(15)) == []
    assert list(d.due(20)) == ["a"]
    assert list(d.due(100)) == []  # once


def test_a_cancelled_deadline_is_never_due_and_one_set_again_is() -> None:
    d = Deadlines()
    d.set("a", 10)
    d.set("a", None)
    assert list(d.due(50)) == []
    d.set("a", 10)
    assert list(d.due(50)) == ["a"]


def test_due_deadlines_come_earliest_first_and_later_ones_stay() -> None:
    d = Deadlines()
    for ident, when in (("c", 30), ("a", 10), ("b", 20), ("z", 99)):
        d.set(ident, when)
    assert list(d.due(30)) == ["a", "b", "c"]
    assert len(d) == 1


def test_stale_entries_do_not_pile_up() -> None:
    d = Deadlines()
    for i in range(10_000):
        d.set("a", 1_000 + i)  # a deadline moved 10,000 times
    assert len(d._heap) < 200
    assert list(d.due(20_000)) == ["a"]


# ---- GCP ---------------------------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _gcp(clock: Clock) -> GcpBackend:
    backend = GcpBackend(now=clock)
    backend.call("create_key_ring", k.CreateKeyRingRequest(parent=LOCATION, key_ring_id="r"))
    return backend


def _gcp_key(backend: GcpBackend, key_id: str, **fields: object) -> k.CryptoKey:
    return backend.call("create_crypto_key", k.CreateCryptoKeyRequest(
        parent=f"{LOCATION}/keyRings/r", crypto_key_id=key_id,
        crypto_key=k.CryptoKey(purpose=k.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT, **fields)))


def _primary(backend: GcpBackend, name: str) -> str:
    return backend.call("get_crypto_key", k.GetCryptoKeyRequest(name=name)).primary.name


def test_gcp_rotation_moved_later_is_not_applied_early() -> None:
    clock = Clock()
    backend = _gcp(clock)
    key = _gcp_key(backend, "rot", rotation_period=timedelta(days=30), next_rotation_time=clock.now + timedelta(days=1))
    moved = k.CryptoKey(name=key.name, next_rotation_time=clock.now + timedelta(days=5))
    backend.call("update_crypto_key", k.UpdateCryptoKeyRequest(
        crypto_key=moved, update_mask=field_mask_pb2.FieldMask(paths=["next_rotation_time"])))
    clock.now += timedelta(days=2)
    assert _primary(backend, key.name).endswith("/cryptoKeyVersions/1")
    clock.now += timedelta(days=3, seconds=1)
    assert _primary(backend, key.name).endswith("/cryptoKeyVersions/2")
    clock.now += timedelta(days=1)
    assert _primary(backend, key.name).endswith("/cryptoKeyVersions/2")  # next one: 30 days on


def _destroy(backend: GcpBackend, version: str) -> k.CryptoKeyVersion:
    return backend.call("destroy_crypto_key_version", k.DestroyCryptoKeyVersionRequest(name=version))


def _version(backend: GcpBackend, version: str) -> k.CryptoKeyVersion:
    return backend.call("get_crypto_key_version", k.GetCryptoKeyVersionRequest(name=version))


def test_gcp_restored_version_is_not_destroyed_at_the_old_time() -> None:
    clock = Clock()
    backend = _gcp(clock)
    version = _gcp_key(backend, "restored", destroy_scheduled_duration=timedelta(days=1)).primary.name
    _destroy(backend, version)
    backend.call("restore_crypto_key_version", k.RestoreCryptoKeyVersionRequest(name=version))
    clock.now += timedelta(days=2)
    assert _version(backend, version).state == k.CryptoKeyVersion.CryptoKeyVersionState.DISABLED
    assert version in backend.material


def test_gcp_destroy_scheduled_before_a_restart_happens_after_it(tmp_path: Path) -> None:
    clock = Clock()
    backend = _gcp(clock)
    version = _gcp_key(backend, "doomed", destroy_scheduled_duration=timedelta(days=1)).primary.name
    job = backend.call("create_import_job", k.CreateImportJobRequest(
        parent=f"{LOCATION}/keyRings/r", import_job_id="j",
        import_job=k.ImportJob(import_method=k.ImportJob.ImportMethod.RSA_OAEP_3072_SHA256,
                               protection_level=k.ProtectionLevel.SOFTWARE))).name
    _destroy(backend, version)
    state = persistence.StateFile(backend, tmp_path / "gcp.json")
    state.save()

    clock.now += timedelta(days=4)  # past the destroy time and the import job's 3-day life
    restarted = GcpBackend(now=clock)
    persistence.load_file(restarted, tmp_path / "gcp.json")
    States = k.CryptoKeyVersion.CryptoKeyVersionState
    assert _version(restarted, version).state == States.DESTROYED
    assert version not in restarted.material
    assert restarted.call("get_import_job", k.GetImportJobRequest(name=job)).state == \
        k.ImportJob.ImportJobState.EXPIRED
    assert job not in restarted.material


def test_gcp_state_file_equals_the_whole_state_after_every_kind_of_change(tmp_path: Path) -> None:
    """Saved and compared after each call, so a change that is not marked shows even if a later one marks the
    same object."""
    clock = Clock()
    backend = _gcp(clock)
    path = tmp_path / "gcp.json"
    state = persistence.StateFile(backend, path)

    def call(method: str, request: object) -> object:
        out = backend.call(method, request)
        state.save()
        assert json.loads(path.read_text()) == persistence.dump(backend), method
        return out

    States = k.CryptoKeyVersion.CryptoKeyVersionState
    for i in range(2):
        key = call("create_crypto_key", k.CreateCryptoKeyRequest(
            parent=f"{LOCATION}/keyRings/r", crypto_key_id=f"k{i}", crypto_key=k.CryptoKey(
                purpose=k.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT, destroy_scheduled_duration=timedelta(days=1),
                rotation_period=timedelta(days=1), next_rotation_time=clock.now + timedelta(days=1))))
        extra = call("create_crypto_key_version", k.CreateCryptoKeyVersionRequest(parent=key.name))
        call("update_crypto_key_version", k.UpdateCryptoKeyVersionRequest(
            crypto_key_version=k.CryptoKeyVersion(name=extra.name, state=States.DISABLED),
            update_mask=field_mask_pb2.FieldMask(paths=["state"])))
        call("update_crypto_key", k.UpdateCryptoKeyRequest(
            crypto_key=k.CryptoKey(name=key.name, labels={"n": str(i)}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"])))
        call("update_crypto_key_primary_version", k.UpdateCryptoKeyPrimaryVersionRequest(
            name=key.name, crypto_key_version_id="1"))
        call("destroy_crypto_key_version", k.DestroyCryptoKeyVersionRequest(name=extra.name))
        if i:
            call("restore_crypto_key_version", k.RestoreCryptoKeyVersionRequest(name=extra.name))
        call("create_import_job", k.CreateImportJobRequest(
            parent=f"{LOCATION}/keyRings/r", import_job_id=f"j{i}",
            import_job=k.ImportJob(import_method=k.ImportJob.ImportMethod.RSA_OAEP_3072_SHA256,
                                   protection_level=k.ProtectionLevel.SOFTWARE)))
    clock.now += timedelta(days=4)  # destroys, expiries and rotations due
    call("list_key_rings", k.ListKeyRingsRequest(parent=LOCATION))
    assert sum(v.state == States.DESTROYED for v in backend.versions.values()) == 1
    assert len(backend.versions) == 6  # 2 keys x (initial + extra + rotated)
    assert path.stat().st_mode & 0o077 == 0


def test_gcp_a_save_renders_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    backend = _gcp(clock)
    for i in range(200):
        _gcp_key(backend, f"k{i}")
    state = persistence.StateFile(backend, tmp_path / "gcp.json")
    state.save()
    rendered: list[tuple[str, str, bool]] = []
    real = persistence._render
    monkeypatch.setattr(persistence, "_render",
                        lambda b, t, n: rendered.append((t, n, b.lock._is_owned())) or real(b, t, n))
    _gcp_key(backend, "one-more")
    state.save()
    assert len(rendered) == 3  # the key, its version and the version's material
    assert all(locked for _, _, locked in rendered)  # objects are mutable: rendered under the backend's lock
    assert len(json.loads((tmp_path / "gcp.json").read_text())["crypto_keys"]) == 201


def test_gcp_state_file_is_written_with_the_lock_released(tmp_path: Path) -> None:
    clock = Clock()
    backend = _gcp(clock)
    _gcp_key(backend, "k")
    state = persistence.StateFile(backend, tmp_path / "gcp.json")
    write, seen = state.doc._write, []

    def write_while_probing(top: dict) -> None:
        probe = threading.Thread(target=lambda: seen.append(backend.lock.acquire(timeout=2) and
                                                            backend.lock.release() is None))
        probe.start()
        probe.join()
        write(top)

    state.doc._write = write_while_probing  # type: ignore[method-assign]
    state.save()
    assert seen == [True]


def test_gcp_state_file_written_while_requests_change_state_is_always_whole(tmp_path: Path) -> None:
    """8 saves race 4 threads creating keys (20 more allowed at each save, so creates run during every save):
    every file written loads and is consistent (each version's key is there, each key's primary is there, material for every version), no file
    holds fewer keys than the one before, and a last save holds exactly the backend's state."""
    clock = Clock()
    backend = _gcp(clock)
    path = tmp_path / "gcp.json"
    state = persistence.StateFile(backend, path)
    stop = threading.Event()
    permits = threading.Semaphore(0)
    failures: list[BaseException] = []

    def create(t: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                if not permits.acquire(timeout=0.05):
                    continue
                key = _gcp_key(backend, f"t{t}-{i}")
                backend.call("create_crypto_key_version", k.CreateCryptoKeyVersionRequest(parent=key.name))
                i += 1
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=create, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    counts = []
    try:
        for _ in range(8):
            permits.release(20)
            state.save()
            loaded = GcpBackend(now=clock)
            persistence.load(loaded, json.loads(path.read_text()))
            for name in loaded.versions:
                assert name.rsplit("/cryptoKeyVersions/", 1)[0] in loaded.crypto_keys
                assert name in loaded.material
            for key in loaded.crypto_keys.values():
                assert key.primary.name in loaded.versions
            counts.append(len(loaded.crypto_keys))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    assert counts == sorted(counts) and counts[-1] > counts[0]
    state.save()
    assert json.loads(path.read_text()) == persistence.dump(backend)


# ---- Aliyun ------------------------------------------------------------------------------------------------------

class Seconds:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


def test_aliyun_cancelled_deletion_is_not_purged_at_the_old_date() -> None:
    clock = Seconds()
    backend = AliyunBackend(clock=clock)
    key = backend.create_key()
    backend.schedule_key_deletion(key.key_id, 7)
    backend.cancel_key_deletion(key.key_id)
    clock.now += 8 * DAY
    assert backend.describe_key(key.key_id).state == "Enabled"


def test_aliyun_rotation_due_while_disabled_happens_once_enabled() -> None:
    """As the full scan did: a key disabled when its rotation came rotates at the first access after enabling."""
    clock = Seconds()
    backend = AliyunBackend(clock=clock)
    key = backend.create_key(auto_rotation=True, rotation_interval="7d")
    backend.disable_key(key.key_id)
    clock.now += 8 * DAY
    assert len(backend.describe_key(key.key_id).versions) == 1
    backend.enable_key(key.key_id)
    assert len(backend.describe_key(key.key_id).versions) == 2


def test_aliyun_purge_drops_the_key_and_only_its_aliases() -> None:
    clock = Seconds()
    backend = AliyunBackend(clock=clock)
    doomed, kept = backend.create_key(), backend.create_key()
    backend.create_alias("alias/a", doomed.key_id)
    backend.create_alias("alias/moved", doomed.key_id)
    backend.update_alias("alias/moved", kept.key_id)
    backend.create_alias("alias/b", kept.key_id)
    backend.schedule_key_deletion(doomed.key_id, 7)
    clock.now += 7 * DAY + 1
    assert [row["AliasName"] for row in backend.list_aliases(1, 50).items] == ["alias/b", "alias/moved"]
    assert doomed.key_id not in backend.keys


def test_aliyun_deletion_scheduled_before_a_restart_happens_after_it(tmp_path: Path) -> None:
    clock = Seconds()
    backend = AliyunBackend(clock=clock)
    key = backend.create_key()
    backend.create_alias("alias/gone", key.key_id)
    writer = aliyun_writer(tmp_path / "aliyun.json", backend)
    backend.on_change = lambda _b: writer.changed()
    backend.schedule_key_deletion(key.key_id, 7)
    writer.flush()

    clock.now += 8 * DAY
    restarted = AliyunBackend(clock=clock)
    restarted.load_dict(json.loads((tmp_path / "aliyun.json").read_text()))
    assert restarted.list_keys(1, 50).total == 0
    assert restarted.list_aliases(1, 50).total == 0


def test_aliyun_state_file_equals_the_whole_state_after_every_kind_of_change(tmp_path: Path) -> None:
    clock = Seconds()
    backend = AliyunBackend(clock=clock)
    path = tmp_path / "aliyun.json"
    writer = aliyun_writer(path, backend)
    backend.on_change = lambda _b: writer.changed()

    def saved() -> None:
        writer.flush()
        assert json.loads(path.read_text()) == json.loads(json.dumps(backend.to_dict()))

    keys = [backend.create_key(auto_rotation=True, rotation_interval="7d") for _ in range(4)]
    saved()
    for change in (lambda: backend.create_key_version(keys[0].key_id),
                   lambda: backend.disable_key(keys[1].key_id),
                   lambda: backend.create_alias("alias/x", keys[2].key_id),
                   lambda: backend.schedule_key_deletion(keys[2].key_id, 7),
                   lambda: backend.create_alias("alias/y", keys[3].key_id),
                   lambda: backend.update_alias("alias/y", keys[0].key_id),
                   lambda: backend.tag_resource(keys[3].key_id, {"t": "v"}),
                   lambda: backend.untag_resource(keys[3].key_id, ["t"]),
                   lambda: backend.update_rotation_policy(keys[3].key_id, False, None),
                   lambda: backend.delete_key_material(backend.create_key(origin="EXTERNAL").key_id),
                   lambda: backend.enable_key(keys[1].key_id),
                   lambda: backend.delete_alias("alias/y")):
        change()
        saved()
    clock.now += 8 * DAY  # keys[0] rotates, keys[2] and alias/x are purged
    backend.list_keys(1, 50)
    saved()
    assert "alias/x" not in backend.aliases and len(backend.keys[keys[0].key_id].versions) == 3


# ---- Azure -------------------------------------------------------------------------------------------------------

def test_azure_state_file_equals_the_whole_state_after_every_kind_of_change(tmp_path: Path) -> None:
    path = tmp_path / "azure.json"
    vault = Vault("https://127.0.0.1:1", str(path))
    for name in ("a", "b", "c"):
        vault.create_key(name, {"kty": "oct-HSM"})
    vault.update_key("a", None, {"tags": {"t": "1"}})
    vault.rotate_key("a")
    vault.set_rotation_policy("b", {"lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D"},
                                                         "action": {"type": "Rotate"}}]})
    vault.delete_key("c")
    backup = vault.backup_key("b")
    vault.delete_key("b")
    vault.purge_key("b")
    vault.restore_key(backup)
    vault.flush()
    doc = json.loads(path.read_text())
    # by name: a key purged and restored between two saves keeps its old place in the file (order carries nothing)
    assert {key["name"]: key for key in doc["keys"]} == {name: asdict(key) for name, key in vault._keys.items()}
    assert len(doc["keys"]) == len(vault._keys) == 3
    reopened = Vault("https://127.0.0.1:1", str(path))
    assert reopened.get_key("a", None) == vault.get_key("a", None)
    assert reopened.get_deleted_key("c")["recoveryId"].endswith("/deletedkeys/c")


def test_a_save_that_dies_midway_leaves_the_previous_file_whole(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The document goes to a temp file renamed over the state file: a crash while writing leaves the old one."""
    clock = Clock()
    backend = _gcp(clock)
    _gcp_key(backend, "first")
    path = tmp_path / "gcp.json"
    state = persistence.StateFile(backend, path)
    state.save()
    before = path.read_text()
    _gcp_key(backend, "second")

    class DiesMidway:
        calls = 0

        @classmethod
        def dumps(cls, value: object) -> str:
            cls.calls += 1
            if cls.calls == 3:  # the document is partly written by then
                raise OSError("disk gone")
            return json.dumps(value)

    monkeypatch.setattr(snapshot, "json", DiesMidway)
    with pytest.raises(OSError):
        state.save()
    assert path.read_text() == before
    monkeypatch.undo()
    state.save()  # the next save still writes the change (the texts were kept)
    assert len(json.loads(path.read_text())["crypto_keys"]) == 2


# ---- Aliyun request signatures: the nonce cache ------------------------------------------------------------------

def test_nonce_cache_refuses_a_replay_among_many_recent_nonces_and_forgets_only_expired_ones() -> None:
    from aliyun_kms_emulator.signing import WINDOW_SECONDS, NonceCache

    cache, now = NonceCache(), 1_000_000.0
    for i in range(12_000):  # past the old 10,000 mark, all recent: all kept
        assert cache.claim("AK", f"n{i}", now + i * 0.01)
    assert not cache.claim("AK", "n0", now + 120)
    assert not cache.claim("AK", "n11999", now + 120)
    assert cache.claim("AK2", "n0", now + 120)  # per access key
    later = now + 2 * WINDOW_SECONDS + 200
    assert cache.claim("AK", "fresh", later)
    assert len(cache) == 1  # every nonce older than two windows is gone


def test_nonce_cache_claim_cost_does_not_grow_with_the_nonces_held() -> None:
    """2,000 claims on a cache holding 15,000 recent nonces cost about what they cost on an empty one (the old
    cache rebuilt its whole dict on each claim past 10,000: ~100x slower there). A 20x margin keeps it robust."""
    import time as _time

    from aliyun_kms_emulator.signing import NonceCache

    def claims(cache: NonceCache, start: float) -> float:
        t = _time.perf_counter()
        for i in range(2_000):
            cache.claim("AK", f"m{i}", start + i * 0.001)
        return _time.perf_counter() - t

    empty = min(claims(NonceCache(), 1_000_000.0) for _ in range(3))
    full = NonceCache()
    for i in range(15_000):
        full.claim("AK", f"n{i}", 1_000_000.0 + i * 0.001)
    assert claims(full, 1_000_100.0) < 20 * empty + 0.05
