"""The canonical google.rpc error codes the emulator raises, and their HTTP mapping."""

from __future__ import annotations

# google.rpc.Code name -> (numeric code, HTTP status), as in google/rpc/code.proto.
CODES: dict[str, tuple[int, int]] = {
    "INVALID_ARGUMENT": (3, 400),
    "DEADLINE_EXCEEDED": (4, 504),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "PERMISSION_DENIED": (7, 403),
    "RESOURCE_EXHAUSTED": (8, 429),
    "FAILED_PRECONDITION": (9, 400),
    "OUT_OF_RANGE": (11, 400),
    "UNIMPLEMENTED": (12, 501),
    "INTERNAL": (13, 500),
    "UNAVAILABLE": (14, 503),
    "UNAUTHENTICATED": (16, 401),
}


class KmsError(Exception):
    """A service error carrying the status name the real API would return."""

    def __init__(self, status: str, message: str) -> None:
        if status not in CODES:
            raise ValueError(f"unknown status {status}")
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def http_status(self) -> int:
        return CODES[self.status][1]

    def rest_body(self) -> dict:
        return {"error": {"code": self.http_status, "message": self.message, "status": self.status}}


def invalid(message: str) -> KmsError:
    return KmsError("INVALID_ARGUMENT", message)


def not_found(kind: str, name: str) -> KmsError:
    return KmsError("NOT_FOUND", f"{kind} {name} not found.")


def already_exists(kind: str, name: str) -> KmsError:
    return KmsError("ALREADY_EXISTS", f"{kind} {name} already exists.")


def precondition(message: str) -> KmsError:
    return KmsError("FAILED_PRECONDITION", message)
