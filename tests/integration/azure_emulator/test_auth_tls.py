"""HTTPS only, the bearer challenge, and the token check."""

from __future__ import annotations

import ssl

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.keyvault.keys import KeyClient

from .emulator import Emulator, StaticToken


def test_bare_request_gets_the_bearer_challenge(emulator: Emulator) -> None:
    resp = requests.post(f"{emulator.vault_url}/keys/x/create", params={"api-version": "2025-07-01"},
                         headers={"Content-Type": "application/json"}, verify=emulator.ca_bundle, timeout=10)
    assert resp.status_code == 401
    assert resp.content == b""
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
        'resource="https://vault.azure.net"')


def test_wrong_token_is_refused(emulator: Emulator) -> None:
    with pytest.raises(ClientAuthenticationError) as info:
        emulator.key_client(token="not-the-token").create_rsa_key("refused")
    assert info.value.status_code == 401
    assert info.value.error.code == "Unauthorized"
    # and nothing was created
    assert all(p.name != "refused" for p in emulator.key_client().list_properties_of_keys())


def test_configured_token_is_accepted(emulator: Emulator, name: str) -> None:
    assert emulator.token == "emulator-test-token"
    assert emulator.key_client().create_ec_key(name).name == name


def test_any_token_accepted_without_token_option(open_emulator: Emulator, name: str) -> None:
    assert open_emulator.token is None
    key = open_emulator.key_client(token="whatever-123").create_rsa_key(name)
    assert open_emulator.key_client(token="another-token").get_key(name).id == key.id


def test_missing_api_version_is_bad_parameter(emulator: Emulator) -> None:
    resp = requests.get(f"{emulator.vault_url}/keys", headers={"Authorization": f"Bearer {emulator.token}"},
                        verify=emulator.ca_bundle, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "BadParameter"


def test_certificate_is_for_localhost_and_loopback(emulator: Emulator, name: str) -> None:
    port = emulator.vault_url.rsplit(":", 1)[1]
    client = KeyClient(f"https://localhost:{port}", StaticToken(emulator.token or ""), **emulator.client_kwargs())
    assert client.create_ec_key(name).name == name
    ctx = ssl.create_default_context(cafile=emulator.ca_bundle)
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_untrusted_certificate_fails(emulator: Emulator) -> None:
    client = KeyClient(emulator.vault_url, StaticToken("t"), verify_challenge_resource=False, retry_total=0)
    with pytest.raises(ServiceRequestError):
        client.get_key("anything")


def test_plain_http_is_not_served(emulator: Emulator) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(emulator.vault_url.replace("https://", "http://") + "/keys?api-version=7.4", timeout=5)
