"""`kms-broker encrypt-file` / `decrypt-file`: client-side envelope encryption of files of any size
(broker/envelope, docs/envelope.md). The broker makes and unwraps one data key per file; the file never leaves
this machine. Output goes to a temporary file beside OUT and is renamed only when complete, so a failed or
tampered decryption never leaves partial plaintext behind."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import click

from broker.envelope import Envelope, KmsDataKeys, MessageError

FRAME_SIZES = {"64KiB": 64 * 1024, "256KiB": 256 * 1024, "1MiB": 1 << 20, "4MiB": 4 << 20}


def _context(pairs: tuple[str, ...]) -> dict[str, str]:
    context = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not k=v", param_hint="--context")
        context[name] = value
    return context


@contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    """OUT ("-" for stdout) written atomically: a temporary file in the same folder, renamed on success."""
    if path == "-":
        yield sys.stdout.buffer
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _input(path: str) -> Iterator[tuple[BinaryIO, int | None]]:
    if path == "-":
        yield sys.stdin.buffer, None
        return
    try:
        with open(path, "rb") as src:
            yield src, os.fstat(src.fileno()).st_size
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


@contextmanager
def _progress(size: int | None, label: str) -> Iterator:
    """A progress bar on a terminal (stderr), nothing otherwise."""
    if size is None or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        yield bar.update


CONTEXT = click.option("--context", "context", multiple=True, help="encryption context entry k=v (repeatable)")


@click.command("encrypt-file")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@click.option("--key", "key_ref", required=True, help="key id, alias/name, or multikey/<name> (cross-cloud)")
@CONTEXT
@click.option("--frame-size", type=click.Choice(sorted(FRAME_SIZES)), default="1MiB", show_default=True)
def encrypt_file(src: str, dst: str, key_ref: str, context: tuple[str, ...], frame_size: str) -> None:
    """Encrypt IN to OUT ("-": stdin/stdout) as an envelope message, in constant memory."""
    from broker.client import BrokerClient

    envelope = Envelope(KmsDataKeys(BrokerClient()), frame_length=FRAME_SIZES[frame_size])
    with _input(src) as (reader, size), _output(dst) as writer, _progress(size, "encrypting") as bar:
        envelope.encrypt_stream(reader, writer, key_ref, _context(context), progress=bar)


@click.command("decrypt-file")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@CONTEXT
def decrypt_file(src: str, dst: str, context: tuple[str, ...]) -> None:
    """Decrypt an envelope message IN to OUT; every --context pair must be in the message's context."""
    from broker.client import BrokerClient

    envelope = Envelope(KmsDataKeys(BrokerClient()))
    try:
        with _input(src) as (reader, size), _output(dst) as writer, _progress(size, "decrypting") as bar:
            envelope.decrypt_stream(reader, writer, _context(context), progress=bar)
    except MessageError as exc:
        raise click.ClickException(f"InvalidCiphertextException: {exc}") from None


commands = [encrypt_file, decrypt_file]
