"""Audit pages over HTTP: the stream and its filters, the export, the chain panel, the charts, the key page's recent
events; reading is itself audited, and a principal without broker:ReadAudit is refused."""

from __future__ import annotations

import base64
import json
import re

import requests

from tests.console.conftest import Console, api, make_key, make_token


def _encrypt(broker, key: str) -> None:
    r = api(broker, "POST", f"/keys/{key}/encrypt", json={"Plaintext": base64.b64encode(b"console").decode(),
                                                          "EncryptionContext": {"app": "console-test"}})
    assert r.status_code == 200, r.text


def test_the_stream_filters_by_key_and_outcome_and_shows_each_record(admin: Console) -> None:
    key = make_key(admin.broker)
    _encrypt(admin.broker, key)
    page = admin.get(f"/ui/audit?key={key}")
    assert page.status_code == 200
    assert "kms:Encrypt" in page.text and "kms:CreateKey" in page.text
    assert "console-test" not in page.text  # encryption context values are HMAC'd in records, never in clear
    allowed = re.findall(r'<tr class="outcome-allowed">\s*<td><time>[^<]*</time></td><td>root</td><td>([^<]+)</td>',
                         page.text)
    assert sorted(allowed) == ["kms:CreateKey", "kms:Encrypt"]
    assert '<tr class="outcome-' not in admin.get(f"/ui/audit?key={key}&outcome=denied").text
    rows = admin.get(f"/ui/audit/rows?key={key}&action=kms:Encrypt")
    assert rows.status_code == 200 and rows.text.count('<tr class="outcome-allowed"') == 1
    assert "<html" not in rows.text


def test_export_is_json_lines_of_the_filtered_records(admin: Console) -> None:
    key = make_key(admin.broker)
    for _ in range(3):
        _encrypt(admin.broker, key)
    r = admin.get(f"/ui/audit/export.jsonl?key={key}&action=kms:Encrypt")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    assert "attachment" in r.headers["Content-Disposition"]
    records = [json.loads(line) for line in r.text.splitlines()]
    assert len(records) == 3 and all(rec["action"] == "kms:Encrypt" and rec["key_id"] == key for rec in records)
    assert [rec["seq"] for rec in records] == sorted(rec["seq"] for rec in records)


def test_reading_the_audit_log_is_audited_and_needs_read_audit(console_broker, admin: Console) -> None:
    admin.get("/ui/audit?action=kms:NoSuchAction")
    reads = api(console_broker, "GET", "/audit/events", params={"action": "broker:ReadAudit", "order": "desc"}).json()
    assert any(e["front_door"] == "console" and e["principal"] == "root" for e in reads["Events"])
    nobody = Console(console_broker, requests.Session())
    nobody.login(make_token(console_broker, ["key-user"]), check=False)
    for path in ("/ui/audit", "/ui/audit/rows", "/ui/audit/export.jsonl", "/ui/activity"):
        r = nobody.get(path)
        assert r.status_code == 403, path
        assert '"Events"' not in r.text


def test_bad_filters_are_a_400_in_the_page(admin: Console) -> None:
    for query in ("since=yesterday", "until=13/01/2026", "outcome=maybe", "marker=abc"):
        r = admin.get(f"/ui/audit?{query}")
        assert r.status_code == 400, query
        assert 'role="alert"' in r.text


def test_the_chain_panel_and_the_charts(admin: Console) -> None:
    key = make_key(admin.broker)
    for _ in range(60):  # the busiest key of the last half hour, whatever else the suite did
        _encrypt(admin.broker, key)
    page = admin.get("/ui/audit").text
    assert 'id="chain-head">seq ' in page
    activity = admin.get("/ui/activity")
    assert activity.status_code == 200
    html = activity.text
    assert html.count("<svg") == 4 and 'role="img"' in html
    assert 'class="o-allowed"' in html          # requests per minute, allowed
    top = html.split('id="chart-3"')[1].split("</figure>")[0]
    assert key in top                           # the most used keys (in the data table at least)
    assert "<script" not in html.split("</head>")[1]


def test_the_key_page_lists_its_recent_events(admin: Console) -> None:
    key = make_key(admin.broker)
    _encrypt(admin.broker, key)
    page = admin.get(f"/ui/keys/{key}").text
    section = page.split('id="key-events"')[1].split("</table>")[0]
    assert "kms:Encrypt" in section and "kms:CreateKey" in section


def test_verify_now_shows_how_far_the_chain_verified(console_broker, auditor: Console) -> None:
    """The chain panel runs `audit verify --data-dir` on request (broker:VerifyAudit, in `auditor`): "verified up to
    seq N"; the API answers the same; a principal without the right sees why, and the chain is not read for it."""
    _encrypt(console_broker, make_key(console_broker))
    page = auditor.get("/ui/audit?verify=1")
    assert page.status_code == 200
    shown = re.search(r'id="chain-verified" role="status">\s*<p class="ok">Verified up to seq (\d+)', page.text)
    assert shown, page.text[:3000]
    status = api(console_broker, "GET", "/audit/verify").json()
    assert status["Ok"] is True and status["Report"]["problems"] == []
    assert status["VerifiedSeq"] >= int(shown.group(1))  # the chain only grows (each verify is audited too)
    denied = api(console_broker, "GET", "/audit/verify", token=make_token(console_broker, ["key-user"]))
    assert denied.status_code == 403
    records = api(console_broker, "GET", "/audit/events",
                  params={"action": "broker:VerifyAudit", "order": "desc", "limit": 5}).json()["Events"]
    assert records[0]["outcome"] == "denied" and any(r["outcome"] == "allowed" and r.get("chain_ok") is True
                                                     and r.get("verified_seq") for r in records)
