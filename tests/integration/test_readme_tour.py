"""The README's ten-minute tour, copied out of README.md and run line by line in one bash shell against a real
broker: every line must succeed except those marked "# refused", and nothing prints a traceback.
(tests/integration/test_cli.py checks the tour's outputs in detail; this test keeps the README itself honest.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.broker import RunningBroker

README = Path(__file__).resolve().parents[2] / "README.md"
_REFUSED = re.compile(r"#\s*refused\b")


def tour_lines() -> list[str]:
    text = README.read_text()
    section = text.split("## A ten-minute tour", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_tour_block_is_found_and_uses_the_cli() -> None:
    lines = tour_lines()
    assert len(lines) > 15 and any("kms-broker key create" in line for line in lines)


def test_the_readme_tour_runs_as_written(broker: RunningBroker, tmp_path: Path) -> None:
    script = ["set -u", f'cd "{tmp_path}"']
    expectations: list[tuple[int, str, bool]] = []
    for n, line in enumerate(tour_lines()):
        if line.startswith("export KMSB_ADDR=") or line.startswith("export KMSB_TOKEN="):
            continue  # the test's own broker, below
        refused = bool(_REFUSED.search(line))
        expectations.append((n, line, refused))
        script.append(f"{line}\necho \"::rc {n} $?\" >&2")
    env = {**os.environ, "KMSB_ADDR": broker.addr, "KMSB_TOKEN": broker.root_token,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True, timeout=300)
    codes = dict(re.findall(r"^::rc (\d+) (\d+)$", done.stderr, re.M))
    assert "Traceback" not in done.stderr + done.stdout
    for n, line, refused in expectations:
        assert str(n) in codes, f"line not reached: {line}\n{done.stderr[-2000:]}"
        if refused:
            assert codes[str(n)] != "0", f"expected a refusal: {line}"
        else:
            assert codes[str(n)] == "0", f"failed: {line}\n{done.stderr[-2000:]}"
