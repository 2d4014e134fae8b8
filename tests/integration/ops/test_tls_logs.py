"""The main API over TLS with mutual TLS (a client certificate from the given CA is required in the handshake,
tokens still authenticate), and structured JSON logs whose request ids join log lines to audit records."""

from __future__ import annotations

import datetime
import json
import sys

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.client import BrokerClient, BrokerClientError
from tests.integration.keyring_bridge.support import make_tls
from tests.support.broker import init_data_dir
from tests.support.procs import free_port, start_server

CLI = [sys.executable, "-m", "broker.cli"]


def _client_cert(folder, ca_cert_path, name: str, ca_key=None):
    """A client certificate signed by `ca_key` (or by a CA of its own when None): (cert path, key path)."""
    now = datetime.datetime.now(datetime.UTC)
    ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    signer = ca_key or ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(signer, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def ca(tmp_path, monkeypatch):
    """make_tls's CA, with its key kept for signing client certificates."""
    captured = {}
    real = ec.generate_private_key

    def remember(curve):
        key = real(curve)
        captured.setdefault("ca_key", key)  # make_tls makes the CA's key first
        return key

    monkeypatch.setattr(ec, "generate_private_key", remember)
    cert, key, ca_pem = make_tls(tmp_path / "tls")
    monkeypatch.setattr(ec, "generate_private_key", real)
    return cert, key, ca_pem, captured["ca_key"]


def test_mutual_tls_on_the_api_and_json_logs_with_request_ids(tmp_path, ca):
    cert, key, ca_pem, ca_key = ca
    mine = _client_cert(tmp_path / "tls", ca_pem, "app-1", ca_key)
    stranger = _client_cert(tmp_path / "tls", ca_pem, "stranger")  # signed by a CA of its own
    data = tmp_path / "data"
    root = init_data_dir(data)
    port, bridge_port = free_port(), free_port()
    addr = f"https://127.0.0.1:{port}"
    server = start_server(
        "tls-broker", [*CLI, "serve", "--data-dir", str(data), "--bind", f"127.0.0.1:{port}", "--workers", "1",
                       "--keyring-bind", f"127.0.0.1:{bridge_port}", "--cert", str(cert), "--key", str(key),
                       "--client-ca", str(ca_pem), "--log-format", "json"],
        log_dir=tmp_path / "logs",
        ready=lambda: requests.get(f"{addr}/v1/health", verify=str(ca_pem), cert=mine, timeout=2).ok)
    try:
        client = BrokerClient(addr, root, verify=str(ca_pem), cert=mine)
        key_id = client.create_key()["KeyId"]
        assert client.decrypt(client.encrypt(key_id, b"over mutual TLS")) == b"over mutual TLS"
        with pytest.raises(requests.exceptions.SSLError):  # no client certificate: refused in the handshake
            requests.get(f"{addr}/v1/health", verify=str(ca_pem), timeout=5)
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(f"{addr}/v1/health", verify=str(ca_pem), cert=stranger, timeout=5)
        with pytest.raises(BrokerClientError) as plain:  # plain HTTP to a TLS listener gets no answer
            BrokerClient(f"http://127.0.0.1:{port}", root, retries=0).describe_key(key_id)
        assert plain.value.status in (0, 400)

        # A refused key read on the bridge is logged (as a JSON line) with the request id its audit record has.
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{bridge_port}/v1/kv/x/data/1", headers={"X-Vault-Token": "kmsb.bad"},
                         timeout=5)
    finally:
        server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object, gunicorn's own included
    assert any(r["logger"] == "gunicorn.error" and "Listening at" in r["message"] for r in records)
    dropped = [r for r in records if "dropped a refused read" in r["message"]]
    assert dropped and dropped[0]["request_id"]
    audit = [json.loads(line) for line in (data / "audit" / "audit.jsonl").read_text().splitlines()]
    assert any(a.get("request_id") == dropped[0]["request_id"] and a["outcome"] == "denied" for a in audit)
    assert root not in server.log_path.read_text()
