"""bench.harness: `paced` (wrk waits whole milliseconds, so the pacing says what it really offers) and `times` (a
ratio to a baseline that served nothing)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.harness import paced, times


def test_a_wait_under_a_millisecond_is_one_millisecond_and_the_offer_says_so(tmp_path: Path):
    script = tmp_path / "row.lua"
    script.write_text('wrk.method = "POST"\n')
    out, offered = paced(script, 2, 2398.0)  # 0.83 ms per connection: wrk would truncate it to no wait at all
    assert out.read_text().endswith("function delay()\n  return 1\nend\n")
    assert offered == 2000.0
    assert out.read_text().startswith('wrk.method = "POST"\n')


def test_a_longer_wait_is_rounded_to_whole_milliseconds(tmp_path: Path):
    script = tmp_path / "row.lua"
    script.write_text("")
    out, offered = paced(script, 16, 1900.0)  # 8.42 ms
    assert "return 8\n" in out.read_text()
    assert offered == 2000.0


def test_a_baseline_that_served_nothing_is_a_nan_ratio_not_a_crash():
    assert times(1500.0, 500.0) == 3.0
    assert math.isnan(times(1500.0, 0.0))
    assert f"{times(0.0, 0.0):>8.2f}" == "     nan"
