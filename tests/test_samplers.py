"""Samplers and pruners by name: every name builds its class, tunewise defaults, seeds,
argument checks and their messages, and short real studies."""

import optuna
import pytest
import yaml
from optuna import pruners, samplers

from tunewise.errors import ConfigError
from tunewise.search.samplers import (
    PRUNERS,
    SAMPLERS,
    describe_pruner,
    describe_sampler,
    make_pruner,
    make_sampler,
)
from tunewise.search.space import SearchSpace

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


SAMPLER_CASES = {
    "tpe": ("tpe", samplers.TPESampler),
    "random": ("random", samplers.RandomSampler),
    "cmaes": ("cmaes", samplers.CmaEsSampler),
    "gp": ("gp", samplers.GPSampler),
    "qmc": ("qmc", samplers.QMCSampler),
    "nsgaii": ("nsgaii", samplers.NSGAIISampler),
    "grid": ({"name": "grid", "search_space": {"x": [1, 2]}}, samplers.GridSampler),
    "bruteforce": ("bruteforce", samplers.BruteForceSampler),
}
PRUNER_CASES = {
    "none": ("none", pruners.NopPruner),
    "median": ("median", pruners.MedianPruner),
    "percentile": ({"name": "percentile", "percentile": 25.0}, pruners.PercentilePruner),
    "hyperband": ("hyperband", pruners.HyperbandPruner),
    "successivehalving": ("successivehalving", pruners.SuccessiveHalvingPruner),
    "patient": ({"name": "patient", "patience": 2}, pruners.PatientPruner),
    "wilcoxon": ("wilcoxon", pruners.WilcoxonPruner),
    "threshold": ({"name": "threshold", "upper": 1.0}, pruners.ThresholdPruner),
}

CONDITIONAL_SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
    "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
    "epochs": 3,
}


def test_case_tables_cover_every_name():
    assert set(SAMPLER_CASES) == set(SAMPLERS)
    assert set(PRUNER_CASES) == set(PRUNERS)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_name_builds_its_class(name):
    spec, cls = SAMPLER_CASES[name]
    assert type(make_sampler(spec, seed=0)) is cls


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_name_builds_its_class(name):
    spec, cls = PRUNER_CASES[name]
    assert type(make_pruner(spec)) is cls


def test_defaults_and_normalized_names():
    assert type(make_sampler(None)) is samplers.TPESampler
    assert describe_sampler(None) == {"name": "tpe", "multivariate": True}
    assert describe_pruner(None) == {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1}
    assert describe_pruner("Successive_Halving") == {"name": "successivehalving"}
    assert describe_pruner("hyperband") == {
        "name": "hyperband", "min_resource": 1, "reduction_factor": 3
    }
    # Spec values win over tunewise defaults.
    assert describe_sampler({"name": "TPE", "multivariate": False, "n_startup_trials": 5}) == {
        "name": "tpe", "multivariate": False, "n_startup_trials": 5
    }
    median = make_pruner(None)
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 1)


def test_describe_is_idempotent_and_yaml_safe():
    spec = {"name": "patient", "patience": 2, "wrapped": {"name": "median", "n_warmup_steps": 2}}
    desc = describe_pruner(spec)
    assert desc == {
        "name": "patient", "patience": 2,
        "wrapped": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
    }
    assert describe_pruner(desc) == desc
    assert yaml.safe_load(yaml.safe_dump(desc)) == desc


def first_values(sampler, n=3):
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return [t.params["x"] for t in study.trials]


def test_seed_reaches_the_sampler_unless_the_spec_sets_one():
    assert first_values(make_sampler("random", seed=1)) == first_values(
        make_sampler("random", seed=1)
    )
    assert first_values(make_sampler("random", seed=1)) != first_values(
        make_sampler("random", seed=2)
    )
    assert first_values(make_sampler({"name": "random", "seed": 1}, seed=99)) == first_values(
        make_sampler("random", seed=1)
    )


