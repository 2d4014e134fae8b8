"""The AWS Encryption SDK for Python, unchanged: its KMS master key provider (StrictAwsKmsMasterKeyProvider) with a
botocore session whose KMS endpoint is the broker. Messages encrypted under broker keys of both custom key stores."""

from __future__ import annotations

import aws_encryption_sdk
import pytest
from aws_encryption_sdk import CommitmentPolicy, StrictAwsKmsMasterKeyProvider
from aws_encryption_sdk.exceptions import DecryptKeyError

from tests.integration.aws_front_door.conftest import REGION, botocore_session_for


@pytest.fixture
def session(aws_broker, root_creds, tmp_path):
    return botocore_session_for(aws_broker, root_creds, tmp_path)


@pytest.fixture(scope="module")
def sdk():
    return aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


def test_the_session_talks_to_the_broker(session, kms):
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    client = session.create_client("kms", region_name=REGION)
    assert client.describe_key(KeyId=arn)["KeyMetadata"]["Arn"] == arn


def test_encrypt_decrypt_message_under_two_stores(session, kms, sdk):
    arns = [kms.create_key(CustomKeyStoreId=s)["KeyMetadata"]["Arn"] for s in ("hsm", "aliyun")]
    provider = StrictAwsKmsMasterKeyProvider(key_ids=arns, botocore_session=session)
    message, header = sdk.encrypt(source=b"a message for two stores" * 100, key_provider=provider,
                                  encryption_context={"tenant": "blue"})
    assert len(header.encrypted_data_keys) == 2
    assert {edk.key_provider.key_info.decode() for edk in header.encrypted_data_keys} == set(arns)
    for arn in arns:  # either store alone decrypts the message
        one = StrictAwsKmsMasterKeyProvider(key_ids=[arn], botocore_session=session)
        plaintext, decrypted_header = sdk.decrypt(source=message, key_provider=one)
        assert plaintext == b"a message for two stores" * 100
        assert decrypted_header.encryption_context["tenant"] == "blue"


@pytest.mark.parametrize("store", ["hsm", "aliyun"])
def test_a_disabled_key_cannot_decrypt(session, kms, sdk, store):
    arn = kms.create_key(CustomKeyStoreId=store)["KeyMetadata"]["Arn"]
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[arn], botocore_session=session)
    message, _ = sdk.encrypt(source=b"short", key_provider=provider)
    kms.disable_key(KeyId=arn)
    with pytest.raises(DecryptKeyError):
        sdk.decrypt(source=message, key_provider=StrictAwsKmsMasterKeyProvider(key_ids=[arn],
                                                                               botocore_session=session))
    kms.enable_key(KeyId=arn)
    assert sdk.decrypt(source=message, key_provider=provider)[0] == b"short"


def test_rotated_and_aliased_keys(session, kms, sdk):
    meta = kms.create_key()["KeyMetadata"]
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[meta["Arn"]], botocore_session=session)
    before, _ = sdk.encrypt(source=b"before rotation", key_provider=provider)
    kms.rotate_key_on_demand(KeyId=meta["KeyId"])
    after, _ = sdk.encrypt(source=b"after rotation", key_provider=provider)
    assert sdk.decrypt(source=before, key_provider=provider)[0] == b"before rotation"
    assert sdk.decrypt(source=after, key_provider=provider)[0] == b"after rotation"
    alias = f"alias/esdk-{meta['KeyId'][:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    alias_arn = meta["Arn"].split(":key/")[0] + ":" + alias
    by_alias = StrictAwsKmsMasterKeyProvider(key_ids=[alias_arn], botocore_session=session)
    message, header = sdk.encrypt(source=b"via alias", key_provider=by_alias)
    # KMS answers GenerateDataKey with the key ARN, so the message names the key, not the alias
    assert [edk.key_provider.key_info.decode() for edk in header.encrypted_data_keys] == [meta["Arn"]]
    assert sdk.decrypt(source=message, key_provider=provider)[0] == b"via alias"


@pytest.mark.parametrize("store", ["hsm", "aliyun"])
def test_a_key_with_imported_material(session, kms, sdk, store):
    import os

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    meta = kms.create_key(CustomKeyStoreId=store, Origin="EXTERNAL")["KeyMetadata"]
    params = kms.get_parameters_for_import(KeyId=meta["Arn"], WrappingAlgorithm="RSAES_OAEP_SHA_1",
                                           WrappingKeySpec="RSA_2048")
    wrapped = serialization.load_der_public_key(params["PublicKey"]).encrypt(
        os.urandom(32), padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    kms.import_key_material(KeyId=meta["Arn"], ImportToken=params["ImportToken"], EncryptedKeyMaterial=wrapped,
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[meta["Arn"]], botocore_session=session)
    message, _ = sdk.encrypt(source=b"imported-material message", key_provider=provider)
    assert sdk.decrypt(source=message, key_provider=provider)[0] == b"imported-material message"


def test_a_cross_cloud_multi_key(aws_broker, session, kms, sdk):
    """A multi-key (one data key wrapped under an hsm key and an aliyun key) behind one KMS key ARN."""
    from tests.integration.aws_front_door.conftest import ACCOUNT

    members = [kms.create_key(CustomKeyStoreId=s)["KeyMetadata"]["KeyId"] for s in ("hsm", "aliyun")]
    r = aws_broker.session().post(aws_broker.url("/multikeys"), json={"Name": f"sdk-{members[0][:8]}",
                                                                      "Members": members})
    assert r.status_code == 201, r.text
    multi_id = r.json()["MultiKey"]["MultiKeyId"]
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/multikey/{multi_id}"
    by_name = kms.encrypt(KeyId=f"multikey/sdk-{members[0][:8]}", Plaintext=b"everywhere", EncryptionContext={"a": "b"})
    assert by_name["KeyId"] == arn
    out = kms.decrypt(CiphertextBlob=by_name["CiphertextBlob"], EncryptionContext={"a": "b"})
    assert out["Plaintext"] == b"everywhere" and out["KeyId"] == arn
    with pytest.raises(Exception) as wrong:
        kms.decrypt(CiphertextBlob=by_name["CiphertextBlob"], EncryptionContext={"a": "b"}, KeyId=members[0])
    assert wrong.value.response["Error"]["Code"] == "IncorrectKeyException"
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[arn], botocore_session=session)
    message, header = sdk.encrypt(source=b"one message, two clouds", key_provider=provider)
    assert [edk.key_provider.key_info.decode() for edk in header.encrypted_data_keys] == [arn]
    assert sdk.decrypt(source=message, key_provider=provider)[0] == b"one message, two clouds"
