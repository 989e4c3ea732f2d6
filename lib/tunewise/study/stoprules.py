"""Stop rules: Optuna study callbacks that end a search once more trials stop paying off.

Each rule is a `callback(study, frozen_trial)`. When one fires it records why in the
study (user attrs `tunewise.stop_reason` and `tunewise.stop_details`, the figures plus
one readable `message`) and then calls `study.stop()`, so notebooks and summary.json can
say why a phase ended (`stop_summary`). All rules are direction-aware: "gain" is always
an improvement, whether the study maximizes (macro-F1, the default) or minimizes.

The seed's rules: converged (best improved < 0.01 over the last 10 trials), target reached
(e.g. 0.96), trial cap (100), plus a watch on ROI (gain per hour). On top of those: a noise
floor (an improvement smaller than seed-to-seed noise is not progress) and a failure guard
(a broken setup must not burn the whole budget).

Rules are built once per run (`build_stop_rules`). As callbacks, the window rules and the
failure guard only judge trials of that run: a resumed study (phase 2) first gets `window`
trials of its own instead of being stopped at once by how phase 1 ended. Budget counts the
whole study, so a cap holds across resumes.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunewise import units
from tunewise.errors import ConfigError, did_you_mean, is_int, is_number
from tunewise.study.forecast import Forecast, forecast_gain
from tunewise.records import (
    ELAPSED_KEY,
    FAIL_REASON_KEY,
    FINISHED_STATES,
    NOISE_FLOOR_KEY,
    PARAMS_KEY,
    STOP_DETAILS_KEY,
    STOP_REASON_KEY,
    baseline_value,
    best_trial,
    complete_trials,
    sign,
)

__all__ = [
    "STOP_REASON_KEY", "STOP_DETAILS_KEY", "NOISE_FLOOR_KEY", "StopRule", "Plateau", "NoiseFloor",
    "Target", "Budget", "ROI", "FailureGuard", "ExpectedGain", "RULES", "DEFAULT_STOP_RULES", "build_stop_rules",
    "noise_floor", "budget_left", "replay", "trials_text", "percent_below", "stop_summary",
    "clear_stop_record", "Verdict", "should_continue_optimization",
]


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_MAX_ERROR_CHARS = 200  # a traceback as a dict key would drown the summary


# --- small helpers ------------------------------------------------------------------------


def _require(ok: bool, field_name: str, allowed: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{field_name} must be {allowed}, got {got!r}")


def noise_floor(study: optuna.Study) -> float | None:
    """The seed-to-seed std of the score recorded by a validation phase, or None."""
    value = study.user_attrs.get(NOISE_FLOOR_KEY)
    if value is None:
        return None
    _require(is_number(value) and value >= 0, f"study user attr {NOISE_FLOOR_KEY!r}",
             "a non-negative number (the std of the score across seeds)", value)
    return float(value)


def _effective_min_delta(study: optuna.Study, min_delta: float) -> tuple[float, str]:
    """The larger of min_delta and the noise floor, and which one it was."""
    noise = noise_floor(study)
    if noise is not None and noise > min_delta:
        return noise, "noise_floor"
    return min_delta, "min_delta"


@dataclass(frozen=True)
class _Window:
    """How the best value moved over the last `size` completed trials."""

    before: float  # best value before the window
    after: float  # best value including it (the study's best)
    gain: float  # improvement, >= 0 in either direction
    trials: list[FrozenTrial]


def _window(study: optuna.Study, size: int, since: int = 0) -> _Window | None:
    """The last `size` completed trials vs all earlier ones; None until there are size + 1
    completed trials, or while the window still reaches back before trial `since`."""
    complete = complete_trials(study)
    if len(complete) <= size or complete[-size].number < since:
        return None
    s = sign(study)
    before = max(s * t.value for t in complete[:-size])
    after = max(before, max(s * t.value for t in complete[-size:]))
    return _Window(s * before, s * after, after - before, complete[-size:])


# --- the rules ----------------------------------------------------------------------------


class StopRule:
    """Base class: `check` returns the figures when the rule fires, `__call__` records them
    in the study and stops it. `check` on its own (no optimize loop) judges the whole study."""

    name = "stop_rule"

    def __init__(self) -> None:
        self._run_start: int | None = None

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        raise NotImplementedError

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._run_start is None or trial.number < self._run_start:
            self._run_start = trial.number  # the lowest trial this run has shown the rule
        recorded = study.user_attrs.get(STOP_DETAILS_KEY)
        if isinstance(recorded, dict) and recorded.get("trial") == trial.number:
            return  # an earlier rule in the list already stopped on this trial: keep its reason
        figures = self.check(study, trial)
        if figures is None:
            return
        study.set_user_attr(STOP_REASON_KEY, self.name)
        study.set_user_attr(STOP_DETAILS_KEY, {**figures, "trial": trial.number})
        study.stop()

    @property
    def _since(self) -> int:
        """First trial of this run (the optimize loop calling this rule); 0 when `check` is
        used on its own, which judges the whole study."""
        return self._run_start or 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Plateau(StopRule):
    """Converged: the best value improved by less than `min_delta` over the last `window`
    completed trials (or by less than the recorded noise floor, when that is larger)."""

    name = "plateau"

    def __init__(self, min_delta: float = 0.01, window: int = 10) -> None:
        super().__init__()
        _require(is_number(min_delta) and min_delta > 0, "plateau.min_delta",
                 "a positive number (use false to turn the rule off)", min_delta)
        _require(is_int(window) and window >= 1, "plateau.window", "a positive integer", window)
        self.min_delta = float(min_delta)
        self.window = window

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        w = _window(study, self.window, since=self._since)
        if w is None:
            return None
        # Read every time: a noise floor measured mid-study counts from then on.
        threshold, source = _effective_min_delta(study, self.min_delta)
        if w.gain >= threshold:
            return None
        used = "min_delta" if source == "min_delta" else "the noise floor"
        return {
            "gain": w.gain, "best_before": w.before, "best": w.after, "window": self.window,
            "min_delta": self.min_delta, "noise_floor": noise_floor(study),
            "effective_min_delta": threshold, "min_delta_source": source,
            "message": (f"The best value moved {w.before:.4g} -> {w.after:.4g} (+{w.gain:.4g}) over "
                        f"the last {self.window} completed trials, less than {used} {threshold:.4g}."),
        }


class NoiseFloor(StopRule):
    """Stop when the best improved by less than `multiple` x the seed-to-seed noise over the
    last `window` completed trials: such a gain could be one lucky seed. A no-op until a
    validation phase has recorded the noise (study user attr `tunewise.noise_floor`)."""

    name = "noise_floor"

    def __init__(self, multiple: float = 1.0, window: int = 10) -> None:
        super().__init__()
        _require(is_number(multiple) and multiple > 0, "noise_floor.multiple", "a positive number", multiple)
        _require(is_int(window) and window >= 1, "noise_floor.window", "a positive integer", window)
        self.multiple = float(multiple)
        self.window = window

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        noise = noise_floor(study)
        if not noise:
            return None
        w = _window(study, self.window, since=self._since)
        threshold = self.multiple * noise
        if w is None or w.gain >= threshold:
            return None
        return {
            "gain": w.gain, "best_before": w.before, "best": w.after, "window": self.window,
            "noise_floor": noise, "multiple": self.multiple, "threshold": threshold,
            "message": (f"The best value gained only {w.gain:.4g} over the last {self.window} completed "
                        f"trials, within {self.multiple:g} x the seed-to-seed noise {noise:.4g}."),
        }


class Target(StopRule):
    """Good enough: the best value reached `value` (>= when maximizing, <= when minimizing)."""

    name = "target"

    def __init__(self, value: float = 0.96) -> None:
        super().__init__()
        _require(is_number(value), "target.value", "a finite number", value)
        self.value = float(value)

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        best = best_trial(study)
        if best is None or sign(study) * best.value < sign(study) * self.value:
            return None
        relation = ">=" if sign(study) > 0 else "<="
        return {
            "best": best.value, "best_trial": best.number, "target": self.value,
            "message": f"Trial {best.number} reached {best.value:.4g} {relation} the target {self.value:.4g}.",
        }


def _wall_clock_since(started: float) -> Callable[[], float]:
    return lambda: time.monotonic() - started


class Budget(StopRule):
    """Trial cap and time cap over the whole study, so they hold across resumed runs.

    `max_trials` counts finished trials (COMPLETE + PRUNED; failures are the failure
    guard's business). `max_seconds` compares with `elapsed_s()`, which the runner gives
    as the total time spent across resumes; by default, wall time since this rule was made.
    """

    name = "budget"

    def __init__(self, max_trials: int | None = None, max_seconds: float | None = None,
                 elapsed_s: Callable[[], float] | None = None) -> None:
        super().__init__()
        _require(max_trials is None or (is_int(max_trials) and max_trials >= 1), "budget.max_trials",
                 "a positive integer or null", max_trials)
        _require(max_seconds is None or (is_number(max_seconds) and max_seconds > 0), "budget.max_seconds",
                 "a positive number or null", max_seconds)
        if max_trials is None and max_seconds is None:
            raise ConfigError("budget needs max_trials or max_seconds (or both); use false to turn it off")
        self.max_trials = max_trials
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self._elapsed_s = elapsed_s or _wall_clock_since(time.monotonic())

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        finished = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
        elapsed = float(self._elapsed_s())
        figures = {"finished_trials": finished, "max_trials": self.max_trials,
                   "elapsed_s": elapsed, "max_seconds": self.max_seconds}
        if self.max_trials is not None and finished >= self.max_trials:
            return {**figures, "limit": "max_trials",
                    "message": f"{finished} trials finished, the cap is {self.max_trials}."}
        if self.max_seconds is not None and elapsed >= self.max_seconds:
            return {**figures, "limit": "max_seconds",
                    "message": f"{units.duration(elapsed)} spent, the time budget is {units.duration(self.max_seconds)}."}
        return None


class ROI(StopRule):
    """Return on time: the best value gained less than `min_gain_per_hour` per hour over
    the last `window` completed trials. Hours are the wall-clock span of the window (first
    start to last completion), so pruned and failed trials in between count as time spent.

    With `baseline`, gain is relative (a fraction of |baseline|, 0.01 = 1 % per hour, as the
    seed quotes ROI); without, it is in score units. Judged only once `warmup_trials`
    completed trials precede the window: the first (random) trials say little about ROI.
    """

    name = "roi"

    def __init__(self, min_gain_per_hour: float, window: int = 10, warmup_trials: int = 10,
                 baseline: float | None = None) -> None:
        super().__init__()
        _require(is_number(min_gain_per_hour) and min_gain_per_hour > 0, "roi.min_gain_per_hour",
                 "a positive number", min_gain_per_hour)
        _require(is_int(window) and window >= 1, "roi.window", "a positive integer", window)
        _require(is_int(warmup_trials) and warmup_trials >= 0, "roi.warmup_trials",
                 "a non-negative integer", warmup_trials)
        _require(baseline is None or (is_number(baseline) and baseline != 0), "roi.baseline",
                 "a non-zero number or null", baseline)
        self.min_gain_per_hour = float(min_gain_per_hour)
        self.window = window
        self.warmup_trials = warmup_trials
        self.baseline = None if baseline is None else float(baseline)

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        w = _window(study, self.window, since=self._since)
        if w is None or len(complete_trials(study)) < self.warmup_trials + self.window:
            return None
        starts = [t.datetime_start for t in w.trials if t.datetime_start is not None]
        ends = [t.datetime_complete for t in w.trials if t.datetime_complete is not None]
        hours = (max(ends) - min(starts)).total_seconds() / 3600 if starts and ends else 0.0
        if hours <= 0:
            return None  # no measurable time (e.g. trials added without timestamps): no ROI to judge
        gain = w.gain if self.baseline is None else w.gain / abs(self.baseline)
        rate = gain / hours
        if rate >= self.min_gain_per_hour:
            return None
        unit = "of the baseline " if self.baseline is not None else ""
        return {
            "gain": gain, "hours": hours, "gain_per_hour": rate,
            "min_gain_per_hour": self.min_gain_per_hour, "window": self.window,
            "baseline": self.baseline, "best_before": w.before, "best": w.after,
            "message": (f"The last {self.window} completed trials took {units.hours(hours)} and gained "
                        f"{gain:.4g} {unit}({rate:.4g}/h), below {self.min_gain_per_hour:.4g}/h."),
        }


class FailureGuard(StopRule):
    """A broken setup: more than `max_fail_share` of the last `window` finished trials of
    this run FAILED (judged once `min_trials` have finished). The details count each
    distinct error (trial user attr `fail_reason`, else Optuna's system attr, else
    "unknown")."""

    name = "failure_guard"

    def __init__(self, max_fail_share: float = 0.5, window: int = 10, min_trials: int = 4) -> None:
        super().__init__()
        _require(is_number(max_fail_share) and 0 < max_fail_share <= 1, "failure_guard.max_fail_share",
                 "a share in (0, 1]", max_fail_share)
        _require(is_int(window) and window >= 1, "failure_guard.window", "a positive integer", window)
        _require(is_int(min_trials) and min_trials >= 1, "failure_guard.min_trials",
                 "a positive integer", min_trials)
        self.max_fail_share = float(max_fail_share)
        self.window = window
        self.min_trials = min_trials

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        finished = study.get_trials(deepcopy=False, states=_FINISHED)
        this_run = [t for t in finished if t.number >= self._since]
        if len(this_run) < self.min_trials:
            return None
        recent = this_run[-self.window:]
        failed = [t for t in recent if t.state == TrialState.FAIL]
        share = len(failed) / len(recent)
        if share <= self.max_fail_share:
            return None
        errors: dict[str, int] = {}
        for t in failed:
            reason = str(t.user_attrs.get(FAIL_REASON_KEY) or t.system_attrs.get(FAIL_REASON_KEY) or "unknown")
            reason = reason[:_MAX_ERROR_CHARS]
            errors[reason] = errors.get(reason, 0) + 1
        top, top_count = max(errors.items(), key=lambda kv: kv[1])
        return {
            "failed": len(failed), "trials": len(recent), "fail_share": share,
            "max_fail_share": self.max_fail_share, "errors": errors,
            "message": (f"{len(failed)} of the last {len(recent)} trials failed ({share:.0%} > "
                        f"{self.max_fail_share:.0%}), most often with {top!r} ({top_count}x): "
                        f"fix the setup before spending more budget."),
        }


class ExpectedGain(StopRule):
    """Stop when the trials still in the budget are unlikely to buy a measurable gain.

    After `warmup_trials` completed trials, `tunewise.study.forecast` simulates the best value's gain
    over the remaining trials (from the recent trials' values, their upper tail and how fast
    they have been rising). The rule fires when the chance that this gain exceeds the
    threshold, the larger of `min_gain` and `noise_multiple` x the recorded seed-to-seed
    noise (a smaller gain is not progress), falls below `max_chance`.

    The remaining budget is `max_trials` (default: the study's recorded `n_trials`) less the
    finished trials, scaled by the share of trials that complete (a pruned trial cannot
    raise the best), and capped by what the study's recorded `timeout` leaves at the
    median time per trial.
    """

    name = "expected_gain"

    # Defaults: the best trade-off of trials saved against macro-F1 given up on the recorded
    # real studies and the synthetic curves (benchmarks/stop_rules.py; README).
    def __init__(self, min_gain: float = 0.005, noise_multiple: float = 0.25, max_chance: float = 0.5,
                 warmup_trials: int = 15, max_trials: int | None = None, trend_weight: float = 0.25) -> None:
        super().__init__()
        _require(is_number(min_gain) and min_gain > 0, "expected_gain.min_gain", "a positive number", min_gain)
        _require(is_number(noise_multiple) and noise_multiple >= 0, "expected_gain.noise_multiple",
                 "a number >= 0 (0: ignore the noise floor)", noise_multiple)
        _require(is_number(max_chance) and 0 < max_chance < 1, "expected_gain.max_chance", "a share in (0, 1)",
                 max_chance)
        _require(is_int(warmup_trials) and warmup_trials >= 5, "expected_gain.warmup_trials", "an integer >= 5",
                 warmup_trials)
        _require(max_trials is None or (is_int(max_trials) and max_trials >= 1), "expected_gain.max_trials",
                 "a positive integer or null (the study's n_trials)", max_trials)
        _require(is_number(trend_weight) and 0 <= trend_weight <= 1, "expected_gain.trend_weight",
                 "a share in [0, 1]", trend_weight)
        self.min_gain = float(min_gain)
        self.noise_multiple = float(noise_multiple)
        self.max_chance = float(max_chance)
        self.warmup_trials = warmup_trials
        self.max_trials = max_trials
        self.trend_weight = float(trend_weight)

    def threshold(self, study: optuna.Study) -> tuple[float, str]:
        """The smallest gain that counts as progress, and where it comes from."""
        noise = noise_floor(study)
        if noise is not None and self.noise_multiple * noise > self.min_gain:
            return self.noise_multiple * noise, "noise_floor"
        return self.min_gain, "min_gain"

    def forecast(self, study: optuna.Study) -> tuple[Forecast | None, dict[str, Any]]:
        """The forecast for the study as it stands, and the budget figures it used."""
        complete = complete_trials(study)
        left = budget_left(study, self.max_trials)
        s = sign(study)
        completing = len(complete) / max(1, left["finished"])
        threshold, _ = self.threshold(study)
        f = forecast_gain([s * t.value for t in complete], left["trials"] * completing, threshold,
                          trend_weight=self.trend_weight)
        return f, left

    def check(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        if len(complete_trials(study)) < self.warmup_trials:
            return None
        f, left = self.forecast(study)
        if f is None or f.chance >= self.max_chance:
            return None
        s = sign(study)
        threshold, source = self.threshold(study)
        used = "min_gain" if source == "min_gain" else f"{self.noise_multiple:g} x the noise floor"
        hours = left["trials"] * left["seconds_per_trial"] / 3600 if left["seconds_per_trial"] else None
        spend = f" (~{units.duration(hours * 3600)})" if hours else ""
        return {
            **f.to_dict(), "best": s * f.best, "remaining_trials": left["trials"],
            "seconds_per_trial": left["seconds_per_trial"], "budget_source": left["source"],
            "expected_gain_per_hour": f.expected_gain / hours if hours else None,
            "min_gain": self.min_gain, "noise_floor": noise_floor(study), "noise_multiple": self.noise_multiple,
            "threshold_source": source, "max_chance": self.max_chance, "warmup_trials": self.warmup_trials,
            "message": (f"The {trials_text(left['trials'])} left in the budget{spend} are expected to gain "
                        f"+{f.expected_gain:.4f} (80% range +{f.low:.4f} to +{f.high:.4f}); the chance of more than "
                        f"{used} {threshold:.4g} is {percent_below(f.chance)}, below {self.max_chance:.0%}."),
        }


def trials_text(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def percent_below(share: float) -> str:
    """A share as a whole percent, rounded down: 19.98% shows as 19%, never as the 20% it is below."""
    return f"{math.floor(share * 100)}%"


def budget_left(study: optuna.Study, max_trials: int | None = None) -> dict[str, Any]:
    """Trials still in the study's budget: `max_trials` (default: the recorded n_trials; else
    as many again as have finished) less the finished ones, capped by what the recorded
    timeout leaves at the median seconds per finished trial."""
    finished = study.get_trials(deepcopy=False, states=FINISHED_STATES)
    recorded = study.user_attrs.get(PARAMS_KEY) or {}
    cap, source = max_trials, "max_trials"
    if cap is None and is_int(recorded.get("n_trials")):
        cap, source = recorded["n_trials"], "n_trials"
    if cap is None:
        cap, source = 2 * len(finished), "as many again as finished"
    trials = max(0, cap - len(finished))
    durations = [t.duration.total_seconds() for t in finished if t.duration is not None]
    per_trial = float(sorted(durations)[len(durations) // 2]) if durations else None
    timeout, elapsed = recorded.get("timeout"), study.user_attrs.get(ELAPSED_KEY)
    if per_trial and is_number(timeout) and is_number(elapsed):
        by_time = max(0, int((timeout - elapsed) / per_trial))
        if by_time < trials:
            trials, source = by_time, "timeout"
    return {"trials": trials, "finished": len(finished), "seconds_per_trial": per_trial, "source": source}


# --- from the params file -----------------------------------------------------------------

# Also the order rules are called in: when two fire on the same trial, the first one's
# reason is kept (a broken setup matters more than a plateau).
RULES: dict[str, type[StopRule]] = {
    "failure_guard": FailureGuard,
    "target": Target,
    "budget": Budget,
    "plateau": Plateau,
    "noise_floor": NoiseFloor,
    "roi": ROI,
    "expected_gain": ExpectedGain,
}
_RUNNER_ARGS = {"elapsed_s"}  # given by the runner, not the params file

# The seed's adaptive rules: converged = < 0.01 over 10 trials; a failure guard; no target
# unless one is set.
DEFAULT_STOP_RULES: dict[str, dict[str, Any] | None] = {
    "failure_guard": {"max_fail_share": 0.5, "window": 10},
    "target": None,
    "plateau": {"min_delta": 0.01, "window": 10},
}


def build_stop_rules(config: dict[str, Any] | None,
                     elapsed_s: Callable[[], float] | None = None) -> list[StopRule]:
    """Rules from the params file's `stop_rules:` mapping, laid over DEFAULT_STOP_RULES.

    Per rule: a mapping of arguments, `true` (the rule's defaults), or `false`/null (off).
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"stop_rules must be a mapping of rule name to arguments, got {config!r}")
    for name in config:
        if name not in RULES:
            raise ConfigError(f"stop_rules.{name} is not a stop rule{did_you_mean(name, RULES)}; "
                              f"known rules: {', '.join(RULES)}")
    merged = {**DEFAULT_STOP_RULES, **config}
    rules = []
    for name, cls in RULES.items():
        args = merged.get(name)
        if args is None or args is False:
            continue
        if args is True:
            args = {}
        if not isinstance(args, dict):
            raise ConfigError(f"stop_rules.{name} must be a mapping of arguments, true, or false/null; "
                              f"got {args!r}")
        rules.append(_build_rule(name, cls, args, elapsed_s))
    return rules


def _build_rule(name: str, cls: type[StopRule], args: dict[str, Any],
                elapsed_s: Callable[[], float] | None) -> StopRule:
    params = {k: p for k, p in inspect.signature(cls).parameters.items() if k not in _RUNNER_ARGS}
    for arg in args:
        if arg not in params:
            raise ConfigError(f"stop_rules.{name}.{arg} is not an argument of {name}"
                              f"{did_you_mean(arg, params)}; allowed: {', '.join(params)}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in args]
    if missing:
        raise ConfigError(f"stop_rules.{name} needs {', '.join(missing)}")
    if cls is Budget:
        args = {**args, "elapsed_s": elapsed_s}
    try:
        return cls(**args)
    except ConfigError as exc:
        raise ConfigError(f"stop_rules.{exc}") from None


# --- reading the outcome ------------------------------------------------------------------


def stop_summary(study: optuna.Study) -> dict[str, Any] | None:
    """{"reason": rule name, "details": figures + message} if a rule stopped the study."""
    reason = study.user_attrs.get(STOP_REASON_KEY)
    if reason is None:
        return None
    return {"reason": reason, "details": study.user_attrs.get(STOP_DETAILS_KEY, {})}


def clear_stop_record(study: optuna.Study) -> None:
    """Forget the last recorded stop (Optuna cannot delete a user attr, so both go to None);
    call when resuming, so a finished phase 2 does not report how phase 1 ended."""
    study.set_user_attr(STOP_REASON_KEY, None)
    study.set_user_attr(STOP_DETAILS_KEY, None)


def replay(study: optuna.Study, rules: dict[str, StopRule],
           user_attrs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Where each rule would have stopped this study, had it run with the rule alone.

    The study's finished trials are added one by one, in order, to an in-memory copy (with
    the study's user attrs, so the noise floor and the recorded budget count; `user_attrs`
    overrides them), and each rule's `check` judges the copy after every trial; the first
    trial it fires on is its stop. One row per rule: the trial it stopped on (None: it
    never fired), trials used and saved, the best value at its stop and what it gave up
    against the study's final best (>= 0, in either direction)."""
    trials = sorted(study.get_trials(deepcopy=False, states=_FINISHED), key=lambda t: t.number)
    copy = optuna.create_study(direction=study.direction)
    for key, value in {**study.user_attrs, **(user_attrs or {})}.items():
        if key not in (STOP_REASON_KEY, STOP_DETAILS_KEY):
            copy.set_user_attr(key, value)
    stops: dict[str, int | None] = dict.fromkeys(rules)
    pending = dict(rules)
    for t in trials:
        copy.add_trial(t)
        frozen = copy.get_trials(deepcopy=False)[-1]
        for label, rule in list(pending.items()):
            if rule.check(copy, frozen) is not None:
                stops[label] = t.number
                del pending[label]
        if not pending:
            break
    s = sign(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    final = max((s * t.value for t in complete), default=None)
    rows = []
    for label, stop in stops.items():
        used = len(trials) if stop is None else sum(1 for t in trials if t.number <= stop)
        seen = [s * t.value for t in complete if stop is None or t.number <= stop]
        best = max(seen, default=None)
        rows.append({
            "rule": label, "stopped_at_trial": stop, "trials_used": used, "trials_saved": len(trials) - used,
            "best_at_stop": None if best is None else s * best,
            "given_up": None if best is None or final is None else final - best,
        })
    return rows


@dataclass(frozen=True)
class Verdict:
    """Whether another (focused) phase is worth it, in one sentence and the figures."""

    go: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def should_continue_optimization(study: optuna.Study, baseline: float | None = None,
                                 min_relative_gain: float = 0.05) -> Verdict:
    """The seed's question between phases: extend the search only if this one improved the
    score by more than ~5 % over the baseline (default: records.baseline_value, the trial
    tunewise enqueues with the default settings), not within noise, and not already at
    the target."""
    complete = complete_trials(study)
    if not complete:
        return Verdict(False, "No trial completed, so there is no gain to build on: fix the setup first.",
                       {"n_complete": 0})
    best = best_trial(study, complete).value
    if baseline is None:
        baseline = baseline_value(study)
    gain = sign(study) * (best - baseline)
    # A zero baseline makes any real gain infinitely large relative to it.
    relative = gain / abs(baseline) if baseline != 0 else (math.inf if gain > 0 else 0.0)
    noise = noise_floor(study)
    stopped_by = study.user_attrs.get(STOP_REASON_KEY)
    figures = {"n_complete": len(complete), "best": best, "baseline": baseline, "gain": gain,
               "relative_gain": relative, "min_relative_gain": min_relative_gain,
               "noise_floor": noise, "stop_reason": stopped_by}
    change = f"{baseline:.4g} -> {best:.4g} ({relative:+.2%})"

    if stopped_by == Target.name:
        return Verdict(False, f"The search reached its target ({change}): good enough, another phase "
                              f"is not worth it.", figures)
    if noise and gain <= noise:
        return Verdict(False, f"The gain {change} is within the seed-to-seed noise {noise:.4g}: "
                              f"no real improvement to extend.", figures)
    if relative < min_relative_gain:
        return Verdict(False, f"The gain {change} is below {min_relative_gain:.0%}: tuning does not pay "
                              f"off here, spend the time elsewhere.", figures)
    plateau = Plateau()
    w = _window(study, plateau.window)
    threshold, _ = _effective_min_delta(study, plateau.min_delta)
    if w is not None and w.gain >= threshold:
        figures["window_gain"] = w.gain
        return Verdict(True, f"The gain {change} clears {min_relative_gain:.0%} and the best still moved "
                             f"+{w.gain:.4g} over the last {plateau.window} trials: keep searching.", figures)
    return Verdict(True, f"The gain {change} clears {min_relative_gain:.0%}: a focused phase around the "
                         f"best settings is worth it.", figures)
