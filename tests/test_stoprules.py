"""Stop rules fire exactly at the trial they should, and record why.

Each test drives a real in-memory study with a fixed sequence of outcomes, so "stopped
at trial k" is `len(study.trials) == k + 1` (not one trial before, not one after).
"""

from __future__ import annotations

import datetime as dt

import optuna
import pytest
from optuna.trial import TrialState

from tunewise.errors import ConfigError
from tunewise.records import NOISE_FLOOR_KEY, STOP_DETAILS_KEY, STOP_REASON_KEY
from tunewise.study.stoprules import (
    DEFAULT_STOP_RULES, ROI, Budget,
    FailureGuard, NoiseFloor, Plateau, Target, build_stop_rules, clear_stop_record,
    should_continue_optimization, stop_summary,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)

PRUNE = "prune"
T0 = dt.datetime(2024, 1, 1, 9, 0, 0)


class Boom(Exception):
    pass


def study_of(direction: str = "maximize", noise: float | None = None) -> optuna.Study:
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    if noise is not None:
        study.set_user_attr(NOISE_FLOOR_KEY, noise)
    return study


def run(study: optuna.Study, outcomes: list, rules: list) -> optuna.Study:
    """Trial n returns outcomes[n]: a value, PRUNE, or an exception (raised, caught as FAIL);
    a (exception, reason) pair also sets the trial's `fail_reason` first."""

    def objective(trial: optuna.Trial) -> float:
        outcome = outcomes[trial.number]
        if outcome == PRUNE:
            raise optuna.TrialPruned()
        if isinstance(outcome, tuple):
            outcome, reason = outcome
            trial.set_user_attr("fail_reason", reason)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    study.optimize(objective, n_trials=len(outcomes) - len(study.trials), callbacks=rules, catch=(Boom,))
    return study


def details(study: optuna.Study) -> dict:
    return study.user_attrs[STOP_DETAILS_KEY]


# --- plateau ------------------------------------------------------------------------------


def test_plateau_fires_at_the_first_window_with_too_little_gain_maximize():
    study = run(study_of(), [0.50, 0.60, 0.70, 0.80, 0.805, 0.806, 0.807, 0.99], [Plateau(0.01, window=3)])
    assert len(study.trials) == 7  # trial 6: best 0.80 -> 0.807 over trials 4-6
    assert study.user_attrs[STOP_REASON_KEY] == "plateau"
    d = details(study)
    assert d["trial"] == 6 and d["window"] == 3
    assert d["best_before"] == 0.80 and d["best"] == 0.807
    assert d["gain"] == pytest.approx(0.007)
    assert d["effective_min_delta"] == 0.01 and d["min_delta_source"] == "min_delta"
    assert "0.807" in d["message"]


def test_plateau_fires_at_the_first_window_with_too_little_gain_minimize():
    study = run(study_of("minimize"), [0.50, 0.40, 0.30, 0.20, 0.195, 0.194, 0.193, 0.01],
                [Plateau(0.01, window=3)])
    assert len(study.trials) == 7
    d = details(study)
    assert d["best_before"] == 0.20 and d["best"] == 0.193
    assert d["gain"] == pytest.approx(0.007)


def test_plateau_needs_window_plus_one_completed_trials():
    # Pruned trials have no value, so they do not fill the window.
    study = run(study_of(), [0.5, PRUNE, 0.5, 0.5, 0.5, 0.5], [Plateau(0.01, window=3)])
    assert len(study.trials) == 5  # 4th completed trial is trial 4


def test_plateau_uses_the_noise_floor_when_larger():
    values = [0.50, 0.60, 0.70, 0.80, 0.82, 0.825, 0.83, 0.99]  # trial 6 gains 0.03 on trial 3
    quiet = run(study_of(), values, [Plateau(0.01, window=3)])
    assert len(quiet.trials) == len(values)  # 0.03 > min_delta: never converged

    noisy = run(study_of(noise=0.05), values, [Plateau(0.01, window=3)])
    assert len(noisy.trials) == 7
    d = details(noisy)
    assert d["noise_floor"] == 0.05 and d["effective_min_delta"] == 0.05
    assert d["min_delta_source"] == "noise_floor"
    assert "noise floor" in d["message"]


