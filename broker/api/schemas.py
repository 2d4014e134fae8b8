"""Request bodies of the native API, validated by pydantic (unknown fields are refused). Bytes travel as base64."""

from __future__ import annotations

import base64
import binascii
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


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateKey(Body):
    KeySpec: str = "SYMMETRIC_DEFAULT"
    KeyUsage: str | None = None
    Description: str = ""
    Tags: dict[str, str] | list[dict[str, str]] | None = None
    Origin: Literal["AWS_KMS", "EXTERNAL"] = "AWS_KMS"
    Provider: str | None = None


class UpdateKey(Body):
    Description: str


class ScheduleDeletion(Body):
    PendingWindowInDays: int = 30


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
    NumberOfBytes: int | None = None
    EncryptionContext: Context | None = None


class GenerateDataKeyPair(Body):
    KeyPairSpec: str
    EncryptionContext: Context | None = None


class GenerateRandom(Body):
    NumberOfBytes: int
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
    RotationPeriodInDays: int = 365


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
