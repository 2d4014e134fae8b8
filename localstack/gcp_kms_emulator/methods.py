"""The RPCs the emulator serves: name, request and response types (shared by gRPC and REST)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.cloud import kms_v1 as k

SERVICE = "google.cloud.kms.v1.KeyManagementService"


@dataclass(frozen=True)
class Rpc:
    name: str
    request: type
    response: type

    @property
    def method(self) -> str:
        """The backend method: the RPC name in snake_case."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.name).lower()


RPCS = {r.name: r for r in [
    Rpc("CreateKeyRing", k.CreateKeyRingRequest, k.KeyRing),
    Rpc("GetKeyRing", k.GetKeyRingRequest, k.KeyRing),
    Rpc("ListKeyRings", k.ListKeyRingsRequest, k.ListKeyRingsResponse),
    Rpc("CreateCryptoKey", k.CreateCryptoKeyRequest, k.CryptoKey),
    Rpc("GetCryptoKey", k.GetCryptoKeyRequest, k.CryptoKey),
    Rpc("ListCryptoKeys", k.ListCryptoKeysRequest, k.ListCryptoKeysResponse),
    Rpc("UpdateCryptoKey", k.UpdateCryptoKeyRequest, k.CryptoKey),
    Rpc("UpdateCryptoKeyPrimaryVersion", k.UpdateCryptoKeyPrimaryVersionRequest, k.CryptoKey),
    Rpc("CreateCryptoKeyVersion", k.CreateCryptoKeyVersionRequest, k.CryptoKeyVersion),
    Rpc("GetCryptoKeyVersion", k.GetCryptoKeyVersionRequest, k.CryptoKeyVersion),
    Rpc("ListCryptoKeyVersions", k.ListCryptoKeyVersionsRequest, k.ListCryptoKeyVersionsResponse),
    Rpc("UpdateCryptoKeyVersion", k.UpdateCryptoKeyVersionRequest, k.CryptoKeyVersion),
    Rpc("DestroyCryptoKeyVersion", k.DestroyCryptoKeyVersionRequest, k.CryptoKeyVersion),
    Rpc("RestoreCryptoKeyVersion", k.RestoreCryptoKeyVersionRequest, k.CryptoKeyVersion),
    Rpc("GetPublicKey", k.GetPublicKeyRequest, k.PublicKey),
    Rpc("CreateImportJob", k.CreateImportJobRequest, k.ImportJob),
    Rpc("GetImportJob", k.GetImportJobRequest, k.ImportJob),
    Rpc("ListImportJobs", k.ListImportJobsRequest, k.ListImportJobsResponse),
    Rpc("ImportCryptoKeyVersion", k.ImportCryptoKeyVersionRequest, k.CryptoKeyVersion),
    Rpc("Encrypt", k.EncryptRequest, k.EncryptResponse),
    Rpc("Decrypt", k.DecryptRequest, k.DecryptResponse),
    Rpc("RawEncrypt", k.RawEncryptRequest, k.RawEncryptResponse),
    Rpc("RawDecrypt", k.RawDecryptRequest, k.RawDecryptResponse),
    Rpc("AsymmetricSign", k.AsymmetricSignRequest, k.AsymmetricSignResponse),
    Rpc("AsymmetricDecrypt", k.AsymmetricDecryptRequest, k.AsymmetricDecryptResponse),
    Rpc("MacSign", k.MacSignRequest, k.MacSignResponse),
    Rpc("MacVerify", k.MacVerifyRequest, k.MacVerifyResponse),
    Rpc("GenerateRandomBytes", k.GenerateRandomBytesRequest, k.GenerateRandomBytesResponse),
]}