def test_plateau_reads_a_noise_floor_recorded_mid_study():
    values = [0.50, 0.60, 0.70, 0.80, 0.82, 0.825, 0.83, 0.835, 0.99]
    study = study_of()

    def objective(trial):
        if trial.number == 7:
            trial.study.set_user_attr(NOISE_FLOOR_KEY, 0.05)
        return values[trial.number]

    study.optimize(objective, n_trials=len(values), callbacks=[Plateau(0.01, window=3)])
    assert len(study.trials) == 8  # not at trial 6 (no noise known yet), at trial 7


def test_plateau_on_a_resumed_study_waits_for_a_window_of_its_own():
    study = run(study_of(), [0.5] * 5, [Plateau(0.01, window=3)])
    assert len(study.trials) == 4  # phase 1 plateaued at trial 3
    clear_stop_record(study)
    assert stop_summary(study) is None
    run(study, [0.5] * 4 + [0.5] * 10, [Plateau(0.01, window=3)])  # phase 2, fresh rules
    assert len(study.trials) == 7  # trials 4, 5, 6 form phase 2's first window


# --- noise floor --------------------------------------------------------------------------


def test_noise_floor_rule_is_a_no_op_until_noise_is_recorded():
    study = run(study_of(), [0.5] * 8, [NoiseFloor(window=3)])
    assert len(study.trials) == 8


def test_noise_floor_gain_smaller_than_noise_is_not_progress():
    # Every trial improves the best a little; 0.016 over 3 trials is still inside the noise.
    values = [0.50, 0.60, 0.70, 0.71, 0.715, 0.716, 0.99]
    assert len(run(study_of(), values, [Plateau(0.005, window=3)]).trials) == len(values)
    study = run(study_of(noise=0.02), values, [NoiseFloor(1.0, window=3)])
    assert len(study.trials) == 6
    d = details(study)
    assert study.user_attrs[STOP_REASON_KEY] == "noise_floor"
    assert d["gain"] == pytest.approx(0.016) and d["threshold"] == 0.02 and d["noise_floor"] == 0.02


def test_noise_floor_multiple_scales_the_threshold():
    values = [0.50, 0.60, 0.70, 0.73, 0.74, 0.75, 0.99]  # trial 5 gains 0.05 on trial 2
    assert len(run(study_of(noise=0.02), values, [NoiseFloor(2.0, window=3)]).trials) == len(values)
    study = run(study_of(noise=0.02), values, [NoiseFloor(3.0, window=3)])
    assert len(study.trials) == 6 and details(study)["threshold"] == pytest.approx(0.06)


# --- target -------------------------------------------------------------------------------


@pytest.mark.parametrize(("direction", "values", "target"), [
    ("maximize", [0.90, 0.95, 0.959, 0.96, 0.99], 0.96),
    ("minimize", [0.50, 0.20, 0.1001, 0.10, 0.01], 0.10),
])
def test_target_fires_when_the_best_reaches_it(direction, values, target):
    study = run(study_of(direction), values, [Target(target)])
    assert len(study.trials) == 4  # reaching the target exactly counts
    d = details(study)
    assert study.user_attrs[STOP_REASON_KEY] == "target"
    assert d["best"] == target and d["best_trial"] == 3 and d["target"] == target


# --- budget -------------------------------------------------------------------------------


def test_budget_counts_complete_and_pruned_not_failed_across_resumes():
    study = run(study_of(), [0.5, PRUNE, Boom("x"), 0.6, 0.7, 0.8], [Budget(max_trials=4)])
    assert len(study.trials) == 5  # trials 0, 1, 3, 4 finished; the failure does not count
    assert details(study)["limit"] == "max_trials" and details(study)["finished_trials"] == 4
    run(study, [0.5] * 20, [Budget(max_trials=6)])  # a resumed run: the cap is for the study
    assert len(study.trials) == 7


