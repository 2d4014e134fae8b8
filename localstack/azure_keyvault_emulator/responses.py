"""The Key Vault keys REST wire format on top of `models.Vault`: routes, JSON bodies, auth and errors.

Every route needs a bearer token (see `auth`) and an `api-version` query parameter, as the service does.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import auth
from .errors import BadParameter, KeyVaultError, MethodNotAllowed, NotFound, Unauthorized
from .models import Vault

log = logging.getLogger(__name__)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def _error(err: KeyVaultError) -> Response:
    headers = {"WWW-Authenticate": auth.CHALLENGE} if isinstance(err, Unauthorized) else None
    return _json(err.body(), err.status, headers)


def _body() -> dict[str, Any]:
    raw = request.get_data()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadParameter("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadParameter("The request body must be a JSON object.")
    return body


def api(name: str, default: str | None = None) -> str | None:
    return request.args.get(name, default)


def _maxresults() -> int | None:
    raw = request.args.get("maxresults")
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadParameter(f"Invalid maxresults '{raw}'.") from None


def create_app(vault: Vault, *, token: str | None = None, key_ops_on_get: bool = False) -> Flask:
    """Build the WSGI app.

    key_ops_on_get=False (default) leaves `key_ops` out of GET key bundles so the SDK's CryptographyClient cannot
    do "local" crypto with the public key (or, for oct-HSM, with a random key it makes up) and sends every
    operation to the emulator. True returns them as Azure does.
    """
    app = Flask(__name__)
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    @app.before_request
    def _authenticate() -> Response | None:
        try:
            auth.check(request.headers.get("Authorization"), token)
        except auth.Unchallenged:
            return Response(b"", status=401, headers={"WWW-Authenticate": auth.CHALLENGE})
        if not request.args.get("api-version"):
            raise BadParameter("The 'api-version' query parameter is required.")
        return None

    @app.errorhandler(KeyVaultError)
    def _kv_error(err: KeyVaultError) -> Response:
        return _error(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        if err.code == 405:
            return _error(MethodNotAllowed(f"The method {request.method} is not allowed on {request.path}."))
        if err.code == 404:
            return _error(NotFound(f"The requested resource {request.path} was not found."))
        return _json({"error": {"code": "BadRequest", "message": err.description}}, err.code or 400)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error")
        return _json({"error": {"code": "InternalServerError", "message": "Internal server error."}}, 500)

    # -- management
    @app.post("/keys/<name>/create")
    def create_key(name: str) -> Response:
        return _json(vault.create_key(name, _body()))

    @app.put("/keys/<name>")
    def import_key(name: str) -> Response:
        return _json(vault.import_key(name, _body()))

    @app.get("/keys/<name>", defaults={"version": ""})
    @app.get("/keys/<name>/<version>")
    def get_key(name: str, version: str) -> Response:
        return _json(vault.get_key(name, version, with_key_ops=key_ops_on_get))

    @app.patch("/keys/<name>", defaults={"version": ""})
    @app.patch("/keys/<name>/<version>")
    def update_key(name: str, version: str) -> Response:
        return _json(vault.update_key(name, version, _body()))

    @app.get("/keys")
    def list_keys() -> Response:
        skip = vault.parse_skiptoken(api("$skiptoken"))
        return _json(vault.list_keys(skip, _maxresults(), api("api-version", "")))

    @app.get("/keys/<name>/versions")
    def list_versions(name: str) -> Response:
        skip = vault.parse_skiptoken(api("$skiptoken"))
        return _json(vault.list_versions(name, skip, _maxresults(), api("api-version", "")))

    @app.delete("/keys/<name>")
    def delete_key(name: str) -> Response:
        return _json(vault.delete_key(name))

    @app.get("/deletedkeys")
    def list_deleted() -> Response:
        skip = vault.parse_skiptoken(api("$skiptoken"))
        return _json(vault.list_deleted_keys(skip, _maxresults(), api("api-version", "")))

    @app.get("/deletedkeys/<name>")
    def get_deleted(name: str) -> Response:
        return _json(vault.get_deleted_key(name))

    @app.delete("/deletedkeys/<name>")
    def purge(name: str) -> Response:
        vault.purge_key(name)
        return Response(b"", status=204)

    @app.post("/deletedkeys/<name>/recover")
    def recover(name: str) -> Response:
        return _json(vault.recover_key(name))

    @app.post("/keys/<name>/backup")
    def backup(name: str) -> Response:
        return _json(vault.backup_key(name))

    @app.post("/keys/restore")
    def restore() -> Response:
        return _json(vault.restore_key(_body()))

    @app.post("/keys/<name>/rotate")
    def rotate(name: str) -> Response:
        return _json(vault.rotate_key(name))

    @app.get("/keys/<name>/rotationpolicy")
    def get_policy(name: str) -> Response:
        return _json(vault.get_rotation_policy(name))

    @app.put("/keys/<name>/rotationpolicy")
    def put_policy(name: str) -> Response:
        return _json(vault.set_rotation_policy(name, _body()))

    @app.post("/rng")
    def rng() -> Response:
        return _json(vault.random_bytes(_body()))

    # -- cryptography (an empty version, i.e. `/keys/<name>//encrypt`, means the latest)
    ops = {"encrypt": vault.encrypt, "decrypt": vault.decrypt, "wrapkey": vault.wrap_key,
           "unwrapkey": vault.unwrap_key, "sign": vault.sign, "verify": vault.verify}

    @app.post("/keys/<name>/<version>/<op>")
    @app.post("/keys/<name>//<op>", defaults={"version": ""})
    def crypto(name: str, version: str, op: str) -> Response:
        handler = ops.get(op.lower())
        if handler is None:
            raise NotFound(f"The requested resource {request.path} was not found.")
        return _json(handler(name, version, _body()))

    return app
