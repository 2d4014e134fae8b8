"""docs/operations.md, run as written: every `sh` block, in order, in one bash shell, against a real cluster
(PostgreSQL; node A served from its own data folder and SoftHSM token; node B and the restore drill make their own).
Every line must succeed except those marked "# refused"; nothing prints a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.broker import start_broker
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
    for needle in ("kms-broker node join", "kms-broker node remove", "kms-broker backup custodians",
                   "kms-broker backup create", "kms-broker backup restore", "kms-broker approval approve",
                   "escrow-release", "--share \"$S1\" --share \"$S2\""):
        assert needle in text, needle


@pytest.mark.timeout(1500)
def test_operations_doc_runs_as_written(tmp_path: Path) -> None:
    postgres = start_postgres(tmp_path / "pg-logs")
    node_a = None
    try:
        url = postgres.create_database("kmsb_ops_doc")
        data = tmp_path / "a"
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        done = subprocess.run([sys.executable, "-m", "broker.cli", "init", "--data-dir", str(data), "--store-url", url,
                               "--output", "json"], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        root_token = json.loads(done.stdout)["root_token"]
        node_a = start_broker(data, tmp_path / "logs", workers=1, name="ops-doc-a")
        work = tmp_path / "work"
        work.mkdir()
        script = ["set -u", f'cd "{work}"']
        expectations = []
        for n, line in enumerate(doc_lines()):
            expectations.append((n, line, bool(_REFUSED.search(line))))
            script.append(f"{line}\necho \"::rc {n} $?\" >&2")
        env.update({"KMSB_ADDR": node_a.addr, "KMSB_TOKEN": root_token, "DATA": str(data), "STORE_URL": url,
                    "NEW_NODE": str(tmp_path / "b"), "DRILL": str(tmp_path / "drill"), "DRILL_PORT": str(free_port()),
                    "COOLING_OFF": "0s", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        done = subprocess.run(["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True,
                              timeout=1400)
        codes = dict(re.findall(r"^::rc (\d+) (\d+)$", done.stderr, re.M))
        assert "Traceback" not in done.stderr + done.stdout
        for n, line, refused in expectations:
            assert str(n) in codes, f"line not reached: {line}\n{done.stderr[-3000:]}"
            if refused:
                assert codes[str(n)] != "0", f"expected a refusal: {line}"
            else:
                assert codes[str(n)] == "0", f"failed: {line}\n{done.stderr[-3000:]}"
        assert not (tmp_path / "drill").exists() and not (tmp_path / "b").exists()
        assert "joined" in done.stdout and (work / "released-key.bin").stat().st_size == 32
    finally:
        if node_a is not None:
            node_a.server.stop()
        postgres.stop()
