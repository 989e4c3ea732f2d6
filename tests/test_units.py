"""Durations as people read them."""

from __future__ import annotations

import pytest

from tunewise.units import duration, hours


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (0.42, "0.4 s"), (2.5, "2.5 s"), (9.99, "10 s"), (12, "12 s"), (59.6, "1 min"),
    (90, "1 min 30 s"), (599.4, "9 min 59 s"), (600, "10 min"), (2400, "40 min"), (3599, "1 h"),
    (3900, "1 h 5 min"), (7200, "2 h"), (86399, "1 d"), (2 * 86400 + 3 * 3600, "2 d 3 h"),
])
def test_duration_in_the_two_largest_units(seconds, text):
    assert duration(seconds) == text


def test_hours_and_no_limit():
    assert hours(0.666667) == "40 min"  # the advisor's old "0.666667 h"
    assert hours(5) == "5 h" and hours(0.5) == "30 min"
    assert duration(None) == "no limit" and duration(None, none="unknown") == "unknown"
    assert duration(-90) == "-1 min 30 s"
