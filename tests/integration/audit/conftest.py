"""Audit suite fixtures: an in-process KeyService whose AuditLog has every feature on (file + store sinks, fsync,
HSM-signed checkpoints, the HSM's high-water mark), and a real gunicorn broker of its own (the suite tampers with its
files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.audit import AuditLog
from broker.audit.mark import RootMarks
from broker.policy import PolicyEngine
from broker.service import KeyService
from broker.store import Store
from providers.pkcs11 import Pkcs11Provider
from tests.support.broker import RunningBroker, start_broker

CHECKPOINT_EVERY = 5


def make_audit(data: Path, provider: Pkcs11Provider, store: Store, **overrides) -> AuditLog:
    options = {"fsync": True, "sinks": ("file", "store"), "engine": store.engine, "signer": provider.root_of_trust().audit_sign,
               "public_key": provider.root_of_trust().audit_public_key(), "checkpoint_records": CHECKPOINT_EVERY,
               "checkpoint_seconds": 3600.0, "batch_ms": 1.0, "marks": RootMarks(provider.root_of_trust()), **overrides}
    return AuditLog(data / "audit" / "audit.jsonl", provider.root_of_trust().audit_hmac, **options)


@pytest.fixture
def audited(tmp_path: Path, hsm_provider: Pkcs11Provider) -> Iterator[KeyService]:
    """KeyService with the full audit pipeline on a fresh SQLite store under tmp_path/data."""
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    audit = make_audit(data, hsm_provider, store)
    yield KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    audit.close()
    store.dispose()


@pytest.fixture(scope="module")
def audit_broker(tmp_path_factory) -> Iterator[RunningBroker]:
    """A gunicorn broker (2 workers) with checkpoints every 5 records, for this module alone."""
    base = tmp_path_factory.mktemp("audit-broker")
    running = start_broker(base / "data", base / "logs", env={"KMSB_AUDIT_CHECKPOINT_RECORDS": "5"},
                           name="audit-broker")
    yield running
    running.server.stop()
