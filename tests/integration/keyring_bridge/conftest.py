import pytest

from tests.integration.keyring_bridge.support import Bridge, have_mariadb, start_bridge

if not have_mariadb():
    pytest.skip("mariadb-server + mariadb-plugin-hashicorp-key-management are not installed "
                "(scripts/bootstrap.sh --test)", allow_module_level=True)


@pytest.fixture(scope="session")
def bridge(tmp_path_factory) -> Bridge:
    running = start_bridge(tmp_path_factory.mktemp("keyring-broker"))
    yield running
    running.stop()
