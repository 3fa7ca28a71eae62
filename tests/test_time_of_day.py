"""The real-clock tests pass at any hour: run every `realclock` test with the daemons' clock placed at
several moments of a day — 03:00, 09:00, 15:00 and 21:00 UTC (on different weekdays), across both
European and US DST changes and across a year's end — and require each run to pass.

Each moment is a separate pytest session with HERALD_TEST_CLOCK_AT set (tests/conftest.py turns it into
one HERALD_CLOCK_OFFSET for the session and every daemon it starts). Slow (a few minutes per moment):
`pytest -m slow tests/test_time_of_day.py`; one moment by hand:
`HERALD_TEST_CLOCK_AT=2026-03-29T00:59:30Z pytest -m "realclock and not slow"`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MOMENTS = [
    "2026-12-05T03:00:00Z",  # Saturday night in the Americas, morning in Kolkata
    "2026-12-07T09:00:00Z",  # Monday
    "2026-12-09T15:00:00Z",  # Wednesday
    "2026-12-11T21:00:00Z",  # Friday evening in Europe
    "2026-03-29T00:59:30Z",  # Europe/London and Europe/Berlin spring forward at 01:00 UTC during the run
    "2026-11-01T05:59:30Z",  # America/New_York falls back at 06:00 UTC during the run
    "2026-12-31T23:59:30Z",  # a day, month and year end during the run
]


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_every_real_clock_test_passes_at(moment: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HERALD_CLOCK_OFFSET", "HERALD_TEST_CLOCK_AT")}
    env["HERALD_TEST_CLOCK_AT"] = moment
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "realclock and not slow",
         "--basetemp", str(tmp_path / "t"), "tests"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = "\n".join(result.stdout.splitlines()[-40:])
    print(f"\nclock at {moment}:\n{tail}")
    assert result.returncode == 0, f"real-clock tests failed with the clock at {moment}:\n{tail}\n{result.stderr[-2000:]}"
    assert " passed" in tail and "deselected" in tail
