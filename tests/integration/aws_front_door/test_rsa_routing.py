"""RSAES_OAEP_SHA_256, what AWS clients default to, for RSA encryption keys: SoftHSM 2.6.1 cannot decrypt it (the
pkcs11 provider probes its token and offers SHA-1 only), so a broker configured with `rsa_encryption_provider`
makes RSA encryption keys created without a custom key store on that provider, whose own HSM decrypts OAEP-SHA-256.
boto3 against a real broker (SoftHSM + the Aliyun emulator)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.integration.aws_front_door.conftest import Creds, kms_client
from tests.support.broker import RunningBroker, start_broker

OAEP_256 = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory, aliyun_config: dict) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("rsa-routing")
    running = start_broker(base / "data", base / "logs", name="broker-rsa-routing", workers=1,
                           env={"KMSB_PROVIDERS_JSON": json.dumps({"aliyun": aliyun_config}),
                                "KMSB_RSA_ENCRYPTION_PROVIDER": "aliyun"})
    yield running
    running.server.stop()


def creds(broker: RunningBroker, *policies: str, name: str):
    r = broker.session().post(broker.url("/aws-credentials"), json={"Policies": list(policies), "Name": name})
    assert r.status_code == 201, r.text
    return kms_client(broker, Creds(r.json()["access_key_id"], r.json()["secret_access_key"]))


def test_rsa_encryption_keys_go_where_oaep_sha256_is_decrypted(routed):
    kms = creds(routed, "root", name="rsa-root")
    meta = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    assert meta["CustomKeyStoreId"] == "aliyun"
    assert "RSAES_OAEP_SHA_256" in meta["EncryptionAlgorithms"]
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=meta["KeyId"])["PublicKey"])
    offline = public.encrypt(b"encrypted offline, as AWS documents", OAEP_256)
    out = kms.decrypt(KeyId=meta["KeyId"], CiphertextBlob=offline, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert out["Plaintext"] == b"encrypted offline, as AWS documents"
    blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert kms.decrypt(KeyId=meta["KeyId"], CiphertextBlob=blob["CiphertextBlob"],
                       EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == b"x"


def test_other_keys_stay_on_the_default_provider(routed):
    kms = creds(routed, "root", name="rsa-root-2")
    signing = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert signing["CustomKeyStoreId"] == "hsm"
    assert kms.create_key()["KeyMetadata"]["CustomKeyStoreId"] == "hsm"
    pinned = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT", CustomKeyStoreId="hsm")["KeyMetadata"]
    assert pinned["CustomKeyStoreId"] == "hsm" and pinned["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1"]
    with pytest.raises(ClientError) as refused:
        kms.encrypt(KeyId=pinned["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert refused.value.response["Error"]["Code"] == "UnsupportedOperationException"


def test_routing_never_escapes_a_provider_bound_create_right(routed):
    """CreateKey is authorized on the provider the key goes to: a right to create keys on the HSM only does not
    make a key on the routed provider."""
    name = f"hsm-only-{os.urandom(3).hex()}"
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "provider/hsm"}]}
    assert routed.session().put(routed.url(f"/policies/{name}"), json={"Document": document}).status_code \
        in (200, 201)
    kms = creds(routed, name, name=name)
    assert kms.create_key()["KeyMetadata"]["CustomKeyStoreId"] == "hsm"
    with pytest.raises(ClientError) as denied:
        kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "provider/aliyun" in denied.value.response["Error"]["Message"]
