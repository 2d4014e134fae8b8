"""Encryption-context values are HMAC'd through the HSM once per process and value (a bounded LRU); the records are
the same as without it, and secrets are never kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import errors
from broker.audit import log as audit_log
from broker.policy import PolicyEngine
from broker.service import KeyService, RequestContext
from broker.store import Store
from tests.integration.audit.conftest import make_audit


@pytest.fixture
def counted(tmp_path: Path, hsm_provider) -> Iterator[tuple[KeyService, list[bytes]]]:
    """A KeyService whose audit HMAC goes through the HSM and counts what reaches it."""
    data = tmp_path / "data"
    data.mkdir()
    store = Store(f"sqlite:///{data / 'broker.db'}")
    store.migrate()
    real, seen = hsm_provider.root_of_trust().audit_hmac, []

    def hmac(value: bytes) -> bytes:
        seen.append(value)
        return real(value)

    audit = make_audit(data, hsm_provider, store)
    audit._hmac = hmac
    audit._context_hmacs.cache_clear()
    yield KeyService(store, {"hsm": hsm_provider}, "hsm", PolicyEngine(), audit), seen
    audit.close()
    store.dispose()


def contexts_recorded(svc: KeyService) -> list[dict]:
    return [r["encryption_context"] for r in map(json.loads, svc.audit.path.read_text().splitlines())
            if r.get("action") == "kms:Encrypt"]


def test_a_repeated_value_reaches_the_hsm_once_and_records_the_same(counted, root_ctx: RequestContext) -> None:
    svc, seen = counted
    key = svc.create_key(root_ctx)["KeyId"]
    seen.clear()
    for _ in range(20):
        svc.encrypt(root_ctx, key, b"x", context={"app": "billing", "tenant": "t-0001"})
    assert sorted(seen) == [b"billing", b"t-0001"]  # two values, two HSM calls for twenty requests
    svc.encrypt(root_ctx, key, b"x", context={"app": "billing", "tenant": "t-0002"})
    assert seen[-1] == b"t-0002" and len(seen) == 3
    recorded = contexts_recorded(svc)
    fresh = {v: "hmac-sha256:" + svc.audit._hmac(v.encode()).hex() for v in ("billing", "t-0001", "t-0002")}
    assert recorded[0] == recorded[19] == {"app": fresh["billing"], "tenant": fresh["t-0001"]}
    assert recorded[20] == {"app": fresh["billing"], "tenant": fresh["t-0002"]}
    assert all("t-0001" not in json.dumps(r) and "billing" not in json.dumps(r) for r in recorded)


def test_long_values_are_not_kept_and_the_cache_is_bounded(counted, root_ctx: RequestContext, monkeypatch) -> None:
    svc, seen = counted
    key = svc.create_key(root_ctx)["KeyId"]
    long = "v" * (audit_log.CONTEXT_HMAC_MAX_CHARS + 1)
    seen.clear()
    for _ in range(3):
        svc.encrypt(root_ctx, key, b"x", context={"blob": long})
    assert seen == [long.encode()] * 3  # HMAC'd each time, never held
    assert svc.audit._context_hmacs.cache_info().currsize == 0
    for n in range(audit_log.CONTEXT_HMAC_ENTRIES + 50):
        svc.audit.hmac_context_value(f"value-{n}")
    assert svc.audit._context_hmacs.cache_info().currsize == audit_log.CONTEXT_HMAC_ENTRIES


def test_secrets_and_hostile_values_are_never_kept(counted, root_ctx: RequestContext) -> None:
    svc, seen = counted
    key = svc.create_key(root_ctx)["KeyId"]
    before = svc.audit._context_hmacs.cache_info().currsize
    with pytest.raises(errors.ValidationError):
        svc.encrypt(root_ctx, key, b"x", context={"tenant": "\ud800"})  # a lone surrogate: refused, nothing kept
    token = svc.gate._safe("client_token", "hvs.secret-token-value")  # a secret-named extra (Gate._safe)
    assert token.startswith("hmac-sha256:") and seen[-1] == b"hvs.secret-token-value"
    assert svc.audit._context_hmacs.cache_info().currsize == before
