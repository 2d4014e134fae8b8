"""One emulator per session, with a configured token, driven by the official azure-keyvault-keys SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyClient

from .emulator import Emulator, start_emulator

TOKEN = "emulator-test-token"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = start_emulator(tmp_path_factory.mktemp("azure-kv"), token=TOKEN)
    try:
        yield emu
    finally:
        emu.server.stop()


@pytest.fixture(scope="session")
def open_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator started without --token: any bearer token is accepted."""
    emu = start_emulator(tmp_path_factory.mktemp("azure-kv-open"), name="azure-kv-open")
    try:
        yield emu
    finally:
        emu.server.stop()


@pytest.fixture(scope="session")
def client(emulator: Emulator) -> KeyClient:
    return emulator.key_client()


@pytest.fixture
def name() -> str:
    """A fresh key name per test, so tests do not depend on each other's keys."""
    return "k-" + uuid.uuid4().hex[:12]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path
