"""Every UI string in one place: strings/<lang>.json. A translation is a file, not a code change.

`translator(lang)` gives `t(key, **values)`; keys missing from a translation fall back to English, and a key missing
from English is a bug the string-completeness test catches (it renders as the key itself, never as a 500).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

STRINGS = Path(__file__).parent / "strings"
DEFAULT = "en"


@functools.cache
def catalog(lang: str) -> dict[str, str]:
    return json.loads((STRINGS / f"{lang}.json").read_text(encoding="utf-8"))


@functools.cache
def languages() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in STRINGS.glob("*.json")))


def pick(requested: str | None, accept: str | None) -> str:
    """The session's choice if it is a shipped language, else the browser's first shipped one, else English."""
    if requested in languages():
        return requested  # type: ignore[return-value]
    for part in (accept or "").split(","):
        tag = part.split(";")[0].strip()
        for lang in languages():
            if tag.lower() == lang.lower() or (tag and lang.lower().startswith(tag.lower().split("-")[0] + "-")
                                               and tag.lower().split("-")[0] != "en"):
                return lang
        if tag.lower().startswith("en"):
            return DEFAULT
    return DEFAULT


def translator(lang: str) -> Callable[..., str]:
    own, base = catalog(lang if lang in languages() else DEFAULT), catalog(DEFAULT)

    def t(string_key: str, /, **values: object) -> str:
        text = own.get(string_key) or base.get(string_key) or string_key
        return text.format(**values) if values else text
    return t
