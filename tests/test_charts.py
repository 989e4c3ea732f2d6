"""Charts on real Optuna studies: normal, tiny and degenerate ones, and the live chart
as a callback of a real `study.optimize` (headless, and in a real kernel)."""

from __future__ import annotations

import math

import nbformat
import optuna
import plotly.graph_objects as go
import pytest
from nbclient import NotebookClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tunewise.report import charts
from tunewise.records import BASELINE_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)

WRAPPERS = [charts.importances, charts.parallel_coordinate, charts.slices, charts.contour_top2,
            charts.intermediate_values, charts.timeline]
FIGURES = [charts.history, *WRAPPERS]
DISTS = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.3),
         "batch_size": CategoricalDistribution([8, 16, 32])}


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.3)
    batch_size = trial.suggest_categorical("batch_size", [8, 16, 32])
    final = 0.95 - 0.02 * (math.log10(lr) + 4) ** 2 - 0.1 * dropout - 0.01 * (batch_size != 16)
    for epoch in range(1, 4):
        trial.report(final - 0.1 / epoch, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return final


def normal_study(n: int = 24) -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="normal",
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4))
    study.set_user_attr("tunewise.identity", {"phase": "quick", "metric": "macro_f1"})
    study.enqueue_trial({"lr": 1e-3, "dropout": 0.0, "batch_size": 32}, user_attrs={BASELINE_KEY: True})
    study.optimize(objective, n_trials=n)
    return study


def study_of(*trials) -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="small")
    study.add_trials(list(trials))
    return study


def complete(value: float, params=None, **kw):
    params = params or {"lr": 1e-3, "dropout": 0.1, "batch_size": 16}
    return create_trial(value=value, params=params, distributions={k: DISTS[k] for k in params},
                        intermediate_values={1: value - 0.1, 2: value}, **kw)


def pruned(last: float):
    return create_trial(state=TrialState.PRUNED, params={"lr": 1e-4, "dropout": 0.2, "batch_size": 8},
                        distributions=DISTS, intermediate_values={1: last})


DEGENERATE = {
    "empty": lambda: study_of(),
    "one complete": lambda: study_of(complete(0.9)),
    "all pruned": lambda: study_of(pruned(0.5), pruned(0.6)),
    "one parameter": lambda: study_of(complete(0.8, {"lr": 1e-3}), complete(0.9, {"lr": 1e-4})),
    "all waiting": lambda: _waiting_study(),
}


def _waiting_study() -> optuna.Study:
    study = optuna.create_study()
    study.enqueue_trial({"x": 1})
    return study


@pytest.fixture(scope="module")
def study():
    return normal_study()


@pytest.mark.parametrize("draw", FIGURES, ids=lambda f: f.__name__)
def test_every_figure_draws_a_normal_study(study, draw):
    fig = draw(study)
    assert isinstance(fig, go.Figure)
    assert fig.data, f"{draw.__name__} drew no trace"
    assert "normal" in fig.layout.title.text


@pytest.mark.parametrize("case", DEGENERATE)
@pytest.mark.parametrize("draw", FIGURES, ids=lambda f: f.__name__)
def test_degenerate_studies_get_a_note_not_an_error(draw, case):
    fig = draw(DEGENERATE[case]())
    assert isinstance(fig, go.Figure)
    if not fig.data:
        assert fig.layout.annotations and fig.layout.annotations[0].text


def test_notes_say_why():
    assert "at least 2 complete trials" in charts.importances(study_of(complete(0.9))).layout.annotations[0].text
    one_param = DEGENERATE["one parameter"]()
    assert "2 searched parameters" in charts.contour_top2(one_param).layout.annotations[0].text
    assert "No trial has finished" in charts.history(study_of()).layout.annotations[0].text
    assert "No complete trial" in charts.slices(DEGENERATE["all pruned"]()).layout.annotations[0].text


