"""The HashiCorp-Vault-KV-compatible front door for MySQL-family keyring plugins (its own Flask app and listener).

Parse, call a keyring service (through `broker.services.Services`), render in Vault's shape; nothing else.

Wire contract (see docs/keyring-bridge.md and ../shared/protocols/mariadb-hashicorp-plugin.md):
- `GET /v1/sys/mounts/<mount>/tune` → `{"options": {"version": "2"}, ...}` as Vault answers (KV v1 mounts: "1");
  `GET /v1/sys/mounts` (the mounts the caller may describe), `GET /v1/sys/seal-status`, `GET|HEAD /v1/sys/health`
  (Vault's status codes and their query parameters).
- KV v2: `GET /v1/<mount>/data/<id>[?version=N]` → `data.data` (the secret) + `data.metadata.version` (a number);
  `POST|PUT /v1/<mount>/data/<id>` writes the next version (`options.cas` honoured); `GET|POST|DELETE
  /v1/<mount>/metadata/<id>`; `LIST /v1/<mount>/metadata/<prefix>` (or `GET …?list=true`); `GET|POST
  /v1/<mount>/config`; soft delete `DELETE …/data/<id>`, `POST …/delete/<id>`, `POST …/undelete/<id>` (the material
  is kept); `POST …/destroy/<id>` files a quorum-approval request (202): nothing is destroyed without one.
- KV v1 (mounts registered as version 1): `GET|PUT|POST|LIST|DELETE /v1/<mount>/<id>`.
- `POST /v1/auth/approle/login` → `auth.client_token`; `GET|POST /v1/auth/token/lookup-self`,
  `POST /v1/auth/token/renew-self` (hvac's `is_authenticated()`).
- `X-Vault-Token` (or `Authorization: Bearer`) is a broker token; a bad one is 403 `{"errors":["permission denied"]}`.
- Errors in Vault's shape: `{"errors": [...]}`; a read of a soft-deleted or destroyed version is 404 with its
  metadata, as Vault answers.

Never crash the database: a non-2xx answer or malformed body for a key mariadbd already uses makes it abort, whereas a
dropped connection is survived from its cache. So a key READ (GET/HEAD) answers only 2xx, 400 (malformed request) and
404 (unknown key or version); a refused one (token revoked or expired, policy changed) and one the bridge cannot
serve (store, HSM, audit sink, bug) shut the client socket down and send nothing at all. The mount's tune call, made
only when the plugin starts, still answers 403 to a bad token, so the database's log says why it cannot start. Every
other request (writes, listings, login) gets a Vault-shaped error instead: `{"errors": [...]}` with 400, 403, 404,
405, or 503 when a dependency is down.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from broker import errors
from broker.api.limits import new_request_id
from broker.auth import presented_token
from broker.gate import dependency_error
from broker.logs import request_scope
from broker.service import KeyService, RequestContext
from broker.services import Services
from broker.settings import Settings
from keyring_bridge.keyring import DESTROY_KIND, DeletedVersion, EntryInfo, KeyringService, Secret, iso

log = logging.getLogger("kms_broker.keyring")
DROP = "kmsb.keyring.drop"
FRONT_DOOR = "keyring"
LEASE = 2764800  # Vault's default 768h, what KV v1 reads report
_READS = ("GET", "HEAD")
_KV2_KINDS = ("data", "metadata", "delete", "undelete", "destroy", "config")
KV2_CONFIG = {"cas_required": False, "delete_version_after": "0s", "max_versions": 0}
# Vault's sys/health status codes and the query parameters that change them.
_HEALTH_CODES = {"activecode": 200, "sealedcode": 503, "uninitcode": 501, "standbycode": 429,
                 "performancestandbycode": 473, "drsecondarycode": 472}


class DropConnection(Exception):
    """Raised (or mapped to) when the bridge cannot answer truthfully: the client sees a dropped connection."""


class _Dropper:
    """WSGI wrapper: when a request is marked DROP, shut the client socket down and send nothing.

    gunicorn hands the client socket in `environ["gunicorn.socket"]`. We set SO_LINGER 0 (the final close sends an
    RST) and `shutdown(SHUT_RDWR)`; gunicorn's later attempt to write the (unsent) status line fails with EPIPE,
    which its gthread worker ignores at debug level. Without a gunicorn socket (unit tests) the answer is a 503
    marked `X-Kmsb-Dropped: 1`, which nothing but a test should ever see.
    """

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        captured: list[tuple] = []

        def capture(status, headers, exc_info=None):
            captured[:] = [(status, headers, exc_info)]
            return lambda _data: None

        body = self.app(environ, capture)
        if not environ.get(DROP):
            status, headers, exc_info = captured[0]
            start_response(status, headers, exc_info)
            return body
        if hasattr(body, "close"):
            body.close()
        sock = environ.get("gunicorn.socket")
        if sock is None:
            start_response("503 Service Unavailable", [("X-Kmsb-Dropped", "1"), ("Content-Length", "0")])
            return [b""]
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # gunicorn needs a status to finish the request; writing it to the shut-down socket fails with EPIPE,
        # which its worker ignores (nothing reaches the client).
        start_response("503 Service Unavailable", [("Content-Length", "0"), ("Connection", "close")])
        return []


_VERSION_QUERY = re.compile(r"version=[0-9]{0,10}")
_JSON = "application/json"
_EMPTY = "text/html; charset=utf-8"  # what Flask labels an empty str body with


class _FastRead:
    """WSGI: the one request mariadbd makes for every key, `GET /v1/<mount>/data/<id>[?version=N]`, served
    without Flask's request cycle (about a third of a read's CPU on this listener went to it); every other request,
    and any read that is not plainly that (a body, another query, a path Flask would route elsewhere or refuse),
    goes to the Flask app. The read itself is the same: `fast_read` authenticates, calls the gated service and maps
    failures exactly as the `kv` view does, and the answer carries the same status, body and headers."""

    def __init__(self, app: Flask, others: set[str], mounts: _Mounts, read) -> None:
        self._app, self._flask = app, app.wsgi_app
        self._others, self._mounts, self._read = others, mounts, read

    def route(self, environ: dict[str, Any]) -> tuple[str, str, str] | None:
        """(mount, entry id, query) when this request is a plain KV v2 key read, else None (Flask serves it)."""
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("CONTENT_LENGTH") not in (None, "", "0") \
                or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        if not path.startswith("/v1/") or (query and not _VERSION_QUERY.fullmatch(query)):
            return None
        try:
            rest = path.encode("latin-1").decode("utf-8", "replace")[4:]  # as werkzeug decodes PATH_INFO
        except UnicodeEncodeError:
            return None
        if not rest or rest[0] == "/" or not rest.isprintable() or rest.partition("/")[0] in self._others:
            return None
        try:
            mount, kind, entry_id = _parse(rest.rstrip("/"), self._mounts.get())
        except errors.NotFound:
            return None  # perhaps a mount registered since: the view re-reads them
        return (mount, entry_id, query) if kind == "data" and entry_id else None

    def __call__(self, environ, start_response):
        try:
            found = self.route(environ)
        except Exception:  # noqa: BLE001 - Flask serves it, and maps whatever fails there as every request's failure
            found = None
        if found is None:
            return self._flask(environ, start_response)
        try:
            body, status = self._read(environ, *found)
            if isinstance(body, dict):
                data, kind = f"{self._app.json.dumps(body, separators=(',', ':'))}\n".encode(), _JSON
            else:
                data, kind = b"", _EMPTY
        except Exception as exc:  # noqa: BLE001 - a bug past the failure mapping: a key read never answers 5xx
            log.error("keyring bridge dropped a connection (fast read): %s", type(exc).__name__)
            environ[DROP] = True
            status, data, kind = 503, b"", _EMPTY
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                       [("Content-Type", kind), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")])
        return [data]


def _vault(body: dict[str, Any] | None = None, *, data: Any = None, auth: Any = None,
           request_id: str | None = None) -> dict[str, Any]:
    out = {"request_id": getattr(g, "request_id", "") if request_id is None else request_id,
           "lease_id": "", "renewable": False, "lease_duration": 0,
           "data": data, "wrap_info": None, "warnings": None, "auth": auth}
    out.update(body or {})
    return out


def _errors(status: int, *messages: str):
    return {"errors": list(messages)}, status


def _version_metadata(secret: Secret) -> dict[str, Any]:
    return {"created_time": iso(secret.created_at), "custom_metadata": secret.custom_metadata or None,
            "deletion_time": "", "destroyed": False, "version": secret.version}


def _deleted_metadata(gone: DeletedVersion) -> dict[str, Any]:
    return {"created_time": iso(gone.created_at), "custom_metadata": gone.custom_metadata or None,
            "deletion_time": iso(gone.deleted_at), "destroyed": gone.destroyed, "version": gone.version}


def _entry_metadata(info: EntryInfo) -> dict[str, Any]:
    versions = {str(v): {"created_time": iso(c), "deletion_time": iso(info.deleted.get(v)),
                         "destroyed": v in info.destroyed} for v, _o, c in info.versions}
    return {"cas_required": False, "created_time": iso(info.created_at), "current_version": info.latest_version,
            "custom_metadata": info.custom_metadata or None, "delete_version_after": "0s", "max_versions": 0,
            "oldest_version": info.versions[0][0] if info.versions else 0, "updated_time": iso(info.updated_at),
            "versions": versions}


def _token_data(info: Any, token: str) -> dict[str, Any]:
    """lookup-self in Vault's shape (the token is the caller's own: Vault echoes it as `id`)."""
    left = info.seconds_left()
    max_ttl = int((info.max_expires_at - info.created_at).total_seconds()) if info.max_expires_at else 0
    return {"accessor": info.accessor, "creation_time": int(info.created_at.timestamp()),
            "creation_ttl": info.ttl_seconds or 0, "display_name": info.display_name, "entity_id": "",
            "expire_time": iso(info.expires_at) or None, "explicit_max_ttl": max_ttl, "id": token,
            "issue_time": iso(info.created_at), "meta": dict(info.meta) or None, "num_uses": 0,
            "orphan": info.parent_accessor is None, "path": "auth/token/create", "policies": list(info.policies),
            "renewable": info.renewable, "ttl": max(0, int(left)) if left != float("inf") else 0, "type": "service"}


def parse_version(raw: str | None) -> int | None:
    """`?version=N` of a KV v2 read: absent, empty or 0 is the latest; otherwise digits (ValidationError)."""
    if raw in (None, "", "0"):
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise errors.ValidationError("version must be a positive integer")
    return int(raw)


def _read_body(secret: Secret, request_id: str) -> dict[str, Any]:
    """A KV v2 read's answer: `data.data` (the secret) and `data.metadata` (its version, a JSON number)."""
    return _vault(data={"data": secret.data, "metadata": _version_metadata(secret)}, request_id=request_id)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A JSON object, or ValidationError: not JSON, not UTF-8, nested too deep for the parser, not an object."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise errors.ValidationError("request body is not valid JSON (or is nested too deep)") from None
    if not isinstance(data, dict):
        raise errors.ValidationError("request body must be a JSON object")
    return data


