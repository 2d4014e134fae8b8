import pytest

from tests.integration.keyring_bridge.support import Bridge, start_bridge


@pytest.fixture(scope="session")
def bridge(tmp_path_factory) -> Bridge:
    running = start_bridge(tmp_path_factory.mktemp("keyring-broker"))
    yield running
    running.stop()
