"""Provider secrets never print: not in repr(settings), dumps, settings errors, `kms-broker serve` output, API errors
or the server's log. Providers still get the plain values where they build their SDK clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr

from broker.settings import Settings, SettingsError, is_secret_field, load_settings, with_providers
from providers.registry import build_provider
from tests.support.broker import init_data_dir, start_broker
from tests.support.procs import free_port

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
CLI = [sys.executable, "-m", "broker.cli"]
CLOUDS = {
    "aws": {"kind": "aws", "region": "us-east-1", "access_key_id": "AKIAEXAMPLE", "secret_access_key": SECRET,
            "session_token": SECRET + "-session"},
    "aliyun": {"kind": "aliyun", "access_key_id": "LTAIexample", "access_key_secret": SECRET + "-ali"},
    "azure": {"kind": "azure", "vault_url": "https://127.0.0.1:1", "token": SECRET + "-az"},
    "gcp": {"kind": "gcp", "project": "p", "token": SECRET + "-gcp"},
}


def settings_with(**extra) -> Settings:
    return Settings.model_validate({"providers": {"hsm": {"kind": "pkcs11"}, **CLOUDS}, **extra})


def test_provider_secrets_are_secret_types_that_never_print():
    s = settings_with()
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump()), repr(s.providers)):
        assert SECRET not in text
    assert isinstance(s.providers["aws"]["secret_access_key"], SecretStr)
    assert s.providers["aws"]["secret_access_key"].get_secret_value() == SECRET
    assert s.providers["aws"]["access_key_id"] == "AKIAEXAMPLE"  # not a secret: stays readable
    assert s.providers["hsm"]["kind"] == "pkcs11"
    again = with_providers(s, {"more": {"kind": "aws", "secret_access_key": SECRET + "-more"}})
    assert again.providers["aws"]["secret_access_key"].get_secret_value() == SECRET
    assert SECRET not in repr(again)
    assert s.redact(f"boom {SECRET}-session {SECRET}") == "boom ********** **********"


@pytest.mark.parametrize(("field", "secret"), [("secret_access_key", True), ("access_key_secret", True),
                                                ("token", True), ("session_token", True), ("client_secret", True),
                                                ("token_label", False), ("pin_file", False), ("pin_env", False),
                                                ("access_key_id", False), ("endpoint_url", False)])
def test_which_provider_settings_are_secret(field, secret):
    assert is_secret_field(field) is secret


def test_the_provider_gets_the_plain_value_where_it_builds_its_client():
    s = settings_with()
    provider = build_provider("aws", s.providers["aws"])
    try:
        creds = provider._kms._request_signer._credentials  # noqa: SLF001 - what boto3 signs with
        assert creds.secret_key == SECRET
    finally:
        provider.close()


BAD = {
    "default provider missing": {"default_provider": "nope", "providers": {"hsm": {"kind": "pkcs11"}, **CLOUDS}},
    "table not a table": {"providers": {"hsm": {"kind": "pkcs11"}, "aws": SECRET}},
    "no kind": {"providers": {"hsm": {"kind": "pkcs11"}, "aws": {"secret_access_key": SECRET}}},
    "secret not a string": {"providers": {"hsm": {"kind": "pkcs11"}, "aws": {"kind": "aws",
                                                                             "secret_access_key": 12345678901}}},
    "unknown setting": {"providers": {"hsm": {"kind": "pkcs11"}, **CLOUDS}, "bogus": SECRET},
    "root of trust not pkcs11": {"root_of_trust": "aws", "providers": {"hsm": {"kind": "pkcs11"}, **CLOUDS}},
}


@pytest.mark.parametrize("raw", BAD.values(), ids=BAD.keys())
def test_settings_errors_name_the_problem_never_the_value(tmp_path, raw, monkeypatch):
    path = tmp_path / "broker.toml"
    path.write_text("")
    monkeypatch.setenv("KMSB_PROVIDERS_JSON", json.dumps(raw.get("providers", {})))
    lines = [f"{k} = {json.dumps(v)}" for k, v in raw.items() if k != "providers"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path, path)
    message = str(err.value)
    assert SECRET not in message and "12345678901" not in message
    assert "input_value" not in message and len(message) < 600


def _serve(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    e = {**os.environ, **env}
    return subprocess.run([*CLI, "serve", "--data-dir", str(data), "--bind", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, env=e, timeout=120)


@pytest.mark.parametrize("case", ["default provider missing", "table not a table", "secret not a string",
                                  "unbuildable table"])
def test_serve_prints_a_clear_error_without_the_secret(tmp_path, case):
    data = tmp_path / "data"
    init_data_dir(data)
    providers = {"aws": {**CLOUDS["aws"], "max_attempts": "lots"}} if case == "unbuildable table" else \
        {k: v for k, v in BAD[case]["providers"].items() if k != "hsm"}
    if case == "default provider missing":
        toml = (data / "broker.toml").read_text().replace('default_provider = "hsm"', 'default_provider = "nope"')
        (data / "broker.toml").write_text(toml)
    out = _serve(data, {"KMSB_PROVIDERS_JSON": json.dumps(providers)})
    assert out.returncode != 0
    assert out.stderr.startswith("error: "), out.stderr
    assert SECRET not in out.stdout + out.stderr and "12345678901" not in out.stderr
    assert "Traceback" not in out.stderr and "input_value" not in out.stderr
    assert "aws" in out.stderr or "default_provider" in out.stderr or "provider" in out.stderr


def test_a_serving_broker_never_shows_a_provider_secret(tmp_path_factory):
    base = tmp_path_factory.mktemp("secret-broker")
    cloud = {**CLOUDS["aws"], "endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1,
             "connect_timeout": 1, "read_timeout": 1}
    broker = start_broker(base / "data", base / "logs", workers=1, name="secret-broker",
                          env={"KMSB_PROVIDERS_JSON": json.dumps({"cloud": cloud})})
    try:
        ready = requests.get(broker.url("/ready"), timeout=30)
        assert ready.status_code == 503 and "cloud" in ready.json()["providers"]
        created = broker.session().post(broker.url("/keys"), json={"Provider": "cloud"}, timeout=60)
        assert created.status_code >= 400
        seen = ready.text + created.text
        assert SECRET not in seen
        assert SECRET not in broker.server.log_path.read_text(errors="replace")
        assert SECRET not in (base / "data" / "audit" / "audit.jsonl").read_text()
    finally:
        broker.server.stop()
