"""Session fixtures shared by the suites: one SoftHSM token, one PostgreSQL server (both real, started once)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
def _hsm_token_first(hsm_token: TestToken) -> Iterator[TestToken]:
    """The session token is made before any test of this process runs, and no other SoftHSM token is ever opened
    in this process. SoftHSM reads SOFTHSM2_CONF at each library initialisation, and the pkcs11 provider
    re-initialises the library when an open fails: a test that opened a token of its own here (a broker data
    folder's, made by `kms-broker init`) moved the whole process onto that token, and every later test of the
    worker then saw the wrong keys. Such a test must run that broker in a process of its own (or use this token);
    the guard below names it instead of letting a later test fail."""
    from providers import pkcs11 as p11

    own, pid, original = str(hsm_token.files.conf), os.getpid(), p11._Session._open

    def guarded_open(session: Any) -> None:
        conf = session._config.get("softhsm_conf")
        if conf and str(conf) != own and os.getpid() == pid:
            raise AssertionError(f"a SoftHSM token other than the session's ({conf}) was opened in the test "
                                 "process: run that broker in a process of its own, or use the hsm_token fixture")
        original(session)

    p11._Session._open = guarded_open
    yield hsm_token
    p11._Session._open = original


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
