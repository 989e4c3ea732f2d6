"""The advisor: every branch of the seed's decision tree, stage table and checklist."""

from __future__ import annotations

import pytest

from tunewise.phases.advice import Situation, advise, checklist
from tunewise.cli import main
from tunewise import units

BIG = 20_000


@pytest.mark.parametrize("hours, verdict, trials", [(8, "precise", "100+"), (5, "balanced", "50"), (2, "balanced", "50"), (1.5, "quick", "20")])
def test_time_available_picks_the_search(hours, verdict, trials):
    a = advise(Situation(n_images=BIG, baseline=0.85, hours=hours))
    assert (a.verdict, a.n_trials) == (verdict, trials)
    assert f"with {units.hours(hours)} available" in a.reasons[0]  # "1 h 30 min", not "1.5 h"


def test_a_high_baseline_means_do_not_tune():
    a = advise(Situation(n_images=BIG, baseline=0.96, hours=10))
    assert a.verdict == "skip" and "above 0.95" in a.reasons[0] and a.n_trials == "0"


@pytest.mark.parametrize("n, gain", [(7_000, "+2.1%"), (3_000, "+0.3%"), (500, "-0.8%")])
def test_small_datasets_fix_the_data_first(n, gain):
    a = advise(Situation(n_images=n, baseline=0.8, hours=10))
    assert a.verdict == "skip" and gain in a.reasons[0] and "improving the data pays more" in a.reasons[0]


@pytest.mark.parametrize("days, verdict", [(0.5, "skip"), (2, "quick"), (10, "balanced"), (25, "precise")])
def test_competition_stage_caps_the_search(days, verdict):
    a = advise(Situation(n_images=BIG, baseline=0.85, hours=12, days_left=days))
    assert a.verdict == verdict
    if days < 1:
        assert "last day" in a.reasons[-1]


def test_an_already_tuned_model_is_not_worth_it():
    a = advise(Situation(n_images=BIG, baseline=0.9234, hours=8, tuned_before=True))
    assert a.verdict == "skip" and "0.9234 -> 0.9241" in a.reasons[-1]


def test_heavy_regularization_takes_one_step_off():
    assert advise(Situation(n_images=BIG, hours=8, heavy_regularization=True)).verdict == "balanced"
    assert advise(Situation(n_images=BIG, hours=1, heavy_regularization=True)).verdict == "skip"


def test_a_gain_below_the_noise_is_not_measurable():
    quiet = advise(Situation(n_images=BIG, baseline=0.9, hours=8, noise=0.01))
    noisy = advise(Situation(n_images=BIG, baseline=0.9, hours=8, noise=0.08))
    assert quiet.verdict == "precise" and noisy.verdict == "balanced"
    assert "below the measured seed-to-seed noise 0.0800" in noisy.reasons[-1]


def test_unknowns_are_assumptions_said_out_loud():
    a = advise(Situation())
    assert a.verdict == "balanced"
    assert a.assumptions == ["dataset size unknown, treated as 10K+", "time available unknown, treated as 2-5 h"]
    assert "Assumed: dataset size unknown" in a.text()


def test_checklist_levels_and_overall_roi():
    high = Situation(n_images=BIG, baseline=0.82, hours=6, tuned_before=False, experienced=False)
    assert set(checklist(high).values()) == {"high"}
    assert advise(high).expected_roi.startswith("high")
    low = Situation(n_images=BIG, baseline=0.94, hours=1.5, tuned_before=False, experienced=True)
    assert checklist(low) == {"model": "high", "baseline": "low", "dataset size": "high", "tuning done so far": "low", "compute time": "low"}
    mid = Situation(n_images=6_000, baseline=0.9, hours=3)
    assert set(checklist(mid).values()) == {"medium"}


def test_expected_gain_follows_the_seed_tables():
    a = advise(Situation(n_images=BIG, baseline=0.85, hours=6))
    assert a.expected_gain == "+5.2% (mean at 10K+ images), +3-4% for 6 h"


def test_cli_advise_reads_the_data(capsys, tmp_path):
    code = main(["advise", "--set", "dataset=digits", "--hours", "8", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("Don't tune.") and "1797 images is under 10K" in out
    assert not (tmp_path / "r").exists()  # advice writes nothing
