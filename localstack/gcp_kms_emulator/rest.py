"""REST transport: the documented /v1 HTTP bindings, camelCase JSON via proto-plus to_json/from_json."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from google.protobuf.descriptor import FieldDescriptor

from .auth import check_bearer
from .errors import KmsError, invalid
from .methods import RPCS, Rpc
from .models import KmsBackend

log = logging.getLogger(__name__)

_KR = "projects/*/locations/*/keyRings/*"
_CK = f"{_KR}/cryptoKeys/*"
_CKV = f"{_CK}/cryptoKeyVersions/*"

# (HTTP method, URI template, RPC, body field) — the google.api.http options of KeyManagementService.
BINDINGS: list[tuple[str, str, str, str]] = [
    ("GET", "/v1/{parent=projects/*/locations/*}/keyRings", "ListKeyRings", ""),
    ("POST", "/v1/{parent=projects/*/locations/*}/keyRings", "CreateKeyRing", "key_ring"),
    ("GET", f"/v1/{{name={_KR}}}", "GetKeyRing", ""),
    ("GET", f"/v1/{{parent={_KR}}}/cryptoKeys", "ListCryptoKeys", ""),
    ("POST", f"/v1/{{parent={_KR}}}/cryptoKeys", "CreateCryptoKey", "crypto_key"),
    ("GET", f"/v1/{{parent={_KR}}}/importJobs", "ListImportJobs", ""),
    ("POST", f"/v1/{{parent={_KR}}}/importJobs", "CreateImportJob", "import_job"),
    ("GET", f"/v1/{{name={_KR}/importJobs/*}}", "GetImportJob", ""),
    ("GET", f"/v1/{{name={_CK}}}", "GetCryptoKey", ""),
    ("PATCH", f"/v1/{{crypto_key.name={_CK}}}", "UpdateCryptoKey", "crypto_key"),
    ("POST", f"/v1/{{name={_CK}}}:updatePrimaryVersion", "UpdateCryptoKeyPrimaryVersion", "*"),
    ("POST", f"/v1/{{name={_KR}/cryptoKeys/**}}:encrypt", "Encrypt", "*"),
    ("POST", f"/v1/{{name={_CK}}}:decrypt", "Decrypt", "*"),
    ("GET", f"/v1/{{parent={_CK}}}/cryptoKeyVersions", "ListCryptoKeyVersions", ""),
    ("POST", f"/v1/{{parent={_CK}}}/cryptoKeyVersions", "CreateCryptoKeyVersion", "crypto_key_version"),
    ("POST", f"/v1/{{parent={_CK}}}/cryptoKeyVersions:import", "ImportCryptoKeyVersion", "*"),
    ("GET", f"/v1/{{name={_CKV}}}", "GetCryptoKeyVersion", ""),
    ("PATCH", f"/v1/{{crypto_key_version.name={_CKV}}}", "UpdateCryptoKeyVersion", "crypto_key_version"),
    ("GET", f"/v1/{{name={_CKV}}}/publicKey", "GetPublicKey", ""),
    ("POST", f"/v1/{{name={_CKV}}}:destroy", "DestroyCryptoKeyVersion", "*"),
    ("POST", f"/v1/{{name={_CKV}}}:restore", "RestoreCryptoKeyVersion", "*"),
    ("POST", f"/v1/{{name={_CKV}}}:asymmetricSign", "AsymmetricSign", "*"),
    ("POST", f"/v1/{{name={_CKV}}}:asymmetricDecrypt", "AsymmetricDecrypt", "*"),
    ("POST", f"/v1/{{name={_CKV}}}:rawEncrypt", "RawEncrypt", "*"),
    ("POST", f"/v1/{{name={_CKV}}}:rawDecrypt", "RawDecrypt", "*"),
    ("POST", f"/v1/{{name={_CKV}}}:macSign", "MacSign", "*"),
    ("POST", f"/v1/{{name={_CKV}}}:macVerify", "MacVerify", "*"),
    ("POST", "/v1/{location=projects/*/locations/*}:generateRandomBytes", "GenerateRandomBytes", "*"),
]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    field: str  # the (possibly dotted) request field bound to the path variable
    rpc: Rpc
    body: str


def _compile(template: str) -> tuple[re.Pattern[str], str]:
    m = re.fullmatch(r"(.*)\{([\w.]+)=([^}]+)\}(.*)", template)
    assert m, template
    prefix, field, segs, suffix = m.groups()
    var = segs.replace("**", "\0").replace("*", "[^/:]+").replace("\0", ".+")
    return re.compile(f"^{re.escape(prefix)}(?P<v>{var}){re.escape(suffix)}$"), field


ROUTES = [Route(meth, *_compile(tpl), RPCS[rpc], body) for meth, tpl, rpc, body in BINDINGS]


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def _query_fields(rpc: Rpc, args: dict[str, list[str]]) -> dict[str, Any]:
    """Query parameters are the request's remaining fields, camelCase, values as strings."""
    desc = rpc.request.pb().DESCRIPTOR
    out: dict[str, Any] = {}
    for key, values in args.items():
        if key.startswith("$") or not values:
            continue
        fd = desc.fields_by_camelcase_name.get(key) or desc.fields_by_name.get(key)
        if fd is None:
            continue
        value: Any = values[-1]
        if fd.type == FieldDescriptor.TYPE_BOOL:
            value = value.lower() == "true"
        out[fd.json_name] = value
    return out