def test_history_points_best_line_and_baseline(study):
    fig = charts.history(study)
    by_name = {t.name: t for t in fig.data}
    trials = study.get_trials()
    for state, name in [(TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned")]:
        assert list(by_name[name].x) == [t.number for t in trials if t.state == state]
    best = by_name["best so far"]
    assert list(best.y) == sorted(best.y) and best.y[-1] == study.best_value
    assert [s.y0 for s in fig.layout.shapes] == [trials[0].value]  # the baseline line
    assert fig.layout.yaxis.title.text == "macro-F1"
    # Pruned trials sit at their last reported score.
    first_pruned = next(t for t in trials if t.state == TrialState.PRUNED)
    assert by_name["pruned"].y[0] == first_pruned.intermediate_values[max(first_pruned.intermediate_values)]


def test_history_minimize_and_failed_without_score():
    study = optuna.create_study(direction="minimize")
    study.add_trials([complete(0.5), complete(0.7), complete(0.3),
                      create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "boom"})])
    by_name = {t.name: t for t in charts.history(study).data}
    assert list(by_name["best so far"].y) == [0.5, 0.5, 0.3]
    assert list(by_name["failed"].y) == [0.7]  # the worst score so far, so it shows
    assert "boom" in by_name["failed"].text[0]


def test_contour_bins_a_big_grid_keeping_the_best(monkeypatch):
    monkeypatch.setattr(charts, "CONTOUR_BINS", 10)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: t.suggest_float("a", 0, 1) + math.log10(t.suggest_float("b", 1e-3, 1, log=True)),
                   n_trials=40)
    fig = charts.contour_top2(study)
    contour = next(t for t in fig.data if t.type == "contour")
    assert len(contour.x) == len(contour.y) == 10
    assert max(v for row in contour.z for v in row if v == v) == pytest.approx(study.best_value)
    markers = next(t for t in fig.data if t.type == "scatter" and t.x)
    assert len(markers.x) == 40  # trials stay at their exact positions
    assert fig.layout.yaxis.type == "log" and min(contour.y) > 0


def test_live_chart_follows_a_real_optimize_headless(capsys):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    study.set_user_attr("tunewise.identity", {"metric": "macro_f1"})
    study.enqueue_trial({"lr": 1e-3, "dropout": 0.0, "batch_size": 32}, user_attrs={BASELINE_KEY: True})
    chart = charts.LiveChart(12, title="quick")
    chart.display()  # plain Python: nothing to show, nothing printed
    calls = []

    def failing_sometimes(trial):
        if trial.number == 5:
            raise ValueError("broken trial")
        return objective(trial)

    study.optimize(failing_sometimes, n_trials=12, callbacks=[chart, lambda s, t: calls.append(chart.finished)],
                   catch=(ValueError,))
    trials = study.get_trials()
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert capsys.readouterr().out == ""
    assert chart.progress.value == chart.finished == finished == 11
    assert calls == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11]  # trial 5 failed: not finished
    assert chart.label.value.startswith(f"11 / 12 trials, best {study.best_value:.4f}")
    assert "1 failed" in chart.label.value
    fig = chart.figure()
    assert type(fig) is go.Figure
    drawn = sum(len(t.x) for t in fig.data[:3])
    assert drawn == len(trials)
    assert fig.data[3].y[-1] == study.best_value
    assert fig.layout.yaxis.title.text == "macro-F1"
    assert [s.y0 for s in fig.layout.shapes] == [trials[0].value]


def test_live_chart_picks_up_a_resumed_study():
    study = normal_study(8)
    chart = charts.LiveChart(20)
    study.optimize(objective, n_trials=2, callbacks=[chart])
    assert chart.finished == 10 and chart.progress.max == 20
    assert sorted(x for t in chart.figure().data[:3] for x in t.x) == list(range(10))


def test_live_chart_without_anywidget_updates_a_plain_figure(monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("Please install anywidget to use the FigureWidget class")

    monkeypatch.setattr(charts.go, "FigureWidget", missing)
    chart = charts.LiveChart(3)
    assert type(chart._figure) is go.Figure
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=3, callbacks=[chart])
    assert chart.finished == 3 and sum(len(t.x) for t in chart.figure().data[:3]) == 3


