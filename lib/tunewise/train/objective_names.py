"""The objectives a study can optimize, by the names users type; no torch needed to check them.

`objectives: [f1]` (the default) is a single-objective study; `[f1, latency_ms, params]`
(or any of them after `f1`) makes a multi-objective one: macro-F1 maximized, latency
(milliseconds per image on the trial's device) and parameter count minimized.
"""

from __future__ import annotations

from typing import Any, Sequence

from tunewise.errors import ConfigError, did_you_mean
from tunewise.records import LATENCY_KEY, MACRO_F1_KEY, N_PARAMS_KEY

# name in params -> (metric name in the study, direction, user attr holding it)
OBJECTIVES: dict[str, tuple[str, str, str]] = {
    "f1": ("macro_f1", "maximize", MACRO_F1_KEY),
    "latency_ms": ("latency_ms", "minimize", LATENCY_KEY),
    "params": ("params", "minimize", N_PARAMS_KEY),
}


def check_objectives(names: Any) -> list[str]:
    """`objectives` as given, checked: f1 first, then any of latency_ms, params, no repeats."""
    allowed = ", ".join(OBJECTIVES)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"objectives: {names!r} is not allowed; allowed: a list of {allowed}, f1 first, e.g. [f1, latency_ms]")
    for n in names:
        if n not in OBJECTIVES:
            raise ConfigError(f"objectives: {n!r} is not an objective{did_you_mean(n, OBJECTIVES)}; allowed: {allowed}")
    if names[0] != "f1" or len(set(names)) != len(names):
        raise ConfigError(f"objectives: {names!r} is not allowed; allowed: f1 first, each objective once, e.g. [f1, latency_ms, params]")
    return names


def directions(names: Sequence[str]) -> list[str]:
    return [OBJECTIVES[n][1] for n in names]


def metric_names(names: Sequence[str]) -> list[str]:
    return [OBJECTIVES[n][0] for n in names]
