"""Aliyun error codes and HTTP statuses, in one place so models and signing raise the same shapes."""

from __future__ import annotations


class KmsError(Exception):
    """An error the service returns as {"RequestId","HostId","Code","Message"} with `status`."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def invalid_parameter(message: str) -> KmsError:
    return KmsError("InvalidParameter", message, 400)


def missing(name: str) -> KmsError:
    """The POP gateway's shape for an absent required parameter."""
    return KmsError(f"Missing{name}", f"{name} is mandatory for this action.", 400)


def key_not_found(key_id: str) -> KmsError:
    return KmsError("Forbidden.KeyNotFound", f"The specified Key is not found. KeyId: {key_id}", 404)


def alias_not_found(name: str) -> KmsError:
    return KmsError("Forbidden.AliasNotFound", f"The specified Alias is not found. AliasName: {name}", 404)


def version_not_found(version_id: str) -> KmsError:
    return KmsError("Forbidden.ResourceNotFound", f"The specified KeyVersion is not found: {version_id}", 404)


def disabled(key_id: str) -> KmsError:
    return KmsError("Rejected.Disabled", f"The key is Disabled. KeyId: {key_id}", 400)


def pending_deletion(key_id: str) -> KmsError:
    return KmsError("Forbidden.KeyPendingDeletion", f"The key is PendingDeletion. KeyId: {key_id}", 403)


def unexpected_state(key_id: str, state: str) -> KmsError:
    return KmsError("Rejected.UnexpectedState", f"The key state {state} does not allow this action. KeyId: {key_id}", 400)


def expired(what: str) -> KmsError:
    return KmsError("Rejected.ResourceExpired", f"The {what} has expired.", 400)


def unsupported(message: str) -> KmsError:
    return KmsError("UnsupportedOperation", message, 400)


def invalid_ciphertext(message: str = "The CiphertextBlob is invalid or does not match the context.") -> KmsError:
    return KmsError("InvalidCiphertext", message, 400)