def test_live_chart_uses_a_figure_widget_where_anywidget_is_installed():
    pytest.importorskip("anywidget")
    chart = charts.LiveChart(2)
    assert isinstance(chart._figure, go.FigureWidget)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=2, callbacks=[chart])
    assert len(chart._figure.data[0].x) + len(chart._figure.data[1].x) == 2


NOTEBOOK_CELLS = [
    """import optuna
from tunewise.report import charts
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(direction="maximize", study_name="nb")
widget = charts.LiveChart(4, title="as a widget")
plain = charts.LiveChart(4, title="as an output replaced in place", widget=False)
widget.display()
plain.display()""",
    """study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4, callbacks=[widget, plain])
widget.finished, plain.finished""",
    "widget.figure()",
    "charts.history(study)",
]
PLOTLY = "application/vnd.plotly.v1+json"


def test_in_a_kernel_without_frontend_live_charts_work_and_figures_use_plotly_mime(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not [o for cell in nb.cells for o in cell.outputs if o.output_type == "error"]
    shown = nb.cells[0].outputs
    assert "application/vnd.jupyter.widget-view+json" in shown[0].data
    # The plain chart's output was replaced after every trial, not appended to.
    assert [PLOTLY in o.data for o in shown[1:]] == [False, True]
    assert sum(len(t.get("x", ())) for t in shown[2].data[PLOTLY]["data"][:3]) == 4
    assert [o.output_type for o in nb.cells[1].outputs] == ["execute_result"]
    assert nb.cells[1].outputs[0].data["text/plain"] == "(4, 4)"
    for cell in nb.cells[2:]:
        assert PLOTLY in cell.outputs[0].data


def test_trial_and_epoch_axes_are_whole_numbers_and_log_axes_read_as_powers():
    study = study_of(complete(0.8), complete(0.9), complete(0.85))
    fig = charts.history(study)
    assert (fig.layout.xaxis.dtick, fig.layout.xaxis.tickformat) == (1, "d")  # no trial 0.5
    assert charts.intermediate_values(study).layout.xaxis.dtick == 1  # epochs
    big = charts.history(normal_study(24))
    assert big.layout.xaxis.dtick == 5  # 24 trials: ticks every 5, still whole numbers
    for fig in (charts.slices(normal_study(12)), charts.contour_top2(normal_study(12))):
        logs = [a for a in (*fig.select_xaxes(), *fig.select_yaxes()) if a.type == "log"]
        assert logs and all(a.exponentformat == "e" for a in logs)  # 1e-4, not "100μ"


def test_figures_from_few_trials_say_so_and_low_scores_stay_visible():
    few = normal_study(5)
    for draw in (charts.importances, charts.parallel_coordinate, charts.slices):
        notes = [a.text for a in draw(few).layout.annotations]
        assert any("Drawn from only" in t and "complete trials" in t for t in notes), draw.__name__
    many = normal_study(30)
    assert not any("Drawn from only" in (a.text or "") for a in charts.slices(many).layout.annotations)
    from plotly.colors import unlabel_rgb

    lines = [t.line.color for t in charts.parallel_coordinate(many).data if t.mode == "lines"]
    assert lines and max(sum(unlabel_rgb(c)) for c in lines) < 3 * 235  # no near-white line (Blues' low end)


def test_live_chart_shows_a_finished_study_before_any_new_trial():
    """Re-running the search cell on a finished study: the chart and bar show its trials at once."""
    from tunewise import notebook as tw

    study = normal_study(6)
    live = tw.live_chart({"n_trials": 6, "study_name": study.study_name}, study)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert live.finished == finished and live.progress.value == finished
    assert live.label.value.startswith(f"{finished} / 6 trials, best ")
    assert sum(len(trace.x) for trace in live.figure().data[:3]) == len(study.trials)
