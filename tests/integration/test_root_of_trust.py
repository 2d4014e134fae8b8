"""The root of trust as its own protocol: seal/unseal, audit keys, and node transfer HSM to HSM.

The root KEK and the audit HMAC key leave an HSM only wrapped under a recipient key its security officer marked
trusted; a second HSM (its own token, its own process) unwraps them inside itself and then serves what the first
sealed. Attack tests first: an untrusted recipient, a squatter under the trusted label, a package for another HSM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute
from pkcs11.util.rsa import decode_rsa_public_key

from providers.base import ProviderAccessDenied, ProviderInvalidCiphertext, ProviderInvalidInput, RootPackage
from providers.pkcs11 import TRUSTED_PREFIX, Pkcs11Provider, key_fingerprint

ROOT = Path(__file__).resolve().parents[2]


def other_hsm(cmd: str, directory: Path, **request) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "tests.support.hsm_node"], input=json.dumps(
        {"cmd": cmd, "dir": str(directory), **request}), capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def node_b(tmp_path_factory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("node-b") / "hsm"
    return directory, bytes.fromhex(other_hsm("create", directory)["transport"])


def test_seal_and_unseal_through_the_root_of_trust(hsm_provider: Pkcs11Provider) -> None:
    root = hsm_provider.root_of_trust()
    sealed = root.seal(b"broker secret", b"purpose")
    assert root.unseal(sealed, b"purpose") == b"broker secret"
    with pytest.raises(ProviderInvalidCiphertext):
        root.unseal(sealed, b"another purpose")
    with pytest.raises(ProviderInvalidCiphertext):
        root.unseal(b"short", b"purpose")
    assert root.has_root() and root.fingerprint() == root.fingerprint()


def test_export_to_an_untrusted_recipient_is_refused(hsm_provider: Pkcs11Provider, node_b) -> None:
    _, transport = node_b
    with pytest.raises(ProviderAccessDenied, match="not trusted"):
        hsm_provider.root_of_trust().export_root(transport)


def test_a_squatter_under_the_trusted_label_is_refused_by_the_hsm(hsm_provider: Pkcs11Provider, node_b) -> None:
    """A user-PIN holder plants the recipient key under the trusted label: it is not CKA_TRUSTED, so nothing."""
    _, transport = node_b
    from cryptography.hazmat.primitives import serialization

    pkcs1 = serialization.load_der_public_key(transport).public_bytes(serialization.Encoding.DER,
                                                                      serialization.PublicFormat.PKCS1)
    with hsm_provider._session.lock:
        session = hsm_provider._session.get()
        with pytest.raises(pkcs11.exceptions.AttributeReadOnly):  # the user cannot make a key trusted
            session.create_object({**decode_rsa_public_key(pkcs1), Attribute.TOKEN: False, Attribute.TRUSTED: True})
        squatter = session.create_object({**decode_rsa_public_key(pkcs1), Attribute.TOKEN: False,
                                          Attribute.WRAP: True, Attribute.ENCRYPT: True,
                                          Attribute.LABEL: TRUSTED_PREFIX + key_fingerprint(transport)})
    try:
        with pytest.raises(ProviderAccessDenied):
            hsm_provider.root_of_trust().export_root(transport)
    finally:
        with hsm_provider._session.lock:
            squatter.destroy()


def test_root_moves_hsm_to_hsm_and_serves_the_same(hsm_provider: Pkcs11Provider, tmp_path: Path) -> None:
    root = hsm_provider.root_of_trust()
    directory = tmp_path / "hsm"
    transport = bytes.fromhex(other_hsm("create", directory)["transport"])
    fp = root.trust(transport)
    try:
        package = root.export_root(transport)
    finally:
        root.forget(fp)
    assert "wrapped_root=" not in repr(package) and package.check.hex() not in repr(package)
    assert package.recipient == fp
    sealed = root.seal(b"made on node A", b"t")
    answer = other_hsm("import", directory, package=package.to_dict(), unseal=sealed.hex())
    assert bytes.fromhex(answer["unsealed"]) == b"made on node A"
    assert answer["fingerprint"] == root.fingerprint()
    assert bytes.fromhex(answer["audit_public_key"]) == root.audit_public_key()
    # the transport key is spent: the same package cannot be imported twice, nor a new one made for it
    with pytest.raises(RuntimeError, match="already holds root keys|no transport key"):
        other_hsm("import", directory, package=package.to_dict())


def test_a_package_for_another_hsm_is_refused(hsm_provider: Pkcs11Provider, node_b, tmp_path: Path) -> None:
    root = hsm_provider.root_of_trust()
    _, transport_b = node_b
    fp = root.trust(transport_b)
    try:
        package = root.export_root(transport_b)
    finally:
        root.forget(fp)
    directory = tmp_path / "hsm"
    other_hsm("create", directory)
    with pytest.raises(RuntimeError, match="another HSM"):
        other_hsm("import", directory, package=package.to_dict())
    tampered = RootPackage.from_dict({**package.to_dict(), "recipient": "sha256:" + "0" * 32})
    assert tampered.recipient != package.recipient
    with pytest.raises(ProviderInvalidInput):
        RootPackage.from_dict({"wrapped_root": "zz"})
