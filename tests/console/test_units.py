"""Console parts that need no server: the session store's clocks, the string catalogues, the templates' CSP hygiene."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from broker.console import i18n
from broker.console.sessions import FLOW_SECONDS, SessionStore

CONSOLE = Path(i18n.__file__).parent
DYNAMIC = {"state.Enabled", "state.Disabled", "state.PendingDeletion", "state.PendingImport", "state.Destroyed",
           "lang.en", "lang.zh-CN", "sim.decision_allow", "sim.decision_deny"}


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    return SessionStore(tmp_path / "s.db", idle_seconds=600, max_seconds=3600)


def _new(store: SessionStore, now: float, token_expires: float | None = None):
    return store.create(token="kmsb.the-token-itself", principal="alice", method="token", token_expires=token_expires,
                        revoke_on_logout=False, now=now)


def test_an_idle_session_expires_and_using_it_restarts_the_idle_clock(store: SessionStore) -> None:
    s = _new(store, 1000.0)
    assert store.get(s.sid, now=1000.0 + 599) is not None          # used: idle clock restarts
    assert store.get(s.sid, now=1000.0 + 599 + 599) is not None
    assert store.get(s.sid, now=1000.0 + 599 + 599 + 600) is None   # idle for the whole timeout
    assert store.get(s.sid, now=1000.0 + 1) is None                 # and it is gone for good


def test_no_session_outlives_its_maximum_or_its_token(store: SessionStore) -> None:
    s = _new(store, 0.0)
    now = 0.0
    while now < 3600 - 500:
        now += 500
        assert store.get(s.sid, now=now) is not None
    assert store.get(s.sid, now=3600.0) is None
    short = _new(store, 0.0, token_expires=100.0)
    assert store.get(short.sid, now=99.0) is not None
    assert store.get(short.sid, now=100.0) is None


def test_the_store_keeps_no_session_id_and_no_token(store: SessionStore) -> None:
    s = _new(store, 0.0)
    raw = store.path.read_bytes() + (store.path.with_name("s.db-wal").read_bytes()
                                     if store.path.with_name("s.db-wal").exists() else b"")
    assert s.sid.encode() not in raw and b"the-token-itself" not in raw
    assert store.get("not-" + s.sid, now=1.0) is None
    assert store.get(s.sid, now=1.0).token == "kmsb.the-token-itself"
    assert "the-token-itself" not in repr(store.get(s.sid, now=2.0))
    assert store.path.stat().st_mode & 0o077 == 0


def test_a_login_flow_is_single_use_and_short_lived(store: SessionStore) -> None:
    fid = store.start_flow("oidc", {"state": "s"}, now=0.0)
    assert store.peek_flow(fid, "login", now=1.0) is None            # kinds do not mix
    assert store.take_flow(fid, "oidc", now=1.0) == {"state": "s"}
    assert store.take_flow(fid, "oidc", now=2.0) is None              # replay finds nothing
    old = store.start_flow("oidc", {"state": "t"}, now=0.0)
    assert store.take_flow(old, "oidc", now=FLOW_SECONDS + 1) is None


def test_csrf_comparison() -> None:
    from broker.console.sessions import Session
    s = Session("sid", "kmsb.t", "p", "token", "right", 0, 0, 1, False)
    assert s.csrf_ok("right") and not s.csrf_ok("wrong") and not s.csrf_ok("") and not s.csrf_ok(None)


# ------------------------------------------------------------------------------------------------ strings


def _used_keys() -> set[str]:
    used = set()
    pattern = re.compile(r"""\b(?:t|tr|notify)\(\s*["']([a-z]+\.[A-Za-z_.]+)["']""")
    for path in [*CONSOLE.glob("*.py"), *CONSOLE.glob("templates/console/*.html")]:
        used |= set(pattern.findall(path.read_text()))
    for path in CONSOLE.glob("*.py"):  # (action, operation, "keys.done") tables and NAV entries
        used |= set(re.findall(r'"((?:keys|nav|policies|login|audit|keyring|cloud|approvals|charts)\.[a-z_]+)"',
                               path.read_text()))
    return {k for k in used if not k.endswith(("_", ".html"))}


def test_every_ui_string_exists_in_every_language() -> None:
    english = i18n.catalog("en")
    assert set(i18n.languages()) >= {"en", "zh-CN"}
    for lang in i18n.languages():
        assert set(i18n.catalog(lang)) == set(english), lang
        assert all(v.strip() for v in i18n.catalog(lang).values()), lang
    missing = sorted(k for k in _used_keys() | DYNAMIC if k not in english)
    assert missing == []


def test_translations_keep_every_placeholder() -> None:
    english = i18n.catalog("en")
    for lang in i18n.languages():
        for key, text in i18n.catalog(lang).items():
            assert set(re.findall(r"\{(\w+)\}", text)) == set(re.findall(r"\{(\w+)\}", english[key])), (lang, key)


def test_language_choice() -> None:
    assert i18n.pick(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert i18n.pick(None, "zh") == "zh-CN"
    assert i18n.pick(None, "en-GB,zh;q=0.5") == "en"
    assert i18n.pick("zh-CN", "en") == "zh-CN"
    assert i18n.pick("xx", None) == "en"
    assert json.loads((CONSOLE / "strings" / "zh-CN.json").read_text())["nav.keys"] == "密钥"


# ------------------------------------------------------------------------------------------------ CSP hygiene


def test_templates_have_no_inline_script_style_or_handlers() -> None:
    for path in CONSOLE.glob("templates/console/*.html"):
        html = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path.name
        assert not re.search(r"\son[a-z]+\s*=", html), path.name
        assert not re.search(r"\sstyle\s*=", html), path.name
        assert "<style" not in html and "javascript:" not in html, path.name
        assert "|safe" not in html and "Markup(" not in html, path.name


# ------------------------------------------------------------------------------------------------ charts


def test_charts_count_what_the_records_say() -> None:
    from datetime import UTC, datetime, timedelta

    from broker.console import charts

    end = datetime(2026, 1, 1, 12, 30, 30, tzinfo=UTC)
    at = lambda minutes: (end - timedelta(minutes=minutes)).isoformat()  # noqa: E731
    records = ([{"time": at(1), "outcome": "allowed", "key_id": "k1", "latency_ms": 2.0}] * 3
               + [{"time": at(1), "outcome": "denied", "key_id": "k2", "latency_ms": 9.0}]
               + [{"time": at(2), "outcome": "error", "key_id": "k1", "provider": "aws", "latency_ms": 50.0,
                   "error_code": "DependencyTimeoutException"},
                  {"time": at(2), "outcome": "error", "provider": "aws", "error_code": "NotFoundException"},
                  {"time": at(2), "outcome": "pending", "key_id": "k1"},
                  {"time": at(45), "outcome": "allowed", "key_id": "old"}])
    rpm = charts.requests_per_minute(records, end)
    assert rpm.rows == [["12:28", "0", "0", "2"], ["12:29", "3", "1", "0"]]   # intents are not requests
    assert {b.label for b in rpm.bars} == {"12:29 allowed: 3", "12:29 denied: 1", "12:28 error: 2"}
    assert charts.key_counts(records).most_common(2) == [("k1", 4), ("k2", 1)]
    assert charts.provider_errors(records) == {"aws": 1}                      # a NotFound is the caller's
    lat = charts.latency(records, end)
    assert lat.rows == [["12:28", "50.0", "50.0"], ["12:29", "2.0", "9.0"]]
    assert len(lat.dots) == 4 and len(lat.lines) == 2
    top = charts.top_counts(charts.key_counts(records), "top", "key", "o-allowed", n=1)
    assert top.rows == [["k1", "4"]] and len(top.bars) == 1


def _open_store(path: str, start) -> None:
    start.wait()
    SessionStore(Path(path), idle_seconds=600, max_seconds=3600)


def test_workers_opening_a_new_session_store_together_all_boot(tmp_path: Path) -> None:
    """gunicorn boots its workers at once: each opens the console's session store, and the first to switch a new
    file to WAL took the lock the others' switch needed ('database is locked': the worker failed to boot and took
    the whole broker down)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(20):
        start = ctx.Event()
        procs = [ctx.Process(target=_open_store, args=(str(tmp_path / f"s{round_}.db"), start)) for _ in range(4)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 4, f"round {round_}: a worker could not open the store"