def test_budget_time_cap_uses_the_runners_clock():
    clock = [100.0]  # e.g. time spent in earlier runs

    def objective(trial):
        clock[0] += 10
        return 0.5

    study = study_of()
    study.optimize(objective, n_trials=20, callbacks=[Budget(max_seconds=135, elapsed_s=lambda: clock[0])])
    assert len(study.trials) == 4  # 110, 120, 130, 140 >= 135
    d = details(study)
    assert d["limit"] == "max_seconds" and d["elapsed_s"] == 140 and d["max_seconds"] == 135


def test_budget_default_clock_is_wall_time_since_creation():
    rule = Budget(max_seconds=3600)
    study = run(study_of(), [0.5, 0.5], [rule])
    assert len(study.trials) == 2
    assert 0 <= rule._elapsed_s() < 60


# --- ROI ----------------------------------------------------------------------------------


def timed_study(values: list[float], minutes: float = 6.0) -> optuna.Study:
    study = study_of()
    for i, v in enumerate(values):
        start = T0 + dt.timedelta(minutes=minutes * i)
        trial = optuna.trial.create_trial(value=v)
        # create_trial stamps "now"; the rules read these fields, so set them explicitly.
        trial.datetime_start, trial.datetime_complete = start, start + dt.timedelta(minutes=minutes)
        study.add_trial(trial)
    return study


def first_firing(rule, values: list[float]) -> tuple[int | None, dict | None]:
    """Replay values trial by trial (as the callback sees them); the first trial that fires."""
    for n in range(1, len(values) + 1):
        study = timed_study(values[:n])
        figures = rule.check(study, study.trials[-1])
        if figures is not None:
            return n - 1, figures
    return None, None


def test_roi_fires_when_gain_per_hour_drops_below_the_threshold():
    values = [0.50, 0.60, 0.70, 0.75, 0.76, 0.765, 0.766, 0.767, 0.9]
    trial, f = first_firing(ROI(0.05, window=3, warmup_trials=2), values)
    # trial 6 still makes 0.016 in 0.3 h (0.053/h); trial 7 only 0.007 in 0.3 h.
    assert trial == 7
    assert f["gain"] == pytest.approx(0.007)
    assert f["hours"] == pytest.approx(0.3)
    assert f["gain_per_hour"] == pytest.approx(0.007 / 0.3)


def test_roi_waits_for_the_warm_up():
    trial, _ = first_firing(ROI(0.05, window=3, warmup_trials=2), [0.5] * 8)
    assert trial == 4  # 5 = warmup + window completed trials


def test_roi_relative_to_a_baseline():
    values = [0.50, 0.60, 0.70, 0.75, 0.76, 0.765, 0.766, 0.767, 0.9]
    # Relative gain doubles with baseline 0.5, so trial 7's 0.007 -> 0.014 in 0.3 h = 0.047/h.
    trial, f = first_firing(ROI(0.05, window=3, warmup_trials=2, baseline=0.5), values)
    assert trial == 7 and f["gain"] == pytest.approx(0.014) and f["baseline"] == 0.5
    trial, _ = first_firing(ROI(0.04, window=3, warmup_trials=2, baseline=0.5), values)
    assert trial is None


def test_roi_does_not_judge_windows_without_time():
    study = study_of()
    for v in [0.5] * 6:
        trial = optuna.trial.create_trial(value=v)
        trial.datetime_start = trial.datetime_complete = T0
        study.add_trial(trial)
    assert ROI(0.05, window=3, warmup_trials=0).check(study, study.trials[-1]) is None


# --- failure guard ------------------------------------------------------------------------


