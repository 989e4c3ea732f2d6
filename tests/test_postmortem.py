"""Post-mortem figures on studies whose answers are known: gains, timings, savings, tables."""

from __future__ import annotations

import datetime as dt
import json

import optuna
import plotly.graph_objects as go
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from tunewise.phases import postmortem
from tunewise.report import charts, tables
from tunewise.records import BASELINE_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)

T0 = dt.datetime(2026, 3, 1, 8, 0, 0)
X = {"x": FloatDistribution(0, 1)}


def trial(value=None, start_h=0.0, end_h=0.5, state=TrialState.COMPLETE, epochs=5, **attrs):
    """A finished trial from start_h to end_h hours after T0, reporting `epochs` scores."""
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     params={"x": 0.5}, distributions=X, user_attrs=attrs,
                     intermediate_values={e: (value or 0.5) - 0.01 * (epochs - e) for e in range(1, epochs + 1)})
    t.datetime_start = T0 + dt.timedelta(hours=start_h)
    t.datetime_complete = T0 + dt.timedelta(hours=end_h)
    return t


def study_of(trials, direction="maximize", name="s", **attrs) -> optuna.Study:
    study = optuna.create_study(direction=direction, study_name=name)
    study.add_trials(trials)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def known_study() -> optuna.Study:
    """Baseline 0.80; best 0.90 after 3 h; 80% of the gain (0.08) at 2 h, 95% at 3 h."""
    return study_of([
        trial(0.80, 0.0, 0.5, **{BASELINE_KEY: True}),
        trial(0.85, 0.5, 1.0),
        trial(0.60, 1.0, 1.5, state=TrialState.PRUNED, epochs=2),
        trial(0.88, 1.5, 2.0),
        trial(0.90, 2.0, 3.0),
        trial(0.89, 3.0, 4.0),
    ])


def test_roi_curve_on_a_known_study():
    curve = postmortem.roi_curve(known_study())
    assert curve["trial"] == [0, 1, 3, 4, 5]
    assert curve["hours"] == [0.5, 1.0, 2.0, 3.0, 4.0]
    assert curve["best"] == [0.80, 0.85, 0.88, 0.90, 0.90]
    assert curve["gain"] == pytest.approx([0.0, 0.05, 0.08, 0.10, 0.10])
    assert curve["baseline"] == 0.80 and curve["final_gain"] == pytest.approx(0.10)
    assert curve["t80_h"] == 2.0 and curve["t95_h"] == 3.0


def test_roi_baseline_falls_back_to_the_first_complete_trial_and_minimize_gains_are_positive():
    study = study_of([trial(0.5, 0, 1), trial(0.4, 1, 2), trial(0.2, 2, 4)], direction="minimize")
    curve = postmortem.roi_curve(study)
    assert curve["baseline"] == 0.5
    assert curve["gain"] == pytest.approx([0.0, 0.1, 0.3])
    assert curve["t80_h"] == 4.0 and curve["t95_h"] == 4.0


def test_roi_without_gain_or_trials():
    flat = postmortem.roi_curve(study_of([trial(0.9, 0, 1), trial(0.8, 1, 2)]))
    assert flat["final_gain"] == 0 and flat["t80_h"] is None and flat["t95_h"] is None
    empty = postmortem.roi_curve(study_of([]))
    assert empty["hours"] == [] and empty["baseline"] is None and empty["t80_h"] is None


def test_roi_figure_marks_80_and_95_percent():
    fig = charts.roi_figure(known_study())
    assert isinstance(fig, go.Figure) and fig.data
    assert [s.x0 for s in fig.layout.shapes if s.x0 is not None and s.type == "line" and s.x0 == s.x1] == [2.0, 3.0]
    assert any("80% of the gain" in a.text for a in fig.layout.annotations)
    empty = charts.roi_figure(study_of([trial(state=TrialState.PRUNED, epochs=1)]))
    assert not empty.data and "No complete trial" in empty.layout.annotations[0].text


