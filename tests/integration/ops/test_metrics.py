"""A Prometheus scrape of a real gunicorn broker (two workers): every worker's counts add up, the health gauges are
measured at the scrape, the endpoint needs a token holding broker:ReadMetrics and each scrape is audited."""

from __future__ import annotations

import base64
import json
import sqlite3
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import init_data_dir, start_broker

READER = {"Statement": [{"Effect": "Allow", "Action": "broker:ReadMetrics", "Resource": "metrics/*"}]}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _job_runs(data) -> int:
    con = sqlite3.connect(f"file:{data / 'broker.db'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COALESCE(SUM(runs), 0) FROM job_leases").fetchone()[0]
    finally:
        con.close()


def test_scrape_counts_every_worker_and_is_authorized_and_audited(tmp_path):
    data = tmp_path / "data"
    root = init_data_dir(data)
    config = data / "broker.toml"  # the leased job loop ticks (and is counted) during the test
    config.write_text("job_interval_seconds = 1\n" + config.read_text())
    broker = start_broker(data, tmp_path / "logs", workers=2, name="metrics")
    try:
        api = broker.session(root)
        assert api.put(broker.url("/policies/metrics-reader"), json={"Document": READER}).ok
        reader = api.post(broker.url("/auth/token/create"), json={"policies": ["metrics-reader"]}).json()
        reader_token = reader["auth"]["client_token"]
        key = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        for _ in range(12):  # new connections: gunicorn spreads them over both workers
            r = requests.post(broker.url(f"/keys/{key}/encrypt"), headers={"X-KMSB-Token": root},
                              json={"Plaintext": base64.b64encode(b"m").decode()}, timeout=10)
            assert r.status_code == 200
        assert requests.post(broker.url(f"/keys/{key}/encrypt"), headers={"X-KMSB-Token": reader_token},
                             json={"Plaintext": "bQ=="}, timeout=10).status_code == 403

        deadline = time.monotonic() + 60  # a bound on waiting for the job loop's first round, not a check
        while not _job_runs(data) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert requests.get(broker.url("/metrics"), timeout=10).status_code == 401
        assert requests.get(broker.url("/metrics"), headers={"X-KMSB-Token": api.post(
            broker.url("/auth/token/create"), json={"policies": ["default"]}).json()["auth"]["client_token"]},
            timeout=10).status_code == 403
        written = len((data / "audit" / "audit.jsonl").read_text().splitlines())
        assert api.get(broker.url("/audit/events")).ok  # an audit query brings the store's copy up to the file
        scrape = requests.get(broker.url("/metrics"), headers={"Authorization": f"Bearer {reader_token}"},
                              timeout=10)
        assert scrape.status_code == 200 and scrape.headers["Content-Type"].startswith("text/plain")
        m = _samples(scrape.text)
        assert m[("kmsb_requests_total", (("action", "kms:Encrypt"), ("outcome", "allowed")))] == 12
        assert m[("kmsb_requests_total", (("action", "kms:Encrypt"), ("outcome", "denied")))] == 1
        assert m[("kmsb_request_seconds_count", (("action", "kms:Encrypt"),))] == 13
        assert m[("kmsb_audit_batch_records_count", ())] >= 1 and m[("kmsb_audit_flush_seconds_sum", ())] > 0
        assert m[("kmsb_audit_mirrored_records_total", ())] >= written
        assert m[("kmsb_audit_mirror_failures_total", ())] == 0
        assert m[("kmsb_provider_up", (("provider", "hsm"),))] == 1
        assert m[("kmsb_hsm_session_up", ())] == 1
        assert m[("kmsb_dependency_up", (("dependency", "audit"),))] == 1
        assert m[("kmsb_dependency_up", (("dependency", "store"),))] == 1
        assert any(name == "kmsb_job_runs_total" and dict(labels).get("job") == "keys"
                   for name, labels in m), "the leased jobs ran and were counted"
        assert key not in scrape.text and root not in scrape.text, "no key id or token in a metric"
        records = [json.loads(line) for line in (data / "audit" / "audit.jsonl").read_text().splitlines()]
        scrapes = [r for r in records if r.get("action") == "broker:ReadMetrics"]
        assert [r["outcome"] for r in scrapes] == ["denied", "denied", "allowed"]  # no token, no right, the scrape
    finally:
        broker.server.stop()