def test_failure_guard_stops_a_broken_setup_and_summarizes_errors():
    oom = (Boom("oom"), "out of memory")
    outcomes = [0.5, 0.6, oom, oom, Boom("no reason"), 0.7, 0.7]
    study = run(study_of(), outcomes, [FailureGuard(0.5, window=4)])
    # trial 3: 2 of 4 failed (not more than half); trial 4: 3 of the last 4.
    assert len(study.trials) == 5
    assert study.trials[4].state == TrialState.FAIL
    d = details(study)
    assert study.user_attrs[STOP_REASON_KEY] == "failure_guard"
    assert d["failed"] == 3 and d["trials"] == 4 and d["fail_share"] == 0.75
    assert d["errors"] == {"out of memory": 2, "unknown": 1}
    assert "'out of memory' (2x)" in d["message"]


def test_failure_guard_waits_for_min_trials():
    study = run(study_of(), [Boom("x")] * 8, [FailureGuard(0.5, window=10, min_trials=4)])
    assert len(study.trials) == 4


def test_failure_guard_reads_optunas_system_attr():
    study = study_of()
    for _ in range(4):
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, system_attrs={"fail_reason": "nan"}))
    assert FailureGuard().check(study, study.trials[-1])["errors"] == {"nan": 4}


def test_failure_guard_ignores_failures_of_earlier_runs():
    study = run(study_of(), [Boom("x")] * 4, [])
    run(study, [Boom("x")] * 4 + [0.5, 0.5, 0.5, 0.5], [FailureGuard(0.5, window=10, min_trials=2)])
    assert len(study.trials) == 8  # the new run never failed


# --- recording ----------------------------------------------------------------------------


def test_first_rule_in_the_list_keeps_its_reason_and_summary_reads_it():
    study = run(study_of(), [0.97, 0.97, 0.97], [Target(0.96), Budget(max_trials=1)])
    assert len(study.trials) == 1
    summary = stop_summary(study)
    assert summary["reason"] == "target"
    assert summary["details"]["trial"] == 0 and "message" in summary["details"]


def test_no_summary_when_nothing_stopped():
    assert stop_summary(run(study_of(), [0.5, 0.6], [Target(0.96)])) is None


# --- build_stop_rules ---------------------------------------------------------------------


def test_defaults_are_the_seeds_rules():
    rules = build_stop_rules(None)
    assert [r.name for r in rules] == ["failure_guard", "plateau"]
    assert (rules[1].min_delta, rules[1].window) == (0.01, 10)
    assert DEFAULT_STOP_RULES["target"] is None


def test_full_config_builds_every_rule():
    clock = lambda: 12.0  # noqa: E731
    rules = build_stop_rules({
        "plateau": {"min_delta": 0.01, "window": 10},
        "target": {"value": 0.96},
        "budget": {"max_trials": 100, "max_seconds": 2400},
        "roi": {"min_gain_per_hour": 0.01, "window": 10, "warmup_trials": 10},
        "noise_floor": {"multiple": 1.0},
        "failure_guard": {"max_fail_share": 0.5, "window": 10},
    }, elapsed_s=clock)
    by_name = {r.name: r for r in rules}
    assert list(by_name) == ["failure_guard", "target", "budget", "plateau", "noise_floor", "roi"]
    assert by_name["target"].value == 0.96
    assert by_name["budget"].max_trials == 100 and by_name["budget"]._elapsed_s is clock
    assert by_name["roi"].min_gain_per_hour == 0.01


def test_false_and_null_disable_true_takes_defaults():
    rules = build_stop_rules({"plateau": False, "failure_guard": None, "target": True})
    assert [(r.name, r.value) for r in rules] == [("target", 0.96)]


