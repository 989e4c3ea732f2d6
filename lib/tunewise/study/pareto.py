"""A multi-objective study's answers: its Pareto front, and the best macro-F1 within limits.

``best_under`` also answers for objectives the study only recorded (every multi-objective
trial records `latency_ms` and `n_params`, whichever of them it optimizes).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tunewise.records import complete_trials, identity
from tunewise.train.objective_names import OBJECTIVES


def objective_names(study: optuna.Study) -> list[str]:
    return list(identity(study).get("objectives") or ["f1", "latency_ms", "params"][: len(study.directions)])


def _measure(t: FrozenTrial, name: str, study: optuna.Study) -> float | None:
    """A trial's figure for objective `name`: its value when the study optimizes it, else
    the user attr every multi-objective trial records."""
    names = objective_names(study)
    if t.values is not None and name in names:
        return t.values[names.index(name)]
    return t.user_attrs.get(OBJECTIVES[name][2])


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The trials no other complete trial beats on every objective, best macro-F1 first."""
    return sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))


def best_under(study: optuna.Study, max_latency_ms: float | None = None, max_params: float | None = None) -> FrozenTrial | None:
    """The complete trial with the best macro-F1 among those within both limits (None: no
    limit); None when no trial fits. Also answers for objectives the study only recorded."""
    fits = []
    for t in complete_trials(study):
        latency, size = _measure(t, "latency_ms", study), _measure(t, "params", study)
        if max_latency_ms is not None and (latency is None or latency > max_latency_ms):
            continue
        if max_params is not None and (size is None or size > max_params):
            continue
        fits.append(t)
    return max(fits, key=lambda t: (t.values[0], -t.number), default=None)


def pareto_rows(study: optuna.Study) -> list[dict[str, Any]]:
    return [{"trial": t.number, "macro-F1": t.values[0], "latency (ms/image)": _measure(t, "latency_ms", study),
             "parameters": _measure(t, "params", study), "model": t.params.get("model", t.user_attrs.get("model", "")),
             "params": {k: v for k, v in t.params.items() if k != "model"}} for t in pareto_front(study)]


def answer(study: optuna.Study, max_latency_ms: float | None = None, max_params: float | None = None) -> str:
    """'Best F1 under X ms / Y parameters' in one sentence."""
    limits = " and ".join(x for x in (f"{max_latency_ms:g} ms per image" if max_latency_ms else "",
                                      f"{max_params:,.0f} parameters" if max_params else "") if x) or "no limit"
    t = best_under(study, max_latency_ms or None, max_params or None)
    if t is None:
        return f"No complete trial of {study.study_name} fits within {limits}."
    return (f"Best macro-F1 within {limits}: {t.values[0]:.4f} (trial {t.number}, "
            f"{_measure(t, 'latency_ms', study):.3f} ms per image, {_measure(t, 'params', study):,.0f} parameters; "
            f"settings {dict(t.params)}).")
