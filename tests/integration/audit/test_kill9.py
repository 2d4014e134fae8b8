"""`kill -9` at random instants under load, round after round: one gunicorn worker (the arbiter starts another) or the
whole server (started again). After every round: nothing acknowledged is lost, every effect in the store (keys,
versions, aliases) has its record (an outcome, or an intent closed as interrupted), no intent is left open, and
`kms-broker audit verify --data-dir` passes."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.broker import CLI, init_data_dir
from tests.support.procs import Server, free_port, start_server

ROUNDS = 10
ENV = {"KMSB_AUDIT_CHECKPOINT_RECORDS": "40"}
_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@dataclass
class Acked:
    """What the broker answered 2xx to: it must survive any crash."""

    keys: set[str] = field(default_factory=set)
    versions: set[tuple[str, int]] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)
    blobs: list[tuple[str, bytes]] = field(default_factory=list)
    unexpected: list[tuple[str, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Broker:
    def __init__(self, base: Path) -> None:
        self.data = base / "data"
        self.logs = base / "logs"
        self.token = init_data_dir(self.data)
        self.server: Server | None = None
        self.addr = ""

    def start(self) -> None:
        port = free_port()
        self.addr = f"http://127.0.0.1:{port}"
        self.server = start_server("kill9-broker", [*CLI, "serve", "--data-dir", str(self.data), "--bind",
                                                    f"127.0.0.1:{port}", "--workers", "2"], log_dir=self.logs,
                                   env=ENV, ready=lambda: requests.get(f"{self.addr}/v1/health", timeout=1).ok)

    def workers(self) -> list[int]:
        pid = self.server.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children]

    def session(self) -> requests.Session:
        s = requests.Session()
        s.headers["X-KMSB-Token"] = self.token
        return s

    def url(self, path: str) -> str:
        return f"{self.addr}/v1{path}"


def encrypting(b: Broker, key: str, acked: Acked, stop: threading.Event) -> None:
    s = b.session()
    while not stop.is_set():
        plaintext = os.urandom(8)
        try:
            r = s.post(b.url(f"/keys/{key}/encrypt"), json={"Plaintext": base64.b64encode(plaintext).decode()},
                       timeout=10)
        except _ERRORS:
            s = b.session()
            continue
        if r.status_code == 200:
            with acked.lock:
                acked.blobs.append((r.json()["CiphertextBlob"], plaintext))
        else:
            acked.unexpected.append(("encrypt", r.status_code, r.text[:200]))


def administering(b: Broker, acked: Acked, stop: threading.Event) -> None:
    """CreateKey, then rotate it and point a new alias at it: a storm of state changes."""
    s = b.session()
    while not stop.is_set():
        try:
            r = s.post(b.url("/keys"), json={}, timeout=10)
            if r.status_code != 201:
                acked.unexpected.append(("create", r.status_code, r.text[:200]))
                continue
            key = r.json()["KeyMetadata"]["KeyId"]
            acked.keys.add(key)
            r = s.post(b.url(f"/keys/{key}/rotate"), timeout=10)
            if r.status_code != 200:
                acked.unexpected.append(("rotate", r.status_code, r.text[:200]))
                continue
            acked.versions.add((key, r.json()["KeyVersion"]))
            alias = f"alias/crash-{uuid.uuid4().hex[:12]}"
            r = s.post(b.url("/aliases"), json={"AliasName": alias, "TargetKeyId": key}, timeout=10)
            if r.status_code in (200, 201):
                acked.aliases[alias] = key
            else:
                acked.unexpected.append(("alias", r.status_code, r.text[:200]))
        except _ERRORS:
            s = b.session()


def records(b: Broker) -> list[dict]:
    path = b.data / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def store(b: Broker) -> tuple[set[str], list[tuple[str, int]], dict[str, str]]:
    con = sqlite3.connect(f"file:{b.data / 'broker.db'}?mode=ro", uri=True)
    try:
        keys = {r[0] for r in con.execute("select key_id from keys")}
        versions = [tuple(r) for r in con.execute("select key_id, version from key_versions")]
        aliases = dict(con.execute("select name, key_id from aliases").fetchall())
    finally:
        con.close()
    return keys, versions, aliases


def every_effect_has_its_record(b: Broker) -> Counter:
    """Keys, versions and aliases in the store against the audit records: each named by an outcome, or by an
    intent whose operation was interrupted (its effect unknown to the log: the store says it happened)."""
    recs = [r for r in records(b) if r.get("type") == "event"]
    keys, versions, aliases = store(b)
    named = {r.get("key_id") for r in recs}
    assert keys <= named, f"keys with no audit record: {keys - named}"
    rotations = {(r["key_id"], r["key_version"]) for r in recs if r["action"] in ("kms:RotateKeyOnDemand",
                 "broker:RotateKey") and r["outcome"] == "allowed"}
    interrupted = Counter(r["key_id"] for r in recs if r["outcome"] == "interrupted"
                          and r["action"] == "kms:RotateKeyOnDemand")
    unexplained = Counter(k for k, v in versions if v > 1 and (k, v) not in rotations)
    for key, count in unexplained.items():
        assert count <= interrupted[key], f"{key}: {count} version(s) with no record, {interrupted[key]} interrupted"
    alias_records = {(r.get("resource"), r.get("key_id")) for r in recs if r["action"] == "kms:CreateAlias"}
    missing = {a for a, k in aliases.items() if (a, k) not in alias_records}
    assert not missing, f"aliases with no audit record: {missing}"
    intents = {r["seq"] for r in recs if r.get("phase") == "intent"}
    closed = {r["intent_seq"] for r in recs if "intent_seq" in r}
    assert intents == closed, f"intents never closed: {sorted(intents - closed)}"
    return Counter(r["outcome"] for r in recs)


def nothing_acknowledged_is_lost(b: Broker, acked: Acked, blobs: list[tuple[str, bytes]]) -> None:
    keys, versions, aliases = store(b)
    assert acked.keys <= keys, f"acknowledged keys lost: {acked.keys - keys}"
    assert acked.versions <= set(versions), f"acknowledged rotations lost: {acked.versions - set(versions)}"
    assert all(aliases.get(a) == k for a, k in acked.aliases.items()), "acknowledged aliases lost"
    s = b.session()
    for blob, plaintext in blobs:
        r = s.post(b.url("/decrypt"), json={"CiphertextBlob": blob}, timeout=30)
        assert r.status_code == 200, (r.status_code, r.text, b.server.log_tail())
        assert base64.b64decode(r.json()["Plaintext"]) == plaintext


def verify_passes(b: Broker) -> dict:
    done = subprocess.run([*CLI, "audit", "verify", "--data-dir", str(b.data), "--output", "json"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **ENV})
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report["problems"]
    return report


def open_intents(b: Broker) -> set[int]:
    recs = records(b)
    return {r["seq"] for r in recs if r.get("phase") == "intent"} - {r["intent_seq"] for r in recs if "intent_seq" in r}


def wait_until_settled(b: Broker, timeout: float = 60.0) -> None:
    """The storm is over: every intent left open belongs to the killed worker, and the writers still alive (the
    survivor's housekeeping, the replacement's start) close it as interrupted. Wait for that, not for a time."""
    deadline = time.monotonic() + timeout
    while open_intents(b) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not open_intents(b), f"intents of a dead writer never closed: {sorted(open_intents(b))}"


def wait_for_workers(b: Broker, n: int = 2, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(b.workers()) == n and requests.get(b.url("/health"), timeout=2).ok:
            return
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not get back to {n} workers:\n{b.server.log_tail()}")


def test_kill_9_under_load_loses_nothing_and_leaves_nothing_unaudited(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("KMSB_KILL9_SEED", time.time_ns() % 1_000_000)))
    b = Broker(tmp_path)
    b.start()
    try:
        key = b.session().post(b.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        acked = Acked()
        totals: Counter = Counter()
        for round_ in range(ROUNDS):
            whole = round_ % 2 == 1
            stop = threading.Event()
            load = [threading.Thread(target=encrypting, args=(b, key, acked, stop)) for _ in range(4)]
            load += [threading.Thread(target=administering, args=(b, acked, stop)) for _ in range(2)]
            blobs_before = len(acked.blobs)
            for t in load:
                t.start()
            time.sleep(rng.uniform(0.2, 1.2))  # a random instant in the storm
            if whole:
                os.killpg(b.server.pid, signal.SIGKILL)
                b.server.proc.wait(10)
                stop.set()
                for t in load:
                    t.join(30)
                b.start()
            else:
                os.kill(rng.choice(b.workers()), signal.SIGKILL)
                time.sleep(0.3)  # the other worker (and soon the new one) keeps serving the storm
                stop.set()
                for t in load:
                    t.join(30)
                wait_for_workers(b)
                wait_until_settled(b)
            assert not [u for u in acked.unexpected if u[1] >= 500], acked.unexpected
            round_blobs = acked.blobs[blobs_before:]
            nothing_acknowledged_is_lost(b, acked, rng.sample(round_blobs, min(5, len(round_blobs))))
            totals = every_effect_has_its_record(b)
            verify_passes(b)
        print(f"\n{ROUNDS} rounds: {len(acked.keys)} keys, {len(acked.versions)} rotations, {len(acked.blobs)} "
              f"ciphertexts acknowledged; outcomes in the log at the end: {dict(totals)}")
        assert len(acked.keys) >= ROUNDS and len(acked.blobs) >= ROUNDS  # the storms did run
    finally:
        b.server.stop()
