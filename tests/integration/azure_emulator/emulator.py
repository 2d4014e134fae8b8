"""Start the Azure Key Vault emulator as a real process and talk to it with the official SDK."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient

from tests.support.procs import Server, free_port, start_server

REPO = Path(__file__).resolve().parents[3]


class StaticToken:
    """A credential that always hands out the same bearer token (what the emulator expects)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self.token, int(time.time()) + 3600)


@dataclass
class Emulator:
    server: Server
    vault_url: str
    ca_bundle: str
    token: str | None

    def key_client(self, token: str | None = None) -> KeyClient:
        return KeyClient(self.vault_url, StaticToken(token or self.token or "any-token"), **self.client_kwargs())

    def crypto_client(self, key_id: str, token: str | None = None) -> CryptographyClient:
        return CryptographyClient(key_id, StaticToken(token or self.token or "any-token"), **self.client_kwargs())

    def client_kwargs(self) -> dict[str, Any]:
        return {"verify_challenge_resource": False, "connection_verify": self.ca_bundle, "retry_total": 0}


def _ready_line(server_log: Path) -> dict[str, Any] | None:
    try:
        text = server_log.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("READY "):
            return json.loads(line[len("READY "):])
    return None


def start_emulator(work: Path, *, name: str = "azure-kv", token: str | None = None,
                   state_file: Path | None = None, port: int | None = None,
                   extra_args: tuple[str, ...] = ()) -> Emulator:
    """Run `python -m azure_keyvault_emulator` on 127.0.0.1 and wait for its READY line."""
    port = port or free_port()
    data_dir = work / f"{name}-data"
    cmd = [sys.executable, "-m", "azure_keyvault_emulator", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir)]
    if token:
        cmd += ["--token", token]
    if state_file:
        cmd += ["--state-file", str(state_file)]
    cmd += list(extra_args)
    log_path = work / "logs" / f"{name}.log"
    if log_path.exists():
        log_path.unlink()
    server = start_server(name, cmd, log_dir=work / "logs", ready=lambda: _ready_line(log_path) is not None,
                          env={"PYTHONPATH": str(REPO / "localstack")}, cwd=REPO)
    info = _ready_line(log_path)
    assert info is not None
    return Emulator(server, info["vault_url"], info["ca_bundle"], info["token"])
