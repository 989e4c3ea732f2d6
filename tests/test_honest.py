"""Honest evaluation (issue 21): the untouched test split, validation on fresh splits, the
corrected resampled t-test. Real training of timm's tiny models on digits, real journal files."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from tunewise import notebook as tw
from tunewise import params as P
from tunewise.data import cache
from tunewise.data.sources import DataSpec
from tunewise.data.splits import MIN_TEST_PER_CLASS, held_out, kfold_splits, train_val_split
from tunewise.errors import ConfigError, DataError
from tunewise.phases import validate as V
from tunewise.phases.tuning import final_test_indices, holdout, prepare
from tunewise.phases.validate import (
    BOUCKAERT_FRANK, NADEAU_BENGIO, REAL_GAIN, WITHIN_NOISE, Validation, compare_paired, fresh_seeds, optimism,
    validate_configs,
)
from tunewise.records import IDENTITY_KEY, TEST_SPLIT_FIELD

FAST = {"model": "test_convnext", "epochs": 1, "batch_size": 64, "hflip": False}
SPACE = {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}


@pytest.fixture(scope="module")
def digits():
    return cache.load_images(DataSpec("digits", img_size=32), use_disk=False)


def small(tmp_path, **extra):
    return P.resolve(overrides={"run_dir": str(tmp_path / "run"), "n_trials": 2, "search_space": SPACE,
                                "pruner": "none", **FAST, **extra})


@pytest.fixture
def spied_runs(monkeypatch):
    """Every validation run's split and training seed, recorded on the way to real training."""
    real = V.train_and_evaluate
    calls = []

    def spy(data, train_idx, val_idx, cfg, **kwargs):
        calls.append({"train": set(np.asarray(train_idx).tolist()), "val": set(np.asarray(val_idx).tolist()),
                      "seed": cfg.seed})
        return real(data, train_idx, val_idx, cfg, **kwargs)

    monkeypatch.setattr("tunewise.phases.validate.train_and_evaluate", spy)
    return calls


# ---- the untouched test split -------------------------------------------------------------

def test_auto_holds_out_a_stratified_tenth_fixed_by_its_own_seed(digits):
    labels = digits.labels.numpy()
    test = held_out(labels, digits.classes, "auto", seed=0)
    assert test.fraction == 0.1 and len(test.indices) == math.ceil(0.1 * len(labels))
    share = np.bincount(labels[test.indices], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(share - 0.1) < 0.02)  # stratified: every class keeps its share
    assert set(test.indices) | set(test.pool) == set(range(len(labels))) and not set(test.indices) & set(test.pool)
    assert np.array_equal(held_out(labels, digits.classes, 0.1, seed=0).indices, test.indices)
    other = held_out(labels, digits.classes, 0.1, seed=1)
    assert not np.array_equal(other.indices, test.indices) and other.fingerprint != test.fingerprint
    assert test.identity() == {"fraction": 0.1, "seed": 0, "n": len(test.indices), "indices_sha256": test.fingerprint}


def test_auto_is_off_with_a_reason_when_classes_are_small():
    labels = np.repeat(np.arange(3), 12)  # 12 per class: 1 test image each at 0.1
    test = held_out(labels, ["cat", "dog", "fox"], "auto")
    assert test.fraction == 0 and len(test.indices) == 0 and len(test.pool) == 36
    assert test.note.startswith("no test split: test_fraction auto holds out 0.1 only when every class keeps at "
                                f"least {MIN_TEST_PER_CLASS} test images, and class cat has 12 images (1 would be test)")
    assert len(held_out(labels, ["cat", "dog", "fox"], 0.25).indices) == 9  # asked for explicitly: held out
    with pytest.raises(DataError, match=r"^test_fraction: 0.01 of 36 images gives 1 test images"):
        held_out(labels, ["cat", "dog", "fox"], 0.01)
    with pytest.raises(ConfigError, match=r"^test_fraction: 1.5 is not allowed; allowed: \"auto\""):
        P.resolve(overrides={"test_fraction": 1.5})


