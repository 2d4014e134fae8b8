"""`stack up|down|env` — a click group the `kms-broker` CLI mounts as `kms-broker stack`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from .stack import CLOUDS, Stack, StackError, default_state_dir

_state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="KMSB_STACK_DIR", default=None,
    help="Where stack.json, logs and emulator data live (default ./var/stack, env KMSB_STACK_DIR).",
)
_output_option = click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)


def _print_settings(settings: dict[str, dict], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(settings, indent=2))
        return
    if not settings:
        click.echo("nothing is up")
    for cloud, values in settings.items():
        click.echo(f"[{cloud}]")
        for key, value in values.items():
            click.echo(f"  {key} = {value}")


def _run(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except StackError as e:
        raise click.ClickException(str(e)) from None


@click.group("stack")
def stack() -> None:
    """The local multi-cloud KMS stack: LocalStack or moto for AWS, our emulators for Azure, GCP, Aliyun."""


@stack.command("up")
@click.option("--only", default=None, metavar="CLOUDS", help=f"Comma-separated subset of {','.join(CLOUDS)}.")
@click.option("--aws-backend", type=click.Choice(["localstack", "moto"]), default="localstack", show_default=True)
@_output_option
@_state_dir_option
def up(only: str | None, aws_backend: str, output: str, state_dir: Path | None) -> None:
    """Start the emulators (detached, on free 127.0.0.1 ports) and print their settings."""
    st = Stack(state_dir or default_state_dir())
    settings = _run(lambda: st.up(only, aws_backend=aws_backend))
    for cloud, why in st.skipped.items():
        click.echo(f"skipped {cloud}: {why}", err=True)
    _print_settings(settings, output)  # type: ignore[arg-type]


@stack.command("down")
@click.option("--only", default=None, metavar="CLOUDS", help="Stop only these clouds.")
@_state_dir_option
def down(only: str | None, state_dir: Path | None) -> None:
    """Stop what `up` started, by PID."""
    st = Stack(state_dir or default_state_dir())
    stopped = _run(lambda: st.down(only))
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")  # type: ignore[arg-type]


@stack.command("env")
@_output_option
@_state_dir_option
def env(output: str, state_dir: Path | None) -> None:
    """Print the settings of the clouds that are up."""
    st = Stack(state_dir or default_state_dir())
    _print_settings(_run(st.env), output)  # type: ignore[arg-type]
