"""boto3, unchanged, against the broker: every KeyService operation through the AWS KMS protocol, on keys of the
pkcs11 root of trust and of the aliyun provider (custom key stores "hsm" and "aliyun")."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tests.integration.aws_front_door.conftest import ACCOUNT, REGION


def code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def status(exc: pytest.ExceptionInfo) -> int:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def new_key(kms, store: str, **kwargs) -> dict:
    return kms.create_key(CustomKeyStoreId=store, **kwargs)["KeyMetadata"]


def test_create_and_describe_key_metadata_shape(kms, store):
    before = datetime.now(UTC) - timedelta(seconds=5)
    meta = new_key(kms, store, Description="shape", Tags=[{"TagKey": "team", "TagValue": "a"}])
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{meta['KeyId']}"
    assert meta["AWSAccountId"] == ACCOUNT and meta["CustomKeyStoreId"] == store
    assert (meta["KeyState"], meta["Enabled"], meta["KeyUsage"], meta["KeySpec"], meta["Origin"]) == (
        "Enabled", True, "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT", "AWS_KMS")
    assert meta["KeyManager"] == "CUSTOMER" and meta["MultiRegion"] is False
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert before <= meta["CreationDate"] <= datetime.now(UTC) + timedelta(seconds=5)  # epoch seconds parsed
    for ref in (meta["KeyId"], meta["Arn"]):
        assert kms.describe_key(KeyId=ref)["KeyMetadata"] == meta


def test_encrypt_decrypt_with_context_and_arn(kms, store):
    key = new_key(kms, store)
    out = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"top secret", EncryptionContext={"tenant": "a"})
    assert out["KeyId"] == key["Arn"] and out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    back = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"tenant": "a"})
    assert back["Plaintext"] == b"top secret" and back["KeyId"] == key["Arn"]
    named = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"tenant": "a"}, KeyId=key["Arn"])
    assert named["Plaintext"] == b"top secret"
    with pytest.raises(ClientError) as wrong_context:
        kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"tenant": "b"})
    assert code(wrong_context) == "InvalidCiphertextException" and status(wrong_context) == 400
    other = new_key(kms, "hsm")
    with pytest.raises(ClientError) as wrong_key:
        kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"tenant": "a"}, KeyId=other["KeyId"])
    assert code(wrong_key) == "IncorrectKeyException"


def test_re_encrypt_across_custom_key_stores(kms, store):
    source, destination = new_key(kms, store), new_key(kms, "aliyun" if store == "hsm" else "hsm")
    blob = kms.encrypt(KeyId=source["KeyId"], Plaintext=b"moving", EncryptionContext={"a": "1"})["CiphertextBlob"]
    out = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"a": "1"},
                         DestinationKeyId=destination["Arn"], DestinationEncryptionContext={"b": "2"})
    assert (out["SourceKeyId"], out["KeyId"]) == (source["Arn"], destination["Arn"])
    assert kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"b": "2"})["Plaintext"] == b"moving"


def test_generate_data_keys(kms, store):
    key = new_key(kms, store)
    dk = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext={"f": "1"})
    assert len(dk["Plaintext"]) == 32 and dk["KeyId"] == key["Arn"]
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"f": "1"})["Plaintext"] == dk["Plaintext"]
    n = kms.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=17)
    assert len(n["Plaintext"]) == 17
    wp = kms.generate_data_key_without_plaintext(KeyId=key["Arn"], KeySpec="AES_128")
    assert "Plaintext" not in wp and len(kms.decrypt(CiphertextBlob=wp["CiphertextBlob"])["Plaintext"]) == 16
    pair = kms.generate_data_key_pair(KeyId=key["KeyId"], KeyPairSpec="ECC_NIST_P256")
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    assert private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == pair["PublicKey"]
    assert kms.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"])["Plaintext"] == pair["PrivateKeyPlaintext"]
    wp_pair = kms.generate_data_key_pair_without_plaintext(KeyId=key["KeyId"], KeyPairSpec="RSA_2048")
    assert "PrivateKeyPlaintext" not in wp_pair and wp_pair["KeyPairSpec"] == "RSA_2048"
    with pytest.raises(ClientError) as both:
        kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256", NumberOfBytes=32)
    assert code(both) == "ValidationException"


@pytest.mark.parametrize(("spec", "algorithm"), [("RSA_2048", "RSASSA_PSS_SHA_256"), ("ECC_NIST_P256", "ECDSA_SHA_256")])
def test_sign_verify_and_public_key(kms, store, spec, algorithm):
    key = new_key(kms, store, KeySpec=spec, KeyUsage="SIGN_VERIFY")
    assert algorithm in key["SigningAlgorithms"]
    signed = kms.sign(KeyId=key["Arn"], Message=b"document", SigningAlgorithm=algorithm)
    assert signed["KeyId"] == key["Arn"]
    ok = kms.verify(KeyId=key["KeyId"], Message=b"document", Signature=signed["Signature"], SigningAlgorithm=algorithm)
    assert ok["SignatureValid"] is True
    digest = hashlib.sha256(b"document").digest()
    assert kms.verify(KeyId=key["KeyId"], Message=digest, MessageType="DIGEST", Signature=signed["Signature"],
                      SigningAlgorithm=algorithm)["SignatureValid"] is True
    with pytest.raises(ClientError) as bad:
        kms.verify(KeyId=key["KeyId"], Message=b"forged", Signature=signed["Signature"], SigningAlgorithm=algorithm)
    assert code(bad) == "KMSInvalidSignatureException"
    public = kms.get_public_key(KeyId=key["KeyId"])
    assert public["KeySpec"] == spec and public["KeyUsage"] == "SIGN_VERIFY"
    loaded = serialization.load_der_public_key(public["PublicKey"])  # independent check with cryptography
    if spec.startswith("RSA"):
        loaded.verify(signed["Signature"], b"document",
                      padding.PSS(padding.MGF1(hashes.SHA256()), hashes.SHA256().digest_size), hashes.SHA256())
    else:
        loaded.verify(signed["Signature"], b"document", ec.ECDSA(hashes.SHA256()))


def test_rsa_encrypt_decrypt(kms, store):
    key = new_key(kms, store, KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    offered = key["EncryptionAlgorithms"]  # what the key's provider can open, and nothing else
    assert offered and set(offered) <= {"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}
    public = kms.get_public_key(KeyId=key["KeyId"])
    assert public["EncryptionAlgorithms"] == offered
    loaded = serialization.load_der_public_key(public["PublicKey"])
    for algorithm in offered:
        h = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
        blob = loaded.encrypt(b"to the key", padding.OAEP(padding.MGF1(h), h, None))
        out = kms.decrypt(KeyId=key["Arn"], CiphertextBlob=blob, EncryptionAlgorithm=algorithm)
        assert out["Plaintext"] == b"to the key" and out["EncryptionAlgorithm"] == algorithm
        by_kms = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"from kms", EncryptionAlgorithm=algorithm)
        assert kms.decrypt(KeyId=key["KeyId"], CiphertextBlob=by_kms["CiphertextBlob"],
                           EncryptionAlgorithm=algorithm)["Plaintext"] == b"from kms"
    for algorithm in {"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"} - set(offered):
        with pytest.raises(ClientError) as refused:
            kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x", EncryptionAlgorithm=algorithm)
        assert code(refused) == "UnsupportedOperationException"


def test_mac_on_the_hsm(kms):
    key = new_key(kms, "hsm", KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    mac = kms.generate_mac(KeyId=key["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_256")
    assert len(mac["Mac"]) == 32 and mac["KeyId"] == key["Arn"]
    assert kms.verify_mac(KeyId=key["Arn"], Message=b"m", Mac=mac["Mac"], MacAlgorithm="HMAC_SHA_256")["MacValid"]
    with pytest.raises(ClientError) as bad:
        kms.verify_mac(KeyId=key["Arn"], Message=b"other", Mac=mac["Mac"], MacAlgorithm="HMAC_SHA_256")
    assert code(bad) == "KMSInvalidMacException"


def test_a_store_without_mac_refuses_hmac_keys(kms):
    with pytest.raises(ClientError) as refused:
        new_key(kms, "aliyun", KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    assert code(refused) == "UnsupportedOperationException" and "aliyun" in refused.value.response["Error"]["Message"]


def test_aliases_by_name_and_arn(kms, store):
    key, other = new_key(kms, store), new_key(kms, store)
    name = f"alias/aws-fd/{store}-{os.urandom(4).hex()}"
    kms.create_alias(AliasName=name, TargetKeyId=key["Arn"])
    alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:{name}"
    for ref in (name, alias_arn):
        out = kms.encrypt(KeyId=ref, Plaintext=b"via alias")
        assert out["KeyId"] == key["Arn"]
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == key["KeyId"]
    listed = kms.list_aliases(KeyId=key["KeyId"])["Aliases"]
    assert [(a["AliasName"], a["AliasArn"], a["TargetKeyId"]) for a in listed] == [(name, alias_arn, key["KeyId"])]
    with pytest.raises(ClientError) as exists:
        kms.create_alias(AliasName=name, TargetKeyId=other["KeyId"])
    assert code(exists) == "AlreadyExistsException"
    kms.update_alias(AliasName=name, TargetKeyId=other["KeyId"])
    assert kms.describe_key(KeyId=alias_arn)["KeyMetadata"]["KeyId"] == other["KeyId"]
    kms.delete_alias(AliasName=name)
    with pytest.raises(ClientError) as gone:
        kms.describe_key(KeyId=name)
    assert code(gone) == "NotFoundException"


def test_alias_pagination(kms):
    key = new_key(kms, "hsm")
    names = sorted(f"alias/page-{os.urandom(3).hex()}-{i}" for i in range(5))
    for name in names:
        kms.create_alias(AliasName=name, TargetKeyId=key["KeyId"])
    first = kms.list_aliases(KeyId=key["KeyId"], Limit=2)
    assert first["Truncated"] is True and [a["AliasName"] for a in first["Aliases"]] == names[:2]
    seen = [a["AliasName"] for a in first["Aliases"]]
    marker = first["NextMarker"]
    while marker:
        page = kms.list_aliases(KeyId=key["KeyId"], Limit=2, Marker=marker)
        seen += [a["AliasName"] for a in page["Aliases"]]
        marker = page.get("NextMarker") if page["Truncated"] else None
    assert seen == names
    paginated = [a["AliasName"] for p in kms.get_paginator("list_aliases").paginate(KeyId=key["KeyId"],
                                                                                     PaginationConfig={"PageSize": 3})
                 for a in p["Aliases"]]
    assert paginated == names
    with pytest.raises(ClientError) as too_many:  # AWS's bound for ListAliases is 100 (ListKeys: 1000)
        kms.list_aliases(Limit=101)
    assert code(too_many) == "ValidationException"
    with pytest.raises(ClientError) as bad_marker:
        kms.list_aliases(KeyId=key["KeyId"], Marker="alias/not-in-the-list")
    assert code(bad_marker) == "InvalidMarkerException"


def test_tags(kms, store):
    key = new_key(kms, store)
    kms.tag_resource(KeyId=key["KeyId"], Tags=[{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "x"}])
    assert kms.list_resource_tags(KeyId=key["Arn"])["Tags"] == [{"TagKey": "env", "TagValue": "prod"},
                                                                {"TagKey": "team", "TagValue": "x"}]
    page = kms.list_resource_tags(KeyId=key["Arn"], Limit=1)
    assert page["Truncated"] is True and page["NextMarker"] == "env"
    assert kms.list_resource_tags(KeyId=key["Arn"], Marker="env")["Tags"] == [{"TagKey": "team", "TagValue": "x"}]
    kms.untag_resource(KeyId=key["KeyId"], TagKeys=["env"])
    assert kms.list_resource_tags(KeyId=key["KeyId"])["Tags"] == [{"TagKey": "team", "TagValue": "x"}]


def test_rotation_keeps_old_ciphertexts(kms, store):
    key = new_key(kms, store)
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=key["KeyId"], RotationPeriodInDays=90)
    on = kms.get_key_rotation_status(KeyId=key["Arn"])
    assert on["KeyRotationEnabled"] is True and on["RotationPeriodInDays"] == 90
    assert timedelta(days=89) < on["NextRotationDate"] - datetime.now(UTC) <= timedelta(days=90)
    old = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"v1")["CiphertextBlob"]
    assert kms.rotate_key_on_demand(KeyId=key["Arn"])["KeyId"] == key["KeyId"]
    new = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"v2")["CiphertextBlob"]
    assert old != new
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"v1"
    assert kms.decrypt(CiphertextBlob=new)["Plaintext"] == b"v2"
    rotations = kms.list_key_rotations(KeyId=key["KeyId"])
    assert [r["KeyId"] for r in rotations["Rotations"]] == [key["KeyId"]] and rotations["Truncated"] is False
    kms.disable_key_rotation(KeyId=key["KeyId"])
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is False


def _wrapped(kms, key_id: str, material: bytes) -> tuple[bytes, bytes]:
    params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_1",
                                           WrappingKeySpec="RSA_2048")
    assert params["KeyId"].endswith(key_id)
    assert params["ParametersValidTo"] > datetime.now(UTC) + timedelta(hours=23)
    public = serialization.load_der_public_key(params["PublicKey"])
    wrapped = public.encrypt(material, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    return params["ImportToken"], wrapped


def test_import_key_material(kms, store):
    key = new_key(kms, store, Origin="EXTERNAL")
    assert key["KeyState"] == "PendingImport" and key["Origin"] == "EXTERNAL"
    assert key["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    material = os.urandom(32)
    token, wrapped = _wrapped(kms, key["KeyId"], material)
    with pytest.raises(ClientError) as expiring:
        kms.import_key_material(KeyId=key["KeyId"], ImportToken=token, EncryptedKeyMaterial=wrapped,
                                ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=datetime.now(UTC) + timedelta(days=9))
    assert code(expiring) == "UnsupportedOperationException"
    kms.import_key_material(KeyId=key["Arn"], ImportToken=token, EncryptedKeyMaterial=wrapped,
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"imported")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    if store == "hsm":
        # The material is the one we wrapped: other material is refused, the same material is accepted again.
        token, wrapped = _wrapped(kms, key["KeyId"], os.urandom(32))
        with pytest.raises(ClientError) as different:
            kms.import_key_material(KeyId=key["KeyId"], ImportToken=token, EncryptedKeyMaterial=wrapped,
                                    ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        assert code(different) == "IncorrectKeyMaterialException"
        token, wrapped = _wrapped(kms, key["KeyId"], material)
        kms.import_key_material(KeyId=key["KeyId"], ImportToken=token, EncryptedKeyMaterial=wrapped,
                                ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    kms.delete_imported_key_material(KeyId=key["KeyId"])
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(ClientError) as pending:
        kms.decrypt(CiphertextBlob=blob)
    assert code(pending) == "KMSInvalidStateException"


def test_enable_disable_and_deletion_lifecycle(kms, store):
    key = new_key(kms, store)
    kms.update_key_description(KeyId=key["KeyId"], Description="renamed")
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["Description"] == "renamed"
    kms.disable_key(KeyId=key["Arn"])
    with pytest.raises(ClientError) as disabled:
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    assert code(disabled) == "DisabledException" and status(disabled) == 400
    kms.enable_key(KeyId=key["KeyId"])
    out = kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    assert out["KeyId"] == key["Arn"] and out["KeyState"] == "PendingDeletion" and out["PendingWindowInDays"] == 7
    assert timedelta(days=6, hours=23) < out["DeletionDate"] - datetime.now(UTC) <= timedelta(days=7)
    meta = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["DeletionDate"] == out["DeletionDate"]
    with pytest.raises(ClientError) as pending:
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    assert code(pending) == "KMSInvalidStateException"
    assert kms.cancel_key_deletion(KeyId=key["KeyId"])["KeyId"] == key["Arn"]
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"


def test_list_keys_pagination(kms):
    mine = {new_key(kms, "hsm")["KeyId"] for _ in range(3)}
    seen, marker, pages = [], None, 0
    while True:
        page = kms.list_keys(Limit=2, **({"Marker": marker} if marker else {}))
        assert len(page["Keys"]) <= 2
        seen += page["Keys"]
        pages += 1
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert pages >= 2 and mine <= {k["KeyId"] for k in seen}
    assert all(k["KeyArn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{k['KeyId']}" for k in seen)
    assert len({k["KeyId"] for k in seen}) == len(seen)


def test_custom_key_stores_are_the_providers(kms):
    stores = kms.describe_custom_key_stores()["CustomKeyStores"]
    assert {s["CustomKeyStoreId"]: s["ConnectionState"] for s in stores} == {"aliyun": "CONNECTED", "hsm": "CONNECTED"}
    one = kms.describe_custom_key_stores(CustomKeyStoreId="aliyun")["CustomKeyStores"]
    assert [s["CustomKeyStoreName"] for s in one] == ["aliyun"]
    with pytest.raises(ClientError) as missing:
        kms.describe_custom_key_stores(CustomKeyStoreId="nope")
    assert code(missing) == "CustomKeyStoreNotFoundException"
    with pytest.raises(ClientError) as missing_create:
        kms.create_key(CustomKeyStoreId="nope")
    assert code(missing_create) == "CustomKeyStoreNotFoundException"
    assert new_key(kms, "aliyun")["CustomKeyStoreId"] == "aliyun"
    assert kms.create_key()["KeyMetadata"]["CustomKeyStoreId"] == "hsm"  # the default: the pkcs11 provider


def test_generate_random(kms):
    assert len(kms.generate_random(NumberOfBytes=48)["Plaintext"]) == 48
    assert len(kms.generate_random(NumberOfBytes=8, CustomKeyStoreId="hsm")["Plaintext"]) == 8
    with pytest.raises(ClientError) as lacking:  # aliyun has no random generator capability
        kms.generate_random(NumberOfBytes=8, CustomKeyStoreId="aliyun")
    assert code(lacking) == "UnsupportedOperationException"


def test_grants_and_key_policy(kms):
    key = new_key(kms, "hsm")
    grant = kms.create_grant(KeyId=key["KeyId"], GranteePrincipal="someone", Operations=["Encrypt", "Decrypt"],
                             RetiringPrincipal="retirer")
    listed = kms.list_grants(KeyId=key["Arn"])["Grants"]
    assert [(g["GrantId"], g["GranteePrincipal"], sorted(g["Operations"])) for g in listed] == [
        (grant["GrantId"], "someone", ["Decrypt", "Encrypt"])]
    kms.revoke_grant(KeyId=key["KeyId"], GrantId=grant["GrantId"])
    assert kms.list_grants(KeyId=key["KeyId"])["Grants"] == []
    assert kms.list_key_policies(KeyId=key["KeyId"])["PolicyNames"] == ["default"]
    policy = kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"]
    assert '"Statement"' in policy


def test_not_supported_operations_say_why(kms):
    with pytest.raises(ClientError) as replicate:
        kms.replicate_key(KeyId="x", ReplicaRegion="us-east-1")
    assert code(replicate) == "UnsupportedOperationException" and "multi-Region" in str(replicate.value)
    with pytest.raises(ClientError) as multi:
        kms.create_key(MultiRegion=True)
    assert code(multi) == "UnsupportedOperationException"


def test_epoch_dates_on_the_wire(aws_broker, root_creds):
    """Dates are JSON numbers (epoch seconds), as botocore's parser and every other SDK expect."""
    from tests.integration.aws_front_door.test_errors import signed_post
    r = signed_post(aws_broker, root_creds, "CreateKey", {"Description": "wire"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-amz-json-1.1"
    created = r.json()["KeyMetadata"]["CreationDate"]
    assert isinstance(created, float) and abs(created - time.time()) < 60
    assert base64.b64decode(signed_post(aws_broker, root_creds, "GenerateRandom",
                                        {"NumberOfBytes": 4}).json()["Plaintext"]).__len__() == 4


def test_a_grant_lets_another_principal_use_the_key(aws_broker, kms, issue):
    from tests.integration.aws_front_door.conftest import kms_client
    key = new_key(kms, "hsm")
    suffix = os.urandom(3).hex()
    grantee = kms_client(aws_broker, issue(name=f"grantee-{suffix}"))  # no policies at all
    retirer = kms_client(aws_broker, issue(name=f"retirer-{suffix}"))
    with pytest.raises(ClientError) as before:
        grantee.encrypt(KeyId=key["Arn"], Plaintext=b"x")
    assert code(before) == "AccessDeniedException"
    grant = kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=f"grantee-{suffix}", Operations=["Encrypt"],
                             RetiringPrincipal=f"retirer-{suffix}",
                             Constraints={"EncryptionContextSubset": {"app": "granted"}})
    time.sleep(1.5)  # grants reach every process within auth_cache_seconds (grant tokens do not shortcut it yet)
    assert grantee.encrypt(KeyId=key["Arn"], Plaintext=b"x", EncryptionContext={"app": "granted"},
                           GrantTokens=[grant["GrantToken"]])["KeyId"] == key["Arn"]
    with pytest.raises(ClientError) as outside_constraint:
        grantee.encrypt(KeyId=key["Arn"], Plaintext=b"x", EncryptionContext={"app": "other"})
    assert code(outside_constraint) == "AccessDeniedException"
    with pytest.raises(ClientError) as not_granted:
        grantee.generate_data_key(KeyId=key["Arn"], KeySpec="AES_256", EncryptionContext={"app": "granted"})
    assert code(not_granted) == "AccessDeniedException"
    retirable = kms.list_retirable_grants(RetiringPrincipal=f"retirer-{suffix}")["Grants"]
    assert [g["GrantId"] for g in retirable] == [grant["GrantId"]]
    retirer.retire_grant(GrantToken=grant["GrantToken"])
    time.sleep(1.5)  # the policy engine's grant cache (auth_cache_seconds)
    with pytest.raises(ClientError) as after:
        grantee.encrypt(KeyId=key["Arn"], Plaintext=b"x", EncryptionContext={"app": "granted"})
    assert code(after) == "AccessDeniedException"