@pytest.mark.parametrize(("config", "expected"), [
    ({"platau": {}}, "stop_rules.platau is not a stop rule (did you mean 'plateau'?)"),
    ({"plateau": {"windw": 5}}, "stop_rules.plateau.windw is not an argument of plateau (did you mean 'window'?)"),
    ({"budget": {"elapsed_s": 3}}, "stop_rules.budget.elapsed_s is not an argument"),
    ({"plateau": {"window": -1}}, "stop_rules.plateau.window must be a positive integer, got -1"),
    ({"plateau": {"window": 2.5}}, "stop_rules.plateau.window must be a positive integer"),
    ({"plateau": {"min_delta": 0}}, "stop_rules.plateau.min_delta must be a positive number"),
    ({"failure_guard": {"max_fail_share": 1.5}}, "stop_rules.failure_guard.max_fail_share must be a share in (0, 1]"),
    ({"target": {"value": "high"}}, "stop_rules.target.value must be a finite number"),
    ({"budget": {}}, "stop_rules.budget needs max_trials or max_seconds"),
    ({"budget": {"max_trials": 0}}, "stop_rules.budget.max_trials must be a positive integer or null"),
    ({"roi": {"window": 5}}, "stop_rules.roi needs min_gain_per_hour"),
    ({"roi": {"min_gain_per_hour": 0.01, "warmup_trials": -1}}, "stop_rules.roi.warmup_trials must be a non-negative"),
    ({"noise_floor": 1.0}, "stop_rules.noise_floor must be a mapping of arguments, true, or false/null"),
    (["plateau"], "stop_rules must be a mapping"),
])
def test_config_errors_name_the_field(config, expected):
    with pytest.raises(ConfigError) as err:
        build_stop_rules(config)
    assert expected in str(err.value)


def test_a_bad_noise_floor_attr_is_reported():
    study = run(study_of(), [0.5] * 4, [])
    study.set_user_attr(NOISE_FLOOR_KEY, "big")
    with pytest.raises(ConfigError, match="tunewise.noise_floor"):
        Plateau(window=3).check(study, study.trials[-1])


# --- should_continue_optimization ---------------------------------------------------------


def test_continue_no_completed_trials():
    v = should_continue_optimization(run(study_of(), [Boom("x"), PRUNE], []))
    assert not v.go and "No trial completed" in v.reason and v.figures["n_complete"] == 0


def test_continue_not_after_reaching_the_target():
    study = run(study_of(), [0.80, 0.97, 0.5], [Target(0.96)])
    v = should_continue_optimization(study)
    assert not v.go and "target" in v.reason and v.figures["stop_reason"] == "target"


def test_continue_not_when_the_gain_is_within_noise():
    # +4.9 % would be close to the bar anyway, but here it is also inside the noise.
    v = should_continue_optimization(run(study_of(noise=0.05), [0.80, 0.84], []), min_relative_gain=0.01)
    assert not v.go and "noise" in v.reason and v.figures["gain"] == pytest.approx(0.04)


def test_continue_not_when_the_gain_is_below_the_threshold():
    # The seed's already-tuned model: 0.9234 -> 0.9241 is not worth a second phase.
    v = should_continue_optimization(run(study_of(), [0.9234, 0.9200, 0.9241], []))
    assert not v.go and "below 5%" in v.reason
    assert v.figures["relative_gain"] == pytest.approx(0.0007 / 0.9234)
    assert "0.9234 -> 0.9241" in v.reason


def test_continue_while_still_improving():
    values = [0.80] + [0.80 + 0.01 * i for i in range(1, 13)]  # steady +0.01 per trial
    v = should_continue_optimization(run(study_of(), values, []))
    assert v.go and "still moved" in v.reason and v.figures["window_gain"] == pytest.approx(0.10)


def test_continue_when_the_gain_clears_the_bar_even_after_a_plateau():
    # The seed's new architecture: 0.8234 -> 0.9478, then flat.
    values = [0.8234, 0.9478] + [0.94] * 11
    v = should_continue_optimization(run(study_of(), values, []))
    assert v.go and "focused phase" in v.reason and "window_gain" not in v.figures
    assert v.figures["relative_gain"] == pytest.approx((0.9478 - 0.8234) / 0.8234)


def test_continue_with_an_explicit_baseline_and_minimize():
    study = run(study_of("minimize"), [0.30, 0.29], [])
    v = should_continue_optimization(study, baseline=0.40)
    assert v.go and v.figures["relative_gain"] == pytest.approx(0.11 / 0.40)
    assert not should_continue_optimization(study).go  # vs trial 0: only 3.3 %
