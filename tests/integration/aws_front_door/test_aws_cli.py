"""The AWS CLI (`aws kms ... --endpoint-url`), unchanged, as a subprocess against the broker; and
`kms-broker aws-credentials create|list|revoke` issuing the credentials it uses."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.integration.aws_front_door.conftest import ACCOUNT, REGION, Creds, cli_env
from tests.support.broker import CLI

AWS = shutil.which("aws")


def aws(broker, creds: Creds, folder, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    assert AWS, "the AWS CLI (awscli, in the test extra) must be installed"
    return subprocess.run([AWS, "kms", *args, "--endpoint-url", broker.addr, "--output", "json"], input=stdin,
                          capture_output=True, env=cli_env(broker, creds, folder), timeout=120)


def ok(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout or b"{}")


def broker_cli(broker, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KMSB_ADDR": broker.addr, "KMSB_TOKEN": broker.root_token}
    return subprocess.run([*CLI, *args], capture_output=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def cli_creds(aws_broker) -> Creds:
    out = broker_cli(aws_broker, "aws-credentials", "create", "--policy", "root", "--name", "aws-cli", "--output",
                     "json")
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    assert set(data) == {"access_key_id", "secret_access_key", "expires_at"}
    return Creds(data["access_key_id"], data["secret_access_key"])


@pytest.mark.parametrize("store", ["hsm", "aliyun"])
def test_cli_create_encrypt_decrypt_sign_alias_tag_rotate(aws_broker, cli_creds, tmp_path, store):
    meta = ok(aws(aws_broker, cli_creds, tmp_path, "create-key", "--custom-key-store-id", store,
                  "--description", "from the AWS CLI", "--tags", "TagKey=app,TagValue=cli"))["KeyMetadata"]
    key_id = meta["KeyId"]
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}" and meta["CustomKeyStoreId"] == store
    (tmp_path / "plain.txt").write_bytes(b"hello from the cli")
    enc = ok(aws(aws_broker, cli_creds, tmp_path, "encrypt", "--key-id", key_id, "--plaintext",
                 f"fileb://{tmp_path / 'plain.txt'}", "--encryption-context", "purpose=test"))
    assert enc["KeyId"] == meta["Arn"]
    (tmp_path / "blob.bin").write_bytes(base64.b64decode(enc["CiphertextBlob"]))
    dec = ok(aws(aws_broker, cli_creds, tmp_path, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob.bin'}",
                 "--encryption-context", "purpose=test"))
    assert base64.b64decode(dec["Plaintext"]) == b"hello from the cli"
    wrong = aws(aws_broker, cli_creds, tmp_path, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob.bin'}",
                "--encryption-context", "purpose=other")
    assert wrong.returncode != 0 and b"InvalidCiphertextException" in wrong.stderr

    alias = f"alias/cli-{store}-{os.urandom(3).hex()}"
    ok(aws(aws_broker, cli_creds, tmp_path, "create-alias", "--alias-name", alias, "--target-key-id", key_id))
    aliases = ok(aws(aws_broker, cli_creds, tmp_path, "list-aliases", "--key-id", key_id))["Aliases"]
    assert [a["AliasName"] for a in aliases] == [alias]
    assert ok(aws(aws_broker, cli_creds, tmp_path, "describe-key", "--key-id", alias))["KeyMetadata"]["KeyId"] == key_id
    tags = ok(aws(aws_broker, cli_creds, tmp_path, "list-resource-tags", "--key-id", key_id))["Tags"]
    assert tags == [{"TagKey": "app", "TagValue": "cli"}]
    ok(aws(aws_broker, cli_creds, tmp_path, "rotate-key-on-demand", "--key-id", key_id))
    rotations = ok(aws(aws_broker, cli_creds, tmp_path, "list-key-rotations", "--key-id", key_id))["Rotations"]
    assert len(rotations) == 1
    again = ok(aws(aws_broker, cli_creds, tmp_path, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob.bin'}",
                   "--encryption-context", "purpose=test"))
    assert base64.b64decode(again["Plaintext"]) == b"hello from the cli"

    sign_key = ok(aws(aws_broker, cli_creds, tmp_path, "create-key", "--custom-key-store-id", store, "--key-spec",
                      "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY"))["KeyMetadata"]["KeyId"]
    sig = ok(aws(aws_broker, cli_creds, tmp_path, "sign", "--key-id", sign_key, "--message",
                 f"fileb://{tmp_path / 'plain.txt'}", "--signing-algorithm", "ECDSA_SHA_256"))["Signature"]
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(sig))
    verified = ok(aws(aws_broker, cli_creds, tmp_path, "verify", "--key-id", sign_key, "--message",
                      f"fileb://{tmp_path / 'plain.txt'}", "--signature", f"fileb://{tmp_path / 'sig.bin'}",
                      "--signing-algorithm", "ECDSA_SHA_256"))
    assert verified["SignatureValid"] is True


def test_cli_errors(aws_broker, cli_creds, tmp_path):
    missing = aws(aws_broker, cli_creds, tmp_path, "describe-key", "--key-id", "alias/nothing-here")
    assert missing.returncode != 0 and b"NotFoundException" in missing.stderr
    forged = aws(aws_broker, Creds(cli_creds.access_key_id, "f" * 40), tmp_path, "list-keys")
    assert forged.returncode != 0 and b"InvalidSignatureException" in forged.stderr
    stores = ok(aws(aws_broker, cli_creds, tmp_path, "describe-custom-key-stores"))["CustomKeyStores"]
    assert sorted(s["CustomKeyStoreId"] for s in stores) == ["aliyun", "hsm"]


def test_broker_cli_lists_and_revokes(aws_broker, tmp_path):
    created = broker_cli(aws_broker, "aws-credentials", "create", "--policy", "key-user", "--output", "json")
    assert created.returncode == 0, created.stderr.decode()
    data = json.loads(created.stdout)
    creds = Creds(data["access_key_id"], data["secret_access_key"])
    assert ok(aws(aws_broker, creds, tmp_path, "generate-random", "--number-of-bytes", "8"))["Plaintext"]
    listed = json.loads(broker_cli(aws_broker, "aws-credentials", "list", "--output", "json").stdout)
    mine = [c for c in listed if c["AccessKeyId"] == creds.access_key_id]
    assert mine and mine[0]["Policies"] == ["key-user"] and mine[0]["Status"] == "Active"
    assert creds.secret_access_key.encode() not in broker_cli(aws_broker, "aws-credentials", "list").stdout
    revoked = broker_cli(aws_broker, "aws-credentials", "revoke", creds.access_key_id)
    assert revoked.returncode == 0 and creds.access_key_id.encode() in revoked.stdout
    time.sleep(1.5)  # the auth cache bound (auth_cache_seconds = 1)
    refused = aws(aws_broker, creds, tmp_path, "generate-random", "--number-of-bytes", "8")
    assert refused.returncode != 0 and b"UnrecognizedClientException" in refused.stderr
    twice = broker_cli(aws_broker, "aws-credentials", "revoke", creds.access_key_id)
    assert twice.returncode == 1 and b"NotFoundException" in twice.stderr and b"Traceback" not in twice.stderr


@pytest.mark.parametrize("store", ["hsm", "aliyun"])
def test_cli_import_key_material(aws_broker, cli_creds, tmp_path, store):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key_id = ok(aws(aws_broker, cli_creds, tmp_path, "create-key", "--custom-key-store-id", store, "--origin",
                    "EXTERNAL"))["KeyMetadata"]["KeyId"]
    params = ok(aws(aws_broker, cli_creds, tmp_path, "get-parameters-for-import", "--key-id", key_id,
                    "--wrapping-algorithm", "RSAES_OAEP_SHA_1", "--wrapping-key-spec", "RSA_2048"))
    public = serialization.load_der_public_key(base64.b64decode(params["PublicKey"]))
    material = os.urandom(32)
    (tmp_path / "wrapped.bin").write_bytes(
        public.encrypt(material, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)))
    (tmp_path / "token.bin").write_bytes(base64.b64decode(params["ImportToken"]))
    ok(aws(aws_broker, cli_creds, tmp_path, "import-key-material", "--key-id", key_id, "--encrypted-key-material",
           f"fileb://{tmp_path / 'wrapped.bin'}", "--import-token", f"fileb://{tmp_path / 'token.bin'}",
           "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE"))
    assert ok(aws(aws_broker, cli_creds, tmp_path, "describe-key", "--key-id", key_id))["KeyMetadata"]["KeyState"] \
        == "Enabled"
    (tmp_path / "p.txt").write_bytes(b"under imported material")
    blob = ok(aws(aws_broker, cli_creds, tmp_path, "encrypt", "--key-id", key_id, "--plaintext",
                  f"fileb://{tmp_path / 'p.txt'}"))["CiphertextBlob"]
    (tmp_path / "c.bin").write_bytes(base64.b64decode(blob))
    out = ok(aws(aws_broker, cli_creds, tmp_path, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'c.bin'}"))
    assert base64.b64decode(out["Plaintext"]) == b"under imported material"
