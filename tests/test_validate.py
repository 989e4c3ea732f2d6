"""The validation phase: real training of timm's tiny models on digits over several seeds,
the comparison maths against scipy, the noise floor in a real study and the params file."""

from __future__ import annotations

import itertools
import math

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from scipy import stats

from tunewise.data import cache

from tunewise import params
from tunewise.errors import ConfigError
from tunewise.data.sources import DataSpec
from tunewise.study.stoprules import noise_floor
from tunewise.train.loop import NonFiniteLoss, TrainResult
from tunewise.phases.validate import (
    REAL_GAIN, REAL_LOSS, WITHIN_NOISE, RunDiverged, Validation, compare_paired, compare_unpaired, noise_std,
    save_noise, validate_configs, write_params_file,
)

FAST = {"model": "test_convnext", "epochs": 1, "batch_size": 64, "hflip": False}  # ~0.5 s a run here
MID = {"lr": 1e-3}  # learns digits part way in one epoch: scores move with the seed


@pytest.fixture(scope="module")
def digits():
    return cache.load_images(DataSpec("digits", img_size=32), use_disk=False)


@pytest.fixture(scope="module")
def same_config_twice(digits):
    """One configuration under two names on the seed's three seeds, and the progress calls."""
    calls = []
    validation = validate_configs(digits, {"a": MID, "b": MID}, FAST, on_run=lambda *call: calls.append(call))
    return validation, calls


def test_scores_differ_between_seeds_and_repeat_for_the_same_seed(digits, same_config_twice):
    validation, calls = same_config_twice
    a = validation.scores["a"]
    assert validation.seeds == [42, 777, 2024] and len(set(a)) == 3
    assert validation.scores["b"] == a  # same settings, same seed: the same run
    assert validate_configs(digits, {"a": MID}, FAST, seeds=[777]).scores["a"] == [a[1]]
    assert [(name, seed) for name, seed, _ in calls] == [
        ("a", 42), ("b", 42), ("a", 777), ("b", 777), ("a", 2024), ("b", 2024)]
    assert validation.means["a"] == pytest.approx(np.mean(a))
    assert validation.stds["a"] == pytest.approx(np.std(a, ddof=1))
    assert [r["seed"] for r in validation.runs] == [42, 42, 777, 777, 2024, 2024]


def test_a_config_against_itself_paired_by_seed_is_within_noise(same_config_twice):
    comparison = same_config_twice[0].compare("a", "b")
    assert comparison.mean_diff == 0 and comparison.std_diff == 0
    assert (comparison.ci_low, comparison.ci_high) == (0, 0)
    assert comparison.verdict == WITHIN_NOISE


def test_a_config_against_itself_on_disjoint_seeds_never_overclaims(digits, same_config_twice):
    first = same_config_twice[0].scores["a"]
    other = validate_configs(digits, {"a": MID}, FAST, seeds=[1, 2, 3]).scores["a"]
    comparison = compare_unpaired(first, other, a="seeds 42/777/2024", b="seeds 1/2/3")
    assert comparison.verdict == WITHIN_NOISE, comparison.message
    # Every way of splitting the six runs into three against three, too.
    runs = first + other
    for picked in itertools.combinations(range(6), 3):
        rest = [runs[i] for i in range(6) if i not in picked]
        assert compare_unpaired([runs[i] for i in picked], rest).verdict == WITHIN_NOISE


def test_a_clearly_better_config_is_a_real_gain_over_three_seeds(digits):
    configs = {"baseline": {"lr": 1e-5, "epochs": 1}, "best": {"lr": 3e-3, "epochs": 2}}
    validation = validate_configs(digits, configs, {**FAST, "model": "test_resnet"})
    gain = validation.compare()
    assert gain.verdict == REAL_GAIN and gain.ci_low > 0.5, gain.message
    assert gain.message.startswith("best - baseline: +0.")
    assert "over 3 seeds, paired by seed (95% CI +0." in gain.message
    assert validation.compare("best", "baseline").verdict == REAL_LOSS
    assert 0 < noise_std(validation) < 0.1


