"""Plotly figures of a study, and the live view a notebook shows while trials run.

- ``LiveChart``: an Optuna callback that draws every finished trial's score (colored by
  state) and the best so far, with a progress bar, updating as trials finish. It shows a
  ``go.FigureWidget`` (plotly needs anywidget for it), or with ``widget=False`` or without
  anywidget one plotly output replaced in place after each trial (for frontends without
  widgets); headless (papermill, plain Python) nothing renders and nothing breaks.
  ``.figure()`` is the same data as a static figure.
- ``history``: the same picture for a finished study, baseline marked.
- Thin wrappers around ``optuna.visualization`` (``importances``, ``parallel_coordinate``,
  ``slices``, ``contour_top2``, ``intermediate_values``, ``timeline``) with the metric's
  name and a title naming the study. On a study with too little to draw (no complete
  trial, one parameter, ...) each returns a ``note`` figure saying why, never raises.

Figures are plain ``go.Figure``: in a kernel plotly's default renderer shows them with
JupyterLab's ``application/vnd.plotly.v1+json`` mime type.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import optuna
import optuna.visualization as ov
import plotly.graph_objects as go
from ipywidgets import HTML, HBox, IntProgress, VBox
from optuna.importance import BaseImportanceEvaluator, get_param_importances
from optuna.trial import FrozenTrial, TrialState

from tunewise.phases.postmortem import ROI_FRACTIONS, mark_key, roi_curve
from tunewise.records import BASELINE_KEY, FAIL_REASON_KEY, PRUNE_REASON_KEY, identity, sign
from tunewise.study.strategy import strategy_of
from tunewise import units


# Marker style per drawn state; the trace order of every history figure is this order,
# then the best-so-far line.
_STYLE = {
    TrialState.COMPLETE: ("complete", "#1f77b4", "circle"),
    TrialState.PRUNED: ("pruned", "#ff7f0e", "circle-open"),
    TrialState.FAIL: ("failed", "#d62728", "x"),
}
_METRIC_LABELS = {"macro_f1": "macro-F1"}
# Optuna's contour grid has one row and column per distinct value: 2,000 trials make a
# 1,243 x 1,243 grid (19 MB of JSON). Beyond this many values an axis is binned.
CONTOUR_BINS = 100
_HOVER_PARAMS = 8
# Fewer complete trials than this: importances, contours and the like are a hint at most.
FEW_TRIALS = 10


def integer_axis(axis, largest: float | None = None) -> None:
    """Ticks on whole numbers only (trials, epochs): no 0.5 trial."""
    step = 1
    if largest is not None and largest > 10:
        step = next(s * 10 ** e for e in range(9) for s in (1, 2, 5) if s * 10 ** e * 10 >= largest)
    axis.update(tickmode="linear", tick0=0, dtick=step, tickformat="d")


def readable_log_axes(fig: go.Figure) -> go.Figure:
    """Log axes labelled 1e-4 style, not plotly's SI "100μ" (learning rates)."""
    fig.for_each_xaxis(lambda a: a.update(exponentformat="e") if a.type == "log" else None)
    fig.for_each_yaxis(lambda a: a.update(exponentformat="e") if a.type == "log" else None)
    return fig


def few_trials_note(fig: go.Figure, study: optuna.Study) -> go.Figure:
    """A line under the title when the figure stands on too few complete trials."""
    n = len(_complete(study))
    if n < FEW_TRIALS:
        fig.add_annotation(text=f"Drawn from only {n} complete trials: a hint, not a finding.",
                           x=0, y=1.02, xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                           showarrow=False, font={"size": 12, "color": "#8c564b"})
    return fig


def metric_label(study: optuna.Study) -> str:
    """The objective's name for axis titles: the study's recorded metric, readable."""
    metric = identity(study).get("metric")
    return _METRIC_LABELS.get(metric, metric or "objective value")


def note(title: str, message: str) -> go.Figure:
    """A figure that says why there is nothing to draw."""
    fig = go.Figure(layout={"title": title, "height": 260, "plot_bgcolor": "white",
                            "xaxis": {"visible": False}, "yaxis": {"visible": False}})
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font={"size": 14})
    return fig


# --- trial history (static and live) ------------------------------------------------------