def test_splits_drawn_from_the_pool_never_reach_the_test_split(digits):
    labels = digits.labels.numpy()
    test = set(held_out(labels, digits.classes, 0.1, seed=0).indices.tolist())
    pool = held_out(labels, digits.classes, 0.1, seed=0).pool
    for seed in (0, 42, 777):
        train, val = train_val_split(labels, digits.classes, 0.2, seed, pool=pool)
        assert not (set(train) | set(val)) & test and len(train) + len(val) == len(pool)
    folds = kfold_splits(labels, digits.classes, 3, seed=1, pool=pool)
    assert set().union(*(set(v.tolist()) for _, v in folds)) == set(pool.tolist())


def test_the_test_split_never_reaches_a_trial_and_is_recorded(tmp_path):
    p = small(tmp_path)
    prep = prepare(p)
    test = set(final_test_indices(p, prep.data).tolist())
    assert len(test) == 180  # auto on digits: every class has 17+ test images
    assert not test & set(prep.objective.train_idx.tolist()) and not test & set(prep.objective.val_idx.tolist())
    recorded = prep.study.user_attrs[IDENTITY_KEY][TEST_SPLIT_FIELD]
    assert recorded == holdout(p, prep.data).identity() and recorded["n"] == 180


def test_a_resume_with_another_test_split_is_refused(tmp_path):
    prepare(small(tmp_path))
    for change in ({"test_fraction": 0.2}, {"test_seed": 1}, {"test_fraction": 0}):
        with pytest.raises(ConfigError, match=r"was made for a different setup(.|\n)*  test_split: "):
            prepare(small(tmp_path, **change))
    assert prepare(small(tmp_path)).study.user_attrs[IDENTITY_KEY][TEST_SPLIT_FIELD]["fraction"] == 0.1
    forced = prepare(small(tmp_path, test_fraction=0.2, force=True)).study
    assert forced.user_attrs[IDENTITY_KEY][TEST_SPLIT_FIELD]["fraction"] == 0.2


def test_validation_with_another_test_split_than_its_study_is_refused(tmp_path, monkeypatch):
    source = prepare(small(tmp_path)).study
    monkeypatch.setattr("tunewise.phases.validate.train_and_evaluate", pytest.fail)
    with pytest.raises(ConfigError, match=r"^test_fraction/test_seed: study tunewise held out the test split"):
        tw.run_validation(small(tmp_path, test_seed=3), {"baseline": {}}, source)


# ---- validation on fresh splits -----------------------------------------------------------

def test_fresh_seeds_replace_only_the_tuning_seed():
    assert fresh_seeds([42, 777, 2024], None) == [42, 777, 2024]
    derived = fresh_seeds([42, 777, 2024], 42)
    assert derived[1:] == [777, 2024] and derived[0] not in (42, 777, 2024)
    assert fresh_seeds([42, 777, 2024], 42) == derived  # derived, not random: a rerun repeats it


def test_no_validation_run_replays_the_tuning_split_or_seed_or_sees_the_test_split(tmp_path, spied_runs):
    p = small(tmp_path)  # the defaults: split_seed 42, seed 42, validation seeds 42, 777, 2024
    prep = prepare(p)
    tuning_val = set(prep.objective.val_idx.tolist())
    test = set(final_test_indices(p, prep.data).tolist())
    configs = {"baseline": {}, "best": {"lr": 3e-3}}
    validation = tw.run_validation(p, configs, prep.study)
    assert validation.seeds == [42, 777, 2024] and validation.avoided == {"split_seed": 42, "seed": 42}
    assert 42 not in validation.split_seeds and 42 not in validation.train_seeds
    assert len(spied_runs) == 6
    for run in spied_runs:
        assert run["val"] != tuning_val and run["seed"] != 42
        assert len(run["val"] & tuning_val) < 0.5 * len(tuning_val)  # a fresh draw, not a near copy
        assert not test & run["train"] and not test & run["val"]
    comparison = validation.compare()
    assert comparison.test == NADEAU_BENGIO and comparison.n_runs == 3
    assert comparison.test_train_ratio == pytest.approx(validation.n_val / validation.n_train)
    assert validation.n_train + validation.n_val == len(digits_labels(prep)) - len(test)
    shown = tw.show_validation(validation, comparison, prep.study, configs).data
    assert "no validation run replays them" in shown and "Optimism of the search" in shown


