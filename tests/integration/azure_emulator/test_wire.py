"""Wire-level errors the SDK never produces (malformed bodies, unknown routes), and concurrent use."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import KeyWrapAlgorithm

from .emulator import Emulator

API = {"api-version": "2025-07-01"}


def _call(emulator: Emulator, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {emulator.token}", "Content-Type": "application/json"}
    return requests.request(method, emulator.vault_url + path, params=API, headers=headers,
                            verify=emulator.ca_bundle, timeout=10, **kwargs)


def _error(resp: requests.Response) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]"])
def test_malformed_body_is_bad_parameter(emulator: Emulator, name: str, body: bytes) -> None:
    assert _error(_call(emulator, "POST", f"/keys/{name}/create", data=body)) == (400, "BadParameter")


def test_unknown_algorithm_and_bad_base64(emulator: Emulator, client: KeyClient, name: str) -> None:
    key = client.create_rsa_key(name)
    path = f"/keys/{name}/{key.properties.version}"
    assert _error(_call(emulator, "POST", path + "/encrypt", json={"alg": "ROT13", "value": "AAAA"})) == (
        400, "BadParameter")
    assert _error(_call(emulator, "POST", path + "/wrapkey", json={"alg": "RSA-OAEP", "value": "***"})) == (
        400, "BadParameter")
    assert _error(_call(emulator, "POST", path + "/sign", json={"value": "AAAA"})) == (400, "BadParameter")


def test_empty_version_means_latest(emulator: Emulator, client: KeyClient, name: str) -> None:
    key = client.create_rsa_key(name)
    resp = _call(emulator, "POST", f"/keys/{name}//wrapkey", json={"alg": "RSA-OAEP-256", "value": "AAECAwQFBgcI"})
    assert resp.status_code == 200 and resp.json()["kid"] == key.id


def test_unknown_route_and_method(emulator: Emulator) -> None:
    assert _error(_call(emulator, "GET", "/secrets/x")) == (404, "NotFound")
    assert _error(_call(emulator, "POST", "/keys/x/y/frobnicate", json={})) == (404, "NotFound")
    assert _error(_call(emulator, "DELETE", "/keys")) == (405, "MethodNotAllowed")


def test_concurrent_operations(emulator: Emulator, client: KeyClient, name: str) -> None:
    key = client.create_oct_key(name, hardware_protected=True)

    def work(i: int) -> bool:
        cc = emulator.crypto_client(key.id)
        data = bytes([i]) * 32
        wrapped = cc.wrap_key(KeyWrapAlgorithm.aes_256, data).encrypted_key
        client.create_ec_key(f"{name}-{i}")
        return cc.unwrap_key(KeyWrapAlgorithm.aes_256, wrapped).key == data

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(32)))
    assert len([p for p in client.list_properties_of_keys() if p.name.startswith(f"{name}-")]) == 32
