"""MySQL component_keyring_file data file (JSON): {"version":"1.0","elements":[{user,data_id,data_type,data,extension}]}.

`data` is the hex of the key bytes (mysql-server components/keyrings/common/json_data/). Each element becomes one
entry (one version). The element's user, data_id and data_type are kept as custom metadata for the way back.
"""

from __future__ import annotations

import json

from keyring_bridge.formats import FileKey, FormatError, mysql_entry_id


def parse(data: bytes) -> list[FileKey]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise FormatError("not a JSON document (or nested too deep)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("elements"), list):
        raise FormatError("expected {\"version\": ..., \"elements\": [...]}")
    if str(doc.get("version", "1.0")) != "1.0":
        raise FormatError(f"unsupported component_keyring_file version {doc.get('version')!r}")
    out: dict[str, FileKey] = {}
    for i, el in enumerate(doc["elements"]):
        if not isinstance(el, dict) or not isinstance(el.get("data_id"), str) or not isinstance(el.get("data"), str):
            raise FormatError(f"element {i}: needs data_id and data")
        user = el.get("user") or ""
        try:
            material = bytes.fromhex(el["data"])
        except ValueError:
            raise FormatError(f"element {i}: data is not hex") from None
        if not material:
            raise FormatError(f"element {i}: the key is empty")
        entry_id = mysql_entry_id(el["data_id"], user)
        if entry_id in out:
            raise FormatError(f"element {i}: duplicate data_id/user")
        out[entry_id] = FileKey(entry_id, [material], {"format": "mysql", "user": user, "data_id": el["data_id"],
                                                       "data_type": str(el.get("data_type") or "")})
    return list(out.values())


def dump(keys: list[FileKey]) -> bytes:
    elements = []
    for key in keys:
        meta = key.custom_metadata or {}
        # The component keeps one value per (data_id, user): export the latest version.
        elements.append({"user": meta.get("user", ""), "data_id": meta.get("data_id", key.entry_id),
                         "data_type": meta.get("data_type") or "AES", "data": key.versions[-1].hex().upper(),
                         "extension": []})
    return json.dumps({"version": "1.0", "elements": elements}).encode()