def digits_labels(prep):
    return prep.data.labels.numpy()


def test_optimism_is_the_study_score_minus_the_fresh_mean():
    v = Validation([1, 2], {"baseline": [0.70, 0.72], "best": [0.74, 0.76]})
    gaps = optimism({"baseline": 0.71, "best": 0.80}, v)
    assert gaps["best"] == {"in_study": 0.80, "fresh_mean": pytest.approx(0.75), "gap": pytest.approx(0.05)}
    assert gaps["baseline"]["gap"] == pytest.approx(0.0)
    assert optimism({"best": None}, v)["best"]["gap"] is None


# ---- the corrected resampled t-test ---------------------------------------------------------

def test_corrected_resampled_t_matches_a_hand_computation():
    # Nadeau & Bengio (2003): J = 3 hold-out runs, 20% validation -> n_test/n_train = 0.25.
    # Differences 0.05, 0.04, 0.03: mean 0.04, sample std 0.01.
    # Corrected std error = 0.01 * sqrt(1/3 + 0.25) = 0.0076376; t(0.975, 2 dof) = 4.302653;
    # half width = 4.302653 * 0.0076376 = 0.032862 -> 95% CI (0.007138, 0.072862).
    # (The plain paired t would use 0.01 * sqrt(1/3) = 0.005774: half width 0.024841.)
    # t = 0.04 / 0.0076376 = 5.2372, two-sided p = 2 * (1 - T_2(5.2372)) = 0.034578.
    c = compare_paired([0.80, 0.82, 0.81], [0.85, 0.86, 0.84], a="baseline", b="best", test_train_ratio=0.25)
    assert c.test == NADEAU_BENGIO and c.n_runs == 3
    assert c.std_err == pytest.approx(0.0076376, abs=1e-7)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.007138, 0.072862), abs=1e-6)
    assert c.p_value == pytest.approx(0.034578, abs=1e-6)
    assert c.verdict == REAL_GAIN
    assert "corrected resampled t-test (Nadeau & Bengio 2003) on 3 runs, n_val/n_train 0.25" in c.message
    plain = compare_paired([0.80, 0.82, 0.81], [0.85, 0.86, 0.84])
    assert plain.ci_high - plain.ci_low == pytest.approx(2 * 0.024841, abs=1e-6)  # narrower: over-confident


def test_corrected_repeated_kfold_matches_a_hand_computation():
    # Bouckaert & Frank (2004): r = 2 repetitions of k = 5 folds, n = 10 differences,
    # n_test/n_train = 1/(k-1) = 0.25. Differences 0.01..0.10 (step 0.01): mean 0.055,
    # sample std 0.0302765. Corrected std error = 0.0302765 * sqrt(1/10 + 0.25) = 0.0179118;
    # t(0.975, 9 dof) = 2.262157; half width 0.040519 -> 95% CI (0.014481, 0.095519).
    diffs = [0.01 * i for i in range(1, 11)]
    c = compare_paired([0.5] * 10, [0.5 + d for d in diffs], test_train_ratio=0.25, folds=5)
    assert c.test == BOUCKAERT_FRANK and c.n_runs == 10
    assert c.std_err == pytest.approx(0.0179118, abs=1e-7)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.014481, 0.095519), abs=1e-6)
    assert "over 2 seeds x 5 folds, paired by fold" in c.message


