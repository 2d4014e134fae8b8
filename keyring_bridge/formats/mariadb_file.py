"""MariaDB file_key_management key files: `<id>;<hex key>` lines, optionally OpenSSL-`enc`-encrypted.

Plain: one key per line, `#` comments, ids 1..2^32-1 (id 1 is mandatory for the server), keys of 16/24/32 bytes.
Encrypted: the `openssl enc -aes-256-cbc -md sha1 -pass …` layout: `Salted__` + an 8-byte salt + AES-256-CBC
(PKCS#7 padding) ciphertext. Key and IV come from OpenSSL's EVP_BytesToKey with SHA-1 and one iteration:
    D_1 = SHA1(password || salt), D_i = SHA1(D_{i-1} || password || salt); key||iv = first 32+16 bytes of D_1||D_2||D_3
(an MD-based derivation, not a password-hardening KDF: the password is the only protection of such a file).
"""

from __future__ import annotations

import hashlib
import os
import re

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from keyring_bridge.formats import FileKey, FormatError

MAGIC = b"Salted__"
MAX_FILE = 1024 * 1024
_LINE = re.compile(r"^\s*(\d+)\s*;\s*([0-9a-fA-F]+)\s*$")


def bytes_to_key(password: bytes, salt: bytes, key_len: int = 32, iv_len: int = 16) -> tuple[bytes, bytes]:
    """OpenSSL EVP_BytesToKey(EVP_sha1(), count=1)."""
    out, block = b"", b""
    while len(out) < key_len + iv_len:
        block = hashlib.sha1(block + password + salt).digest()
        out += block
    return out[:key_len], out[key_len:key_len + iv_len]


def decrypt(data: bytes, password: bytes) -> bytes:
    if len(data) < 32 or not data.startswith(MAGIC) or (len(data) - 16) % 16:
        raise FormatError("not an OpenSSL Salted__ aes-256-cbc file")
    key, iv = bytes_to_key(password, data[8:16])
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(data[16:]) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise FormatError("cannot decrypt the key file: wrong password?") from None


def encrypt(plain: bytes, password: bytes, salt: bytes | None = None) -> bytes:
    salt = salt or os.urandom(8)
    key, iv = bytes_to_key(password, salt)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return MAGIC + salt + enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()


def parse(data: bytes, *, password: bytes | None = None) -> list[FileKey]:
    if len(data) > MAX_FILE:
        raise FormatError("key file larger than 1 MiB")
    if data.startswith(MAGIC):
        if password is None:
            raise FormatError("the key file is encrypted (Salted__): give its password (file_key_management_filekey)")
        data = decrypt(data, password)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("not a text key file (wrong password, or an encrypted file without Salted__?)") from None
    keys: dict[int, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(stripped)
        if not m:
            raise FormatError(f"line {lineno}: expected <id>;<hex key>")
        if len(m.group(1)) > 10:  # int() of thousands of digits is refused by Python itself (and slow)
            raise FormatError(f"line {lineno}: key id out of range")
        key_id, hexkey = int(m.group(1)), m.group(2)
        if not 1 <= key_id <= 0xFFFFFFFF:
            raise FormatError(f"line {lineno}: key id out of range")
        if len(hexkey) not in (32, 48, 64):
            raise FormatError(f"line {lineno}: key must be 16, 24 or 32 bytes")
        if key_id in keys:
            raise FormatError(f"line {lineno}: duplicate key id {key_id}")
        keys[key_id] = bytes.fromhex(hexkey)
    if not keys:
        raise FormatError("no keys in the file")
    return [FileKey(str(k), [v]) for k, v in sorted(keys.items())]


def dump(keys: list[FileKey], *, password: bytes | None = None) -> bytes:
    lines = ["# MariaDB file_key_management key file, exported by kms-broker. SECRET: protect or destroy."]
    for key in sorted(keys, key=lambda k: int(k.entry_id) if k.entry_id.isdigit() else -1):
        if not key.entry_id.isdigit() or not 1 <= int(key.entry_id) <= 0xFFFFFFFF:
            raise FormatError(f"entry {key.entry_id!r}: MariaDB key ids are integers 1..4294967295")
        if len(key.versions) != 1:
            raise FormatError(f"entry {key.entry_id}: has {len(key.versions)} versions; file_key_management knows "
                              "only one (version 1). Re-encrypt the data and keep a single version first.")
        if len(key.versions[0]) not in (16, 24, 32):
            raise FormatError(f"entry {key.entry_id}: key must be 16, 24 or 32 bytes")
        lines.append(f"{int(key.entry_id)};{key.versions[0].hex().upper()}")
    plain = ("\n".join(lines) + "\n").encode()
    return encrypt(plain, password) if password else plain
