"""Key Vault errors: the code, HTTP status and message Azure returns, raised by the model, rendered by responses."""

from __future__ import annotations


class KeyVaultError(Exception):
    """`{"error": {"code", "message"[, "innererror"]}}` with `status`."""

    status = 400
    code = "BadParameter"

    def __init__(self, message: str, inner_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.inner_code = inner_code

    def body(self) -> dict:
        err: dict = {"code": self.code, "message": self.message}
        if self.inner_code:
            err["innererror"] = {"code": self.inner_code}
        return {"error": err}


class BadParameter(KeyVaultError):
    status, code = 400, "BadParameter"


class KeyNotFound(KeyVaultError):
    status, code = 404, "KeyNotFound"


class NotFound(KeyVaultError):
    status, code = 404, "NotFound"


class Forbidden(KeyVaultError):
    status, code = 403, "Forbidden"


class Conflict(KeyVaultError):
    status, code = 409, "Conflict"


class Unauthorized(KeyVaultError):
    status, code = 401, "Unauthorized"


class MethodNotAllowed(KeyVaultError):
    status, code = 405, "MethodNotAllowed"