def test_the_verdict_says_when_too_few_runs_were_made():
    # Differences 0.03, 0.01, 0.05: mean 0.03, sample std 0.02, n_test/n_train 0.25. With J runs
    # the corrected half width is t(0.975, J-1) * 0.02 * sqrt(1/J + 0.25):
    #   J = 3: 4.3027 * 0.02 * 0.76376 = 0.0657 > 0.03 -> within noise;
    #   J = 7: 2.4469 * 0.02 * 0.62678 = 0.03067 > 0.03;  J = 8: 2.3646 * 0.02 * 0.61237 = 0.02896 < 0.03.
    # So about 8 runs would call a gain this size at this spread.
    c = compare_paired([0.5, 0.5, 0.5], [0.53, 0.51, 0.55], test_train_ratio=0.25)
    assert c.verdict == WITHIN_NOISE and c.runs_needed == 8
    assert c.message.endswith("within noise, the interval includes 0, so the difference may be seed or split luck; "
                              "too few runs to call it: 3 runs cannot separate a difference this size from the "
                              "spread, about 8 would")
    # Mean 0.01, std 0.0115: even infinitely many runs leave 1.96 * 0.0115 * sqrt(0.25) = 0.0113 > 0.01.
    hopeless = compare_paired([0.5, 0.5, 0.5], [0.51, 0.49, 0.51], test_train_ratio=0.25)
    assert hopeless.runs_needed is None and "no practical number of runs (up to 100)" in hopeless.message


def test_validation_with_folds_uses_the_repeated_kfold_form(digits):
    folds = validate_configs(digits, {"baseline": {}, "best": {"lr": 3e-3}}, FAST, seeds=[1], folds=2)
    c = folds.compare()
    assert c.test == BOUCKAERT_FRANK and c.n_runs == 2 and c.test_train_ratio == pytest.approx(1.0, abs=0.01)


# ---- a fair baseline at any budget ----------------------------------------------------------

def test_the_default_recipe_scales_with_the_budget():
    from tunewise.train.hparams import TrainConfig, crop_setting, warmup_steps

    # warmup: 5% of the run's steps (10 steps an epoch): 3 epochs -> 2 steps, 20 epochs -> 10.
    assert warmup_steps(TrainConfig(epochs=3), 10) == 2 and warmup_steps(TrainConfig(epochs=20), 10) == 10
    assert warmup_steps(TrainConfig(epochs=3, warmup_epochs=1.0), 10) == 10  # an explicit value still wins
    assert warmup_steps(TrainConfig(epochs=1, warmup_epochs=1.0), 10) == 5  # at most half the run
    # crop auto: translate with shifts up to 1/8 of the side from 20 epochs, proportionally less before.
    assert crop_setting(TrainConfig(epochs=20)) == ("translate", 0.125)
    assert crop_setting(TrainConfig(epochs=4)) == ("translate", pytest.approx(0.025))
    assert crop_setting(TrainConfig(epochs=4, crop="none")) == ("none", 0.125)


def test_undertrained_reads_the_last_epochs_fall_against_its_mean_pace():
    from tunewise.train.loop import undertrained

    # 2.30 -> 1.50 -> 1.00: mean fall 0.65 an epoch, the last epoch fell 0.50 (77%): still learning.
    assert undertrained([2.30, 1.50, 1.00]).startswith(
        "the training loss was still falling steeply at the last epoch (1.500 -> 1.000, 77% of its mean fall per "
        "epoch since 2.300)")
    # 2.30 -> 0.40 -> 0.35 -> 0.33: mean fall 0.657, the last epoch 0.02 (3%): flattened out.
    assert undertrained([2.30, 0.40, 0.35, 0.33]) is None
    assert undertrained([2.30, 1.0]) is None  # 2 epochs: the last one is the whole fall, no trend
    assert undertrained([1.0, 1.1, 1.2]) is None  # not falling at all: another problem


