"""The root KEK's session copy (`Pkcs11Provider._root_copy`): seal/unseal and the unwrapping of stored key versions
run under a copy of the token root made once per session (SoftHSM re-reads a token object's file on every use).

What must hold: the copy is a session object that can neither leave the HSM nor wrap; what the token root sealed
opens through the copy and the other way round (no stored format changes); the copy goes with its session (reset,
re-initialisation, a forked child's own session) and the next call makes a fresh one; a root restored in this
process drops it at once, and a root destroyed behind this process's back is noticed within the recheck bound.
Scenarios that destroy root keys or fork run in a process of their own, on a token of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11._pkcs11 import WrapMixin

import providers.pkcs11 as p11
from broker.model import KeySpec, KeyUsage
from providers.base import ProviderInvalidCiphertext, ProviderUnavailable
from providers.pkcs11 import ROOT_KEK_LABEL, Pkcs11Provider
from tests.support.hsm import TestToken

REPO = Path(__file__).resolve().parents[2]
COPY_LABEL = "kmsb-root-kek/session-copy"


def _copies(provider: Pkcs11Provider) -> int:
    """Root copies alive in this process (PKCS#11 session objects are visible to every session of the process)."""
    return provider._call(lambda s: len(list(s.get_objects({Attribute.LABEL: COPY_LABEL}))))


def _token_seal(provider: Pkcs11Provider, data: bytes, aad: bytes) -> bytes:
    """What `seal` wrote before the copy existed: iv + AES-GCM under the token object itself."""
    def run(session: Any) -> bytes:
        iv = os.urandom(12)
        return iv + provider._root(session).encrypt(data, mechanism=Mechanism.AES_GCM,
                                                    mechanism_param=pkcs11.GCMParams(iv, aad, 128))
    return provider._call(run)


def _token_unseal(provider: Pkcs11Provider, blob: bytes, aad: bytes) -> bytes:
    return provider._call(lambda s: provider._root(s).decrypt(
        blob[12:], mechanism=Mechanism.AES_GCM, mechanism_param=pkcs11.GCMParams(blob[:12], aad, 128)))


def test_the_copy_is_a_session_object_that_can_neither_leave_nor_wrap(hsm_provider: Pkcs11Provider) -> None:
    hsm_provider.root_of_trust().seal(b"makes the copy")

    def check(session: Any) -> None:
        copy, token = hsm_provider._root_copy(session), hsm_provider._root(session)
        assert copy is not token and copy[Attribute.LABEL] == COPY_LABEL
        assert copy[Attribute.TOKEN] is False and copy[Attribute.SENSITIVE] is True
        assert copy[Attribute.EXTRACTABLE] is False and copy[Attribute.WRAP] is False
        assert copy[Attribute.DERIVE] is False and copy[Attribute.MODIFIABLE] is False
        assert copy[Attribute.ENCRYPT] and copy[Attribute.DECRYPT] and copy[Attribute.UNWRAP]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            _ = copy[Attribute.VALUE]
        mine = session.generate_key(KeyType.AES, 256, template={
            Attribute.TOKEN: False, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, Attribute.WRAP: True})
        try:
            with pytest.raises(pkcs11.exceptions.KeyUnextractable):  # not under a key of mine
                mine.wrap_key(copy, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            # nor does it wrap anything itself: the HSM answers CKR_KEY_FUNCTION_NOT_PERMITTED (0x68)
            with pytest.raises(pkcs11.PKCS11Error, match="0x68"):
                WrapMixin.wrap_key(copy, mine, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        finally:
            mine.destroy()
        with pytest.raises(pkcs11.PKCS11Error):  # not modifiable: WRAP cannot be set back
            copy[Attribute.WRAP] = True
        for widened in ({Attribute.EXTRACTABLE: True}, {Attribute.TOKEN: True}, {Attribute.WRAP: True}):
            with pytest.raises(pkcs11.PKCS11Error):  # nor widened through a copy of the copy
                copy.copy(widened)
        # the token root is still the one object under its label (has_root, import and restore look it up)
        assert len(list(session.get_objects({Attribute.LABEL: ROOT_KEK_LABEL,
                                             Attribute.CLASS: ObjectClass.SECRET_KEY}))) == 1
    hsm_provider._call(check)


class _TokenRootRefusesCrypto:
    """Stands in for the cached token root handle: reading attributes passes through, crypto fails the test."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getitem__(self, attribute: Attribute) -> Any:
        return self._real[attribute]

    def __getattr__(self, name: str) -> Any:
        if name in ("encrypt", "decrypt", "unwrap_key", "copy"):
            raise AssertionError(f"the token root was used for {name}")
        return getattr(self._real, name)


def test_seal_unseal_and_unwrap_run_under_the_copy_not_the_token_object(hsm_provider: Pkcs11Provider) -> None:
    rot = hsm_provider.root_of_trust()
    ref = hsm_provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="root-copy-use")
    ciphertext = hsm_provider.encrypt(ref, b"data", b"aad")
    hsm_provider.destroy(ref)  # the next use unwraps the stored blob again
    sealed = rot.seal(b"before")
    real = hsm_provider._call(hsm_provider._root)
    hsm_provider._handles[ROOT_KEK_LABEL] = _TokenRootRefusesCrypto(real)
    try:
        assert rot.unseal(sealed) == b"before"
        assert rot.unseal(rot.seal(b"during", b"a"), b"a") == b"during"
        assert hsm_provider.decrypt(ref, ciphertext, b"aad") == b"data"
    finally:
        hsm_provider._handles[ROOT_KEK_LABEL] = real


def test_what_the_token_root_sealed_opens_through_the_copy_and_back(hsm_provider: Pkcs11Provider) -> None:
    rot = hsm_provider.root_of_trust()
    before = _token_seal(hsm_provider, b"sealed by the token object", b"aad-1")
    assert rot.unseal(before, b"aad-1") == b"sealed by the token object"
    with pytest.raises(ProviderInvalidCiphertext):
        rot.unseal(before, b"aad-2")
    after = rot.seal(b"sealed through the copy", b"aad-2")
    assert _token_unseal(hsm_provider, after, b"aad-2") == b"sealed through the copy"
    # a key version wrapped under the token object (create_key) unwraps through the copy
    ref = hsm_provider.create_key(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, label="root-copy-compat")
    ciphertext = hsm_provider.encrypt(ref, b"data", b"aad")
    hsm_provider.destroy(ref)
    assert hsm_provider.decrypt(ref, ciphertext, b"aad") == b"data"


def test_a_lost_session_takes_its_copy_and_the_next_call_makes_a_fresh_one(hsm_token: TestToken,
                                                                           monkeypatch) -> None:
    provider = hsm_token.provider("root-copy-session")
    rot = provider.root_of_trust()
    try:
        sealed = rot.seal(b"value", b"a")
        first, alive = provider._call(provider._root_copy), _copies(provider)
        provider._session.reset()  # what `_call` does on a lost session, and `close`
        assert rot.unseal(sealed, b"a") == b"value"
        second = provider._call(provider._root_copy)
        assert second is not first and _copies(provider) == alive  # the HSM destroyed the old one with its session

        # the outage path: the library re-initialised (every session of the process ends)
        monkeypatch.setitem(p11._library, "reinit_at", 0.0)
        assert provider._call(lambda _s: provider._session._reinitialize())
        assert rot.unseal(sealed, b"a") == b"value"
        third = provider._call(provider._root_copy)
        assert third is not second and rot.unseal(rot.seal(b"again"), b"") == b"again"

        # the copy itself lost (its handle invalid): that call fails as a lost session, the next one recovers
        provider._call(lambda _s: third.destroy())
        with pytest.raises(ProviderUnavailable, match="session lost"):
            rot.unseal(sealed, b"a")
        assert rot.unseal(sealed, b"a") == b"value"
        assert provider._call(provider._root_copy) is not third
    finally:
        provider.close()


@pytest.mark.parametrize("template", ["refused", "wider"])
def test_a_copy_refused_or_wider_than_asked_leaves_the_token_object_in_use(hsm_token: TestToken, monkeypatch,
                                                                         template: str) -> None:
    if template == "refused":  # SoftHSM refuses SENSITIVE in a copy template (AttributeReadOnly)
        monkeypatch.setattr(p11, "_ROOT_COPY", {**p11._ROOT_COPY, Attribute.SENSITIVE: True})
    else:  # a module that kept WRAP: the copy is checked, destroyed, not used
        monkeypatch.setattr(p11, "_ROOT_COPY", {k: v for k, v in p11._ROOT_COPY.items() if k is not Attribute.WRAP})
    provider = hsm_token.provider(f"root-copy-{template}")
    try:
        alive = _copies(provider)
        rot = provider.root_of_trust()
        assert rot.unseal(rot.seal(b"still served", b"a"), b"a") == b"still served"
        assert provider._call(lambda s: provider._root_copy(s) is provider._root(s))
        assert _copies(provider) == alive
    finally:
        provider.close()


# ------------------------------------------------------------------------------------------------ own process, own token

_SCENARIO = r"""
import json, os, sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, ObjectClass
import providers.pkcs11 as p11
from providers.base import ProviderUnavailable
from tests.support.hsm import make_provider

mode, directory = sys.argv[1], Path(sys.argv[2])
_, p = make_provider(directory)
rot = p.root_of_trust()
out = {}
copies = lambda: p._call(lambda s: len(list(s.get_objects({Attribute.LABEL: "kmsb-root-kek/session-copy"}))))
sealed = rot.seal(b"kept", b"t")
out["copies"] = [copies()]

def wipe(session):  # every root key gone from the token, behind the provider's back
    for label, cls in ((p11.ROOT_KEK_LABEL, ObjectClass.SECRET_KEY), (p11.AUDIT_HMAC_LABEL, ObjectClass.SECRET_KEY),
                       (p11.AUDIT_SIGNING_LABEL, ObjectClass.PRIVATE_KEY),
                       (p11.AUDIT_SIGNING_LABEL, ObjectClass.PUBLIC_KEY)):
        for obj in session.get_objects({Attribute.LABEL: label, Attribute.CLASS: cls, Attribute.TOKEN: True}):
            obj.destroy()

def attempt():
    try:
        return rot.unseal(sealed, b"t").decode()
    except ProviderUnavailable as exc:
        return "unavailable: " + str(exc)

if mode == "restore":
    backup = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = backup.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    rot.trust(spki)
    package = rot.export_root(spki)
    p._call(wipe)
    pkcs8 = backup.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    rot.restore_root(package, pkcs8)
    out["copies"].append(copies())  # right after the restore
    out["unsealed"] = attempt()
    out["copies"].append(copies())
elif mode == "gone":
    p._call(wipe)
    out["within_bound"] = attempt()
    p._handles[p11._ROOT_CHECKED_SLOT] -= 2 * p11._ROOT_RECHECK_SECONDS  # the bound has passed
    out["after_bound"] = [attempt(), attempt()]
    out["copies"].append(copies())
elif mode == "fork":
    parent_copy = p._call(p._root_copy)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child = {"unsealed": attempt(), "same_copy": p._call(p._root_copy) is parent_copy,
                     "sealed": rot.seal(b"from the child", b"c").hex()}
        except BaseException as exc:
            child = {"error": type(exc).__name__}
        os.write(write, json.dumps(child).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 65536))
    out["child"] = child
    out["parent_reads_child"] = rot.unseal(bytes.fromhex(child["sealed"]), b"c").decode()
    out["parent_keeps_copy"] = p._call(p._root_copy) is parent_copy and attempt() == "kept"
print(json.dumps(out))
"""


def _scenario(mode: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "KMSB_HSM_PIN")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _SCENARIO, mode, str(tmp_path / "hsm")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_root_restored_in_this_process_drops_the_copy_at_once(tmp_path: Path) -> None:
    out = _scenario("restore", tmp_path)
    assert out["copies"] == [1, 0, 1]  # made, destroyed by the restore, made again from the restored root
    assert out["unsealed"] == "kept"


def test_a_root_destroyed_behind_the_process_is_noticed_within_the_recheck_bound(tmp_path: Path) -> None:
    out = _scenario("gone", tmp_path)
    assert out["within_bound"] == "kept"  # the documented window: at most _ROOT_RECHECK_SECONDS
    lost, missing = out["after_bound"]
    assert lost.startswith("unavailable: HSM session lost")  # the session and its copy are dropped
    assert missing.startswith("unavailable: ") and "missing from the HSM token" in missing
    assert out["copies"][-1] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_copy_and_the_parent_keeps_its_own(tmp_path: Path) -> None:
    out = _scenario("fork", tmp_path)
    assert out["child"].get("unsealed") == "kept" and out["child"]["same_copy"] is False
    assert out["parent_reads_child"] == "from the child" and out["parent_keeps_copy"] is True
