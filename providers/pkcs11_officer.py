"""The HSM security officer's one step, as a process of its own: mark a recipient public key trusted.

PKCS#11 logs in per application, and a broker process is logged in as the user; the SO (who alone may set
CKA_TRUSTED, and who cannot use private keys) therefore acts here, in a short process that reads one JSON request
on stdin — library, token, where the SO PIN is, the label and the RSA public key (public) — and exits. The PIN is
read from its file or environment variable, never from argv. On a network HSM the same step is the officer's
ceremony; the broker only needs the trusted object to exist afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _so_pin(request: dict) -> str:
    env = request.get("so_pin_env") or "KMSB_HSM_SO_PIN"
    if os.environ.get(env):
        return os.environ[env]
    path = request.get("so_pin_file")
    if path and Path(path).is_file():
        return Path(path).read_text().strip()
    raise SystemExit("the security officer PIN is not available (so_pin_file or $KMSB_HSM_SO_PIN)")


def trust(request: dict) -> None:
    if request.get("softhsm_conf"):
        os.environ["SOFTHSM2_CONF"] = request["softhsm_conf"]
    import pkcs11
    from cryptography.hazmat.primitives import serialization
    from pkcs11.util.rsa import decode_rsa_public_key

    public = serialization.load_der_public_key(bytes.fromhex(request["public_key"]))
    parts = decode_rsa_public_key(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1))
    label = str(request["label"])
    from providers.pkcs11 import TokenFiles

    # the same cross-process lock as the broker's token writers: SoftHSM readers fail while a token is written
    with TokenFiles({"softhsm_conf": request.get("softhsm_conf")}).held(exclusive=True):
        _create(pkcs11, request, parts, label)


def _create(pkcs11, request: dict, parts: dict, label: str) -> None:
    from pkcs11 import Attribute, ObjectClass

    token = pkcs11.lib(request["lib"]).get_token(token_label=request["token_label"])
    with token.open(rw=True, so_pin=_so_pin(request)) as session:
        for obj in session.get_objects({Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PUBLIC_KEY}):
            if obj[Attribute.TRUSTED] and obj[Attribute.MODULUS] == parts[Attribute.MODULUS]:
                return  # already trusted
            obj.destroy()  # a squatter under the label (not trusted, or another modulus)
        session.create_object({**parts, Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.TRUSTED: True,
                               Attribute.WRAP: True, Attribute.ENCRYPT: True, Attribute.LABEL: label})


def main() -> None:
    try:
        trust(json.loads(sys.stdin.read()))
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line for the caller, no traceback, no PIN
        print(f"{type(exc).__name__}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