def test_paired_interval_matches_a_hand_computation():
    a, b = [0.80, 0.82, 0.81], [0.85, 0.86, 0.84]  # differences 0.05, 0.04, 0.03
    comparison = compare_paired(a, b, a="baseline", b="best")
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # std of the differences is 0.01
    assert comparison.mean_diff == pytest.approx(0.04) and comparison.std_diff == pytest.approx(0.01)
    assert (comparison.ci_low, comparison.ci_high) == pytest.approx((0.04 - half, 0.04 + half))
    assert (comparison.ci_low, comparison.ci_high) == pytest.approx(tuple(stats.ttest_rel(b, a).confidence_interval()))
    assert comparison.verdict == REAL_GAIN
    assert comparison.message == ("best - baseline: +0.0400 on average over 3 seeds, paired by seed (95% CI +0.0152 "
                                  "to +0.0648): a real gain, every value in the interval favours best")
    noisy = compare_paired(a, [0.85, 0.80, 0.81])
    assert noisy.ci_low < 0 < noisy.ci_high and noisy.verdict == WITHIN_NOISE


def test_minimize_turns_a_lower_score_into_the_gain():
    assert compare_paired([0.80, 0.82, 0.81], [0.85, 0.86, 0.84], direction="minimize").verdict == REAL_LOSS
    assert compare_paired([0.85, 0.86, 0.84], [0.80, 0.82, 0.81], direction="minimize").verdict == REAL_GAIN


def test_unpaired_is_welchs_interval():
    a, b = [0.80, 0.83, 0.81, 0.79], [0.86, 0.84, 0.90]
    comparison = compare_unpaired(a, b)
    expected = stats.ttest_ind(b, a, equal_var=False).confidence_interval()
    assert (comparison.ci_low, comparison.ci_high) == pytest.approx(tuple(expected))
    assert comparison.mean_diff == pytest.approx(np.mean(b) - np.mean(a))
    assert comparison.paired is False and (comparison.n_a, comparison.n_b) == (4, 3)


def test_one_seed_cannot_tell():
    comparison = compare_paired([0.5], [0.9], a="baseline", b="best")
    assert comparison.verdict == WITHIN_NOISE and comparison.ci_low is None
    assert comparison.message.startswith("best - baseline: +0.4000 on 1 seed: one seed cannot tell")
    assert compare_unpaired([0.5], [0.9, 0.91]).verdict == WITHIN_NOISE


def test_comparison_errors_name_the_field(same_config_twice):
    with pytest.raises(ConfigError, match=r"^compare: no configuration 'best'; configurations: a, b$"):
        same_config_twice[0].compare("a", "best")
    with pytest.raises(ConfigError, match=r"^compare: a has 2 scores and b has 1"):
        compare_paired([0.1, 0.2], [0.3])
    with pytest.raises(ConfigError, match=r"^direction: "):
        compare_paired([0.1, 0.2], [0.3, 0.4], direction="max")


def test_noise_is_the_pooled_seed_to_seed_std():
    validation = Validation([1, 2, 3], {"x": [1.0, 2.0, 3.0], "y": [2.0, 4.0, 6.0]})
    assert noise_std(validation) == pytest.approx(math.sqrt((2 + 8) / 4))
    # An unstable baseline does not set the noise of the searched settings; alone, it does.
    with_baseline = Validation([1, 2, 3], {"baseline": [0.1, 0.5, 0.9], "x": [1.0, 2.0, 3.0], "y": [2.0, 4.0, 6.0]})
    assert noise_std(with_baseline) == pytest.approx(math.sqrt((2 + 8) / 4))
    assert noise_std(Validation([1, 2], {"baseline": [0.1, 0.3]})) == pytest.approx(math.sqrt(0.02))
    with pytest.raises(ConfigError, match=r"^seeds: measuring the seed-to-seed noise needs at least 2 seeds, got 1"):
        noise_std(Validation([42], {"x": [0.9]}))


def test_saved_noise_is_what_the_stop_rules_read(tmp_path):
    path = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="quick", storage=JournalStorage(JournalFileBackend(path)))
    save_noise(study, 0.0123)
    reopened = optuna.load_study(study_name="quick", storage=JournalStorage(JournalFileBackend(path)))
    assert noise_floor(reopened) == 0.0123
    with pytest.raises(ConfigError, match=r"^noise: "):
        save_noise(study, -0.1)


