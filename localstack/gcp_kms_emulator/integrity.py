"""CRC32C request verification and response checksums, as the Cloud KMS API defines them."""

from __future__ import annotations

import google_crc32c

from .errors import invalid


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(bytes(data)))


def verify(request: object, field: str) -> bool:
    """Check `<field>_crc32c` against `<field>` if the client sent one; report whether it was verified.

    A mismatch is INVALID_ARGUMENT: the API tells clients to treat it as transient corruption and retry.
    """
    crc_field = f"{field}_crc32c"
    if crc_field not in request:  # type: ignore[operator]
        return False
    expected = getattr(request, crc_field)
    if crc32c(getattr(request, field)) != expected:
        raise invalid(f"The checksum in field {crc_field} did not match the data in field {field}.")
    return True