@pytest.mark.parametrize(
    "maker, spec, expected",
    [
        (make_sampler, "tpee",
         "sampler: unknown sampler 'tpee' (did you mean 'tpe'?); allowed: tpe, random, cmaes, "
         "gp, qmc, nsgaii, grid, bruteforce"),
        (make_pruner, "medain", "pruner: unknown pruner 'medain' (did you mean 'median'?)"),
        (make_sampler, {"name": "tpe", "multivarite": True},
         "sampler.multivarite: not an argument of tpe (TPESampler) (did you mean "
         "'multivariate'?); allowed: "),
        (make_pruner, {"name": "median", "n_warmup": 2},
         "pruner.n_warmup: not an argument of median (MedianPruner) (did you mean "
         "'n_warmup_steps'?); allowed: n_startup_trials, n_warmup_steps, interval_steps, "
         "n_min_trials"),
        (make_pruner, {"name": "none", "patience": 2},
         "pruner.patience: not an argument of none (NopPruner); it takes no arguments"),
        (make_sampler, {"name": "tpe", "n_startup_trials": "5"},
         "sampler.n_startup_trials: must be int like the default (10), got '5'"),
        (make_pruner, {"name": "percentile"},
         "pruner.percentile: required by percentile (PercentilePruner)"),
        (make_sampler, {"name": "grid"}, "sampler.search_space: required by grid (GridSampler)"),
        (make_pruner, {"name": "percentile", "percentile": 150.0},
         "pruner: PercentilePruner(percentile=150.0) rejected its arguments: "
         "Percentile must be between 0 and 100"),
        (make_pruner, {"name": "patient", "patience": 2, "wrapped": "medain"},
         "pruner.wrapped: unknown pruner 'medain' (did you mean 'median'?)"),
        (make_sampler, {"multivariate": True}, "sampler: expected a name (tpe, random,"),
        (make_pruner, 3, "pruner: expected a name (none, median,"),
    ],
)
def test_bad_specs_name_the_field_and_what_is_allowed(maker, spec, expected):
    with pytest.raises(ConfigError) as info:
        maker(spec)
    assert expected in str(info.value)


def run_with_pruner(pruner, curves):
    """Minimize; each trial reports its curve epoch by epoch and stops when pruned."""
    study = optuna.create_study(pruner=pruner)

    def objective(trial):
        curve = curves[trial.number]
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    study.optimize(objective, n_trials=len(curves))
    return study.trials


def test_patient_pruner_wraps_median_and_waits_for_its_patience():
    pruner = make_pruner({"name": "patient", "patience": 2, "wrapped": "median"})
    assert type(pruner._wrapped_pruner) is pruners.MedianPruner
    good = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3]
    worsening = [5.0 + 0.1 * epoch for epoch in range(6)]  # worse than the median throughout
    trials = run_with_pruner(pruner, [good] * 5 + [worsening])
    last = trials[-1]
    assert last.state == optuna.trial.TrialState.PRUNED
    # The median alone would prune at epoch 1; patience 2 first needs 2 epochs without
    # improving on the best before them.
    assert max(last.intermediate_values) == 3
    assert max(run_with_pruner(make_pruner("median"), [good] * 5 + [worsening])[-1]
               .intermediate_values) == 1
    unpruned = run_with_pruner(make_pruner("none"), [good] * 5 + [worsening])[-1]
    assert unpruned.state == optuna.trial.TrialState.COMPLETE


def test_tpe_runs_a_conditional_space():
    space = SearchSpace.from_dict(CONDITIONAL_SPACE)
    sampler = make_sampler({"name": "tpe", "n_startup_trials": 3, "group": True}, seed=0)
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        params = space.sample(trial)
        return abs(params["lr"] - 0.01) + (1 - params.get("momentum", 0.9))

    study.optimize(objective, n_trials=10)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 10
    for trial in study.trials:
        assert space.contains({**space.fixed, **trial.params})
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")
