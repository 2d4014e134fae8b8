"""Every route passes the gate: the Flask url_map and the AWS operation table against what is declared and audited.

* structurally: every URL rule is a native `op()` route (whose view checks, after the route returns, that an
  audited gate operation ran), the AWS dispatcher (which checks the same after each handler), or the console's own
  blueprint; only the three probes (health, readiness, this document) are declared unaudited;
* live, on a real broker, as root and as a narrow token: every native route and every AWS operation leaves an audit
  record under its request id, and none answers 5xx;
* the check itself: a route whose service call returns without an audited operation answers 500
  KMSInternalException instead of its success (run in a child process: it patches the service).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from broker.api.aws import OPERATIONS
from tests.support.broker import RunningBroker, start_broker
from tests.support.doors import AwsCreds, aws, child_token, issue_aws_creds, native, records_of

PROBES = {"Health", "Ready", "OpenAPI"}
ROOT = Path(__file__).resolve().parents[2]


_CHILD = textwrap.dedent("""
    import json, sys, tempfile, subprocess
    from pathlib import Path
    folder = Path(tempfile.mkdtemp()) / "data"
    out = subprocess.run([sys.executable, "-m", "broker.cli", "init", "--data-dir", str(folder), "--output", "json"],
                         check=True, capture_output=True, text=True)
    token = json.loads(out.stdout)["root_token"]
    from broker.api.native import ROUTES
    from broker.app import create_app
    from broker.auth import Principal
    from broker.settings import load_settings
    app = create_app(load_settings(folder))
    report = {"rules": [], "docs": [{"operation": r.operation, "authenticated": r.authenticated,
                                     "audited": r.audited} for r in ROUTES]}
    for rule in app.url_map.iter_rules():
        how = "op" if hasattr(app.view_functions[rule.endpoint], "route_doc") else rule.endpoint
        report["rules"].append((rule.rule, rule.endpoint, how))

    client = app.test_client()
    key = client.post("/v1/keys", json={}, headers={"X-KMSB-Token": token}).get_json()["KeyMetadata"]["KeyId"]
    # a route whose call reaches no gate operation (what a view that skipped the service would do)
    app.extensions["kms_service"].enable_key = lambda ctx, ref: None
    r = client.post(f"/v1/keys/{key}/enable", headers={"X-KMSB-Token": token})
    report["native"] = [r.status_code, r.get_json()["error"]["code"]]
    # the same through the AWS door (its SigV4 authenticator replaced: the dispatcher is what is tested)
    app.extensions["kms_authenticators"]["aws"] = lambda req: Principal("root", "sigv4", ("root",))
    r = client.post("/", data=json.dumps({"KeyId": key}), headers={
        "X-Amz-Target": "TrentService.EnableKey", "Content-Type": "application/x-amz-json-1.1"})
    report["aws"] = [r.status_code, json.loads(r.data)["__type"]]
    log = (folder / "audit" / "audit.jsonl").read_text().splitlines()
    report["audited"] = [json.loads(x).get("error_code") for x in log[-2:]]
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def child() -> dict:
    """The real app, built in a child process from a fresh data folder (it patches a service, and SoftHSM reads
    one token configuration per process)."""
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_url_rule_is_a_declared_route_the_aws_dispatcher_or_the_console(child):
    rules, docs = child["rules"], child["docs"]
    kinds = {}
    for rule, endpoint, how in rules:
        blueprint = endpoint.split(".")[0] if "." in endpoint else ""
        if how == "op":
            kinds[rule] = "native"
        elif endpoint == "aws.dispatch":
            kinds[rule] = "aws"
        elif blueprint == "console" and rule.startswith("/ui"):
            kinds[rule] = "console"  # the console is its own door (HTML forms), with its own tests
        else:
            pytest.fail(f"{rule} ({endpoint}) is neither an op() route, the AWS dispatcher nor the console")
    assert "/" in kinds and kinds["/"] == "aws"
    assert sum(1 for k in kinds.values() if k == "native") > 60 and len(docs) > 90
    unaudited = {d["operation"] for d in docs if not d["audited"]}
    assert unaudited == PROBES
    assert not any(d["authenticated"] for d in docs if not d["audited"])


# ------------------------------------------------------------------------------------------------ live


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("routes-audited")
    running = start_broker(base / "data", base / "logs", workers=1, name="broker-routes")
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def key_id(broker: RunningBroker) -> str:
    r = native(broker, "POST", "/keys", body={"Description": "route audit"})
    assert r.status_code == 201, r.text
    return r.json()["KeyMetadata"]["KeyId"]


def _native_calls(broker: RunningBroker, key_id: str) -> list[tuple[str, str, str]]:
    doc = requests.get(broker.url("/openapi.json"), timeout=10).json()
    fill = {"key": key_id, "mk": "no-such-multikey", "name": "x", "grant_id": "g", "access_key_id": "AKIAX"}
    calls = []
    for path, ops in doc["paths"].items():
        for method, spec in ops.items():
            concrete = re.sub(r"\{(\w+)\}", lambda m: fill.get(m.group(1), "x"), path)[len("/v1"):]
            calls.append((spec["operationId"], method.upper(), concrete))
    return calls


@pytest.mark.parametrize("who", ["root", "key-user"])
def test_every_native_route_is_audited_and_never_a_5xx(broker, key_id, who):
    calls = _native_calls(broker, key_id)
    assert len(calls) > 80
    token = broker.root_token if who == "root" else child_token(broker, "key-user", name="narrow")
    unaudited = []
    for operation, method, path in calls:
        use = child_token(broker, "root") if operation == "RevokeSelfToken" else token
        r = native(broker, method, path, body={} if method in ("POST", "PUT", "PATCH") else None, token=use)
        assert r.status_code < 500 or (operation == "Ready" and r.status_code == 503), (operation, r.text[:300])
        records = records_of(broker, r.headers["X-Request-Id"])
        if operation in PROBES:
            assert records == [], operation
        elif not records:
            unaudited.append(operation)
    assert unaudited == []


@pytest.mark.parametrize("who", ["root", "key-user"])
def test_every_aws_operation_is_audited_and_never_a_5xx(broker, key_id, who):
    creds: AwsCreds = issue_aws_creds(broker, "root" if who == "root" else "key-user")
    unaudited = []
    for operation in sorted(OPERATIONS):
        r = aws(broker, creds, operation, body={"KeyId": key_id})
        assert r.status_code < 500, (operation, r.text[:300])
        if not records_of(broker, r.headers["x-amzn-RequestId"]):
            unaudited.append(operation)
    assert unaudited == []


# ------------------------------------------------------------------------------------------------ the check itself


def test_a_route_that_answers_without_an_audited_operation_is_an_internal_error(child):
    assert child["native"] == [500, "KMSInternalException"]
    assert child["aws"] == [500, "KMSInternalException"]
    assert child["audited"] == ["KMSInternalException", "KMSInternalException"]  # the refusal itself is audited
