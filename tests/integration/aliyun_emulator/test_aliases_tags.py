"""Aliases (usable wherever a KeyId is) and tags."""

from __future__ import annotations

import json
import uuid

import pytest

from .helpers import aliyun_error, call, new_key


def _alias() -> str:
    return f"alias/test-{uuid.uuid4().hex[:12]}"


def test_alias_is_usable_as_key_id_and_can_be_repointed(kms):
    k1, k2 = new_key(kms)["KeyId"], new_key(kms)["KeyId"]
    alias = _alias()
    call(kms, "create_alias", alias_name=alias, key_id=k1)
    assert call(kms, "describe_key", key_id=alias)["KeyMetadata"]["KeyId"] == k1
    enc = call(kms, "encrypt", key_id=alias, plaintext="via alias")
    assert enc["KeyId"] == k1
    call(kms, "update_alias", alias_name=alias, key_id=k2)
    assert call(kms, "encrypt", key_id=alias, plaintext="x")["KeyId"] == k2
    assert call(kms, "decrypt", ciphertext_blob=enc["CiphertextBlob"])["Plaintext"] == "via alias"
    call(kms, "delete_alias", alias_name=alias)
    with aliyun_error("Forbidden.AliasNotFound", 404):
        call(kms, "describe_key", key_id=alias)


def test_key_arn_is_usable_as_key_id(kms):
    meta = new_key(kms)
    assert call(kms, "describe_key", key_id=meta["Arn"])["KeyMetadata"]["KeyId"] == meta["KeyId"]


def test_list_aliases_and_by_key_id(kms):
    key_id = new_key(kms)["KeyId"]
    names = sorted(_alias() for _ in range(2))
    for name in names:
        call(kms, "create_alias", alias_name=name, key_id=key_id)
    by_key = call(kms, "list_aliases_by_key_id", key_id=key_id)
    assert [a["AliasName"] for a in by_key["Aliases"]["Alias"]] == names and by_key["TotalCount"] == 2
    assert all(a["KeyId"] == key_id and a["AliasArn"].endswith(a["AliasName"]) for a in by_key["Aliases"]["Alias"])
    everything = call(kms, "list_aliases", page_size=100)
    assert set(names) <= {a["AliasName"] for a in everything["Aliases"]["Alias"]}


def test_alias_rules(kms):
    key_id = new_key(kms)["KeyId"]
    alias = _alias()
    call(kms, "create_alias", alias_name=alias, key_id=key_id)
    with aliyun_error("EntityAlreadyExists.Alias", 400):
        call(kms, "create_alias", alias_name=alias, key_id=key_id)
    with aliyun_error("InvalidParameter", 400):
        call(kms, "create_alias", alias_name="no-prefix", key_id=key_id)
    with aliyun_error("Forbidden.KeyNotFound", 404):
        call(kms, "create_alias", alias_name=_alias(), key_id=str(uuid.uuid4()))
    with aliyun_error("Forbidden.AliasNotFound", 404):
        call(kms, "update_alias", alias_name=_alias(), key_id=key_id)
    with aliyun_error("Forbidden.AliasNotFound", 404):
        call(kms, "delete_alias", alias_name=_alias())


def test_tag_untag_and_list(kms):
    key_id = new_key(kms, tags=json.dumps([{"TagKey": "created", "TagValue": "at-birth"}]))["KeyId"]
    call(kms, "tag_resource", key_id=key_id, tags=json.dumps([{"TagKey": "env", "TagValue": "test"},
                                                               {"TagKey": "team", "TagValue": "kms"}]))
    tags = call(kms, "list_resource_tags", key_id=key_id)["Tags"]["Tag"]
    assert {t["TagKey"]: t["TagValue"] for t in tags} == {"created": "at-birth", "env": "test", "team": "kms"}
    assert all(t["KeyId"] == key_id for t in tags)
    call(kms, "untag_resource", key_id=key_id, tag_keys=json.dumps(["env", "created"]))
    tags = call(kms, "list_resource_tags", key_id=key_id)["Tags"]["Tag"]
    assert [(t["TagKey"], t["TagValue"]) for t in tags] == [("team", "kms")]


@pytest.mark.parametrize("tags", ['[{"TagKey":"acs:reserved","TagValue":"x"}]', "not json", '{"TagKey":"k"}'])
def test_invalid_tags_are_rejected(kms, tags):
    key_id = new_key(kms)["KeyId"]
    with aliyun_error("InvalidParameter", 400):
        call(kms, "tag_resource", key_id=key_id, tags=tags)


def test_list_aliases_pages(kms):
    key_id = new_key(kms)["KeyId"]
    for _ in range(3):
        call(kms, "create_alias", alias_name=_alias(), key_id=key_id)
    total = call(kms, "list_aliases", page_size=1)["TotalCount"]
    names = [call(kms, "list_aliases", page_number=n, page_size=1)["Aliases"]["Alias"][0]["AliasName"]
             for n in range(1, total + 1)]
    assert len(names) == len(set(names)) == total >= 3