def score(trial: FrozenTrial) -> float | None:
    """A trial's value, or for a pruned or failed one its last reported value."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


class _Series:
    """Per-state points and the best-so-far line, built one finished trial at a time."""

    def __init__(self, maximize: bool = True) -> None:
        self.maximize = maximize
        self.points = {state: ([], [], []) for state in _STYLE}  # x, y, hover text
        self.best_x: list[int] = []
        self.best_y: list[float] = []
        self.best: float | None = None
        self.baseline: float | None = None
        self.counts: Counter = Counter()
        self._worst: float | None = None
        self._last_number = -1

    def add(self, trial: FrozenTrial) -> None:
        if trial.state not in _STYLE:
            return
        value = score(trial)
        self._last_number = max(self._last_number, trial.number)
        if trial.state == TrialState.COMPLETE:
            if self.best is None or self._better(value, self.best):
                self.best = value
            # The line steps right only, even when workers finish trials out of order.
            self.best_x.append(self._last_number)
            self.best_y.append(self.best)
            if trial.user_attrs.get(BASELINE_KEY):
                self.baseline = value
        # A trial that failed before reporting anything is drawn at the worst score so far,
        # so it is visible without pretending to a score of its own.
        y = value if value is not None else self._worst
        if value is not None and (self._worst is None or self._better(self._worst, value)):
            self._worst = value
        xs, ys, texts = self.points[trial.state]
        xs.append(trial.number)
        ys.append(y)
        texts.append(_hover(trial, value))
        self.counts[trial.state] += 1

    @property
    def finished(self) -> int:
        return self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]

    def columns(self) -> list[tuple[list, list, list | None]]:
        """(x, y, text) for each trace of the history figure, in its trace order."""
        return [*self.points.values(), (self.best_x, self.best_y, None)]

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b


def _hover(trial: FrozenTrial, value: float | None) -> str:
    name = _STYLE[trial.state][0]
    lines = [f"trial {trial.number} ({name})"]
    if value is not None:
        lines.append(f"score {value:.4f}")
    lines += [f"{k} = {_short(v)}" for k, v in list(trial.params.items())[:_HOVER_PARAMS]]
    reason = trial.user_attrs.get(FAIL_REASON_KEY) or trial.user_attrs.get(PRUNE_REASON_KEY)
    if reason:
        lines.append(str(reason)[:120])
    return "<br>".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _history_figure(series: _Series, title: str, metric: str) -> go.Figure:
    fig = go.Figure(layout={"title": title, "xaxis_title": "trial", "yaxis_title": metric,
                            "legend": {"orientation": "h", "y": -0.2}})
    integer_axis(fig.layout.xaxis, max((max(x) for x, _, _ in series.columns() if x), default=None))
    for (x, y, text), (name, color, symbol) in zip(series.columns(), _STYLE.values()):
        fig.add_trace(go.Scatter(x=x, y=y, text=text, mode="markers", name=name,
                                 marker={"color": color, "symbol": symbol, "size": 8},
                                 hovertemplate="%{text}<extra></extra>"))
    x, y, _ = series.columns()[-1]
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name="best so far",
                             line={"color": "#2ca02c", "width": 2}))
    if series.baseline is not None:
        _mark_baseline(fig, series.baseline)
    return fig


def _mark_baseline(fig: go.Figure, value: float) -> None:
    fig.add_hline(y=value, line_dash="dot", line_color="gray",
                  annotation_text=f"baseline {value:.4f}", annotation_position="bottom right")


def history(study: optuna.Study) -> go.Figure:
    """Score per trial by state, the best so far, and the baseline trial's score."""
    title = f"{study.study_name}: {metric_label(study)} per trial"
    series = _Series(_maximize(study))
    for trial in study.get_trials(deepcopy=False):
        series.add(trial)
    if not sum(series.counts.values()):
        return note(title, "No trial has finished yet.")
    return _history_figure(series, title, metric_label(study))


