"""Session fixtures shared by the suites: one SoftHSM token, one PostgreSQL server (both real, started once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.audit import AuditLog
from broker.auth import Principal
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.store import Store
from providers.pkcs11 import Pkcs11Provider
from tests.support.hsm import TestToken, make_token
from tests.support.postgres import start_postgres


@pytest.fixture(scope="session")
def hsm_token(tmp_path_factory: pytest.TempPathFactory) -> TestToken:
    """THE SoftHSM token of this test session (SoftHSM reads its config once per process)."""
    return make_token(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="session", autouse=True)
def _hsm_token_first(hsm_token: TestToken) -> TestToken:
    """The session token is made before any test of this process runs: SoftHSM reads SOFTHSM2_CONF once, at the
    first library load, so whatever loads the library first decides which token directory the process sees. Run
    serially that was this token by luck of the order; under pytest-xdist each worker starts with a different
    module, and one that built a provider over its own data folder first left the session token unreachable."""
    return hsm_token


@pytest.fixture(scope="session")
def hsm_provider(hsm_token: TestToken) -> Iterator[Pkcs11Provider]:
    provider = hsm_token.provider()
    provider.check_health()
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database on a real PostgreSQL server started for this session."""
    server = start_postgres(tmp_path_factory.mktemp("postgres-log"))
    try:
        yield server.create_database("kmsb_test")
    finally:
        server.stop()


@pytest.fixture
def root_ctx() -> RequestContext:
    return RequestContext(Principal("root", "token", ("root",)), front_door="test")


@pytest.fixture
def key_service(tmp_path: Path, hsm_provider: Pkcs11Provider) -> Iterator[KeyService]:
    """A KeyService on a fresh SQLite store under tmp_path/data, the session HSM, root-only policy, a JSONL audit."""
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    audit = AuditLog(data / "audit.jsonl", hsm_provider.root_of_trust().audit_hmac)
    yield KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit)
    store.dispose()
