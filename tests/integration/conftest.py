import pytest

from tests.support.broker import RunningBroker, start_broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> RunningBroker:
    base = tmp_path_factory.mktemp("broker")
    running = start_broker(base / "data", base / "logs")
    yield running
    running.server.stop()
