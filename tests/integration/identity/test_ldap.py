"""LDAP login against a real slapd: bind as the user, groups → policies, and every way a login must fail.

The slapd here accepts unauthenticated binds (DN + empty password) on purpose, so the empty-password test proves
that the broker itself refuses them.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from broker.auth.config import LdapSettings
from broker.auth.ldap_auth import LdapAuth
from broker.errors import DependencyTimeout, Unauthenticated
from tests.integration.identity.conftest import anon, audit_records, audit_text
from tests.support.procs import free_port
from tests.support.slapd import ADMIN_DN, SUFFIX


def login(ib, username, password):
    return anon().post(ib.url("/auth/ldap/login"), json={"username": username, "password": password})


def refused(ib, username, password) -> dict:
    r = login(ib, username, password)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == "UnrecognizedClientException"
    if password:
        assert password not in r.text
    recs = [x for x in audit_records(ib) if x["request_id"] == err["request_id"]]
    assert len(recs) == 1 and recs[0]["action"] == "broker:Login" and recs[0]["login_method"] == "ldap"
    return err


def test_user_in_two_groups_gets_both_policies(ib):
    r = login(ib, "alice", "alice-pw")
    assert r.status_code == 200, r.text
    auth = r.json()["auth"]
    assert sorted(auth["policies"]) == ["key-admin", "key-user"]
    assert auth["metadata"] == {"username": "alice", "email": "alice@example.org"}
    assert 890 <= auth["lease_duration"] <= 900
    me = ib.session(auth["client_token"]).get(ib.url("/auth/token/lookup-self")).json()["data"]
    assert me["auth_method"] == "ldap" and me["display_name"] == "ldap/alice"
    assert "alice-pw" not in audit_text(ib)


def test_group_membership_maps_per_user(ib):
    assert login(ib, "bob", "bob-pw").json()["auth"]["policies"] == ["key-user"]
    assert login(ib, "dave", "dave-pw").json()["auth"]["policies"] == ["key-admin"]


def test_user_in_no_group_gets_no_policies_and_can_do_nothing(ib):
    r = login(ib, "carol", "carol-pw")
    assert r.status_code == 200
    auth = r.json()["auth"]
    assert auth["policies"] == []
    s = ib.session(auth["client_token"])
    assert s.get(ib.url("/auth/token/lookup-self")).status_code == 200
    assert s.post(ib.url("/keys"), json={}).status_code == 403


def test_wrong_password(ib):
    err = refused(ib, "alice", "bob-pw")
    assert err["message"] == "ldap login refused: invalid username or password"


def test_unknown_user_answers_like_a_wrong_password(ib):
    assert refused(ib, "mallory", "whatever")["message"] == refused(ib, "alice", "nope")["message"]


def test_empty_password_is_refused_before_any_bind(ib):
    refused(ib, "alice", "")
    refused(ib, "carol", "")


@pytest.mark.parametrize("username", [
    "*", "alice)(uid=*", "alice,ou=people", "alice+cn=x", "uid=alice,ou=people,dc=example,dc=org",
    "alice\x00", "al*", "alice\\2a", " alice", "alice\n",
])
def test_ldap_injection_in_the_username(ib, username):
    refused(ib, username, "alice-pw")


def test_missing_fields_are_400(ib):
    assert anon().post(ib.url("/auth/ldap/login"), json={"username": "alice"}).status_code == 400
    assert anon().post(ib.url("/auth/ldap/login"), json={"username": "", "password": "x"}).status_code == 400


# ------------------------------------------------------------------------------------------------- LdapAuth modes
# Search-then-bind and memberOf, straight against the same real slapd.


def search_mode(slapd, **extra) -> LdapAuth:
    return LdapAuth(LdapSettings(
        url=slapd.url, bind_dn=ADMIN_DN, bind_password=SecretStr(slapd.admin_password),
        user_search_base=f"ou=people,{SUFFIX}", user_attr="uid", user_filter="(objectClass=inetOrgPerson)",
        group_policies={"admins": ["key-admin"], "devs": ["key-user"]}, **extra))


def test_search_then_bind_with_group_search(slapd):
    auth = search_mode(slapd, group_search_base=f"ou=groups,{SUFFIX}")
    ident = auth.login("alice", "alice-pw")
    assert ident.dn == f"uid=alice,ou=people,{SUFFIX}"
    assert ident.groups == ["admins", "devs"] and sorted(ident.policies) == ["key-admin", "key-user"]
    with pytest.raises(Unauthenticated):
        auth.login("alice", "wrong")
    with pytest.raises(Unauthenticated):
        auth.login("nobody", "x")


@pytest.mark.parametrize("username", ["*", "a*", "*)(objectClass=*", "alice)(|(uid=*"])
def test_search_then_bind_escapes_filters(slapd, username):
    auth = search_mode(slapd, group_search_base=f"ou=groups,{SUFFIX}")
    with pytest.raises(Unauthenticated):
        auth.login(username, "alice-pw")


def test_member_of_mode(slapd):
    auth = search_mode(slapd, use_member_of=True)
    assert sorted(auth.login("alice", "alice-pw").policies) == ["key-admin", "key-user"]
    assert auth.login("carol", "carol-pw").policies == []
    tmpl = LdapAuth(LdapSettings(url=slapd.url, userdn_template=f"uid={{username}},ou=people,{SUFFIX}",
                                 use_member_of=True, group_policies={"devs": ["key-user"]}, policies=["base"]))
    assert tmpl.login("bob", "bob-pw").policies == ["base", "key-user"]


def test_service_account_with_wrong_password_refuses_logins(slapd):
    auth = LdapAuth(LdapSettings(url=slapd.url, bind_dn=ADMIN_DN, bind_password=SecretStr("wrong"),
                                 user_search_base=f"ou=people,{SUFFIX}"))
    with pytest.raises(Unauthenticated):
        auth.login("alice", "alice-pw")


def test_server_down_is_a_dependency_error(slapd):
    auth = LdapAuth(LdapSettings(url=f"ldap://127.0.0.1:{free_port()}", timeout=1,
                                 userdn_template=f"uid={{username}},ou=people,{SUFFIX}"))
    with pytest.raises(DependencyTimeout):
        auth.login("alice", "alice-pw")


def test_settings_never_show_the_bind_password(slapd):
    cfg = LdapSettings(url=slapd.url, bind_dn=ADMIN_DN, bind_password=SecretStr("s3cr3t-bind"),
                       user_search_base=f"ou=people,{SUFFIX}")
    assert "s3cr3t-bind" not in repr(cfg) and "s3cr3t-bind" not in str(cfg)
    assert "s3cr3t-bind" not in repr(LdapAuth(cfg))


def test_settings_validation():
    with pytest.raises(ValueError):
        LdapSettings(url="http://x")
    with pytest.raises(ValueError):
        LdapSettings(url="ldap://x")  # neither template nor search
    with pytest.raises(ValueError):
        LdapSettings(url="ldap://x", userdn_template="uid=fixed,dc=x")
    with pytest.raises(ValueError):
        LdapSettings(url="ldaps://x", userdn_template="uid={username}", starttls=True)


def test_username_case_is_normalised_to_the_directory_spelling(ib):
    r = login(ib, "ALICE", "alice-pw")
    assert r.status_code == 200
    assert r.json()["auth"]["metadata"]["username"] == "alice"
    me = ib.session(r.json()["auth"]["client_token"]).get(ib.url("/auth/token/lookup-self")).json()["data"]
    assert me["display_name"] == "ldap/alice"
