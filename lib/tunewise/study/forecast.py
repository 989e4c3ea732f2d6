"""What the rest of a trial budget is expected to buy: a forecast of the best value's gain.

The trials still in the budget are draws from the search's current distribution of trial
values: the recent trials, shifted by how fast those have been rising (a least-squares
slope, never negative; `trend_weight` of it carried on over the remaining trials, since
searches saturate). The best value moves only when a new trial lands in the upper tail,
so the tail is modelled as extreme-value theory does above a threshold: the top share of
the recent values, whose excesses over the threshold have an exponential law (a
conservative choice: a score bounded at 1 has a lighter tail). Each simulation draws the
tail's scale from its uncertainty (k - 1 excesses: a Gamma posterior), how many of the
remaining trials land in the tail (binomial), and the largest of their excesses; the gain
is how far that lands above today's best, or 0.

Everything is on the "gain is positive" scale (values times +1 when maximizing, -1 when
minimizing). The forecast is deterministic (its random draws are seeded by the number of
values), so a replay gives the same stop every time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

SIMULATIONS = 4000


@dataclass(frozen=True)
class Forecast:
    """The best value's gain over the remaining trials: its mean, 10 % / 90 % quantiles and
    the chance it exceeds `threshold` (the smallest gain that counts as progress)."""

    n_values: int  # completed trials the forecast is made from
    remaining: float  # trials still in the budget (counting only the share expected to complete)
    best: float  # today's best, on the gain-is-positive scale
    expected_gain: float
    low: float  # 10 % quantile
    high: float  # 90 % quantile
    threshold: float
    chance: float  # P(gain > threshold)
    drift: float  # per-trial rise of the recent values (>= 0)
    tail_scale: float  # scale of the exponential upper tail

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def forecast_gain(values: Sequence[float], remaining: float, threshold: float, *, window: int = 20,
                  window_share: float = 0.5, tail_share: float = 0.25, trend_weight: float = 0.25,
                  simulations: int = SIMULATIONS) -> Forecast | None:
    """The forecast from `values` (completed trials in order, larger is better) for
    `remaining` more trials; None with fewer than 5 values (no tail to speak of)."""
    drawn = simulate_gain(values, remaining, window=window, window_share=window_share, tail_share=tail_share,
                          trend_weight=trend_weight, simulations=simulations)
    if drawn is None:
        return None
    gain, best, drift, scale = drawn
    return Forecast(
        n_values=len(values), remaining=max(0.0, float(remaining)), best=best, expected_gain=float(gain.mean()),
        low=float(np.quantile(gain, 0.1)), high=float(np.quantile(gain, 0.9)), threshold=float(threshold),
        chance=float(np.mean(gain > threshold)), drift=drift, tail_scale=scale,
    )


def simulate_gain(values: Sequence[float], remaining: float, *, window: int = 20, window_share: float = 0.5,
                  tail_share: float = 0.25, trend_weight: float = 0.25,
                  simulations: int = SIMULATIONS) -> tuple[np.ndarray, float, float, float] | None:
    """(simulated gains, today's best, drift, tail scale), or None with fewer than 5 values."""
    y = np.asarray(values, dtype=float)
    n = len(y)
    if n < 5:
        return None
    best = float(y.max())
    size = min(n, max(window, int(n * window_share)))
    recent = y[-size:]
    drift = 0.0
    if size >= 10:
        index = np.arange(size)
        drift = max(0.0, float(np.polyfit(index, recent, 1)[0]))
        recent = recent + drift * (size - 1 - index)  # as if drawn today
    top = np.sort(recent)[::-1]
    k = min(size, max(3, round(tail_share * size)))
    tail_start = top[k - 1]
    scale = max(float(np.mean(top[:k - 1] - tail_start)), 1e-9)
    remaining = max(0.0, float(remaining))
    if remaining <= 0:
        return np.zeros(simulations), best, drift, scale
    rng = np.random.default_rng([n, 15])
    scales = scale * (k - 1) / rng.gamma(k - 1, 1.0, simulations)
    trials = rng.binomial(int(math.ceil(remaining)), k / size, simulations)
    u = rng.random(simulations)
    # The largest of m exponential excesses: its CDF is (1 - exp(-x / s)) ** m. (A generalized
    # Pareto tail fitted by moments, lighter for a bounded score, did no better on the benchmark.)
    largest = np.where(trials > 0, -scales * np.log1p(-u ** (1.0 / np.maximum(trials, 1))), -np.inf)
    shift = drift * remaining * trend_weight
    return np.maximum(0.0, tail_start + shift + largest - best), best, drift, scale
