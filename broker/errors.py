"""One error model for every front door: AWS-KMS-style codes, an HTTP status, a message with no secrets in it."""

from __future__ import annotations


class BrokerError(Exception):
    code = "KMSInternalException"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self, request_id: str) -> dict:
        return {"error": {"code": self.code, "message": self.message, "request_id": request_id}}


def _error(name: str, code: str, status: int) -> type[BrokerError]:
    return type(name, (BrokerError,), {"code": code, "status": status, "__doc__": f"{code} ({status})"})


ValidationError = _error("ValidationError", "ValidationException", 400)
NotFound = _error("NotFound", "NotFoundException", 404)
AlreadyExists = _error("AlreadyExists", "AlreadyExistsException", 409)
Disabled = _error("Disabled", "DisabledException", 409)
InvalidState = _error("InvalidState", "KMSInvalidStateException", 409)
InvalidCiphertext = _error("InvalidCiphertext", "InvalidCiphertextException", 400)
IncorrectKey = _error("IncorrectKey", "IncorrectKeyException", 400)
InvalidKeyUsage = _error("InvalidKeyUsage", "InvalidKeyUsageException", 400)
InvalidSignature = _error("InvalidSignature", "KMSInvalidSignatureException", 400)
InvalidMac = _error("InvalidMac", "KMSInvalidMacException", 400)
InvalidImportToken = _error("InvalidImportToken", "InvalidImportTokenException", 400)
ExpiredImportToken = _error("ExpiredImportToken", "ExpiredImportTokenException", 400)
IncorrectKeyMaterial = _error("IncorrectKeyMaterial", "IncorrectKeyMaterialException", 400)
Unsupported = _error("Unsupported", "UnsupportedOperationException", 400)
Unauthenticated = _error("Unauthenticated", "UnrecognizedClientException", 401)
AccessDenied = _error("AccessDenied", "AccessDeniedException", 403)
LimitExceeded = _error("LimitExceeded", "LimitExceededException", 400)
Throttled = _error("Throttled", "ThrottlingException", 429)
DependencyTimeout = _error("DependencyTimeout", "DependencyTimeoutException", 503)
DependencyFailure = _error("DependencyFailure", "DependencyFailureException", 502)
NotReady = _error("NotReady", "ServiceUnavailableException", 503)
MalformedPolicyDocument = _error("MalformedPolicyDocument", "MalformedPolicyDocumentException", 400)