class _Mounts:
    """Registered mounts (KV version), re-read every few seconds; a store outage keeps the last known view."""

    def __init__(self, keyring: KeyringService, ttl: float = 5.0) -> None:
        self._keyring, self._ttl = keyring, ttl
        self._value: dict[str, int] = {}
        self._until = 0.0
        self._lock = threading.Lock()

    def refresh(self, min_age: float = 0.5) -> dict[str, int]:
        """Re-read now (a path that matches no mount may be a KV v1 mount registered since), at most every min_age s."""
        with self._lock:
            if self._until - self._ttl + min_age <= time.monotonic():
                self._until = 0.0
        return self.get()

    def get(self) -> dict[str, int]:
        if time.monotonic() >= self._until:
            with self._lock:
                if time.monotonic() >= self._until:
                    try:
                        self._value = self._keyring.mounts()
                    except errors.BrokerError:
                        pass
                    self._until = time.monotonic() + self._ttl
        return self._value


def _parse(rest: str, mounts: dict[str, int]) -> tuple[str, str, str]:
    """`<mount>/data/<id>` → (mount, "data", id) (also metadata, delete, undelete, destroy; `<mount>/config` →
    (mount, "config", "")); KV v1 mounts: `<mount>/<id>` → (mount, "v1", id). Registered mounts first, the
    longest one that prefixes the path."""
    for mount, version in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if rest != mount and not rest.startswith(mount + "/"):
            continue
        if version == 1:
            return mount, "v1", rest[len(mount) + 1:]
        kind, _, entry_id = rest[len(mount) + 1:].partition("/")
        if kind in _KV2_KINDS:
            return mount, kind, entry_id
    parts = rest.split("/")
    for i in range(1, len(parts)):
        if parts[i] in _KV2_KINDS:
            return "/".join(parts[:i]), parts[i], "/".join(parts[i + 1:])
    raise errors.NotFound("no handler for route")


