"""A broker on PostgreSQL while PostgreSQL goes down and comes back: every answer meanwhile is a 503 (never a 500 or
a traceback), readiness says the store is unavailable, and the broker serves again without a restart."""

from __future__ import annotations

import base64
import re

import requests

from broker.auth import TokenAuth
from broker.store import Store
from tests.support.broker import init_data_dir, start_broker
from tests.support.postgres import start_postgres


def _on_postgres(data_dir, url: str) -> str:
    init_data_dir(data_dir)
    config = data_dir / "broker.toml"
    config.write_text(re.sub(r"^store_url = .*$", f'store_url = "{url}"', config.read_text(), flags=re.M))
    store = Store(url)
    store.migrate()
    token, _ = TokenAuth(store).create("root", ["root"])
    store.dispose()
    return token


def test_postgres_down_means_503_and_the_broker_recovers_without_a_restart(tmp_path):
    pg = start_postgres(tmp_path / "pg-logs")
    broker = None
    try:
        token = _on_postgres(tmp_path / "data", pg.create_database("kmsb_outage"))
        broker = start_broker(tmp_path / "data", tmp_path / "logs", workers=2, name="pg-broker",
                              env={"KMSB_AUTH_CACHE_SECONDS": "0"})  # every request reads its token from the store
        api = broker.session(token)
        key = api.post(broker.url("/keys"), json={}).json()["KeyMetadata"]["KeyId"]
        body = {"Plaintext": base64.b64encode(b"acknowledged").decode()}
        blob = api.post(broker.url(f"/keys/{key}/encrypt"), json=body).json()["CiphertextBlob"]
        pid = broker.server.pid
        for _ in range(8):  # new connections: every worker holds its audit writer's kept store connection
            assert requests.post(broker.url(f"/keys/{key}/encrypt"), json=body, headers=api.headers,
                                 timeout=30).status_code == 200

        pg.halt()  # the questions below go over one keep-alive connection: other workers stay idle throughout
        try:
            seen = set()
            for _ in range(6):
                r = api.post(broker.url(f"/keys/{key}/encrypt"), json=body)
                seen.add((r.status_code, r.json()["error"]["code"]))
                r = api.post(broker.url("/decrypt"), json={"CiphertextBlob": blob})
                seen.add((r.status_code, r.json()["error"]["code"]))
            assert seen == {(503, "ServiceUnavailableException")}, seen
            ready = requests.get(broker.url("/ready"), timeout=10)
            assert ready.status_code == 503 and ready.json()["store"].startswith("unavailable"), ready.text
            # the AWS door too: its credential lookup and operations answer 503 as AWS's ServiceUnavailable
            aws = requests.post(broker.url("/").replace("/v1/", "/"), data="{}", timeout=10, headers={
                "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1",
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20300101/us-east-1/kms/aws4_request, "
                                 "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
                "X-Amz-Date": "20300101T000000Z"})
            assert aws.status_code in (400, 503) and aws.status_code != 500, aws.text
        finally:
            pg.resume(tmp_path / "pg-logs")

        # Once PostgreSQL answers again, so does the broker, from its first request on: the request pools ping a
        # connection before use, and each worker's audit writer replaces its kept connection instead of refusing.
        # New connections (not a keep-alive session) spread the requests over both workers.
        for _ in range(8):
            r = requests.post(broker.url("/decrypt"), json={"CiphertextBlob": blob}, headers=api.headers, timeout=30)
            assert r.status_code == 200, r.text
            assert base64.b64decode(r.json()["Plaintext"]) == b"acknowledged"
            r = requests.post(broker.url(f"/keys/{key}/encrypt"), json=body, headers=api.headers, timeout=30)
            assert r.status_code == 200, r.text
        assert requests.get(broker.url("/ready"), timeout=10).status_code == 200
        assert broker.server.pid == pid and broker.server.proc.poll() is None
        log = broker.server.log_path.read_text()
        assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
    finally:
        if broker is not None:
            broker.server.stop()
        pg.stop()