def test_pruning_savings_on_known_trials():
    study = study_of([
        trial(0.8, 0.0, 0.5, epochs=5),  # 1800 s for 5 epochs
        trial(0.7, 0.5, 0.75, epochs=5),  # 900 s for 5 epochs -> 2700 s / 10 epochs = 270 s per epoch
        trial(state=TrialState.PRUNED, start_h=1, end_h=1.1, epochs=2),  # saves 3
        trial(state=TrialState.PRUNED, start_h=1, end_h=1.1, epochs=4, epochs_run=1),  # attr wins: saves 4
        trial(state=TrialState.FAIL, start_h=2, end_h=2.1, epochs=1),  # failed: not pruning's saving
    ])
    s = postmortem.pruning_savings(study)
    assert s["n_pruned"] == 2 and s["full_epochs"] == 5 and s["epochs_saved"] == 7
    assert s["epochs_run"] == 13 and s["seconds_per_epoch"] == 270
    assert s["time_saved_s"] == 7 * 270
    assert s["text"] == ("Pruning stopped 2 trials early and saved 7 epochs (35% of what running them "
                         "all to 5 epochs would take), about 32 min.")


def test_pruning_savings_without_pruned_or_complete_trials():
    assert postmortem.pruning_savings(study_of([trial(0.9)]))["text"] == "No trial was pruned."
    only_pruned = postmortem.pruning_savings(study_of([trial(state=TrialState.PRUNED, epochs=2)]))
    assert only_pruned["epochs_saved"] is None and "no complete trial" in only_pruned["text"]


def test_stop_reasons():
    stopped = study_of([], **{"tunewise.stop_reason": "plateau",
                              "tunewise.stop_details": {"message": "Best moved 0.002 in 10 trials.", "window": 10}})
    assert postmortem.stop_reasons(stopped) == {
        "reason": "plateau", "message": "Best moved 0.002 in 10 trials.", "details": {"window": 10}}
    assert postmortem.stop_reasons(study_of([]))["message"] == "Ran to its budget."
    cleared = study_of([], **{"tunewise.stop_reason": None, "tunewise.stop_details": None})
    assert postmortem.stop_reasons(cleared)["reason"] == "budget"


def test_phase_table_on_two_studies_and_its_html(tmp_path):
    quick = study_of([trial(0.8234, 0, 0.5, **{BASELINE_KEY: True}), trial(0.9478, 0.5, 1.0),
                      trial(state=TrialState.PRUNED, start_h=1, end_h=1.2, epochs=1)],
                     name="quick", **{"tunewise.identity": {"phase": "quick"}, "tunewise.elapsed_s": 7200})
    # The second study lives in a journal file, as tunewise writes them; time from timestamps.
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    focused = optuna.create_study(study_name="focused <b>", storage=storage, direction="maximize")
    focused.add_trials([trial(0.9478, 0, 1), trial(0.9512, 1, 3)])
    rows = postmortem.phase_table([quick, optuna.load_study(study_name="focused <b>", storage=storage)])
    assert rows[0] == {"study": "quick", "phase": "quick", "baseline": 0.8234, "best": 0.9478, "trials": 3,
                       "time_h": 2.0, "gain": pytest.approx(0.1244), "gain_pct": pytest.approx(15.108, abs=1e-3),
                       "roi_per_h": pytest.approx(0.0622)}
    assert rows[1]["phase"] is None and rows[1]["time_h"] == 3.0 and rows[1]["trials"] == 2
    assert rows[1]["gain"] == pytest.approx(0.0034) and rows[1]["roi_per_h"] == pytest.approx(0.0034 / 3)
    html = tables.phase_table_html(rows)
    for text in ("<th>before (baseline)</th>", "<td>0.8234</td>", "<td>0.9478</td>", "<td>+0.1244</td>",
                 "<td>+15.1%</td>", "<td>2 h</td>", "<td>+0.0622</td>", "focused &lt;b&gt;", "<td>–</td>"):
        assert text in html


def test_summarize_study_is_json_friendly():
    study = known_study()
    study.set_user_attr("tunewise.identity", {"phase": "quick"})
    s = postmortem.summarize_study(study)
    json.dumps(s)
    assert s["trials"]["complete"] == 5 and s["trials"]["pruned"] == 1 and s["n_finished"] == 6
    assert (s["best_value"], s["best_trial"], s["best_params"]) == (0.90, 4, {"x": 0.5})
    assert s["baseline_value"] == 0.80 and s["gain"] == pytest.approx(0.10)
    assert s["relative_gain"] == pytest.approx(0.125) and s["time_h"] == 4.0
    assert s["phase"] == "quick" and s["stop"]["reason"] == "budget"
    empty = postmortem.summarize_study(study_of([]))
    assert empty["best_value"] is None and empty["gain"] is None and empty["time_h"] is None
