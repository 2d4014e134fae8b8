"""LDAP over TLS against a real slapd with a throwaway CA: StartTLS, LDAPS, and refusing an unknown CA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.auth.config import LdapSettings
from broker.auth.ldap_auth import LdapAuth
from broker.errors import DependencyTimeout
from tests.support.slapd import SUFFIX, LdapUser, RunningSlapd, make_tls_files, start_slapd

TEMPLATE = f"uid={{username}},ou=people,{SUFFIX}"


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSlapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd-tls"), [LdapUser("erin", "erin-pw", ["admins"])], tls=True)
    yield server
    server.stop()


def auth(url: str, **extra) -> LdapAuth:
    return LdapAuth(LdapSettings(url=url, userdn_template=TEMPLATE, group_search_base=f"ou=groups,{SUFFIX}",
                                 group_policies={"admins": ["key-admin"]}, timeout=3, **extra))


def test_starttls_with_the_right_ca(tls_slapd):
    ident = auth(tls_slapd.url, starttls=True, ca_file=str(tls_slapd.ca_file)).login("erin", "erin-pw")
    assert ident.policies == ["key-admin"]


def test_ldaps_with_the_right_ca(tls_slapd):
    ident = auth(tls_slapd.ldaps_url, ca_file=str(tls_slapd.ca_file)).login("erin", "erin-pw")
    assert ident.policies == ["key-admin"]


def test_unknown_ca_is_refused(tls_slapd, tmp_path):
    other_ca = make_tls_files(tmp_path)[0]
    with pytest.raises(DependencyTimeout):
        auth(tls_slapd.url, starttls=True, ca_file=str(other_ca)).login("erin", "erin-pw")
    with pytest.raises(DependencyTimeout):
        auth(tls_slapd.ldaps_url, ca_file=str(other_ca)).login("erin", "erin-pw")