def _build_request(route: Route, path_value: str) -> Any:
    rpc = route.rpc
    doc = _query_fields(rpc, request.args.to_dict(flat=False))
    raw = request.get_data(cache=False)
    body: Any = {}
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError:
            raise invalid("Invalid JSON payload received.") from None
        if not isinstance(body, dict):
            raise invalid("Invalid JSON payload received: expected an object.")
    if route.body == "*":
        doc.update(body)
    elif route.body:
        doc[_camel(route.body)] = body
    *outer, last = route.field.split(".")
    target = doc
    for part in outer:
        target = target.setdefault(_camel(part), {})
    target[_camel(last)] = path_value
    try:
        return rpc.request.from_json(json.dumps(doc), ignore_unknown_fields=True)
    except Exception as e:  # noqa: BLE001 - json_format raises ParseError and friends
        raise invalid(f"Invalid JSON payload received. {e}") from None


def _json(payload: Any, status: int = 200) -> Response:
    return Response(payload if isinstance(payload, str) else json.dumps(payload), status=status,
                    mimetype="application/json")


def create_app(backend: KmsBackend, token: str | None = None) -> Flask:
    """The REST front end over the shared backend; every request is matched against BINDINGS."""
    app = Flask("gcp_kms_emulator")

    @app.route("/v1/<path:_rest>", methods=["GET", "POST", "PATCH", "DELETE"])
    def dispatch(_rest: str) -> Response:
        try:
            check_bearer(token, request.headers.get("Authorization"))
            path = request.path
            matched = [r for r in ROUTES if r.pattern.match(path)]
            allowed = [r for r in matched if r.method == request.method]
            if not allowed:
                if matched:
                    raise KmsError("UNIMPLEMENTED", f"Method {request.method} is not allowed on {path}.")
                raise KmsError("NOT_FOUND", f"The requested URL {path} was not found on this server.")
            route = allowed[0]
            req = _build_request(route, route.pattern.match(path).group("v"))  # type: ignore[union-attr]
            resp = backend.call(route.rpc.method, req)
            ints = "enum-encoding=int" in request.args.get("$alt", "")
            return _json(route.rpc.response.to_json(resp, use_integers_for_enums=ints,
                                                    including_default_value_fields=False))
        except KmsError as e:
            return _json(e.rest_body(), e.http_status)
        except Exception:  # noqa: BLE001 - surface bugs as INTERNAL like the gRPC side
            log.exception("internal error on %s %s", request.method, request.path)
            return _json(KmsError("INTERNAL", "Internal error in the emulator.").rest_body(), 500)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def unrouted(err: Exception) -> Response:
        code = getattr(err, "code", 404)
        status = "NOT_FOUND" if code == 404 else "UNIMPLEMENTED"
        return _json(KmsError(status, f"{request.method} {request.path} is not part of the API.").rest_body(),
                     404 if code == 404 else 501)

    return app