def test_params_file_round_trips_through_resolve(tmp_path):
    base = params.resolve(None, {"dataset": "digits", "img_size": 32, "study_name": "digits-quick"})
    winner = {"lr": 0.003, "batch_size": 16, "weight_decay": 0.059}
    path = write_params_file(tmp_path / "final.yaml", base, winner, "winner of study digits-quick\nbest, 3 seeds")
    text = path.read_text()
    assert text.startswith("# Final training parameters, written by tunewise's validation phase on ")
    assert "# winner of study digits-quick\n# best, 3 seeds\n" in text
    loaded = params.resolve(path)
    assert loaded == {**base, **winner, "search_space": {}, "phase": "validate"}
    assert [p.name for p in tmp_path.iterdir()] == ["final.yaml"]  # no temp file left behind


def test_a_bad_winner_writes_nothing(tmp_path):
    base = params.resolve()
    with pytest.raises(ConfigError, match=r"^winner\.lr: "):
        write_params_file(tmp_path / "final.yaml", base, {"lr": -1.0}, "")
    with pytest.raises(ConfigError, match=r"^winner: unknown parameter 'learning_rate'"):
        write_params_file(tmp_path / "final.yaml", base, {"learning_rate": 0.1}, "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"configs": {"best": {"lr": -1}}}, r"configs\.best\.lr: "),
    ({"configs": {"best": {"learning_rate": 0.1}}}, r"configs\.best\.learning_rate: unknown training setting"),
    ({"configs": {}}, r"configs: needs at least one configuration"),
    ({"seeds": [42, 42]}, r"seeds: 42 listed more than once"),
    ({"seeds": []}, r"seeds: \[\] is not allowed"),
    ({"folds": 1}, r"folds: 1 is not allowed"),
])
def test_bad_input_fails_before_any_training(digits, monkeypatch, kwargs, message):
    monkeypatch.setattr("tunewise.phases.validate.train_and_evaluate", pytest.fail)
    with pytest.raises(ConfigError, match=rf"^{message}"):
        validate_configs(digits, **{"configs": {"best": MID}, "fixed": FAST, **kwargs})


@pytest.fixture
def recorded_runs(monkeypatch):
    """Training replaced by a recorder: each run scores its own 1-based call number."""
    calls = []

    def record(data, train_idx, val_idx, cfg, *, device):
        calls.append({"train": set(train_idx.tolist()), "val": set(val_idx.tolist()), "seed": cfg.seed, "lr": cfg.lr})
        return TrainResult(f1=float(len(calls)), accuracy=0.0)

    monkeypatch.setattr("tunewise.phases.validate.train_and_evaluate", record)
    return calls


def test_each_seed_changes_the_split_and_the_training_seed(digits, recorded_runs):
    validate_configs(digits, {"best": {**MID, "seed": 5}}, FAST, seeds=[42, 777])
    first, second = recorded_runs
    assert (first["seed"], second["seed"]) == (42, 777)  # the config's own seed is overridden
    assert first["val"] != second["val"] and first["lr"] == 1e-3
    assert not first["train"] & first["val"]


def test_folds_average_every_seed_over_stratified_folds(digits, recorded_runs):
    validation = validate_configs(digits, {"best": MID}, FAST, seeds=[42, 777], folds=3)
    assert validation.scores["best"] == [2.0, 5.0]  # mean of runs 1-3, then of runs 4-6
    folds = [run["val"] for run in recorded_runs[:3]]
    assert set().union(*folds) == set(range(len(digits.labels))) and sum(map(len, folds)) == len(digits.labels)
    assert [r["fold"] for r in validation.runs] == [0, 1, 2, 0, 1, 2] and validation.folds == 3


def test_a_diverging_run_names_the_config_and_seed(digits, monkeypatch):
    def diverge(*args, **kwargs):
        raise NonFiniteLoss(1, 3, math.nan)

    monkeypatch.setattr("tunewise.phases.validate.train_and_evaluate", diverge)
    with pytest.raises(RunDiverged, match=r"^configs\.best: diverged on seed 42 \(non-finite loss"):
        validate_configs(digits, {"best": MID}, FAST)
