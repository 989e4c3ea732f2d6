"""The focused phase's search space: the quick phase's space narrowed to where its best trials were.

``narrow_space`` takes the best complete trials (the top ``top_share``, or the top ``top_k``,
at least ``min_top``) and, for every searched parameter:

- numbers: the range of the top trials' values, widened by ``margin`` of its width on each
  side (in log space for log distributions), clipped to the original bounds and snapped
  outward to the step; equal values are widened by ``margin`` of the original width;
- categorical: only the choices that appeared among the top trials;
- conditional: only trials where the parameter was active count. A parameter no top trial
  had active keeps its original range, and one whose ``when`` can no longer hold is dropped.

``warm_start`` then enqueues the best earlier trials, clipped to the new space, so the
focused study starts from what the quick phase already found.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass
from typing import Any, Iterable

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from tunewise.errors import ConfigError, is_int, is_number
from tunewise.records import LINEAGE_KEY, WARM_START_KEY, ranked
from tunewise.search.space import SearchSpace, _equal, _in_distribution

DIRECTIONS = ("maximize", "minimize")
NEVER_ACTIVE = "unchanged: never active in top trials"


@dataclass(frozen=True)
class Narrowed:
    """The narrowed space, one table row per parameter, and the trials it came from."""

    space: SearchSpace
    table: list[dict[str, str]]  # rows: param, old, new, note
    top_numbers: list[int]  # numbers of the top trials used, best first

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space.to_dict(),
            "table": [dict(row) for row in self.table],
            "top_numbers": list(self.top_numbers),
        }


def narrow_space(
    trials: Iterable[FrozenTrial],
    space: SearchSpace,
    *,
    direction: str = "maximize",
    top_share: float = 0.2,
    top_k: int | None = None,
    margin: float = 0.1,
    min_top: int = 3,
) -> Narrowed:
    """``space`` narrowed to its best complete trials; ``top_k`` None or 0 uses ``top_share``."""
    _check_options(top_share, top_k, margin, min_top)
    ranked = best_complete(trials, direction)
    if len(ranked) < min_top:
        raise ConfigError(
            f"trials: narrowing the search space needs at least {min_top} complete trials from the "
            f"quick phase, it has {len(ranked)}; allowed: run more quick trials, or lower min_top"
        )
    wanted = top_k if top_k else math.ceil(top_share * len(ranked))
    top = ranked[: min(max(wanted, min_top), len(ranked))]

    distributions: dict[str, BaseDistribution] = {}
    notes: dict[str, str] = {}
    for name, dist in space.distributions.items():
        values = [t.params[name] for t in top if name in t.params]
        distributions[name], notes[name] = _narrow(dist, values, margin)
    conditions, dropped = _conditions_that_can_hold(space, distributions)
    for name, reason in dropped.items():
        del distributions[name]
        notes[name] = reason
    order = tuple(n for n in space.order if n not in dropped)
    narrowed = SearchSpace(distributions, dict(space.fixed), conditions, order)
    # Through the serialized form, so the new space passes every check a YAML space does.
    new_space = SearchSpace.from_dict(narrowed.to_dict(), where="narrowed search_space")
    table = [_row(name, space, new_space, notes) for name in space.order]
    return Narrowed(new_space, table, [t.number for t in top])


def best_complete(trials: Iterable[FrozenTrial], direction: str = "maximize") -> list[FrozenTrial]:
    """The complete trials, best first (ties keep trial order)."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction: {direction!r} is not allowed; allowed: {', '.join(DIRECTIONS)}")
    trials = list(trials)
    if any(len(t.values) != 1 for t in trials if t.state == TrialState.COMPLETE):
        raise ConfigError("trials: narrowing needs single-objective trials (one value each)")
    return ranked(trials, direction)


def warm_start(
    study: optuna.Study,
    trials: Iterable[FrozenTrial],
    space: SearchSpace,
    n: int = 5,
    direction: str = "maximize",
    *,
    source_name: str,
) -> list[dict[str, Any]]:
    """Enqueue the best ``n`` complete ``trials`` of study ``source_name``, clipped to ``space``.

    Returns the parameters enqueued; ones already in ``study`` (a rerun) are skipped.
    """
    if not is_int(n) or n < 0:
        raise ConfigError(f"warm_start_n: {n!r} is not allowed; allowed: an integer >= 0")
    best = best_complete(trials, direction)[:n]
    enqueued = []
    for trial in best:
        params = space.clip(trial.params)
        if params and enqueue_new(study, params, trial.number):
            enqueued.append(params)
    study.set_user_attr(
        LINEAGE_KEY, {"from_study": source_name, "trials": [t.number for t in best], "mode": "warm_start"}
    )
    return enqueued


def enqueue_new(study: optuna.Study, params: dict[str, Any], source_number: int) -> bool:
    """Enqueue unless the study already holds these params; whether a trial was added."""
    before = len(study.get_trials(deepcopy=False))
    study.enqueue_trial(params, user_attrs={WARM_START_KEY: source_number}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) > before


