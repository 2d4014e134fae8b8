"""The RPC wire format: action from X-Acs-Action or Action, parameters from the query string and form body,
JSON responses carrying RequestId, and Aliyun's error body {"RequestId","HostId","Code","Message"}."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl

from werkzeug.wrappers import Request, Response

from . import crypto
from . import errors as err
from .models import KmsBackend, Page, iso, random_password
from .signing import SignedRequest, Verifier

API_VERSION = "2016-01-20"


class Params:
    """Typed access to request parameters, raising the service's own codes."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        return default if value in (None, "") else value

    def req(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise err.missing(name)
        return value

    def integer(self, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None) -> int | None:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise err.invalid_parameter(f"{name} must be an integer.") from exc
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise err.invalid_parameter(f"{name} must be between {lo} and {hi}.")
        return value

    def required_integer(self, name: str, lo: int | None = None, hi: int | None = None) -> int:
        self.req(name)
        return self.integer(name, lo=lo, hi=hi)  # type: ignore[return-value]

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() not in {"true", "false"}:
            raise err.invalid_parameter(f"{name} must be true or false.")
        return raw.lower() == "true"

    def json(self, name: str, kind: type) -> object | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise err.invalid_parameter(f"{name} must be valid JSON.") from exc
        if not isinstance(value, kind):
            raise err.invalid_parameter(f"{name} must be a JSON {kind.__name__}.")
        return value

    def context(self, name: str = "EncryptionContext") -> dict | None:
        return self.json(name, dict)  # type: ignore[return-value]

    def b64(self, name: str) -> bytes:
        try:
            return base64.b64decode(self.req(name), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise err.invalid_parameter(f"{name} must be base64-encoded.") from exc

    def page(self) -> tuple[int, int]:
        return self.integer("PageNumber", 1, lo=1), self.integer("PageSize", 10, lo=1, hi=100)

    def tags(self) -> dict[str, str]:
        rows = self.json("Tags", list) or []
        try:
            return {str(r["TagKey"]): str(r.get("TagValue", "")) for r in rows}  # type: ignore[union-attr]
        except (TypeError, KeyError) as exc:
            raise err.invalid_parameter('Tags must look like [{"TagKey":"k","TagValue":"v"}].') from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _paged(page: Page, outer: str, inner: str, rows: list) -> dict:
    return {outer: {inner: rows}, "TotalCount": page.total, "PageNumber": page.number, "PageSize": page.size}


# ---- one function per action: (backend, params) -> response body without RequestId --------------------------
def create_key(b: KmsBackend, p: Params) -> dict:
    key = b.create_key(spec=p.get("KeySpec", "Aliyun_AES_256"), usage=p.get("KeyUsage", "ENCRYPT/DECRYPT"),
                       origin=p.get("Origin", "Aliyun_KMS"), description=p.get("Description", ""),
                       protection_level=p.get("ProtectionLevel", "SOFTWARE"),
                       auto_rotation=p.flag("EnableAutomaticRotation"), rotation_interval=p.get("RotationInterval"),
                       tags=p.tags())
    return {"KeyMetadata": key.metadata()}


def describe_key(b: KmsBackend, p: Params) -> dict:
    return {"KeyMetadata": b.describe_key(p.req("KeyId")).metadata()}


def list_keys(b: KmsBackend, p: Params) -> dict:
    page = b.list_keys(*p.page())
    return _paged(page, "Keys", "Key", [{"KeyId": k.key_id, "KeyArn": k.arn} for k in page.items])


def enable_key(b: KmsBackend, p: Params) -> dict:
    b.enable_key(p.req("KeyId"))
    return {}


def disable_key(b: KmsBackend, p: Params) -> dict:
    b.disable_key(p.req("KeyId"))
    return {}


def schedule_key_deletion(b: KmsBackend, p: Params) -> dict:
    b.schedule_key_deletion(p.req("KeyId"), p.required_integer("PendingWindowInDays"))
    return {}


def cancel_key_deletion(b: KmsBackend, p: Params) -> dict:
    b.cancel_key_deletion(p.req("KeyId"))
    return {}


def encrypt(b: KmsBackend, p: Params) -> dict:
    key, version_id, blob = b.encrypt(p.req("KeyId"), p.req("Plaintext").encode(), p.context())
    return {"KeyId": key.key_id, "KeyVersionId": version_id, "CiphertextBlob": blob}


def decrypt(b: KmsBackend, p: Params) -> dict:
    key, version_id, plaintext = b.decrypt(p.req("CiphertextBlob"), p.context())
    try:
        text = plaintext.decode()
    except UnicodeDecodeError:
        text = _b64(plaintext)
    return {"KeyId": key.key_id, "KeyVersionId": version_id, "Plaintext": text}


def re_encrypt(b: KmsBackend, p: Params) -> dict:
    return b.re_encrypt(p.req("CiphertextBlob"), p.req("DestinationKeyId"), p.context("SourceEncryptionContext"),
                        p.context("DestinationEncryptionContext"), p.get("SourceKeyId"), p.get("SourceKeyVersionId"),
                        p.get("SourceEncryptionAlgorithm"))


def _data_key(b: KmsBackend, p: Params) -> tuple:
    return b.generate_data_key(p.req("KeyId"), p.get("KeySpec"), p.integer("NumberOfBytes"), p.context())


def generate_data_key(b: KmsBackend, p: Params) -> dict:
    key, version_id, blob, data_key = _data_key(b, p)
    return {"KeyId": key.key_id, "KeyVersionId": version_id, "CiphertextBlob": blob, "Plaintext": _b64(data_key)}


def generate_data_key_without_plaintext(b: KmsBackend, p: Params) -> dict:
    key, version_id, blob, _ = _data_key(b, p)
    return {"KeyId": key.key_id, "KeyVersionId": version_id, "CiphertextBlob": blob}


def generate_and_export_data_key(b: KmsBackend, p: Params) -> dict:
    algorithm, spec = p.req("WrappingAlgorithm"), p.req("WrappingKeySpec")
    if algorithm not in crypto.WRAPPING_ALGORITHMS:
        raise err.invalid_parameter(f"WrappingAlgorithm '{algorithm}' is invalid.")
    if spec not in {"RSA_2048", "RSA_3072"}:
        raise err.invalid_parameter(f"WrappingKeySpec '{spec}' is invalid.")
    try:
        public = crypto.load_public(p.b64("PublicKeyBlob"))
    except crypto.CryptoFailure as exc:
        raise err.invalid_parameter("PublicKeyBlob is not a public key.") from exc
    if getattr(public, "key_size", None) != int(spec.split("_")[1]):
        raise err.invalid_parameter(f"PublicKeyBlob is not an {spec} public key.")
    key, version_id, blob, data_key = _data_key(b, p)
    exported = crypto.rsa_encrypt(public, algorithm, data_key)
    return {"KeyId": key.key_id, "KeyVersionId": version_id, "CiphertextBlob": blob, "ExportedDataKey": _b64(exported)}


def asymmetric_encrypt(b: KmsBackend, p: Params) -> dict:
    key, version, blob = b.asymmetric_encrypt(p.req("KeyId"), p.get("KeyVersionId", ""), p.get("Algorithm", ""),
                                              p.b64("Plaintext"))
    return {"KeyId": key.key_id, "KeyVersionId": version.key_version_id, "CiphertextBlob": _b64(blob)}


def asymmetric_decrypt(b: KmsBackend, p: Params) -> dict:
    key, version, plain = b.asymmetric_decrypt(p.req("KeyId"), p.get("KeyVersionId", ""), p.get("Algorithm", ""),
                                               p.b64("CiphertextBlob"))
    return {"KeyId": key.key_id, "KeyVersionId": version.key_version_id, "Plaintext": _b64(plain)}


def asymmetric_sign(b: KmsBackend, p: Params) -> dict:
    key, version, sig = b.asymmetric_sign(p.req("KeyId"), p.get("KeyVersionId", ""), p.get("Algorithm", ""),
                                          p.b64("Digest"))
    return {"KeyId": key.key_id, "KeyVersionId": version.key_version_id, "Value": _b64(sig)}


def asymmetric_verify(b: KmsBackend, p: Params) -> dict:
    key, version, ok = b.asymmetric_verify(p.req("KeyId"), p.get("KeyVersionId", ""), p.get("Algorithm", ""),
                                           p.b64("Digest"), p.b64("Value"))
    return {"KeyId": key.key_id, "KeyVersionId": version.key_version_id, "Value": ok}


def get_public_key(b: KmsBackend, p: Params) -> dict:
    key, version, pem = b.get_public_key(p.req("KeyId"), p.get("KeyVersionId", ""))
    return {"KeyId": key.key_id, "KeyVersionId": version.key_version_id, "PublicKey": pem}


def create_key_version(b: KmsBackend, p: Params) -> dict:
    key_id = p.req("KeyId")
    version = b.create_key_version(key_id)
    return {"KeyVersion": version.describe(b.resolve(key_id).key_id)}


def list_key_versions(b: KmsBackend, p: Params) -> dict:
    key_id = b.describe_key(p.req("KeyId")).key_id
    page = b.list_key_versions(key_id, *p.page())
    return _paged(page, "KeyVersions", "KeyVersion", [v.describe(key_id) for v in page.items])


def describe_key_version(b: KmsBackend, p: Params) -> dict:
    key_id = b.describe_key(p.req("KeyId")).key_id
    return {"KeyVersion": b.describe_key_version(key_id, p.req("KeyVersionId")).describe(key_id)}


def update_rotation_policy(b: KmsBackend, p: Params) -> dict:
    p.req("EnableAutomaticRotation")
    b.update_rotation_policy(p.req("KeyId"), p.flag("EnableAutomaticRotation"), p.get("RotationInterval"))
    return {}


def create_alias(b: KmsBackend, p: Params) -> dict:
    b.create_alias(p.req("AliasName"), p.req("KeyId"))
    return {}


def update_alias(b: KmsBackend, p: Params) -> dict:
    b.update_alias(p.req("AliasName"), p.req("KeyId"))
    return {}


def delete_alias(b: KmsBackend, p: Params) -> dict:
    b.delete_alias(p.req("AliasName"))
    return {}


def list_aliases(b: KmsBackend, p: Params) -> dict:
    page = b.list_aliases(*p.page())
    return _paged(page, "Aliases", "Alias", page.items)


def list_aliases_by_key_id(b: KmsBackend, p: Params) -> dict:
    page = b.list_aliases(*p.page(), key_id=p.req("KeyId"))
    return _paged(page, "Aliases", "Alias", page.items)


def tag_resource(b: KmsBackend, p: Params) -> dict:
    tags = p.tags()
    if not tags:
        raise err.missing("Tags")
    b.tag_resource(p.req("KeyId"), tags)
    return {}


def untag_resource(b: KmsBackend, p: Params) -> dict:
    keys = p.json("TagKeys", list)
    if not keys:
        raise err.missing("TagKeys")
    b.untag_resource(p.req("KeyId"), [str(k) for k in keys])  # type: ignore[union-attr]
    return {}


def list_resource_tags(b: KmsBackend, p: Params) -> dict:
    key = b.list_resource_tags(p.req("KeyId"))
    return {"Tags": {"Tag": [{"KeyId": key.key_id, "TagKey": k, "TagValue": v} for k, v in sorted(key.tags.items())]}}


def get_parameters_for_import(b: KmsBackend, p: Params) -> dict:
    key, token, public_der, expires = b.get_parameters_for_import(
        p.req("KeyId"), p.req("WrappingAlgorithm"), p.req("WrappingKeySpec"))
    return {"KeyId": key.key_id, "ImportToken": token, "PublicKey": _b64(public_der), "TokenExpireTime": iso(expires)}


def import_key_material(b: KmsBackend, p: Params) -> dict:
    b.import_key_material(p.req("KeyId"), p.b64("EncryptedKeyMaterial"), p.req("ImportToken"),
                          p.integer("KeyMaterialExpireUnix", 0, lo=0) or 0)
    return {}


def delete_key_material(b: KmsBackend, p: Params) -> dict:
    b.delete_key_material(p.req("KeyId"))
    return {}


def get_random_password(b: KmsBackend, p: Params) -> dict:
    password = random_password(p.integer("PasswordLength", 32) or 32, p.get("ExcludeCharacters", "") or "",
                               p.flag("ExcludeLowercase"), p.flag("ExcludeUppercase"), p.flag("ExcludeNumbers"),
                               p.flag("ExcludePunctuation"), p.flag("RequireEachIncludedType", True))
    return {"RandomPassword": password}


ACTIONS: dict[str, Callable[[KmsBackend, Params], dict]] = {
    "CreateKey": create_key, "DescribeKey": describe_key, "ListKeys": list_keys,
    "EnableKey": enable_key, "DisableKey": disable_key,
    "ScheduleKeyDeletion": schedule_key_deletion, "CancelKeyDeletion": cancel_key_deletion,
    "Encrypt": encrypt, "Decrypt": decrypt, "ReEncrypt": re_encrypt,
    "GenerateDataKey": generate_data_key, "GenerateDataKeyWithoutPlaintext": generate_data_key_without_plaintext,
    "GenerateAndExportDataKey": generate_and_export_data_key,
    "AsymmetricEncrypt": asymmetric_encrypt, "AsymmetricDecrypt": asymmetric_decrypt,
    "AsymmetricSign": asymmetric_sign, "AsymmetricVerify": asymmetric_verify, "GetPublicKey": get_public_key,
    "CreateKeyVersion": create_key_version, "ListKeyVersions": list_key_versions,
    "DescribeKeyVersion": describe_key_version, "UpdateRotationPolicy": update_rotation_policy,
    "CreateAlias": create_alias, "UpdateAlias": update_alias, "DeleteAlias": delete_alias,
    "ListAliases": list_aliases, "ListAliasesByKeyId": list_aliases_by_key_id,
    "TagResource": tag_resource, "UntagResource": untag_resource, "ListResourceTags": list_resource_tags,
    "GetParametersForImport": get_parameters_for_import, "ImportKeyMaterial": import_key_material,
    "DeleteKeyMaterial": delete_key_material, "GetRandomPassword": get_random_password,
}


class KmsApp:
    """The WSGI application: authenticate, dispatch, serialize."""

    def __init__(self, backend: KmsBackend, verifier: Verifier) -> None:
        self.backend = backend
        self.verifier = verifier
        self.host_id = f"kms.{backend.region}.aliyuncs.com"

    def __call__(self, environ: dict, start_response: Callable) -> object:
        return self.handle(Request(environ))(environ, start_response)

    def _json(self, body: dict, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json;charset=utf-8")

    def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4()).upper()
        try:
            body = request.get_data(cache=True)
            query = parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True)
            form: list[tuple[str, str]] = []
            if (request.mimetype or "") == "application/x-www-form-urlencoded" and body:
                form = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.verifier.verify(SignedRequest(request.method, request.path, query, form, headers, body))
            params = Params(dict(query + form))
            action = headers.get("x-acs-action") or params.get("Action") or ""
            version = headers.get("x-acs-version") or params.get("Version")
            if version != API_VERSION:
                raise err.KmsError("InvalidVersion", f"Specified parameter Version '{version}' is not valid.", 400)
            handler = ACTIONS.get(action)
            if handler is None:
                raise err.KmsError("InvalidAction.NotFound",
                                   f"Specified api '{action}' is not found, please check your url and method.", 404)
            result = handler(self.backend, params)
            return self._json({**result, "RequestId": request_id})
        except err.KmsError as exc:
            return self._json({"RequestId": request_id, "HostId": self.host_id, "Code": exc.code,
                               "Message": exc.message}, exc.status)
        except Exception as exc:  # noqa: BLE001 - the service answers InternalFailure, never a stack trace
            return self._json({"RequestId": request_id, "HostId": self.host_id, "Code": "InternalFailure",
                               "Message": f"The request processing has failed due to some unknown error: "
                                          f"{type(exc).__name__}"}, 500)
