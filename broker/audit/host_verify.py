"""Verify this host's audit chain as a whole: the file, the store's copy and what the HSM vouches for.

Shared by `kms-broker audit verify --data-dir` (the operator on the host) and the AuditService's VerifyAudit
operation (an auditor over the API or the console). What is trusted comes from the HSM — the signing key and the
high-water mark — never from a file in the data folder an attacker could delete or replace.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from broker.audit.chain import key_fingerprint, load_public_key, public_key_pem, spki_of
from broker.audit.log import PUBLIC_KEY_NAME
from broker.audit.mark import Mark, RootMarks
from broker.audit.sinks import chain_id
from broker.audit.verify import Report, verify_sources


def verify_host(settings: Any, open_root: Callable[[], Any], public_key: Path | None = None) -> Report:
    """The chain of `settings.audit_file` checked against the store copy and the HSM (`open_root()` gives the
    root of trust; when it fails, only a `public_key` the operator names can stand in, and the report says what
    that cannot detect)."""
    notes: list[str] = []
    trust = _trust(settings, open_root, public_key, notes)
    if isinstance(trust, Report):
        return trust
    key, mark = trust  # the mark first: it only ever names records already durable in both copies
    data, rows = _snapshot(settings)
    report = verify_sources(data, rows, key, mark, every_records=settings.audit_checkpoint_records,
                            every_seconds=settings.audit_checkpoint_seconds)
    report.notes[:0] = notes
    return report


def public_key_at(path: Path | None) -> Any:
    if path is None or not path.is_file():
        return None
    return load_public_key(path.read_bytes())


def _trust(settings: Any, open_root: Callable[[], Any], public_key: Path | None,
           notes: list[str]) -> tuple[Any, Mark | None] | Report:
    """What verify trusts, from the HSM: the signing key and the high-water mark. Files in the data folder (the PEM
    beside the log) are never the authority: an attacker with the folder could delete or replace them."""
    beside = settings.audit_file.parent / PUBLIC_KEY_NAME
    given = public_key_at(public_key)
    try:
        root = open_root()
        hsm_spki = root.audit_public_key()
        mark = RootMarks(root).read(chain_id(settings.audit_file))
    except Exception as exc:  # noqa: BLE001 - no HSM: verifiable only against a key the operator names
        if given is None:
            return Report().fail(None, f"cannot verify: the HSM is not reachable ({type(exc).__name__}) and no "
                                       "--public-key was given", kind="unverifiable")
        notes.append(f"HSM not reachable ({type(exc).__name__}): signatures checked against {public_key}; the "
                     "HSM's mark was not asked, so a cut tail or a deleted chain is not detected")
        return given, None
    if given is not None and spki_of(given) != hsm_spki:
        return Report().fail(None, f"{public_key} is not the HSM's audit signing key")
    report_problem = None
    if beside.is_file():
        try:
            if spki_of(load_public_key(beside.read_bytes())) != hsm_spki:
                report_problem = f"{beside} is not the HSM's audit signing key (replaced)"
        except ValueError:
            report_problem = f"{beside} is not a public key (replaced)"
    if report_problem:
        return Report().fail(None, report_problem)
    notes.append(f"signing key {key_fingerprint(hsm_spki)} and high-water mark "
                 f"{'seq ' + str(mark.seq) if mark else '(none yet: no signed checkpoint)'} from the HSM")
    return load_public_key(public_key_pem(hsm_spki)), mark


def _snapshot(settings: Any) -> tuple[bytes | None, list[tuple[int, str, str]] | None]:
    """One consistent view of a chain a running broker may be appending to: under the writers' lock (shared, for a
    moment) the file's size and the store's last seq; then each copy is read up to there (both only grow)."""
    from sqlalchemy import create_engine, func, select

    from broker.store.tables import AuditEventRow

    table = AuditEventRow.__table__
    chain = table.c.chain == chain_id(settings.audit_file)
    path = settings.audit_file
    engine = create_engine(settings.store_url) if "store" in settings.audit_sinks else None
    try:
        with _chain_lock(path):
            size = path.stat().st_size if path.is_file() else 0
            last = None
            if engine is not None:
                with engine.connect() as conn:
                    last = conn.execute(select(func.max(table.c.seq)).where(chain)).scalar() or 0
        data = None
        if "file" in settings.audit_sinks:
            with open(path, "rb") if path.is_file() else contextlib.nullcontext(None) as f:
                data = f.read(size) if f is not None else b""
        rows = None
        if engine is not None:
            with engine.connect() as conn:
                rows = [(r.seq, r.hash, r.record) for r in
                        conn.execute(select(table.c.seq, table.c.hash, table.c.record)
                                     .where(chain, table.c.seq <= last).order_by(table.c.seq))]
        return data, rows
    finally:
        if engine is not None:
            engine.dispose()


@contextlib.contextmanager
def _chain_lock(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # no writer ever ran here (or the folder is read-only): nothing to wait for
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
