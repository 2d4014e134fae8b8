"""Multi-key decrypt when the first-priority cloud refuses connections: the next member answers at once.

In process, over SoftHSM and a moto_server AWS: a multi-key [aws, hsm] wraps under both; moto is stopped, so the
aws member's endpoint refuses connections. The decrypt is answered by the hsm member, the aws attempt says it was
refused (a connection error, not a timeout: the provider did not retry and the 3 s deadline was not waited out),
the circuit opened on that single refusal, and the next decrypt tries hsm first. Not timed: the speed is the
bench's (bench/failover_bench.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.auth import Principal
from broker.service import RequestContext
from tests.support.hsm import TestToken
from tests.support.procs import Server, start_server

pytestmark = pytest.mark.integration
STACK_ROOT = Path(__file__).resolve().parents[2] / "localstack"
if str(STACK_ROOT) not in sys.path:
    sys.path.insert(0, str(STACK_ROOT))

from kms_stack import launchers  # noqa: E402


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[tuple[Server, dict]]:
    launch = launchers.moto(tmp_path / "moto")
    found: dict = {}

    def ready() -> bool:
        found.update(launch.probe(tmp_path / "moto.log") or {})
        return bool(found)

    server = start_server("moto", launch.cmd, log_dir=tmp_path, ready=ready, env=launch.env, cwd=launch.cwd,
                          timeout=launch.timeout)
    try:
        yield server, found
    finally:
        server.stop()


def test_refused_first_member_is_tried_once_and_the_next_answers(tmp_path: Path, moto: tuple[Server, dict],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 hsm_token: TestToken) -> None:
    from broker.app import build_service
    from broker.services import Services
    from broker.settings import load_settings

    server, aws = moto
    data = tmp_path / "data"
    data.mkdir()
    # Over the session's token: SoftHSM reads one token configuration per process, so a token of this test's own
    # (kms-broker init) would take the library away from every other test of this process.
    hsm = "\n".join(f'{k} = "{v}"' for k, v in hsm_token.config().items())
    (data / "broker.toml").write_text(f'data_dir = "{data}"\nstore_url = "sqlite:///{data}/broker.db"\n'
                                      f'default_provider = "hsm"\nroot_of_trust = "hsm"\n\n'
                                      f'[providers.hsm]\nkind = "pkcs11"\n{hsm}\n')
    monkeypatch.setenv("KMSB_PROVIDERS_JSON", json.dumps({"aws": {**aws, "kind": "aws"}}))
    keys = build_service(load_settings(data))
    keys.store.migrate()
    multikeys = Services.over(keys).multikeys
    ctx = RequestContext(Principal("tester", "local", ("root",)))
    try:
        on_aws = keys.create_key(ctx, provider="aws")["KeyId"]
        on_hsm = keys.create_key(ctx, provider="hsm")["KeyId"]
        mk = multikeys.create(ctx, name="refused", members=[on_aws, on_hsm])["MultiKey"]["MultiKeyId"]
        blob = multikeys.encrypt(ctx, mk, b"still readable", context={"app": "x"})["CiphertextBlob"]
        assert multikeys.decrypt(ctx, blob, context={"app": "x"})["AnsweredBy"]["Provider"] == "aws"

        server.stop()  # nothing listens on the aws endpoint now: connections are refused
        first = multikeys.decrypt(ctx, blob, context={"app": "x"})
        assert first["Plaintext"] == b"still readable"
        assert first["AnsweredBy"] == {"KeyId": on_hsm, "Provider": "hsm"}
        assert first["Attempts"][0] == {"KeyId": on_aws, "Provider": "aws", "Outcome": "DependencyTimeoutException",
                                        "Unreachable": True}
        assert not multikeys.breaker.healthy("aws")  # opened by that one refusal

        again = multikeys.decrypt(ctx, blob, context={"app": "x"})
        assert [a["KeyId"] for a in again["Attempts"]] == [on_hsm]  # the open circuit puts aws last: not tried
        records = [json.loads(line) for line in keys.audit.path.read_text().splitlines()]
        decrypts = [r for r in records if r.get("action") == "kms:Decrypt" and r.get("answered_provider") == "hsm"]
        assert decrypts and decrypts[0]["attempts"][0]["Unreachable"] is True
    finally:
        keys.store.dispose()
