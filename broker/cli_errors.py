"""How every `kms-broker` command fails: one line on stderr, a non-zero exit status, never a traceback.

`CleanErrors` is the class of the top-level click group, so it covers every command mounted under it (the
keyring, audit, sync, stack, … groups included). What it turns into one line:

* a usage error (bad option, missing argument)         → exit 2, click's own message and a pointer to --help;
* the server refused or could not be reached            → exit 1, "<ErrorCode>: <message>" as the broker said it;
* a local problem (a file, a setting, bad input data)   → exit 1, the first line of its message;
* anything else                                         → exit 1, its type and first line (a bug; KMSB_DEBUG=1
                                                          shows the traceback).

Only the first line of a message is printed, at most 300 characters: multi-line messages (pydantic's among them)
may quote the input that failed, which can be a secret.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from broker.client import BrokerClientError

_MAX = 300


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: <message>` (one line) on stderr and exit with `code`."""
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def one_line(message: str) -> str:
    first = (str(message).strip().splitlines() or [""])[0].strip()
    return first if len(first) <= _MAX else first[:_MAX - 1] + "…"


class CleanErrors(click.Group):
    """A click group whose commands never end in a traceback (see the module docstring)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        except BrokerClientError as exc:
            fail(f"{exc.code}: {exc.message}")
        except (OSError, ValueError) as exc:
            _debug(exc)
            fail(_describe(exc))
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            _debug(exc)
            fail(f"unexpected {type(exc).__name__}: {one_line(str(exc)) or 'no message'}")
        sys.exit(result if isinstance(result, int) else 0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    return one_line(str(exc)) or type(exc).__name__


def _debug(exc: BaseException) -> None:
    if os.environ.get("KMSB_DEBUG") == "1":
        raise exc
