"""The expected-gain stop rule on deterministic curves, and the post-mortem's replay of every
rule on a real (tiny) study."""

from __future__ import annotations

import datetime as dt

import numpy as np
import optuna
import pytest

from tunewise import params as P
from tunewise.errors import ConfigError
from tunewise.notebook import forecast_text, show_rule_replay
from tunewise.phases import postmortem
from tunewise.phases.tuning import prepare, tune
from tunewise.records import NOISE_FLOOR_KEY, PARAMS_KEY, STOP_DETAILS_KEY, STOP_REASON_KEY
from tunewise.study.forecast import forecast_gain
from tunewise.study.stoprules import ExpectedGain, Plateau, build_stop_rules

T0 = dt.datetime(2026, 1, 1)


def study_with(values, noise=None, n_trials=100, direction="maximize", seconds=30.0) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    study.set_user_attr(PARAMS_KEY, {"n_trials": n_trials})
    if noise is not None:
        study.set_user_attr(NOISE_FLOOR_KEY, noise)
    for i, v in enumerate(values):
        t = optuna.trial.create_trial(value=float(v))
        t.datetime_start = T0 + dt.timedelta(seconds=i * seconds)
        t.datetime_complete = t.datetime_start + dt.timedelta(seconds=seconds)
        study.add_trial(t)
    return study


def first_stop(values, rule: ExpectedGain, **study_args) -> int | None:
    """The number of trials after which the rule first fires (None: never)."""
    for n in range(1, len(values) + 1):
        study = study_with(values[:n], **study_args)
        if rule.check(study, study.trials[-1]) is not None:
            return n
    return None


def rising(n, slope, noise, seed=0, start=0.5):
    rng = np.random.default_rng(seed)
    return start + slope * np.arange(n) + rng.normal(0, noise, n)


def test_never_fires_inside_its_warmup_and_fires_on_a_flat_curve_right_after():
    flat = [0.9] * 60
    assert first_stop(flat, ExpectedGain(warmup_trials=20)) == 20
    assert first_stop(flat, ExpectedGain(warmup_trials=30)) == 30
    # A flat curve with evaluation noise well under the threshold: still stops soon after.
    noisy_flat = 0.9 + np.random.default_rng(1).normal(0, 0.001, 60)
    stop = first_stop(noisy_flat, ExpectedGain(), noise=0.001)
    assert stop is not None and 15 <= stop <= 25


def test_does_not_fire_on_a_curve_rising_faster_than_the_noise():
    values = rising(80, slope=0.004, noise=0.002)  # +0.004 a trial, noise 0.002
    assert first_stop(values, ExpectedGain(), noise=0.002) is None


def test_a_gain_smaller_than_the_noise_is_not_progress():
    # The same slow rise (+0.0003 a trial): worth going on when the scores are exact to
    # 0.001, not when a retrain moves them by 0.05.
    values = rising(60, slope=0.0003, noise=0.001, seed=2, start=0.85)
    rule = ExpectedGain(min_gain=0.002, noise_multiple=0.5)
    assert first_stop(values, rule, noise=0.001) is None
    assert first_stop(values, rule, noise=0.05) == 15


def test_minimizing_gains_are_improvements_too():
    falling = 1.0 - rising(60, slope=0.004, noise=0.002)
    assert first_stop(falling, ExpectedGain(), direction="minimize", noise=0.002) is None
    assert first_stop([0.1] * 30, ExpectedGain(), direction="minimize") == 15


def test_the_forecast_shrinks_as_the_budget_runs_out():
    values = rising(40, slope=0.001, noise=0.01, seed=3)
    many, few = forecast_gain(values, 60, 0.005), forecast_gain(values, 5, 0.005)
    assert many.expected_gain > few.expected_gain > 0
    assert many.low <= many.expected_gain <= many.high and many.chance > few.chance
    assert forecast_gain(values, 0, 0.005).chance == 0
    assert forecast_gain(values[:4], 60, 0.005) is None  # too few values for a tail
    assert forecast_gain(values, 60, 0.005) == many  # deterministic: a replay stops where the run did


def test_the_remaining_budget_comes_from_the_record_or_the_timeout():
    values = rising(30, slope=0.001, noise=0.01)
    rule = ExpectedGain()
    study = study_with(values, n_trials=100)
    assert rule.forecast(study)[1]["trials"] == 70
    study.set_user_attr(PARAMS_KEY, {"n_trials": 100, "timeout": 30 * 30 + 300})  # 5 min left, 30 s a trial
    study.set_user_attr("tunewise.elapsed_s", 30 * 30)
    left = rule.forecast(study)[1]
    assert left == {"trials": 10, "finished": 30, "seconds_per_trial": 30.0, "source": "timeout"}
    assert ExpectedGain(max_trials=40).forecast(study_with(values))[1]["trials"] == 10


