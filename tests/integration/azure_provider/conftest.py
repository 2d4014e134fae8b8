"""The azure provider against a real emulator process (standard vault and Managed HSM flavours)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers.azure import AzureProvider
from tests.integration.azure_emulator.emulator import Emulator, start_emulator

TOKEN = "provider-test-token"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = start_emulator(tmp_path_factory.mktemp("azure-provider"), name="azure-kv-provider", token=TOKEN)
    try:
        yield emu
    finally:
        emu.server.stop()


def _config(emulator: Emulator, **extra: object) -> dict[str, object]:
    return {"kind": "azure", "vault_url": emulator.vault_url, "token": TOKEN, "ca_bundle": emulator.ca_bundle,
            "retries": 0, **extra}


@pytest.fixture(scope="session")
def vault(emulator: Emulator) -> Iterator[AzureProvider]:
    provider = AzureProvider.from_config("azure-std", _config(emulator))
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def hsm(emulator: Emulator) -> Iterator[AzureProvider]:
    provider = AzureProvider.from_config("azure-hsm", _config(emulator, managed_hsm=True))
    yield provider
    provider.close()
