"""Real Chromium (Debian's /usr/bin/chromium) driven by Playwright for Python, with every console message and page
error collected so a test can assert there were none (a CSP violation is reported there too)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Tab:
    page: object
    problems: list[str] = field(default_factory=list)


def chromium() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        pytest.fail("Chromium is missing: scripts/bootstrap.sh --test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_tab(browser, *, width: int = 1280, height: int = 900) -> Tab:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    tab = Tab(page)
    page.on("console", lambda m: tab.problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    return tab