def test_it_records_its_reason_and_figures_and_stops_the_study():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(PARAMS_KEY, {"n_trials": 100})
    study.set_user_attr(NOISE_FLOOR_KEY, 0.04)
    study.optimize(lambda t: 0.9 + 0.0001 * t.suggest_float("x", 0, 1), n_trials=100,
                   callbacks=build_stop_rules({"plateau": False, "expected_gain": True}))
    assert len(study.trials) == 15  # the default warm-up
    assert study.user_attrs[STOP_REASON_KEY] == "expected_gain"
    details = study.user_attrs[STOP_DETAILS_KEY]
    assert details["trial"] == 14 and details["remaining_trials"] == 85
    assert details["threshold"] == pytest.approx(0.01) and details["threshold_source"] == "noise_floor"
    assert details["chance"] < 0.5 and details["expected_gain"] < 0.01
    assert "The 85 trials left in the budget" in details["message"] and "0.25 x the noise floor 0.01" in details["message"]


@pytest.mark.parametrize("args, field", [
    ({"max_chance": 1.5}, "expected_gain.max_chance"),
    ({"warmup_trials": 2}, "expected_gain.warmup_trials"),
    ({"min_gain": 0}, "expected_gain.min_gain"),
    ({"min_gian": 0.01}, "did you mean 'min_gain'"),
])
def test_bad_arguments_are_named(args, field):
    with pytest.raises(ConfigError, match=field):
        build_stop_rules({"expected_gain": args})


def test_the_readout_says_what_the_budget_is_expected_to_buy():
    rule = ExpectedGain()
    study = study_with([0.9] * 3)
    assert "from 5 completed trials (3 so far)" in forecast_text(study, rule, True)
    warming = forecast_text(study_with(rising(10, 0.004, 0.002)), rule, True)
    assert "The 90 trials left (~45 min)" in warming and "judges from 15 completed trials (10 so far)" in warming
    flat = forecast_text(study_with([0.9] * 25), rule, True)
    assert "expected to gain <b>+0.0000</b>" in flat and "expected_gain stops" in flat
    assert "not a stop rule of this phase" in forecast_text(study_with([0.9] * 25), rule, False)


def test_postmortem_replays_every_rule_on_a_real_study(tmp_path):
    p = P.resolve(overrides={
        "run_dir": str(tmp_path / "run"), "n_trials": 8, "epochs": 1, "batch_size": 64, "hflip": False,
        "pruner": "none", "stop_rules": {"plateau": False}, "img_size": 16, "model": "test_resnet",
        "search_space": {"lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True}},
        "sampler": {"name": "tpe", "seed": 0},
    })
    prep = prepare(p)
    tune(p, prep=prep)
    study = prep.study
    values = [t.value for t in study.trials]
    rules = {"plateau 0.01 / 3": Plateau(0.01, 3), "plateau 2 / 2": Plateau(2.0, 2),
             "expected_gain, warm-up 5": ExpectedGain(warmup_trials=5, min_gain=1.0)}
    rows = {r["rule"]: r for r in postmortem.rule_replay(study, rules)}
    always = rows["plateau 2 / 2"]  # no macro-F1 gains 2 in 2 trials: it stops at its first chance
    assert always["stopped_at_trial"] == 2 and always["trials_used"] == 3 and always["trials_saved"] == 5
    assert always["best_at_stop"] == max(values[:3]) and always["given_up"] == pytest.approx(max(values) - max(values[:3]))
    assert always["time_saved_s"] == pytest.approx(sum(t.duration.total_seconds() for t in study.trials[3:]))
    eager = rows["expected_gain, warm-up 5"]  # a gain of 1.0 in macro-F1 never comes: stops at its warm-up
    assert eager["stopped_at_trial"] == 4 and eager["trials_saved"] == 3
    for r in rows.values():
        assert r["trials_used"] + r["trials_saved"] == 8 and r["given_up"] >= 0
        if r["stopped_at_trial"] is None:
            assert r["trials_saved"] == 0 and r["given_up"] == 0
    html = show_rule_replay([study]).data
    assert "expected_gain (focused default)" in html and "plateau 0.01 / 10 (seed)" in html
