"""The state file as per-object JSON texts, refreshed from the objects that changed and written outside the lock.

The emulators rewrote their state file by serialising the whole backend under its lock, so every request waited
while thousands of objects were turned into JSON (GCP at 2,000 keys: ~34 raw creates/s). Here the backend marks
what it changes (`mark`, under its lock); a save renders only the marked objects, under the lock (they are
mutable), and then joins the kept texts of all objects into one JSON document and writes it with the lock
released. The document has the same shape as before (tables of objects, plus a few top-level fields), is written
to a temporary file and renamed over the state file, so a crash never leaves a half-written file, and it holds
the state as of one instant: the texts change only inside the locked part of a save, and saves take turns.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Hashable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

Shape = Literal["list", "map"]


class JsonDocument:
    """Tables of per-object JSON texts; `list` tables are written as an array of the objects, `map` tables as an
    object keyed by the ident (a str)."""

    def __init__(self, path: Path | str, tables: dict[str, Shape]) -> None:
        self.path = Path(path)
        self._shapes = dict(tables)
        self._texts: dict[str, dict[Hashable, str]] = {t: {} for t in tables}
        self._dirty: dict[tuple[str, Hashable], None] = {}  # ordered: new objects keep their order of arrival
        self._turn = threading.Lock()  # one save at a time: only a save touches _texts

    def mark(self, table: str, ident: Hashable) -> None:
        """Object `ident` of `table` changed, was added or is gone (call under the backend's lock)."""
        if table not in self._shapes:
            raise KeyError(f"unknown table {table!r}")
        self._dirty[(table, ident)] = None

    def mark_all(self, table: str, idents: Iterable[Hashable]) -> None:
        for ident in idents:
            self.mark(table, ident)

    def save(self, lock: AbstractContextManager[Any], render: Callable[[str, Hashable], str | None],
             fields: Callable[[], dict[str, Any]] = dict) -> None:
        """Render the marked objects under `lock` (`render` returns the object's JSON text, None once it is gone)
        and the top-level `fields`, then write the document with the lock released."""
        with self._turn:
            with lock:
                dirty, self._dirty = self._dirty, {}
                try:
                    for table, ident in dirty:
                        text = render(table, ident)
                        if text is None:
                            self._texts[table].pop(ident, None)
                        else:
                            self._texts[table][ident] = text
                    top = fields()
                except BaseException:
                    self._dirty = {**dirty, **self._dirty}  # rendered again (from the objects themselves) by the next save
                    raise
            self._write(top)

    def _write(self, top: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds key material
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("{")
            first = True
            for table, shape in self._shapes.items():
                texts = self._texts[table]
                fh.write(("" if first else ",") + json.dumps(table) + ":" + ("[" if shape == "list" else "{"))
                first = False
                if shape == "list":
                    fh.write(",".join(texts.values()))
                else:
                    fh.write(",".join(f"{json.dumps(str(i))}:{t}" for i, t in texts.items()))
                fh.write("]" if shape == "list" else "}")
            for name, value in top.items():
                fh.write(("" if first else ",") + f"{json.dumps(name)}:{json.dumps(value)}")
                first = False
            fh.write("}")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
