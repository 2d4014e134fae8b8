"""The served OpenAPI document is valid and complete, and the API it describes holds to it under schemathesis.

* the document validates (openapi-spec-validator, OpenAPI 3.1), every `$ref` resolves, and it names every route
  of the real app, every query parameter a route reads and every body it parses;
* schemathesis generates requests from the document against a real broker (gunicorn + SoftHSM), once with a root
  token and once with a narrow (key-user) token: no 5xx, and every response conforms to the document (status
  code, content type, headers, body schema). A bounded, derandomized number of examples keeps it in CI's budget.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig

from tests.support.broker import RunningBroker, start_broker
from tests.support.doors import child_token, native

ROOT_EXAMPLES, NARROW_EXAMPLES = 6, 3  # per operation and token: the budget (see docs/security.md for timings)
# Every check schemathesis has runs (no 5xx; status codes, content types, headers and bodies as documented;
# schema-violating requests refused; authentication not ignored), except three that cannot hold here:
# * "schema-valid requests succeed": a KMS refuses well-formed requests on what no schema can say (a ciphertext
#   that is not one, an algorithm the key lacks) with 400s of their own codes;
# * "undeclared methods are 405 with an exact Allow": key references contain slashes (alias/team/app), so
#   PATCH /v1/keys/K/versions is PATCH /v1/keys/{key} for key "K/versions"; test_405_names_the_allowed_methods
#   checks the 405s themselves.
CHECKS = {
        "positive_data_acceptance": {"enabled": False},
        "unsupported_method": {"enabled": False},
        "allow_header_conformance": {"enabled": False},
        # 413 is a refusal too (a generated body past the 256 KiB limit)
        "negative_data_rejection": {"expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]},
}


def _config(examples: int, coverage: bool) -> SchemathesisConfig:
    """Derandomized (a fixed seed): the same requests on every run, so a failure reproduces."""
    return SchemathesisConfig.from_dict({"seed": 20260101, "generation": {"max-examples": examples},
                                         "phases": {"coverage": {"enabled": coverage}}, "checks": CHECKS})


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("openapi")
    running = start_broker(base / "data", base / "logs", workers=1, name="broker-openapi")
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def document(broker: RunningBroker) -> dict:
    r = requests.get(broker.url("/openapi.json"), timeout=10)
    assert r.status_code == 200
    return r.json()


def test_the_served_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any error, including a $ref that does not resolve


def test_every_ref_resolves_and_nested_models_are_components(document):
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', _dump(document)))
    assert refs <= set(document["components"]["schemas"])
    assert {"ImportItem", "SimulatePrincipal", "ImportEntries", "Simulate"} <= refs
    assert "$defs" not in _dump(document)


def _dump(value) -> str:
    import json
    return json.dumps(value)


def _operation(document: dict, operation_id: str) -> dict:
    for ops in document["paths"].values():
        for spec in ops.values():
            if spec["operationId"] == operation_id:
                return spec
    raise AssertionError(f"{operation_id} is not documented")


@pytest.mark.parametrize("operation_id, names", [
    ("ListKeys", {"limit", "marker"}),
    ("ListAliases", {"key"}),
    ("ListAuditEvents", {"key", "principal", "action", "outcome", "since", "until", "limit", "marker", "order",
                         "checkpoints"}),
    ("GetKeyPolicy", {"name"}),
    ("ListRetirableGrants", {"principal"}),
    ("ListKeyringEntries", {"mount"}),
])
def test_query_parameters_are_documented(document, operation_id, names):
    params = {p["name"]: p for p in _operation(document, operation_id).get("parameters", []) if p["in"] == "query"}
    assert set(params) == names
    if operation_id == "ListKeys":
        assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}


def test_every_route_that_reads_the_query_string_declares_it():
    """A route reading request.args without `op(..., query=Model)` would be an undocumented parameter."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*(root / "broker" / "api").glob("*.py"), root / "keyring_bridge" / "admin_routes.py"]:
        text = path.read_text()
        if "request.args" in text and path.name != "native.py":
            offenders.append(path.name)
        offenders += [f"{path.name}: {m}" for m in re.findall(r"parse_query\((\w+)\)", text)
                      if path.name != "native.py"]
    assert offenders == []


def test_bodies_and_their_requiredness_are_documented(document):
    assert _operation(document, "CreateKey")["requestBody"]["required"] is False  # every member has a default
    assert _operation(document, "Encrypt")["requestBody"]["required"] is True
    encrypt = document["components"]["schemas"]["Encrypt"]
    assert encrypt["required"] == ["Plaintext"] and encrypt["additionalProperties"] is False
    assert "204" in _operation(document, "WriteAppRole")["responses"]
    assert "content" not in _operation(document, "WriteAppRole")["responses"]["204"]


@pytest.mark.parametrize("method, path, allowed", [
    ("TRACE", "/keys", {"GET", "POST"}), ("OPTIONS", "/keys", {"GET", "POST"}), ("PUT", "/decrypt", {"POST"}),
    ("OPTIONS", "/health", {"GET"})])
def test_405_names_the_allowed_methods_and_options_is_not_answered_unaudited(broker, method, path, allowed):
    r = native(broker, method, path)
    assert r.status_code == 405 and r.json()["error"]["code"] == "UnsupportedOperationException"
    assert set(r.headers["Allow"].replace(" ", "").split(",")) - {"HEAD"} == allowed


def test_a_json_null_body_is_not_an_empty_one(broker):
    r = native(broker, "POST", "/keys", raw=b"null")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------ schemathesis


@pytest.fixture(scope="module")
def keys(broker: RunningBroker) -> list[str]:
    """Real keys for generated requests to reach (a random path parameter is only ever a 404)."""
    out = []
    for body in ({}, {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"},
                 {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}):
        r = native(broker, "POST", "/keys", body=body)
        assert r.status_code == 201, r.text
        out.append(r.json()["KeyMetadata"]["KeyId"])
    return out


@pytest.fixture(scope="module")
def tokens(broker: RunningBroker) -> dict[str, str]:
    return {"root": broker.root_token, "key-user": child_token(broker, "key-user", name="narrow")}


@pytest.fixture(scope="module")
def root_schema(broker: RunningBroker):
    """As root: the coverage phase too (each parameter's edge cases and schema-violating variants)."""
    return schemathesis.openapi.from_url(broker.url("/openapi.json"), config=_config(ROOT_EXAMPLES, True))


@pytest.fixture(scope="module")
def narrow_schema(broker: RunningBroker):
    return schemathesis.openapi.from_url(broker.url("/openapi.json"), config=_config(NARROW_EXAMPLES, False))


def _run(case, broker: RunningBroker, keys: list[str], token: str) -> None:
    if "key" in (case.path_parameters or {}):
        # a deterministic half of the cases name a real key, so generated bodies reach the service
        seed = zlib.crc32(repr(case.body).encode())
        if seed % 2 == 0:
            case.path_parameters["key"] = keys[seed // 2 % len(keys)]
    if case.operation.definition.raw.get("operationId") == "RevokeSelfToken":
        token = child_token(broker, "root")  # revoking the run's own token would end the run
    case.call_and_validate(headers={"X-KMSB-Token": token}, timeout=60)


@schemathesis.pytest.from_fixture("root_schema").parametrize()
@settings(max_examples=ROOT_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_schemathesis_as_root(case, broker, keys, tokens):
    _run(case, broker, keys, tokens["root"])


@schemathesis.pytest.from_fixture("narrow_schema").parametrize()
@settings(max_examples=NARROW_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_schemathesis_as_a_narrow_token(case, broker, keys, tokens):
    _run(case, broker, keys, tokens["key-user"])
