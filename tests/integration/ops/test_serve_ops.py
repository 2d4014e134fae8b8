"""What a crash test found about running brokers side by side and on a full disk, fixed and checked on real
gunicorn brokers: per-folder control sockets, readiness that reflects the audit sink and the store, a bounded WAL."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from broker.store import WAL_LIMIT, WAL_PAGES
from tests.support.broker import start_broker

PAGE = 4096


def test_two_brokers_on_one_host_keep_their_own_control_sockets(tmp_path):
    """gunicorn's default control socket is ~/.gunicorn/gunicorn.ctl: the second arbiter would take it over.
    Each broker's is in its data folder now, and nothing is made in the home folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    first = start_broker(tmp_path / "a", tmp_path / "logs", env=env, workers=1, name="a")
    try:
        second = start_broker(tmp_path / "b", tmp_path / "logs", env=env, workers=1, name="b")
        try:
            for broker in (first, second):
                ctl = broker.data_dir / "gunicorn.ctl"
                assert stat.S_ISSOCK(ctl.stat().st_mode), ctl
                assert stat.S_IMODE(ctl.stat().st_mode) == 0o600
                assert requests.get(broker.url("/ready"), timeout=10).status_code == 200
            assert not (home / ".gunicorn").exists()
        finally:
            second.server.stop()
        assert first.server.proc.poll() is None  # stopping one broker did not disturb the other
        assert (first.data_dir / "gunicorn.ctl").exists()
    finally:
        first.server.stop()


@pytest.fixture
def small_disk():
    """A 24 MiB tmpfs of our own (unmounted afterwards): a disk that can really fill up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="kmsb-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def _fill(path: Path) -> None:
    """Write zeros until the file system refuses (unbuffered: the last short write is the disk being full)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_full_disk_makes_the_broker_not_ready_and_it_recovers(small_disk, tmp_path):
    broker = start_broker(small_disk / "data", tmp_path / "logs", workers=1, name="full-disk")
    try:
        api = broker.session()
        key = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        body = {"Plaintext": base64.b64encode(b"before").decode()}
        assert api.post(broker.url(f"/keys/{key}/encrypt"), json=body).status_code == 200
        assert requests.get(broker.url("/ready"), timeout=10).status_code == 200

        filler = small_disk / "filler"
        _fill(filler)
        ready = requests.get(broker.url("/ready"), timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["audit"].startswith("file sink unavailable"), ready.json()
        # The audit file takes records while its last block has room (each one fsync'd: durable, so the request is
        # served); the first record that needs a new block is refused, and so is every request after it.
        answers = [api.post(broker.url(f"/keys/{key}/encrypt"), json=body) for _ in range(12)]
        codes = [r.status_code for r in answers]
        assert 503 in codes and set(codes) <= {200, 503}, codes
        first = codes.index(503)
        assert codes[first:] == [503] * (len(codes) - first), codes
        assert answers[first].json()["error"]["code"] == "ServiceUnavailableException"
        assert broker.server.proc.poll() is None

        filler.unlink()
        ready = requests.get(broker.url("/ready"), timeout=10)
        assert ready.status_code == 200 and ready.json()["audit"] == "ok" and ready.json()["store"] == "ok"
        assert api.post(broker.url(f"/keys/{key}/encrypt"), json=body).status_code == 200
        assert not list((small_disk / "data" / "audit").glob(".ready-*")), "readiness probes leave nothing behind"
        served = [json.loads(r.text)["CiphertextBlob"] for r in answers if r.status_code == 200]
        records = [json.loads(line) for line in (small_disk / "data" / "audit" / "audit.jsonl").read_text().splitlines()]
        allowed = [r for r in records if r.get("action") == "kms:Encrypt" and r.get("outcome") == "allowed"]
        assert len(allowed) == 2 + len(served)  # every answer served on the full disk has its durable record
    finally:
        broker.server.stop()


def test_the_sqlite_wal_stays_bounded_under_audited_load(tmp_path):
    """Every audited request appends pages to the WAL; it is checkpointed every WAL_PAGES pages and cut back to
    WAL_LIMIT, so under steady load from two processes its size never passes a bound (WAL_PAGES' worth of pages,
    however long the load lasts; without the cut and the job loop's truncation it grows while readers hold
    checkpoints back)."""
    broker = start_broker(tmp_path / "data", tmp_path / "logs", workers=2, name="wal")
    wal = broker.data_dir / "broker.db-wal"
    try:
        api = broker.session()
        key = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        body = {"Plaintext": base64.b64encode(b"wal").decode()}

        def burst(_: int) -> int:
            s = broker.session()
            sizes = []
            for _ in range(100):
                assert s.post(broker.url(f"/keys/{key}/encrypt"), json=body).status_code == 200
                sizes.append(wal.stat().st_size if wal.exists() else 0)
            return max(sizes)

        with ThreadPoolExecutor(4) as pool:
            peak = max(pool.map(burst, range(4)))
        # a checkpoint's worth of pages, plus the transactions that arrived while it ran
        bound = max(WAL_LIMIT, WAL_PAGES * PAGE) + 64 * PAGE
        assert 0 < peak <= bound, f"WAL reached {peak} bytes (bound {bound})"
    finally:
        broker.server.stop()
