"""The cross-cloud page over HTTP: providers with health, a multi-key with its members and breaker state, a sync
manifest's plan as a diff (nothing created), and a bad manifest as a 400 in the page."""

from __future__ import annotations

from tests.console.conftest import Console, api, make_key

MANIFEST = """manifest: console-test
defaults: {targets: [hsm]}
keys:
  - name: orders-db
    description: orders database
    tags: {team: payments}
  - name: audit-sign
    spec: ECC_NIST_P256
"""


def test_providers_and_multikeys_with_member_health(admin: Console) -> None:
    members = [make_key(admin.broker, "member one"), make_key(admin.broker, "member two")]
    r = api(admin.broker, "POST", "/multikeys", json={"Name": "console-multikey", "Members": members})
    assert r.status_code == 201, r.text
    page = admin.get("/ui/cross-cloud")
    assert page.status_code == 200
    assert 'data-provider="hsm"' in page.text and "healthy" in page.text
    card = page.text.split('data-multikey="console-multikey"')[1].split("</article>")[0]
    assert all(m in card for m in members) and card.count("closed (healthy)") == 2
    used = admin.get(f"/ui/keys/{members[0]}").text.split('id="used-by"')[1].split("</ul>")[0]
    assert "member of multi-key console-multikey" in used
    errors = api(admin.broker, "GET", "/audit/events", params={"key": members[0], "outcome": "error"}).json()
    assert errors["Events"] == []  # looking at a key page leaves no error records behind


def test_a_sync_plan_is_a_readable_diff_and_changes_nothing(admin: Console) -> None:
    admin.get("/ui/cross-cloud")
    before = admin.broker.snapshot()
    r = admin.post("/ui/cross-cloud/plan", {"manifest": MANIFEST})
    assert r.status_code == 200, r.text[-800:]
    diff = r.text.split('class="diff"')[1].split("</pre>")[0]
    assert "+ create orders-db" in diff and "+ create audit-sign" in diff
    assert admin.broker.snapshot() == before


def test_a_bad_manifest_is_a_400_in_the_page_and_audited(admin: Console) -> None:
    admin.get("/ui/cross-cloud")
    r = admin.post("/ui/cross-cloud/plan", {"manifest": "manifest: x\nkeys: [{name: 'bad name!'}]\n"})
    assert r.status_code == 400 and 'id="plan-error"' in r.text and "Traceback" not in r.text
    r = admin.post("/ui/cross-cloud/plan", {"manifest": "{{{{ not yaml"})
    assert r.status_code == 400 and 'id="plan-error"' in r.text


def test_a_replicated_key_lookup_of_a_plain_key_says_so(admin: Console) -> None:
    key = make_key(admin.broker)
    r = admin.get(f"/ui/cross-cloud?replicated={key}")
    assert r.status_code == 200 and 'role="alert"' in r.text
