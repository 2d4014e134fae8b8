"""Every `kms-broker` command, given bad input or a server that is unreachable, denies, or is not a broker at all,
prints one clear line on stderr and exits non-zero: never a traceback.

The command list is walked from the click tree itself, so a new command is in the table the day it is added.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import requests

from broker.cli import main
from tests.support.broker import RunningBroker, start_broker
from tests.support.doors import child_token
from tests.support.procs import free_port, start_server

CLI = [sys.executable, "-m", "broker.cli"]
ROOT = Path(__file__).resolve().parents[2]
LOCAL_ONLY = {("init",), ("serve",), ("stack", "up"), ("stack", "down"), ("stack", "env")}  # rows of their own below
# Dummy values for required parameters, by parameter name (files are created per test).
DUMMY = {"key_ref": "k", "name": "n", "access_key_id": "AKIAX", "mount": "kv", "ids": "1", "entry_id": "1",
         "period": "30d", "fmt": "mysql-component-json", "role": "r", "role_name": "r", "username": "u", "role_id": "r", "value": "v"}


def leaf_commands() -> list[tuple[tuple[str, ...], click.Command]]:
    out = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, (*path, name))
        else:
            out.append((path, cmd))
    walk(main, ())
    return out


def run(args: list[str], env: dict[str, str], *, stdin: bytes = b"", cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KMSB_")}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # this tree
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, env=full, cwd=cwd, timeout=timeout)


def assert_one_line_error(out: subprocess.CompletedProcess, *, code: int | None = None, says: str = "",
                          prompts: bool = False) -> str:
    """Exactly one stderr line, `error: …` (with `prompts`, a command's own warnings and prompts may come first,
    but the error is still one line and the last)."""
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode != 0, (out.returncode, stderr, out.stdout[:300])
    if code is not None:
        assert out.returncode == code, (out.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and sum("error: " in line for line in lines) == 1, stderr
    assert lines[-1].split("error: ", 1)[-1] and "error: " in lines[-1], stderr
    if not prompts:
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert says in lines[-1], lines[-1]
    return lines[-1]


def _args_for(cmd: click.Command, files: Path) -> list[str]:
    args: list[str] = []
    for param in cmd.params:
        if not param.required:
            continue
        if param.name in ("path", "src", "manifest"):
            value = str(files / "input.json")
        elif param.name == "dst":
            value = str(files / "out.bin")
        else:
            value = DUMMY.get(param.name, "x")
        if isinstance(param, click.Argument):
            args.append(value)
        else:
            args += [param.opts[0], value]
    return args


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-files")
    (folder / "input.json").write_text('{"keys": []}')
    return folder


@pytest.mark.parametrize("path, cmd", [c for c in leaf_commands() if c[0] not in LOCAL_ONLY],
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_against_an_unreachable_server_is_one_line(path, cmd, files, tmp_path):
    port = free_port()  # nothing listens there
    out = run([*path, *_args_for(cmd, files)], {"KMSB_ADDR": f"http://127.0.0.1:{port}", "KMSB_TOKEN": "t",
                                                "KMSB_DATA_DIR": str(tmp_path / "missing")}, cwd=tmp_path)
    assert_one_line_error(out, prompts=path in (("keyring", "export"), ("login", "ldap")))  # confirm / password


def test_the_table_covers_the_commands():
    names = {" ".join(p) for p, _ in leaf_commands()}
    assert {"key create", "encrypt", "decrypt", "keyring import", "token create", "audit verify",
            "sync plan", "aws-credentials list"} <= names


# ------------------------------------------------------------------------------------------------ a real broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    base = tmp_path_factory.mktemp("cli-errors")
    running = start_broker(base / "data", base / "logs", workers=1, name="broker-cli-errors")
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def narrow(broker: RunningBroker) -> str:
    return child_token(broker, "key-user", name="cli-narrow")


def _env(broker: RunningBroker, token: str) -> dict[str, str]:
    return {"KMSB_ADDR": broker.addr, "KMSB_TOKEN": token}


@pytest.mark.parametrize("args, stdin, who, code, says", [
    (["key", "create"], b"", "narrow", 1, "AccessDeniedException"),
    (["key", "describe", "no-such-key"], b"", "root", 1, "NotFoundException"),
    (["key", "schedule-deletion", "no-such-key", "--days", "3"], b"", "root", 1, "Exception"),
    (["key", "list"], b"", "bad-token", 1, "UnrecognizedClientException"),
    (["encrypt", "--key", "alias/none"], b"x" * 5000, "root", 1, "Exception"),
    (["encrypt", "--key", "k", "--context", "novalue"], b"x", "root", 2, "k=v"),
    (["key", "schedule-deletion", "k", "--days", "soon"], b"", "root", 2, "not a valid integer"),
    (["decrypt"], b"%%% not base64 %%%", "root", 2, "not base64"),
    (["decrypt"], b"AAAA", "root", 1, "InvalidCiphertextException"),
    (["key", "nope"], b"", "root", 2, "No such command"),
    (["aws-credentials", "create", "--policy", "root"], b"", "narrow", 1, "AccessDeniedException"),
    (["keyring", "list"], b"", "narrow", 1, "AccessDeniedException"),
    (["token", "lookup"], b"", "non-ascii-token", 1, ""),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_and_denials_are_one_line(broker, narrow, args, stdin, who, code, says):
    token = {"root": broker.root_token, "narrow": narrow, "bad-token": "s.not-a-token",
             "non-ascii-token": "tökén"}[who]
    assert_one_line_error(run(args, _env(broker, token), stdin=stdin), code=code, says=says)


@pytest.mark.parametrize("name, content", [
    ("5000-digit id.json", json.dumps({"keys": [{"key_id": "1" * 5000, "key_type": "AES",
                                                 "user_id": "", "data": "00" * 32}]})),
    ("deeply nested.json", "[" * 100_000 + "]" * 100_000),
    ("not json.json", "\xff\xfe garbage"),
], ids=["5000-digit-id", "deeply-nested", "not-json"])
def test_keyring_import_of_hostile_files_is_one_line(broker, tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, errors="surrogateescape")
    out = run(["keyring", "import", "--mount", "kv", "--format", "mysql-component-json", "--file", str(path)],
              _env(broker, broker.root_token))
    assert_one_line_error(out)


def test_a_server_that_is_not_a_broker_is_one_line(tmp_path):
    site = tmp_path / "site"
    (site / "v1").mkdir(parents=True)
    (site / "v1" / "keys").write_text("<html>hello</html>")  # 200, but not JSON
    port = free_port()
    server = start_server("http-server", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                          "--directory", str(site)], log_dir=tmp_path,
                          ready=lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1).ok)
    try:
        env = {"KMSB_ADDR": f"http://127.0.0.1:{port}", "KMSB_TOKEN": "t"}
        assert_one_line_error(run(["key", "list"], env), says="did not answer like a kms-broker")
        assert_one_line_error(run(["key", "describe", "k"], env), says="HTTPError")  # a 404 page
    finally:
        server.stop()


@pytest.mark.parametrize("args", [["serve", "--data-dir", "{tmp}/missing"], ["init", "--data-dir", "/proc/forbidden"],
                                  ["audit", "verify", "--data-dir", "{tmp}/missing"]],
                         ids=["serve-missing", "init-unwritable", "audit-missing"])
def test_local_commands_with_a_bad_data_folder_are_one_line(tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_one_line_error(run(args, {}, cwd=tmp_path))
