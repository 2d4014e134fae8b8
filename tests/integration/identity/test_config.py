"""The [auth] settings table: durations, JWT role validation, token bounds, loading from broker.toml."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.auth.config import AuthSettings, JwtRole, parse_duration
from broker.auth.issue import token_bounds
from broker.settings import Settings


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800),
                                                 (45, 45), ("45", 45), (None, None), ("", None)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["1w", "-1h", "h", "1.5h", True])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_token_bounds_apply_defaults_and_the_ceiling():
    s = AuthSettings.model_validate({"token": {"default_ttl": "1h", "max_ttl": "24h"}})
    assert token_bounds(s, None) == (3600, 86400)
    assert token_bounds(s, "100d") == (86400, 86400)
    assert token_bounds(s, "2h", "30m") == (1800, 1800)


def test_jwt_role_rules():
    pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"
    assert JwtRole(public_keys=[pem]).allowed_algorithms == ["RS256", "ES256"]
    for bad in ({"public_keys": [pem], "allowed_algorithms": ["none"]},
                {"public_keys": [pem], "allowed_algorithms": ["HS256"]},
                {"public_keys": [pem], "jwks_file": "/x"},
                {"public_keys": [pem], "bound_claims_type": "regex"},
                {"public_keys": [pem], "leeway": 3600},
                {"public_keys": [pem], "surprise": 1}):
        with pytest.raises(ValidationError):
            JwtRole.model_validate(bad)


def test_settings_carry_the_auth_table():
    s = Settings.model_validate({
        "providers": {"hsm": {"kind": "pkcs11"}},
        "auth": {"jwt": {"roles": {"ci": {"jwks_url": "https://idp.example/jwks"}}},
                 "ldap": {"url": "ldap://127.0.0.1:389", "userdn_template": "uid={username},dc=x",
                          "bind_password": "hunter2-bind"}},
    })
    assert s.auth.jwt.roles["ci"].jwks_url == "https://idp.example/jwks"
    assert "hunter2-bind" not in repr(s) and "hunter2-bind" not in str(s)
    with pytest.raises(ValidationError):
        Settings.model_validate({"providers": {"hsm": {"kind": "pkcs11"}}, "auth": {"ldpa": {}}})


def test_jwt_role_names_in_settings_cannot_make_principal_names_ambiguous():
    with pytest.raises(ValidationError):
        AuthSettings.model_validate({"jwt": {"roles": {"a/b": {"jwks_url": "https://idp.example/jwks"}}}})