def create_bridge_app(settings: Settings, *, service: KeyService | None = None, run_jobs: bool = False) -> Flask:
    from broker.app import build_service

    app = Flask("kms_broker_keyring")
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024
    app.url_map.merge_slashes = False
    app.json.sort_keys = False
    services = Services.over(service or build_service(settings), settings)
    keyring, approles = services.keyring, services.keyring_approles
    mounts = _Mounts(keyring)
    app.extensions["kms"] = services

    def ctx() -> RequestContext:
        if g.ctx.principal.auth_method == "none":
            g.ctx.principal = keyring.authenticate(presented_token(request.headers.get("X-Vault-Token"),
                                                                 request.headers.get("Authorization")))
        return g.ctx

    @app.before_request
    def start() -> None:
        from broker.app import ANONYMOUS

        g.request_id = new_request_id()
        g.action = "keyring:Request"
        g.ctx = RequestContext(ANONYMOUS, request_id=g.request_id, source_ip=request.remote_addr or "",
                               front_door=FRONT_DOOR)

    def audit_refusal(c: RequestContext | None, action: str, code: str, denied: bool) -> bool:
        """Audit a refusal no operation recorded; False if the audit sink cannot take it (fail closed)."""
        if c is None or c.audited:
            return True
        try:
            services.refused(c, action, code, denied)
            return True
        except Exception:  # noqa: BLE001 - the caller turns this into a dropped connection or a 503
            return False

    def failure(exc: Exception, c: RequestContext | None, action: str, method: str,
                request_id: str) -> tuple[Any, int, bool]:
        """What a request that raised answers: (body, status, drop the connection). One mapping for the Flask
        views and the fast key read, so both answer (and audit) a failure alike."""
        exc = dependency_error(exc) or exc  # outside an operation (the token lookup): the store is down, not a bug
        if not isinstance(exc, errors.BrokerError | DropConnection):
            log.error("keyring bridge error in request %s: %s", request_id, type(exc).__name__)
        answered = isinstance(exc, errors.BrokerError) and exc.status < 500
        if answered and not audit_refusal(c, action, exc.code, isinstance(exc, errors.Unauthenticated |
                                                                          errors.AccessDenied)):
            exc, answered = errors.NotReady("audit log unavailable"), False
        refused = isinstance(exc, errors.Unauthenticated | errors.AccessDenied)
        if answered and refused and action == "keyring:Read" and method in _READS:
            # A key read refused (token revoked or expired, policy changed): mariadbd aborts on a 403 for a key it
            # already uses, and survives a dropped connection from its cache. Audited above as denied; the
            # plugin's start-up call (tune) still answers 403, so a database started with a bad token says why.
            log.warning("keyring bridge dropped a refused read (request %s): %s", request_id, exc.code)
            return "", 503, True
        if answered:
            if isinstance(exc, DeletedVersion):  # Vault: 404 with the version's metadata
                return _vault(data={"data": None, "metadata": _deleted_metadata(exc)}, request_id=request_id), 404, \
                    False
            if isinstance(exc, errors.NotFound):
                return *_errors(404), False
            if refused:
                if action == "keyring:AppRoleLogin" and isinstance(exc, errors.Unauthenticated):
                    return *_errors(400, "invalid role or secret ID"), False
                return *_errors(403, "permission denied"), False
            if isinstance(exc, errors.Unsupported):
                return *_errors(405, exc.message), False
            return *_errors(400, exc.message), False
        # The bridge itself failed (store, HSM, audit, a bug).
        code = exc.code if isinstance(exc, errors.BrokerError) else errors.BrokerError.code
        if not isinstance(exc, DropConnection):
            audit_refusal(c, action, code, False)  # best effort: record the failure if the audit sink still works
        if method not in _READS:
            if isinstance(exc, errors.DependencyTimeout | errors.DependencyFailure | errors.NotReady):
                return *_errors(503, "the keyring bridge cannot answer now"), False
            return *_errors(500, "internal error"), False
        # A read: drop the connection, never a status (mariadbd survives a dropped connection from its cache).
        log.warning("keyring bridge dropped a connection (request %s): %s", request_id, code)
        return "", 503, True

    def refuse(exc: Exception):
        body, status, drop = failure(exc, getattr(g, "ctx", None), g.action, request.method,
                                     getattr(g, "request_id", "?"))
        if drop:
            request.environ[DROP] = True
        return body, status

    @app.errorhandler(Exception)
    def any_error(exc: Exception):
        if isinstance(exc, HTTPException):
            if exc.code == 404:
                return refuse(errors.NotFound("no handler"))
            if exc.code in (400, 405, 413, 415):
                return _errors(exc.code or 400, exc.description or "bad request")
        return refuse(exc)

    @app.after_request
    def stamp(response):
        response.headers["Cache-Control"] = "no-store"
        return response

    def version_arg() -> int | None:
        return parse_version(request.args.get("version"))

    def body() -> dict[str, Any]:
        return parse_body(request.get_data(cache=False))

    def listing(mount: str, prefix: str):
        g.action = "keyring:List"
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        infos = keyring.list_entries(ctx(), mount, prefix)
        keys = sorted({i.entry_id[len(prefix):].split("/")[0] + ("/" if "/" in i.entry_id[len(prefix):] else "")
                       for i in infos})
        if not keys:
            raise errors.NotFound("nothing listed")
        return _vault(data={"keys": keys})

    def not_ready() -> list[str]:
        service = services.keys
        status = {**service.readiness(), **service.dependencies()}
        return sorted(k for k, v in status.items() if v != "ok")

    @app.route("/v1/sys/health", methods=["GET", "HEAD"])
    def health():
        """Vault's health shape and status codes: 200 (active: every node serves), or Vault's "sealed" 503 when this
        node could not serve a key now (HSM, audit sink or store down), so a load balancer's check on this listener
        takes the node out of rotation as `/v1/ready` does on the API. `activecode`/`sealedcode`/… change them."""
        codes = dict(_HEALTH_CODES)
        for name in codes:
            raw = request.args.get(name)
            if raw is not None:
                if not raw.isdigit() or not 100 <= int(raw) <= 599:
                    return _errors(400, f"{name} must be an HTTP status code")
                codes[name] = int(raw)
        down = not_ready()
        body = {"initialized": True, "sealed": bool(down), "standby": False, "performance_standby": False,
                "replication_performance_mode": "disabled", "replication_dr_mode": "disabled",
                "server_time_utc": int(time.time()), "version": "kms-broker-keyring", "cluster_name": "kms-broker",
                "cluster_id": "kms-broker"}
        if down:
            return {**body, "kmsb_not_ready": down}, codes["sealedcode"]
        return body, codes["activecode"]

    @app.route("/v1/sys/seal-status", methods=["GET"])
    def seal_status():
        """Vault's seal status. The root of trust is an HSM (an auto-unseal, to Vault clients): "sealed" while
        this node cannot serve keys (HSM, audit sink or store down)."""
        sealed = bool(not_ready())
        return {"type": "pkcs11", "initialized": True, "sealed": sealed, "t": 1, "n": 1, "progress": 0,
                "nonce": "", "version": "kms-broker-keyring", "build_date": "", "migration": False,
                "cluster_name": "kms-broker", "cluster_id": "kms-broker", "recovery_seal": True,
                "storage_type": "kms-broker"}

    @app.route("/v1/sys/mounts", methods=["GET"])
    def sys_mounts():
        g.action = "keyring:DescribeMount"
        listed = {}
        for info in keyring.list_mounts(ctx()):
            listed[f"{info.mount}/"] = {
                "accessor": f"kv_{info.mount.replace('/', '_')}", "config": {
                    "default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
                "description": "kms-broker keyring bridge", "external_entropy_access": False, "local": False,
                "options": {"version": str(info.kv_version)}, "plugin_version": "", "running_plugin_version": "",
                "running_sha256": "", "seal_wrap": True, "type": "kv", "uuid": ""}
        return _vault(listed, data=listed)

    def own_token() -> str:
        header = request.headers.get("Authorization", "")
        return request.headers.get("X-Vault-Token") or (header[7:] if header.startswith("Bearer ") else "")

    @app.route("/v1/auth/token/lookup-self", methods=["GET", "POST"])
    def lookup_self():
        g.action = "broker:LookupSelfToken"
        info = services.identity.lookup_self(ctx())
        return _vault(data=_token_data(info, own_token()))

    @app.route("/v1/auth/token/renew-self", methods=["POST", "PUT"])
    def renew_self():
        g.action = "broker:RenewSelfToken"
        increment = body().get("increment")
        info = services.identity.renew_self(ctx(), increment)
        data = _token_data(info, own_token())
        return _vault(auth={"client_token": data["id"], "accessor": info.accessor, "policies": data["policies"],
                            "token_policies": data["policies"], "metadata": data["meta"],
                            "lease_duration": data["ttl"], "renewable": info.renewable, "entity_id": "",
                            "token_type": "service", "orphan": data["orphan"]})

    @app.route("/v1/auth/approle/login", methods=["POST", "PUT"])
    def approle_login():
        g.action = "keyring:AppRoleLogin"
        b = body()
        result = approles.login(g.ctx, b.get("role_id"), b.get("secret_id"))
        return _vault(auth={"client_token": result.token, "accessor": result.accessor, "policies": result.policies,
                            "token_policies": result.policies, "metadata": {"role_name": result.role_name},
                            "lease_duration": result.ttl_seconds, "renewable": False,
                            "entity_id": "", "token_type": "service", "orphan": True})

    @app.route("/v1/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "LIST"], strict_slashes=False)
    def kv(rest: str):
        if rest.startswith("sys/mounts/") and rest.endswith("/tune"):
            g.action = "keyring:DescribeMount"
            if request.method != "GET":
                raise errors.Unsupported("mount tuning is managed by the broker")
            version = keyring.tune(ctx(), rest[len("sys/mounts/"):-len("/tune")])
            tune = {"default_lease_ttl": LEASE, "max_lease_ttl": LEASE, "force_no_cache": False,
                    "description": "kms-broker keyring bridge", "options": {"version": str(version)}}
            return _vault(tune, data=tune)
        path = rest.rstrip("/") if request.method != "LIST" else rest
        try:
            mount, kind, entry_id = _parse(path, mounts.get())
        except errors.NotFound:
            mount, kind, entry_id = _parse(path, mounts.refresh())
        is_list = request.method == "LIST" or request.args.get("list") == "true"
        if is_list and kind in ("metadata", "v1"):
            return listing(mount, entry_id)
        if kind == "config":
            return kv_config(mount)
        if kind in ("delete", "undelete", "destroy"):
            return versions_op(kind, mount, entry_id)
        if kind == "metadata":
            return metadata(mount, entry_id)
        if request.method == "DELETE":
            g.action = "keyring:Delete"
            if kind == "v1":
                keyring.delete_entry(ctx(), mount, entry_id)  # KV v1 has no versions: all of them, reversibly
            else:
                keyring.delete_versions(ctx(), mount, entry_id)
            return "", 204
        if request.method in ("POST", "PUT"):
            g.action = "keyring:Write"
            b = body()
            if kind == "data":
                if b.get("data") is None:
                    raise errors.ValidationError("no data provided")
                options = b.get("options") or {}
                cas = options.get("cas") if isinstance(options, dict) else None
                version = keyring.write(ctx(), mount, entry_id, b.get("data"), cas=cas)
                return _vault(data={"created_time": iso(datetime.now(UTC)), "custom_metadata": None,
                                    "deletion_time": "", "destroyed": False, "version": version})
            keyring.write(ctx(), mount, entry_id, b)
            return "", 204
        g.action = "keyring:Read"
        if kind == "v1":
            secret = keyring.read(ctx(), mount, entry_id)
            return _vault({"lease_duration": LEASE}, data=secret.data)
        secret = keyring.read(ctx(), mount, entry_id, version_arg())
        return _read_body(secret, g.request_id)

    def metadata(mount: str, entry_id: str):
        if request.method == "DELETE":  # Vault: the key and every version; here every version, reversibly
            g.action = "keyring:Delete"
            keyring.delete_entry(ctx(), mount, entry_id)
            return "", 204
        if request.method in ("POST", "PUT"):
            g.action = "keyring:Write"
            b = body()
            settings = {k: b[k] for k in ("max_versions", "cas_required", "delete_version_after") if k in b}
            keyring.update_metadata(ctx(), mount, entry_id, custom_metadata=b.get("custom_metadata"),
                                    settings=settings)
            return "", 204
        g.action = "keyring:ReadMetadata"
        return _vault(data=_entry_metadata(keyring.describe(ctx(), mount, entry_id)))

    def kv_config(mount: str):
        g.action = "keyring:DescribeMount"
        if request.method in ("POST", "PUT"):
            keyring.configure_kv(ctx(), mount, body())
            return "", 204
        if request.method != "GET":
            raise errors.Unsupported("unsupported operation")
        keyring.tune(ctx(), mount)
        return _vault(data=dict(KV2_CONFIG))

    def versions_op(kind: str, mount: str, entry_id: str):
        if request.method not in ("POST", "PUT"):
            raise errors.Unsupported("unsupported operation")
        g.action = {"delete": "keyring:Delete", "undelete": "keyring:Undelete", "destroy": "keyring:Destroy"}[kind]
        versions = body().get("versions")
        if versions is None:
            raise errors.ValidationError("no version number provided")
        if kind == "delete":
            keyring.delete_versions(ctx(), mount, entry_id, versions)
            return "", 204
        if kind == "undelete":
            keyring.undelete_versions(ctx(), mount, entry_id, versions)
            return "", 204
        view = services.approvals.request(ctx(), DESTROY_KIND, {"mount": mount, "entry_id": entry_id,
                                                                "versions": versions},
                                          reason="Vault KV destroy through the keyring bridge")
        return _vault({"warnings": [f"nothing is destroyed until approval request {view.request_id} is approved "
                                    f"by {view.required} of its approvers and executed"]},
                      data={"approval_request_id": view.request_id, "state": view.state,
                            "required_approvals": view.required}), 202

    def fast_read(environ: dict[str, Any], mount: str, entry_id: str, query: str) -> tuple[Any, int]:
        """The KV v2 key read as the `kv` view serves it (same context, token, action, service call, answer and
        failure mapping), without Flask's request cycle: what mariadbd asks for every key it needs."""
        from broker.app import ANONYMOUS

        rid = new_request_id()
        c = RequestContext(ANONYMOUS, request_id=rid, source_ip=environ.get("REMOTE_ADDR") or "",
                           front_door=FRONT_DOOR)
        with request_scope(rid):  # its log lines carry the id its audit record has
            try:
                c.principal = keyring.authenticate(presented_token(environ.get("HTTP_X_VAULT_TOKEN"),
                                                                 environ.get("HTTP_AUTHORIZATION")))
                secret = keyring.read(c, mount, entry_id, parse_version(query[len("version="):] if query else None))
                return _read_body(secret, rid), 200
            except Exception as exc:  # noqa: BLE001 - every failure is answered by the views' one mapping
                body, status, drop = failure(exc, c, "keyring:Read", "GET", rid)
                if drop:
                    environ[DROP] = True
                return body, status

    # First path segments of the other routes: a path under one of them is never a key read.
    others = {r.rule.split("/")[2] for r in app.url_map.iter_rules() if r.endpoint != "kv" and
              r.rule.startswith("/v1/")}
    app.wsgi_app = _Dropper(_FastRead(app, others, mounts, fast_read))
    if run_jobs:
        _start_rotation_loop(services, settings)
    return app


def _start_rotation_loop(services: Services, settings: Settings) -> None:
    """The keyring's rotation schedules, leased like every cluster job (broker/jobs.py): the API's loop ticks the
    same lease, so a schedule rotates once per period whichever process gets there first."""
    from broker.app import start_jobs

    start_jobs(services, settings, only="keyring-rotation", thread_name="kmsb-keyring-jobs")