@pytest.mark.parametrize("settings, warns", [
    ({"lr": 1e-4, "epochs": 3}, True),  # losses ~0.96, 0.70, 0.61: still falling at half its pace
    ({"lr": 3e-3, "epochs": 6}, False),  # learns the colours in 2 epochs, then flat
])
def test_the_preflight_warns_on_an_undertrained_baseline_only(tmp_path, settings, warns):
    from pngdata import write_png_folder
    from tunewise.phases.tuning import tune

    images = write_png_folder(tmp_path / "images40", n_per_class=40)
    p = P.resolve(overrides={
        "run_dir": str(tmp_path / "run"), "dataset": str(images), "img_size": 32, "n_trials": 1,
        "search_space": {"weight_decay": {"type": "float", "low": 0.0, "high": 0.1}}, "pruner": "none",
        **FAST, "batch_size": 16, **settings})
    before = tw.preflight(p).data
    assert "Its training curve is checked once trial 0" in before and not (tmp_path / "run").exists()
    summary = tune(p)
    after = tw.preflight(p).data
    assert ("Warning: the baseline looks under-trained" in after) is warns, after
    assert (summary["baseline_check"] is not None) is warns
    assert ("a fair baseline" in after) is not warns


# ---- the three estimates in the post-mortem -------------------------------------------------

def test_the_postmortem_puts_study_validation_and_test_side_by_side(tmp_path):
    from optuna.distributions import FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from tunewise.phases.postmortem import estimates
    from tunewise.records import TEST_SCORE_KEY, VALIDATION_KEY

    study = optuna.create_study(study_name="quick", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j"))),
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1e-1)},
                                              value=0.91))
    assert estimates(study) == {"study": "quick", "best in study": 0.91, "validation mean": None, "optimism": None,
                                "validation verdict": None, "test score": None}
    study.set_user_attr(VALIDATION_KEY, {"best_fresh_mean": 0.88, "optimism": 0.03, "verdict": "within noise"})
    study.set_user_attr(TEST_SCORE_KEY, {"value": 0.87})
    row = estimates(study)
    assert (row["best in study"], row["validation mean"], row["optimism"], row["test score"]) == (0.91, 0.88, 0.03, 0.87)
    shown = tw.show_estimates([study]).data
    assert "Three estimates of the winner" in shown and "0.87" in shown


def test_a_searched_warmup_starts_from_the_budget_scaled_default():
    from tunewise.phases.tuning import baseline_params
    from tunewise.search.space import SearchSpace

    space = SearchSpace.from_dict({"warmup_epochs": {"type": "float", "low": 0.0, "high": 2.0}})
    assert baseline_params(space, {"epochs": 20}) == {"warmup_epochs": pytest.approx(1.0)}  # 5% of 20 epochs


def test_a_baseline_outside_the_space_says_what_it_ran_instead(tmp_path, capsys):
    from tunewise import notebook as tw
    from tunewise import params as P
    from tunewise.phases.tuning import baseline_moved, tune
    from tunewise.records import BASELINE_MOVED_KEY, baseline_trial
    from tunewise.search.space import SearchSpace

    space = SearchSpace.from_dict({"lr": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True},
                                   "optimizer": {"type": "categorical", "choices": ["sgd"]}})
    assert baseline_moved(space, {}) == {"lr": [1e-3, 3e-3], "optimizer": ["adamw", None]}
    inside = SearchSpace.from_dict({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    assert baseline_moved(inside, {}) == {}

    p = P.resolve(overrides={"run_dir": str(tmp_path / "run"), "n_trials": 1, "epochs": 1, "batch_size": 64,
                             "pruner": "none", "search_space": {"lr": {"type": "float", "low": 3e-3, "high": 1e-2}}})
    summary = tune(p)
    assert "the baseline trial uses lr 0.001 -> 0.003" in capsys.readouterr().out
    assert summary["baseline_moved"] == {"lr": [0.001, 0.003]}
    study = tw.load_study(p, summary["study_name"])
    assert baseline_trial(study).user_attrs[BASELINE_MOVED_KEY] == {"lr": [0.001, 0.003]}
    assert "the defaults moved into the space: lr 0.001 -&gt; 0.003" in tw.show_result(summary).data