class LiveChart:
    """An Optuna callback drawing trials as they finish; ``display()`` it before the run.

    Every call adds the study's newly finished trials (so a resumed study starts with its
    earlier ones, and trials of other workers show up too) by appending to the traces.
    """

    def __init__(self, n_trials: int, title: str = "Trials so far", widget: bool = True) -> None:
        self.n_trials = n_trials
        self._series = _Series()
        self._seen: set[int] = set()
        self._adopted = False
        self._baseline_drawn = False
        figure = _history_figure(self._series, title, "score")
        self._figure = _widget_or_figure(figure) if widget else figure
        self.progress = IntProgress(value=0, min=0, max=n_trials, description="trials")
        self.label = HTML(self._label())
        self._handle = None  # display handle of the figure when it is not a widget

    def display(self) -> None:
        """Show the progress bar and the chart (a no-op outside IPython)."""
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:
            return  # plain Python would print the figure's repr
        bar = HBox([self.progress, self.label])
        if isinstance(self._figure, go.FigureWidget):
            display(VBox([bar, self._figure]))
        else:
            display(bar)
            self._handle = display(_mimebundle(self._figure), raw=True, display_id=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self._adopted:
            self._adopt(study)
        new = [t for t in study.get_trials(deepcopy=False)
               if t.state in _STYLE and t.number not in self._seen]
        for t in sorted(new, key=lambda t: t.number):
            self._seen.add(t.number)
            self._series.add(t)
        self._redraw()

    def figure(self) -> go.Figure:
        """The chart as it stands, as a static figure (what a headless run draws)."""
        return go.Figure(self._figure)

    @property
    def finished(self) -> int:
        """COMPLETE + PRUNED trials drawn so far (what the study's n_trials budget counts)."""
        return self._series.finished

    def _adopt(self, study: optuna.Study) -> None:
        self._series.maximize = _maximize(study)
        self._figure.layout.yaxis.title.text = metric_label(study)
        self._adopted = True

    def _redraw(self) -> None:
        series = self._series
        with self._figure.batch_update():
            for trace, (x, y, text) in zip(self._figure.data, series.columns()):
                trace.x, trace.y = x, y
                if text is not None:
                    trace.text = text
        if series.baseline is not None and not self._baseline_drawn:
            _mark_baseline(self._figure, series.baseline)
            self._baseline_drawn = True
        integer_axis(self._figure.layout.xaxis, max(self._seen, default=None))
        self.progress.max = max(self.n_trials, series.finished)
        self.progress.value = series.finished
        self.label.value = self._label()
        if self._handle is not None:
            self._handle.update(_mimebundle(self._figure), raw=True)

    def _label(self) -> str:
        series = self._series
        text = f"{series.finished} / {self.n_trials} trials"
        if series.best is not None:
            text += f", best {series.best:.4f}"
        if series.counts[TrialState.FAIL]:
            text += f", {series.counts[TrialState.FAIL]} failed"
        return text


def _mimebundle(fig: go.Figure) -> dict:
    # Raw, because displaying the figure itself goes through plotly's _ipython_display_,
    # which ignores display ids: every update would add an output instead of replacing it.
    return fig._repr_mimebundle_()


def _widget_or_figure(fig: go.Figure) -> go.Figure:
    """A FigureWidget (live updates in JupyterLab) where anywidget is installed, else fig."""
    try:
        return go.FigureWidget(fig)
    except ImportError:
        return fig


# --- what a study achieved -----------------------------------------------------------------


def roi_figure(study: optuna.Study) -> go.Figure:
    """Best so far against hours, baseline and the 80% / 95% marks of the final gain."""
    title = f"{study.study_name}: {metric_label(study)} gained over time"
    curve = roi_curve(study)
    if not curve["hours"]:
        return note(title, "No complete trial yet.")
    # Short studies read better in minutes than in fractions of an hour.
    unit, per_hour = ("min", 60.0) if curve["hours"][-1] < 2 else ("h", 1.0)
    x = [h * per_hour for h in curve["hours"]]
    fig = go.Figure(layout={"title": title, "xaxis_title": f"{unit} since the first trial started",
                            "yaxis_title": f"best {metric_label(study)} so far"})
    fig.add_trace(go.Scatter(
        x=x, y=curve["best"], mode="lines+markers", line_shape="hv", name="best so far",
        marker={"size": 4},
        customdata=list(zip(curve["trial"], curve["gain"])),
        hovertemplate=f"%{{x:.2f}} {unit}, trial %{{customdata[0]}}<br>best %{{y:.4f}}, gain %{{customdata[1]:+.4f}}"
                      "<extra></extra>"))
    fig.add_hline(y=curve["baseline"], line_dash="dot", line_color="gray",
                  annotation_text=f"baseline {curve['baseline']:.4f}", annotation_position="bottom right")
    for fraction in ROI_FRACTIONS:
        hours = curve[mark_key(fraction)]
        if hours is not None:
            # The first mark's label left of its line, the later ones right of theirs: close
            # marks (80% and 95% reached a trial apart) do not print over each other.
            fig.add_vline(x=hours * per_hour, line_dash="dash", line_color="#9467bd",
                          annotation_text=f"{fraction:.0%} of the gain: {units.hours(hours)}",
                          annotation_position="top left" if fraction == ROI_FRACTIONS[0] else "top right")
    return fig


def pareto_figure(study: optuna.Study) -> go.Figure:
    """Optuna's Pareto-front plot (2 or 3 objectives), axes named, dominated trials shown."""
    names = strategy_of(study).metric_names
    title = f"{study.study_name}: Pareto front of {', '.join(names)}"
    if not _complete(study):
        return note(title, "No complete trial yet.")
    fig = ov.plot_pareto_front(study, target_names=names, include_dominated_trials=True)
    fig.update_layout(title=title)
    return fig


def final_charts(study: optuna.Study) -> list[go.Figure]:
    """The figures that close a phase, as the study's objective strategy names them."""
    return [globals()[name](study) for name in strategy_of(study).final_charts]


# --- wrappers around optuna.visualization -------------------------------------------------


def importances(study: optuna.Study, evaluator: BaseImportanceEvaluator | None = None) -> go.Figure:
    """Parameter importances (Optuna's default evaluator, PED-ANOVA, unless given)."""
    title = f"{study.study_name}: which parameters mattered"
    why = _too_little_for_importances(study)
    if why:
        return note(title, why)
    fig = ov.plot_param_importances(study, evaluator=evaluator, target_name=metric_label(study))
    fig.update_layout(title=title, xaxis_title="importance (share of the total)", yaxis_title="parameter")
    return few_trials_note(fig, study)


def parallel_coordinate(study: optuna.Study, params: list[str] | None = None) -> go.Figure:
    """Every complete trial as a line through its parameter values and score."""
    title = f"{study.study_name}: parameters of every complete trial"
    if not _complete(study):
        return note(title, "No complete trial yet.")
    fig = ov.plot_parallel_coordinate(study, params=params, target_name=metric_label(study))
    _recolor(fig)
    fig.update_layout(title=title)
    return few_trials_note(fig, study)


# Optuna's Blues without its near-white low end: the worst trials stay visible on white.
VISIBLE_BLUES = [[0.0, "rgb(158,202,225)"], [0.5, "rgb(66,146,198)"], [1.0, "rgb(8,48,107)"]]


def _recolor(fig: go.Figure, scale=VISIBLE_BLUES) -> None:
    """Optuna colours each trial's line from "Blues", whose low end is near-white: the worst
    trials vanish on a white page. Re-map every line (by its place on Blues) and the colour
    bar to ``scale``."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    grid = [i / 100 for i in range(101)]
    blues = [unlabel_rgb(c) for c in sample_colorscale("Blues", grid)]
    for trace in fig.data:
        if trace.type == "parcoords":
            trace.line.colorscale = scale
        elif trace.type == "scatter" and isinstance(trace.line.color, str) and trace.line.color.startswith("rgb"):
            rgb = unlabel_rgb(trace.line.color)
            t = min(grid, key=lambda g: sum((a - b) ** 2 for a, b in zip(blues[round(g * 100)], rgb)))
            trace.line.color = sample_colorscale(scale, [t])[0]
        if trace.type == "scatter" and trace.marker.colorscale is not None:
            trace.marker.colorscale = scale


def slices(study: optuna.Study, params: list[str] | None = None) -> go.Figure:
    """Score against each parameter, one panel per parameter."""
    title = f"{study.study_name}: {metric_label(study)} against each parameter"
    if not _complete(study):
        return note(title, "No complete trial yet.")
    fig = ov.plot_slice(study, params=params, target_name=metric_label(study))
    fig.update_layout(title=title, yaxis_title=metric_label(study))
    return few_trials_note(readable_log_axes(fig), study)


def contour_top2(study: optuna.Study, evaluator: BaseImportanceEvaluator | None = None) -> go.Figure:
    """Score over the two most important parameters (by ``evaluator``, as ``importances``)."""
    title = f"{study.study_name}: {metric_label(study)} over the two most important parameters"
    why = _too_little_for_importances(study)
    if why:
        return note(title, why)
    importance = get_param_importances(study, evaluator=evaluator)
    varied = _varied_params(_complete(study))
    top = [name for name in importance if name in varied][:2]
    if len(top) < 2:
        return note(title, "Fewer than two parameters took more than one value.")
    fig = ov.plot_contour(study, params=top, target_name=metric_label(study))
    _bin_contour(fig, _maximize(study))
    fig.update_layout(title=title)
    return few_trials_note(readable_log_axes(fig), study)


def intermediate_values(study: optuna.Study) -> go.Figure:
    """The score each trial reported after every epoch (what the pruner judged)."""
    title = f"{study.study_name}: {metric_label(study)} after each epoch"
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        return note(title, "No trial has reported a score per epoch.")
    fig = ov.plot_intermediate_values(study)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=metric_label(study))
    last = max((max(t.intermediate_values) for t in study.get_trials(deepcopy=False) if t.intermediate_values), default=None)
    integer_axis(fig.layout.xaxis, last)
    return fig


def timeline(study: optuna.Study) -> go.Figure:
    """When each trial ran, colored by state."""
    title = f"{study.study_name}: when each trial ran"
    if not study.get_trials(deepcopy=False):
        return note(title, "The study has no trials.")
    fig = ov.plot_timeline(study)
    fig.update_layout(title=title, xaxis_title="time", yaxis_title="trial")
    integer_axis(fig.layout.yaxis, max(t.number for t in study.get_trials(deepcopy=False)))
    return fig


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _varied_params(trials: list[FrozenTrial]) -> set[str]:
    """Parameters that took at least two values among ``trials``."""
    values: dict[str, set] = {}
    for t in trials:
        for name, value in t.params.items():
            values.setdefault(name, set()).add(value)
    return {name for name, seen in values.items() if len(seen) > 1}


def _too_little_for_importances(study: optuna.Study) -> str | None:
    complete = _complete(study)
    if len(complete) < 2:
        return f"Importances need at least 2 complete trials; this study has {len(complete)}."
    if len(_varied_params(complete)) < 2:
        return "Importances need at least 2 searched parameters that took different values."
    return None


def _maximize(study: optuna.Study) -> bool:
    return sign(study) > 0


def _bin_contour(fig: go.Figure, maximize: bool) -> None:
    """Bin each numeric axis of the contour to at most CONTOUR_BINS values, keeping the
    best score per cell (Optuna's own rule for trials sharing a cell), so big studies
    stay small; the trial markers keep their exact positions."""
    contour = next((t for t in fig.data if t.type == "contour"), None)
    if contour is None or contour.z is None:
        return
    z = np.asarray(contour.z, dtype=float)
    x_index, x = _bins(contour.x, fig.layout.xaxis.type)
    y_index, y = _bins(contour.y, fig.layout.yaxis.type)
    if len(x) == z.shape[1] and len(y) == z.shape[0]:
        return
    rows, cols = np.nonzero(~np.isnan(z))
    cells = y_index[rows] * len(x) + x_index[cols]
    binned = np.full(len(x) * len(y), -np.inf if maximize else np.inf)
    (np.maximum if maximize else np.minimum).at(binned, cells, z[rows, cols])
    binned[np.isinf(binned)] = np.nan
    contour.update(x=x, y=y, z=binned.reshape(len(y), len(x)))


def _bins(values, axis_type: str | None) -> tuple[np.ndarray, list]:
    """(bin index of each value, bin centers) for one contour axis; categories stay."""
    values = list(values)
    if axis_type == "category" or len(values) <= CONTOUR_BINS:
        return np.arange(len(values)), values
    log = axis_type == "log"
    v = np.log10(values) if log else np.asarray(values, dtype=float)
    edges = np.linspace(v.min(), v.max(), CONTOUR_BINS + 1)
    index = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, CONTOUR_BINS - 1)
    centers = (edges[:-1] + edges[1:]) / 2
    return index, list(10**centers if log else centers)


def confusion(matrix, classes: list[str], title: str = "Confusion matrix") -> go.Figure:
    """A confusion matrix as a plotly heatmap: rows the true class, columns the predicted one."""
    z = np.asarray(matrix)
    names = [str(c) for c in classes]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, colorscale="Blues", text=z, texttemplate="%{text}",
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                      xaxis_type="category", yaxis_type="category", width=520, height=480)
    return fig
