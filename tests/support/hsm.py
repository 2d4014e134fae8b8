"""A fresh SoftHSM2 token for tests, and a Pkcs11Provider configured for it.

SoftHSM reads SOFTHSM2_CONF once per process (at first library load), so a test session uses ONE token
directory: build it through the session fixture `hsm_provider` (tests/conftest.py), not per test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from providers.pkcs11 import Pkcs11Provider
from providers.softhsm_token import TokenFiles, create_token

TOKEN_LABEL = "kms-broker"


@dataclass(frozen=True)
class TestToken:
    __test__ = False  # not a pytest test class

    directory: Path
    files: TokenFiles
    label: str

    def config(self, **overrides: str) -> dict[str, str]:
        """The provider settings table for this token; overrides e.g. pin_file or token_label."""
        return {"softhsm_conf": str(self.files.conf), "pin_file": str(self.files.pin_file),
                "token_label": self.label, **overrides}

    def provider(self, name: str = "hsm", **overrides: str) -> Pkcs11Provider:
        return Pkcs11Provider.from_config(name, self.config(**overrides))


def make_token(directory: Path, label: str = TOKEN_LABEL) -> TestToken:
    """Initialise a token (root KEK + audit HMAC key) under `directory`."""
    files = create_token(directory, label=label)
    return TestToken(directory, files, label)


def make_provider(directory: Path, label: str = TOKEN_LABEL) -> tuple[TestToken, Pkcs11Provider]:
    token = make_token(directory, label)
    provider = token.provider()
    provider.check_health()
    return token, provider
