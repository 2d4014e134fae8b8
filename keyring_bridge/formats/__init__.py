"""Key files in and out of the bridge: MariaDB file_key_management, MySQL component_keyring_file JSON, legacy
keyring_file v2.0. Pure functions over bytes: parse(data, …) -> list[FileKey]; dump(list[FileKey], …) -> bytes.

Entry ids: MariaDB ids are the numeric key ids. MySQL keys carry (data_id, user): the entry id is `data_id` when the
user is empty, else `user/data_id`; `custom_metadata` keeps user, data_id and data_type so an export restores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS = ("mariadb-file", "mysql-component-json", "mysql-keyring-file")


class FormatError(ValueError):
    """The file is not in the expected format (the message never contains key material)."""


@dataclass
class FileKey:
    entry_id: str
    versions: list[bytes]  # version 1, 2, … (key files hold one version: the list has one item)
    custom_metadata: dict[str, str] = field(default_factory=dict)


def mysql_entry_id(data_id: str, user: str) -> str:
    return f"{user}/{data_id}" if user else data_id


def parse(fmt: str, data: bytes, *, password: bytes | None = None) -> list[FileKey]:
    if fmt == "mariadb-file":
        from keyring_bridge.formats import mariadb_file
        return mariadb_file.parse(data, password=password)
    if fmt == "mysql-component-json":
        from keyring_bridge.formats import mysql_component
        return mysql_component.parse(data)
    if fmt == "mysql-keyring-file":
        from keyring_bridge.formats import mysql_keyring_file
        return mysql_keyring_file.parse(data)
    raise FormatError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def dump(fmt: str, keys: list[FileKey], *, password: bytes | None = None) -> bytes:
    if fmt == "mariadb-file":
        from keyring_bridge.formats import mariadb_file
        return mariadb_file.dump(keys, password=password)
    if fmt == "mysql-component-json":
        from keyring_bridge.formats import mysql_component
        return mysql_component.dump(keys)
    if fmt == "mysql-keyring-file":
        from keyring_bridge.formats import mysql_keyring_file
        return mysql_keyring_file.dump(keys)
    raise FormatError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
