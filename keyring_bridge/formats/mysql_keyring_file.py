"""Legacy MySQL keyring_file data file, version 2.0 (binary).

Layout (mysql-server plugin/keyring/: keyring_key.cc, buffered_file_io.cc, checker/):
    "Keyring file version:2.0"
    records: five size_t words (record size incl. padding, key_id length, key_type length, user_id length,
             key length), then key_id, key_type, user_id, the key bytes XOR-obfuscated with
             "*305=Ljt0*!@$Hnm(*-9-w;:", zero padding up to a multiple of sizeof(size_t)
    "EOF" + SHA-256 digest (32 bytes)
The words are native: this reader tries 8- and 4-byte words in both byte orders and keeps the layout that consumes
the record area exactly. The writer uses 64-bit little-endian (x86-64/aarch64 servers) and a digest over everything
before it. NOT verified against a file written by a real MySQL server on this machine (no MySQL here): the digest
is checked against both candidate spans (records only, or the whole file before the digest) and only reported.
"""

from __future__ import annotations

import hashlib
import struct

from keyring_bridge.formats import FileKey, FormatError, mysql_entry_id

HEADER = b"Keyring file version:2.0"
HEADER_V1 = b"Keyring file version:1.0"
EOF_MARK = b"EOF"
OBFUSCATE = b"*305=Ljt0*!@$Hnm(*-9-w;:"


def _xor(data: bytes) -> bytes:
    return bytes(b ^ OBFUSCATE[i % len(OBFUSCATE)] for i, b in enumerate(data))


def _records(area: bytes, width: int, order: str) -> list[tuple[str, str, str, bytes]] | None:
    fmt = f"{order}{'Q' if width == 8 else 'I'}"
    out, pos = [], 0
    while pos < len(area):
        if pos + 5 * width > len(area):
            return None
        words = [struct.unpack_from(fmt, area, pos + i * width)[0] for i in range(5)]
        size, lid, ltype, luser, lkey = words
        body = 5 * width + lid + ltype + luser + lkey
        if size < body or size % width or pos + size > len(area) or size - body >= width:
            return None
        p = pos + 5 * width
        try:
            key_id = area[p:p + lid].decode()
            key_type = area[p + lid:p + lid + ltype].decode()
            user = area[p + lid + ltype:p + lid + ltype + luser].decode()
        except UnicodeDecodeError:
            return None
        key = _xor(area[p + lid + ltype + luser:p + lid + ltype + luser + lkey])
        out.append((key_id, key_type, user, key))
        pos += size
    return out


def parse(data: bytes) -> list[FileKey]:
    if data.startswith(HEADER_V1):
        raise FormatError("keyring_file version 1.0 is not supported: let MySQL rewrite it as 2.0 first")
    if not data.startswith(HEADER) or len(data) < len(HEADER) + 3 + 32 or data[-35:-32] != EOF_MARK:
        raise FormatError("not a keyring_file version 2.0 file")
    area = data[len(HEADER):-35]
    for width, order in ((8, "<"), (8, ">"), (4, "<"), (4, ">")):
        records = _records(area, width, order)
        if records is not None:
            break
    else:
        raise FormatError("cannot decode the keyring_file records")
    digest = data[-32:]
    if digest not in (hashlib.sha256(data[:-32]).digest(), hashlib.sha256(area).digest(),
                      hashlib.sha256(data[:-35]).digest()):
        raise FormatError("keyring_file digest does not match: the file is damaged")
    out = []
    for key_id, key_type, user, key in records:
        if not key:
            raise FormatError(f"key {key_id!r}: the key is empty")
        out.append(FileKey(mysql_entry_id(key_id, user), [key],
                           {"format": "mysql", "user": user, "data_id": key_id, "data_type": key_type}))
    return out


def dump(keys: list[FileKey]) -> bytes:
    area = b""
    for key in keys:
        meta = key.custom_metadata or {}
        key_id = meta.get("data_id", key.entry_id).encode()
        key_type = (meta.get("data_type") or "AES").encode()
        user = meta.get("user", "").encode()
        material = key.versions[-1]
        body = 5 * 8 + len(key_id) + len(key_type) + len(user) + len(material)
        size = body + (-body % 8)
        area += struct.pack("<5Q", size, len(key_id), len(key_type), len(user), len(material))
        area += key_id + key_type + user + _xor(material) + b"\0" * (size - body)
    head = HEADER + area + EOF_MARK
    return head + hashlib.sha256(head).digest()
