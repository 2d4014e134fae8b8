"""Provider down: the emulator behind an instance is stopped (by PID) mid-test; the broker answers 503
DependencyTimeoutException for that instance and keeps serving everything else.

It stops the session's emulators, so it runs after test_conformance.py (file order; under pytest-xdist's loadfile the
two files may run in different workers, each with its own emulators). Two instances may share one emulator
(gcp-grpc/gcp-rest, azure/azure-hsm): stopping is idempotent, and every instance's shared key is made before the
first emulator stops. `hsm` is not here: the pkcs11 provider is
the SoftHSM library loaded inside the broker, with no process or endpoint that can go away independently.
"""

from __future__ import annotations

import pytest
import requests

from .conftest import REMOTE_INSTANCES, World
from .helpers import decrypt, encrypt, error, new_key, ok, shared_key, unb64

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _every_shared_key_first(world: World) -> None:
    """Stopping one instance's emulator stops its sibling's too: make every shared key while all are up."""
    for name in REMOTE_INSTANCES:
        if world.emulator_running(name):
            shared_key(world, name)


@pytest.mark.parametrize("name", REMOTE_INSTANCES)
def test_emulator_down_is_a_503_and_the_broker_stays_up(world: World, name: str) -> None:
    key_id = shared_key(world, name)
    blob = None
    if world.emulator_running(name):
        blob = ok(encrypt(world, key_id, b"before the outage", {"k": "v"}))["CiphertextBlob"]
        world.stop_emulator(name)
    assert not world.emulator_running(name)

    error(encrypt(world, key_id, b"during the outage", {"k": "v"}), 503, "DependencyTimeoutException")
    if blob is not None:
        error(decrypt(world, blob, {"k": "v"}), 503, "DependencyTimeoutException")
    error(world.api.post(world.url("/keys"), json={"Provider": name}), 503, "DependencyTimeoutException")

    # the broker itself is fine: liveness, the HSM, and readiness naming exactly what is down
    assert requests.get(world.url("/health"), timeout=10).status_code == 200
    hsm_key = new_key(world, "hsm")
    hsm_blob = ok(encrypt(world, hsm_key, b"still served"))["CiphertextBlob"]
    assert unb64(ok(decrypt(world, hsm_blob))["Plaintext"]) == b"still served"
    ready = requests.get(world.url("/ready"), timeout=120)
    assert ready.status_code == 503, ready.text
    providers = ready.json()["providers"]
    assert providers["hsm"] == "ok" and providers[name] != "ok", providers
    running = {n for n in REMOTE_INSTANCES if world.emulator_running(n)}
    assert {n for n, s in providers.items() if s == "ok"} == {"hsm", *running}, providers
