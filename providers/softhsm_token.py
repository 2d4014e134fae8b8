"""Create a SoftHSM2 token for the embedded default: its config, the token, the PINs, the root keys.

softhsm2-util only takes PINs on its command line (it refuses a pipe), so the token is initialised with
throwaway PINs that are replaced at once through PKCS#11 C_SetPIN: the real PINs never appear in argv or a log.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pkcs11
from pkcs11 import Attribute, KeyType
from pkcs11.util.ec import encode_named_curve_parameters

from providers.openssl_errors import openssl_errors_cleared
from providers.pkcs11 import (
    AUDIT_HMAC_LABEL,
    AUDIT_HMAC_TEMPLATE,
    AUDIT_SIGNING_LABEL,
    DEFAULT_LIB,
    ROOT_KEK_LABEL,
    ROOT_KEK_TEMPLATE,
    SIGNING_PRIVATE_TEMPLATE,
)


@dataclass(frozen=True)
class TokenFiles:
    conf: Path
    pin_file: Path
    so_pin_file: Path


def token_files(hsm_dir: Path) -> TokenFiles:
    return TokenFiles(hsm_dir / "softhsm2.conf", hsm_dir / "user.pin", hsm_dir / "so.pin")


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)


def create_token(hsm_dir: Path, label: str = "kms-broker", lib_path: str = DEFAULT_LIB, *,
                 root_keys: bool = True) -> TokenFiles:
    """Initialise a fresh token under hsm_dir: root KEK, audit HMAC key, audit signing key pair.

    `root_keys=False` leaves the token empty: a node that joins (or a restore) receives the root keys from another
    HSM or a backup instead (providers.pkcs11.Pkcs11RootOfTrust).
    """
    files = token_files(hsm_dir)
    tokens = hsm_dir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    os.chmod(hsm_dir, 0o700)
    files.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(files.conf)

    temp_so, temp_user = secrets.token_hex(8), secrets.token_hex(8)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", temp_so, "--pin", temp_user],
        check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(files.conf)},
    )
    so_pin, user_pin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with openssl_errors_cleared():  # SoftHSM leaves OpenSSL errors that would fail this thread's TLS later
        token = pkcs11.lib(lib_path).get_token(token_label=label)
        with token.open(rw=True, so_pin=temp_so) as session:
            session.set_pin(temp_so, so_pin)
        with token.open(rw=True, user_pin=temp_user) as session:
            session.set_pin(temp_user, user_pin)
            if root_keys:
                _create_root_keys(session)
    _write_secret(files.pin_file, user_pin)
    _write_secret(files.so_pin_file, so_pin)
    return files


def _create_root_keys(session) -> None:
    """Root KEK and audit HMAC key: sensitive, wrappable only under a key the SO marked trusted (node transfer and
    backup); the audit signing key travels wrapped under the root KEK (see providers.pkcs11)."""
    session.generate_key(KeyType.AES, 256, label=ROOT_KEK_LABEL, store=True, template=ROOT_KEK_TEMPLATE)
    session.generate_key(KeyType.GENERIC_SECRET, 256, label=AUDIT_HMAC_LABEL, store=True,
                         template=AUDIT_HMAC_TEMPLATE)
    # Audit checkpoints are signed by an EC P-256 key pair (the public half is exported for verifiers).
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
    params.generate_keypair(store=True, label=AUDIT_SIGNING_LABEL, public_template={
        Attribute.TOKEN: True, Attribute.VERIFY: True,
    }, private_template=SIGNING_PRIVATE_TEMPLATE)
