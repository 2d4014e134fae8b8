"""Another HSM, in a process of its own (SoftHSM reads one token folder per process): `python -m
tests.support.hsm_node CMD` with a JSON request on stdin, a JSON answer on stdout. For root-of-trust tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    request = json.loads(sys.stdin.read())
    directory = Path(request["dir"])
    from providers.pkcs11 import Pkcs11Provider
    from providers.softhsm_token import create_token, token_files

    if request["cmd"] == "create":
        create_token(directory, root_keys=request.get("root_keys", False))
    files = token_files(directory)
    root = Pkcs11Provider.from_config("hsm", {"softhsm_conf": str(files.conf), "pin_file": str(files.pin_file),
                                               "token_label": "kms-broker"}).root_of_trust()
    out: dict = {}
    if request["cmd"] in ("create", "transport"):
        out["transport"] = root.transport_key().hex()
    elif request["cmd"] == "import":
        from providers.base import RootPackage

        root.import_root(RootPackage.from_dict(request["package"]))
    elif request["cmd"] == "restore":
        from providers.base import RootPackage

        root.restore_root(RootPackage.from_dict(request["package"]), bytes.fromhex(request["private"]))
    if root.has_root():
        out["fingerprint"] = root.fingerprint()
        out["audit_public_key"] = root.audit_public_key().hex()
        if request.get("unseal"):
            out["unsealed"] = root.unseal(bytes.fromhex(request["unseal"]), b"t").hex()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