def _check_options(top_share: float, top_k: int | None, margin: float, min_top: int) -> None:
    problems = []
    if not (is_number(top_share) and 0 < top_share <= 1):
        problems.append(f"top_share: {top_share!r} is not allowed; allowed: a share in (0, 1]")
    if top_k is not None and not (is_int(top_k) and top_k >= 0):
        problems.append(f"top_k: {top_k!r} is not allowed; allowed: an integer >= 0 (0 or null: use top_share)")
    if not (is_number(margin) and margin >= 0):
        problems.append(f"margin: {margin!r} is not allowed; allowed: a number >= 0, e.g. 0.1")
    if not (is_int(min_top) and min_top >= 1):
        problems.append(f"min_top: {min_top!r} is not allowed; allowed: an integer >= 1")
    if problems:
        raise ConfigError("\n".join(problems))


def _narrow(dist: BaseDistribution, values: list, margin: float) -> tuple[BaseDistribution, str]:
    """(narrowed distribution, note) from the top trials' values of one parameter."""
    if isinstance(dist, CategoricalDistribution):
        kept = [c for c in dist.choices if any(_equal(c, v) for v in values)]
        if not kept:
            return dist, NEVER_ACTIVE
        dropped = [c for c in dist.choices if not any(_equal(c, k) for k in kept)]
        note = f"from {len(values)} top trials" + (f"; dropped {_text(dropped)}" if dropped else "")
        return CategoricalDistribution(kept), note
    numbers = [min(max(v, dist.low), dist.high) for v in values if is_number(v)]
    if not numbers:
        return dist, NEVER_ACTIVE
    low, high = _widened(dist, min(numbers), max(numbers), margin)
    note = f"from {len(numbers)} top trials"
    if min(numbers) == max(numbers):
        note += f", all {numbers[0]:g}: widened by margin of the original range"
    if isinstance(dist, IntDistribution):
        return IntDistribution(low, high, log=dist.log, step=dist.step), note
    return FloatDistribution(low, high, log=dist.log, step=dist.step), note


def _widened(dist: FloatDistribution | IntDistribution, lo: float, hi: float, margin: float) -> tuple:
    """[lo, hi] widened by ``margin`` of its width (of the original width when lo == hi),
    on the distribution's own axis, kept inside the original bounds and on its step."""
    to_axis, from_axis = (math.log, math.exp) if dist.log else (float, float)
    width = (to_axis(hi) - to_axis(lo)) or (to_axis(dist.high) - to_axis(dist.low))
    low = from_axis(to_axis(lo) - margin * width)
    high = from_axis(to_axis(hi) + margin * width)
    # exp(log(x)) can land a hair inside x: the top values themselves must stay in range.
    low, high = max(min(low, lo), dist.low), min(max(high, hi), dist.high)
    if dist.step is None:
        return low, high
    return _snap_outward(dist, low, high)


def _snap_outward(dist: FloatDistribution | IntDistribution, low: float, high: float) -> tuple:
    """The grid points low + k * step just outside [low, high]; decimal, as Optuna's grids."""
    origin, step = decimal.Decimal(str(dist.low)), decimal.Decimal(str(dist.step))
    k_low = math.floor((decimal.Decimal(str(low)) - origin) / step)
    k_high = math.ceil((decimal.Decimal(str(high)) - origin) / step)
    cast = int if isinstance(dist, IntDistribution) else float
    return cast(origin + k_low * step), cast(origin + k_high * step)


def _conditions_that_can_hold(
    space: SearchSpace, distributions: dict[str, BaseDistribution]
) -> tuple[dict[str, dict[str, list]], dict[str, str]]:
    """(conditions with the values that can still hold, {dropped parameter: reason}).

    A dropped choice can make a ``when`` impossible (momentum when optimizer: sgd, with sgd
    gone); such a parameter can never be active, so it leaves the space, and so does any
    parameter whose condition reads it. ``space.order`` puts every reference first.
    """
    conditions: dict[str, dict[str, list]] = {}
    dropped: dict[str, str] = {}
    for name in space.order:
        if name not in space.conditions:
            continue
        kept = {
            ref: [v for v in values if _can_hold(ref, v, space, distributions, dropped)]
            for ref, values in space.conditions[name].items()
        }
        impossible = [ref for ref, values in kept.items() if not values]
        if impossible:
            ref = impossible[0]
            dropped[name] = (f"dropped: its condition ({ref}: {_text(space.conditions[name][ref])}) "
                             "can no longer hold")
        else:
            conditions[name] = kept
    return conditions, dropped


def _can_hold(ref: str, value: Any, space: SearchSpace, distributions: dict, dropped: dict) -> bool:
    if ref in space.fixed:
        return _equal(space.fixed[ref], value)
    return ref not in dropped and _in_distribution(distributions[ref], value)


def _row(name: str, old: SearchSpace, new: SearchSpace, notes: dict[str, str]) -> dict[str, str]:
    if name in old.fixed:
        value = _text(old.fixed[name])
        return {"param": name, "old": value, "new": value, "note": "fixed"}
    new_text = _describe(new.distributions[name]) if name in new.distributions else "-"
    return {"param": name, "old": _describe(old.distributions[name]), "new": new_text, "note": notes[name]}


def _describe(dist: BaseDistribution) -> str:
    """Short text for the table: "1e-05 .. 0.01 (log)", "8 .. 64 step 8", "[8, 16, 32]"."""
    if isinstance(dist, CategoricalDistribution):
        return _text(list(dist.choices))
    text = f"{dist.low:g} .. {dist.high:g}"
    if dist.log:
        text += " (log)"
    if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
        text += f" step {dist.step:g}"
    return text


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
