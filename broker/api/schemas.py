"""Request bodies of the native API, validated by pydantic (unknown fields are refused). Bytes travel as base64."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


B64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
B64 = Annotated[bytes, BeforeValidator(_b64),
                WithJsonSchema({"type": "string", "contentEncoding": "base64", "pattern": B64_PATTERN})]
Context = dict[str, str]
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with a time zone, e.g. 2026-01-01T00:00:00Z")
    return value


# What the document says (format date-time) and nothing else: pydantic alone would also take 0.5 as epoch seconds.
Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateKey(Body):
    KeySpec: str = "SYMMETRIC_DEFAULT"
    KeyUsage: str | None = None
    Description: str = Field(default="", max_length=8192)
    Tags: dict[str, str] | list[dict[str, str]] | None = None
    Origin: Literal["AWS_KMS", "EXTERNAL"] = "AWS_KMS"
    Provider: str | None = None
    Policy: dict | None = None
    BypassPolicyLockoutSafetyCheck: bool = False


class UpdateKey(Body):
    Description: str = Field(max_length=8192)


class ScheduleDeletion(Body):
    PendingWindowInDays: int = Field(default=30, ge=7, le=30)


class Encrypt(Body):
    Plaintext: B64
    EncryptionContext: Context | None = None
    EncryptionAlgorithm: str = "SYMMETRIC_DEFAULT"


class Decrypt(Body):
    CiphertextBlob: B64
    EncryptionContext: Context | None = None
    KeyId: str | None = None
    EncryptionAlgorithm: str = "SYMMETRIC_DEFAULT"


class ReEncrypt(Body):
    CiphertextBlob: B64
    DestinationKeyId: str
    SourceEncryptionContext: Context | None = None
    DestinationEncryptionContext: Context | None = None
    SourceKeyId: str | None = None


class GenerateDataKey(Body):
    KeySpec: str | None = None
    NumberOfBytes: int | None = Field(default=None, ge=1, le=1024)
    EncryptionContext: Context | None = None


class GenerateDataKeyPair(Body):
    KeyPairSpec: str
    EncryptionContext: Context | None = None


class GenerateRandom(Body):
    NumberOfBytes: int = Field(ge=1, le=1024)
    Provider: str | None = None


class Sign(Body):
    Message: B64
    SigningAlgorithm: str
    MessageType: Literal["RAW", "DIGEST"] = "RAW"


class Verify(Sign):
    Signature: B64


class GenerateMac(Body):
    Message: B64
    MacAlgorithm: str


class VerifyMac(GenerateMac):
    Mac: B64


class CreateAlias(Body):
    AliasName: str
    TargetKeyId: str


class UpdateAlias(Body):
    TargetKeyId: str


class TagKey(Body):
    Tags: dict[str, str] | list[dict[str, str]]


class UntagKey(Body):
    TagKeys: list[str]


class EnableRotation(Body):
    RotationPeriodInDays: int = Field(default=365, ge=90, le=2560)


class ImportParameters(Body):
    WrappingAlgorithm: str = "RSAES_OAEP_SHA_1"
    WrappingKeySpec: str = "RSA_2048"


class ImportMaterial(Body):
    ImportToken: B64
    EncryptedKeyMaterial: B64
    ExpirationModel: Literal["KEY_MATERIAL_DOES_NOT_EXPIRE"] = "KEY_MATERIAL_DOES_NOT_EXPIRE"


class Query(BaseModel):
    """A query string: names are fixed (unknown ones refused), values arrive as text and are converted."""

    model_config = ConfigDict(extra="forbid", strict=False)


class ListQuery(Query):
    limit: int = Field(default=100, ge=1, le=1000, description="page size")
    marker: str | None = Field(default=None, description="NextMarker of the previous page")


class AliasQuery(Query):
    key: str | None = Field(default=None, description="only the aliases of this key (id, ARN or alias)")


class KeyPolicyQuery(Query):
    name: str = Field(default="default", description="the key policy's name")


class RetirableQuery(Query):
    principal: str | None = Field(default=None, description="the retiring principal (default: the caller)")


class PutPolicy(Body):
    Document: dict


class PutKeyPolicy(Body):
    Policy: dict
    PolicyName: str = "default"
    BypassPolicyLockoutSafetyCheck: bool = False


class CreateGrant(Body):
    GranteePrincipal: str
    Operations: list[str]
    RetiringPrincipal: str = ""
    Constraints: dict[str, dict[str, str]] | None = None
    Name: str = ""


class RetireGrant(Body):
    GrantToken: str | None = None
    KeyId: str | None = None
    GrantId: str | None = None


class SimulatePrincipal(Body):
    Name: str
    Policies: list[str] = []
    Attributes: dict[str, str] = {}
    AuthMethod: str = "token"


class Simulate(Body):
    Principal: SimulatePrincipal
    Action: str
    KeyId: str | None = None
    Resource: str | None = None
    EncryptionContext: dict[str, str] | None = None
    SourceIp: str = ""
    Time: str | None = None
