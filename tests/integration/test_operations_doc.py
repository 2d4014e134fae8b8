"""docs/operations.md, run as written: every `sh` block, in order, in one bash shell, against a real cluster
(PostgreSQL; the doc deploys node A, with its own data folder and SoftHSM token; node B and the restore drill make
their own).
Every line must succeed except those marked "# refused"; nothing prints a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.postgres import start_postgres
from tests.support.procs import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_REFUSED = re.compile(r"#\s*refused\b")


def doc_lines() -> list[str]:
    """The lines of every sh block; a heredoc (<<'EOF' … EOF) stays one unit."""
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        lines, pending = block.splitlines(), None
        for line in lines:
            if pending is not None:
                pending.append(line)
                if line.strip() == "EOF":
                    out.append("\n".join(pending))
                    pending = None
                continue
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "<<'EOF'" in line:
                pending = [line]
                continue
            out.append(line)
    return out


def test_the_doc_has_each_sequence() -> None:
    text = "\n".join(doc_lines())
    for needle in ("kms-broker init", "kms-broker serve", "kms-broker node join", "kms-broker node remove", "kms-broker backup custodians",
                   "kms-broker backup create", "kms-broker backup restore", "kms-broker approval approve",
                   "escrow-release", "--share \"$S1\" --share \"$S2\""):
        assert needle in text, needle


@pytest.mark.timeout(1500)
def test_operations_doc_runs_as_written(tmp_path: Path) -> None:
    postgres = start_postgres(tmp_path / "pg-logs")
    shell = None
    try:
        url = postgres.create_database("kmsb_ops_doc")
        work = tmp_path / "work"
        work.mkdir()
        script = ["set -u", f'cd "{work}"']
        expectations = []
        for n, line in enumerate(doc_lines()):
            expectations.append((n, line, bool(_REFUSED.search(line))))
            script.append(f"{line}\necho \"::rc {n} $?\" >&2")
        script.append('kill "${NODE_PID:-0}" 2>/dev/null; wait')  # the test's own: stop the node the doc served
        bind = f"127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "KMSB_TOKEN")}
        env.update({"NODE_BIND": bind, "KMSB_ADDR": f"http://{bind}", "DATA": str(tmp_path / "a"),
                    "STORE_URL": url, "NEW_NODE": str(tmp_path / "b"), "DRILL": str(tmp_path / "drill"),
                    "DRILL_PORT": str(free_port()), "COOLING_OFF": "0s",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        shell = subprocess.Popen(["bash", "-c", "\n".join(script)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        out, err = shell.communicate(timeout=1400)
        codes = dict(re.findall(r"^::rc (\d+) (\d+)$", err, re.M))
        log = (work / "node-a.log").read_text() if (work / "node-a.log").exists() else ""
        assert "Traceback" not in err + out + log
        for n, line, refused in expectations:
            assert str(n) in codes, f"line not reached: {line}\n{err[-3000:]}"
            if refused:
                assert codes[str(n)] != "0", f"expected a refusal: {line}"
            else:
                assert codes[str(n)] == "0", f"failed: {line}\n{err[-3000:]}\n{log[-2000:]}"
        assert not (tmp_path / "drill").exists() and not (tmp_path / "b").exists()
        assert "joined" in out and (work / "released-key.bin").stat().st_size == 32
        assert not (work / "init.json").exists()  # the root token was not left on disk
    finally:
        if shell is not None:
            _stop_group(shell)
        postgres.stop()


def _stop_group(shell: subprocess.Popen) -> None:
    """Whatever the script left running in its process group (node A if the script stopped early): SIGTERM, then
    SIGKILL after a bound."""
    if shell.poll() is None:
        shell.kill()
        shell.communicate()
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        deadline = time.monotonic() + wait
        try:
            os.killpg(shell.pid, sig)
            while time.monotonic() < deadline:
                os.killpg(shell.pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            return
