"""Durations the way people read them: "12 s", "40 min", "1 h 5 min", "2 d 3 h".

Every text a person reads (advice, headlines, tables, reports) writes a duration or a
budget with `duration`; files meant for programs (summary.json) keep raw seconds.
"""

from __future__ import annotations

MINUTE = 60
HOUR = 3600
DAY = 86400


def duration(seconds: float | None, *, none: str = "no limit") -> str:
    """A duration in the two largest units that matter, rounded to the smaller one.

    Under 10 s one decimal ("2.5 s"), under a minute whole seconds ("12 s"), under ten
    minutes minutes and seconds ("1 min 30 s"), under an hour whole minutes ("40 min"),
    then hours and minutes ("1 h 5 min"), then days and hours ("2 d 3 h")."""
    if seconds is None:
        return none
    s = float(seconds)
    if s < 0:
        return "-" + duration(-s)
    if s < 9.95:
        return f"{s:.1f} s".replace(".0 s", " s")
    if round(s) < MINUTE:
        return f"{round(s)} s"
    if round(s) < 10 * MINUTE:
        return _two(round(s), MINUTE, "min", "s")
    if round(s / MINUTE) < 60:
        return f"{round(s / MINUTE)} min"
    if round(s / MINUTE) < 24 * 60:
        return _two(round(s / MINUTE), 60, "h", "min")
    return _two(round(s / HOUR), 24, "d", "h")


def hours(h: float | None, *, none: str = "no limit") -> str:
    """`duration` of a number of hours (the advisor and the post-mortem count in hours)."""
    return duration(None if h is None else h * HOUR, none=none)


def _two(count: int, per: int, big: str, small: str) -> str:
    """`count` small units as "B big S small" (no "0 small")."""
    whole, rest = divmod(count, per)
    return f"{whole} {big}" + (f" {rest} {small}" if rest else "")
