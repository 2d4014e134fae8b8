"""Principal attributes from every method reach the policy engine: `${broker:PrincipalTag/<k>}` scopes keys."""

from __future__ import annotations

import base64

import pytest

from tests.integration.identity.conftest import AUDIENCE, ISSUER, anon

REPO_SCOPED = {"Version": "2012-10-17", "Statement": [{
    "Sid": "OwnRepoKeysOnly", "Effect": "Allow", "Action": ["kms:Encrypt"], "Resource": "*",
    "Condition": {"StringEquals": {"kms:ResourceTag/repo": "${broker:PrincipalTag/repo}"}},
}]}


@pytest.fixture(scope="module")
def repo_keys(ib) -> dict[str, str]:
    root = ib.session()
    r = root.put(ib.url("/policies/repo-scoped"), json={"Document": REPO_SCOPED})
    assert r.status_code in (200, 201, 204), r.text
    keys = {}
    for repo in ("org/app", "org/other"):
        r = root.post(ib.url("/keys"), json={"Description": repo, "Tags": {"repo": repo}})
        assert r.status_code == 201, r.text
        keys[repo] = r.json()["KeyMetadata"]["KeyId"]
    return keys


def encrypt(ib, token: str, key: str) -> int:
    r = ib.session(token).post(ib.url(f"/keys/{key}/encrypt"), json={"Plaintext": base64.b64encode(b"x").decode()})
    return r.status_code


def test_token_metadata_scopes_keys(ib, repo_keys):
    auth = ib.session().post(ib.url("/auth/token/create"),
                             json={"policies": ["repo-scoped"], "meta": {"repo": "org/other"}}).json()["auth"]
    assert encrypt(ib, auth["client_token"], repo_keys["org/other"]) == 200
    assert encrypt(ib, auth["client_token"], repo_keys["org/app"]) == 403


def test_jwt_claims_scope_keys(ib, keys, repo_keys):
    role = {"jwks_file": str(keys.jwks_file), "bound_issuer": ISSUER, "bound_audiences": [AUDIENCE],
            "claim_attributes": {"repository": "repo"}, "policies": ["repo-scoped"]}
    assert ib.session().post(ib.url("/auth/jwt/role/repo-role"), json=role).status_code == 204
    r = anon().post(ib.url("/auth/jwt/login"), json={"role": "repo-role", "jwt": keys.sign_rsa()})
    assert r.status_code == 200, r.text
    token = r.json()["auth"]["client_token"]
    assert encrypt(ib, token, repo_keys["org/app"]) == 200
    assert encrypt(ib, token, repo_keys["org/other"]) == 403


def test_a_token_without_the_attribute_matches_nothing(ib, repo_keys):
    auth = ib.session().post(ib.url("/auth/token/create"), json={"policies": ["repo-scoped"]}).json()["auth"]
    for key in repo_keys.values():
        assert encrypt(ib, auth["client_token"], key) == 403
