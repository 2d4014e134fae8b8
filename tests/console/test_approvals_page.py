"""The approvals inbox over HTTP: an approver sees a pending request with exactly what would run, approves it with
the digest it saw, vetoes another; the requester and a stale digest are refused, and nothing changes."""

from __future__ import annotations

import re

import pytest
import requests

from tests.console.conftest import Console, api, make_key

APPROVER = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
    "broker:ListApprovals", "broker:GetApproval", "broker:Approve", "broker:Veto", "broker:RequestApproval",
    "broker:DestroyKeyNow", "kms:DescribeKey"]}]}


def _token(broker, name: str) -> str:
    r = api(broker, "POST", "/auth/token/create", json={"policies": ["approver"], "display_name": name})
    assert r.status_code == 200, r.text
    return r.json()["auth"]["client_token"]


@pytest.fixture(scope="module")
def people(console_broker) -> dict[str, str]:
    assert api(console_broker, "PUT", "/policies/approver", json={"Document": APPROVER}).status_code == 200
    r = api(console_broker, "PUT", "/approvals/rules/key-destroy",
            json={"Approvers": ["alice-approver", "bob-approver"], "Required": 2, "CoolingOffSeconds": 0})
    assert r.status_code == 200, r.text
    return {n: _token(console_broker, n) for n in ("alice-approver", "bob-approver", "carol-requester")}


def _request(broker, token: str) -> str:
    """A key whose key policy lets the designated people destroy it (the default key policy enables kms:* only)."""
    key = make_key(broker, "to destroy")
    policy = {"Statement": [
        {"Sid": "owner", "Effect": "Allow", "Principal": {"Account": "self"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "quorum", "Effect": "Allow", "Principal": {"Broker": ["alice-approver", "bob-approver",
                                                                     "carol-requester"]},
         "Action": ["broker:DestroyKeyNow"], "Resource": "*"}]}
    assert api(broker, "PUT", f"/keys/{key}/policy", json={"Policy": policy}).status_code == 200
    r = api(broker, "POST", "/approvals", token=token, json={"Operation": "key-destroy", "Params": {"KeyId": key},
                                                            "Reason": "<b>decommission</b>"})
    assert r.status_code == 201, r.text
    return r.json()["RequestId"]


def _as(broker, token: str) -> Console:
    c = Console(broker, requests.Session())
    c.login(token, check=False)
    return c


def test_an_approver_reviews_and_approves_with_the_digest_it_saw(console_broker, people) -> None:
    rid = _request(console_broker, people["carol-requester"])
    alice = _as(console_broker, people["alice-approver"])
    inbox = alice.get("/ui/approvals")
    assert inbox.status_code == 200 and f'data-request="{rid}"' in inbox.text and "your vote" in inbox.text
    page = alice.get(f"/ui/approvals/{rid}")
    assert "&lt;b&gt;decommission&lt;/b&gt;" in page.text and "&#34;key_id&#34;" in page.text
    digest = re.search(r'name="digest" value="([0-9a-f]{64})"', page.text).group(1)
    before = console_broker.snapshot()
    stale = alice.post(f"/ui/approvals/{rid}/approve", {"digest": "0" * 64})
    assert stale.status_code == 400 and 'role="alert"' in stale.text
    assert console_broker.snapshot() == before
    assert alice.post(f"/ui/approvals/{rid}/approve", {"digest": digest}).status_code == 302
    shown = alice.get(f"/ui/approvals/{rid}").text
    assert re.search(r'id="approval-votes">1 / 2 \(alice-approver\)', shown)
    assert 'id="approve" disabled' in shown          # it voted already
    again = alice.post(f"/ui/approvals/{rid}/approve", {"digest": digest})
    assert again.status_code == 409


def test_the_requester_cannot_vote_on_its_own_request(console_broker, people) -> None:
    rid = _request(console_broker, people["carol-requester"])
    carol = _as(console_broker, people["carol-requester"])
    page = carol.get(f"/ui/approvals/{rid}").text
    assert 'id="approve" disabled' in page and 'id="veto" class="danger" disabled' in page
    digest = re.search(r'name="digest" value="([0-9a-f]{64})"', page).group(1)
    r = carol.post(f"/ui/approvals/{rid}/approve", {"digest": digest})
    assert r.status_code == 403
    assert api(console_broker, "GET", f"/approvals/{rid}").json()["Approvals"] == []


def test_a_veto_closes_the_request(console_broker, people) -> None:
    rid = _request(console_broker, people["carol-requester"])
    bob = _as(console_broker, people["bob-approver"])
    bob.get(f"/ui/approvals/{rid}")
    assert bob.post(f"/ui/approvals/{rid}/veto", {"reason": "not today"}).status_code == 302
    assert api(console_broker, "GET", f"/approvals/{rid}").json()["State"] == "vetoed"
    assert f'data-request="{rid}"' in bob.get("/ui/approvals?state=vetoed").text
    assert f'data-request="{rid}"' not in bob.get("/ui/approvals").text
    assert bob.get("/ui/approvals?state=bogus").status_code == 400
    assert bob.get("/ui/approvals/not-an-id").status_code == 400
