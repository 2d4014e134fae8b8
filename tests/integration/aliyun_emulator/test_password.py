"""GetRandomPassword: length, excluded character classes and characters, every included type present."""

from __future__ import annotations

import string

import pytest

from .helpers import aliyun_error, call


def test_default_password_has_32_characters_of_every_type(kms):
    password = call(kms, "get_random_password")["RandomPassword"]
    assert len(password) == 32
    for pool in (string.ascii_lowercase, string.ascii_uppercase, string.digits, string.punctuation):
        assert any(c in pool for c in password)


def test_exclusions_are_honoured(kms):
    for _ in range(5):
        password = call(kms, "get_random_password", password_length="64", exclude_punctuation="true",
                        exclude_uppercase="true", exclude_characters="abc0")["RandomPassword"]
        assert len(password) == 64
        assert set(password) <= set(string.ascii_lowercase + string.digits) - set("abc0")
        assert any(c.isdigit() for c in password) and any(c.islower() for c in password)


@pytest.mark.parametrize("fields", [{"password_length": "7"}, {"password_length": "129"},
                                    {"exclude_lowercase": "true", "exclude_uppercase": "true",
                                     "exclude_numbers": "true", "exclude_punctuation": "true"}])
def test_invalid_requests(kms, fields):
    with aliyun_error("InvalidParameter", 400):
        call(kms, "get_random_password", **fields)
