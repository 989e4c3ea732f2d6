"""What a study (or several) did, as numbers and tables: the seed's post-mortem.

- ``roi_curve`` / ``roi_figure``: best score and gain over the baseline against wall-clock
  hours, and when 80% and 95% of the final gain were reached (the seed's "80/20 rule").
- ``pruning_savings``: epochs, and so time, that pruning did not spend.
- ``stop_reasons``: why the study stopped, in one sentence.
- ``phase_table`` / ``render_table``: one row per study in the seed's case format
  (baseline -> best, trials, hours, gain, gain per hour) and a small HTML table of it.
- ``summarize_study``: the JSON-friendly summary of one study.

The baseline is the complete trial marked ``tunewise.baseline`` (tunewise enqueues the
default settings as trial 0), else the first complete trial. Gains are signed so that
an improvement is positive whichever way the study optimizes.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunewise import units
from tunewise.report.charts import metric_label, note
from tunewise.study.runner import STOP_DETAILS_KEY, STOP_REASON_KEY
from tunewise.study.identity import ELAPSED_KEY, FINISHED_STATES, IDENTITY_KEY
from tunewise.phases.tuning import BASELINE_ATTR

ROI_FRACTIONS = (0.8, 0.95)
_TOLERANCE = 1e-12  # float noise when comparing a gain with a share of the final gain


# --- gain over time -----------------------------------------------------------------------


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial marked as baseline, else the first complete trial (None if none)."""
    complete = _complete(study)
    marked = [t for t in complete if t.user_attrs.get(BASELINE_ATTR)]
    return (marked or complete or [None])[0]


def roi_curve(study: optuna.Study) -> dict[str, Any]:
    """Best so far and gain over the baseline at each complete trial's completion.

    ``hours`` counts wall-clock time from the study's first trial start, idle time
    between runs of a resumed study included. ``t80_h`` / ``t95_h``: the first time
    80% / 95% of the final gain was reached (None when there is no gain).
    """
    base = baseline_trial(study)
    complete = sorted(_complete(study), key=lambda t: t.datetime_complete)
    curve: dict[str, Any] = {"trial": [], "hours": [], "best": [], "gain": [],
                             "baseline": base.value if base else None}
    if base is None:
        return {**curve, "final_gain": None, **{_mark_key(f): None for f in ROI_FRACTIONS}}
    start = _first_start(study)
    sign = _sign(study)
    best = None
    for t in complete:
        if best is None or sign * (t.value - best) > 0:
            best = t.value
        curve["trial"].append(t.number)
        curve["hours"].append(_hours(t.datetime_complete - start))
        curve["best"].append(best)
        curve["gain"].append(sign * (best - base.value))
    final = curve["gain"][-1]
    reached = {_mark_key(f): _first_reach(curve, f * final) if final > 0 else None for f in ROI_FRACTIONS}
    return {**curve, "final_gain": final, **reached}


def _mark_key(fraction: float) -> str:
    return f"t{round(fraction * 100)}_h"  # 0.8 -> "t80_h"


def _first_reach(curve: dict[str, Any], gain: float) -> float:
    return next(h for h, g in zip(curve["hours"], curve["gain"]) if g >= gain - _TOLERANCE)


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
        hours = curve[_mark_key(fraction)]
        if hours is not None:
            # The first mark's label left of its line, the later ones right of theirs: close
            # marks (80% and 95% reached a trial apart) do not print over each other.
            fig.add_vline(x=hours * per_hour, line_dash="dash", line_color="#9467bd",
                          annotation_text=f"{fraction:.0%} of the gain: {units.hours(hours)}",
                          annotation_position="top left" if fraction == ROI_FRACTIONS[0] else "top right")
    return fig


# --- what pruning saved -------------------------------------------------------------------


def pruning_savings(study: optuna.Study) -> dict[str, Any]:
    """Epochs pruned trials did not run, and the time that is worth.

    A pruned trial saved (most epochs any complete trial ran) - (epochs it ran); time is
    epochs saved x the complete trials' seconds per epoch (their total time over their
    total epochs, from trial timestamps).
    """
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    full = max((_epochs(t) for t in complete), default=None)
    saved = sum(max(0, full - _epochs(t)) for t in pruned) if full else None
    per_epoch = _seconds_per_epoch(complete)
    seconds = saved * per_epoch if saved is not None and per_epoch is not None else None
    out = {"n_pruned": len(pruned), "full_epochs": full, "epochs_saved": saved,
           "epochs_run": sum(_epochs(t) for t in complete + pruned),
           "seconds_per_epoch": per_epoch, "time_saved_s": seconds}
    return {**out, "text": _savings_text(out)}


def _epochs(trial: FrozenTrial) -> int:
    """Epochs a trial trained: its ``epochs_run``, else how many scores it reported."""
    return int(trial.user_attrs.get("epochs_run", len(trial.intermediate_values)))


def _seconds_per_epoch(complete: list[FrozenTrial]) -> float | None:
    timed = [t for t in complete if t.datetime_start and t.datetime_complete and _epochs(t)]
    epochs = sum(_epochs(t) for t in timed)
    if not epochs:
        return None
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in timed) / epochs


def _savings_text(s: dict[str, Any]) -> str:
    if not s["n_pruned"]:
        return "No trial was pruned."
    if s["epochs_saved"] is None:
        return f"{s['n_pruned']} trials were pruned; no complete trial shows how long a full one runs."
    if not s["epochs_saved"]:
        full = f"{s['full_epochs']} epoch" + ("s" if s["full_epochs"] != 1 else "")
        return f"{s['n_pruned']} trials were pruned, but only after running the {full} a complete trial runs: nothing saved."
    share = s["epochs_saved"] / (s["epochs_saved"] + s["epochs_run"])
    time = "" if s["time_saved_s"] is None else f", about {_duration(s['time_saved_s'])}"
    return (f"Pruning stopped {s['n_pruned']} trials early and saved {s['epochs_saved']} epochs "
            f"({share:.0%} of what running them all to {s['full_epochs']} epochs would take){time}.")


# --- why it stopped, and the summary ------------------------------------------------------


def stop_reasons(study: optuna.Study) -> dict[str, Any]:
    """{"reason", "message", "details"}: the stop rule or budget that ended the study."""
    reason = study.user_attrs.get(STOP_REASON_KEY)
    details = dict(study.user_attrs.get(STOP_DETAILS_KEY) or {})
    if not reason:
        return {"reason": "budget", "message": "Ran to its budget.", "details": details}
    message = details.pop("message", None) or f"Stopped by {reason}."
    return {"reason": reason, "message": message, "details": details}


def summarize_study(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, best value and parameters, baseline, gain, time and stop reason."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        states[t.state.name.lower()] += 1
    best = _best(study)
    base = baseline_trial(study)
    gain = _gain(study, best, base)
    return {
        "study": study.study_name,
        "phase": (study.user_attrs.get(IDENTITY_KEY) or {}).get("phase"),
        "direction": study.direction.name.lower(),
        "trials": states,
        "n_finished": sum(t.state in FINISHED_STATES for t in trials),
        "best_value": best.value if best else None,
        "best_params": dict(best.params) if best else None,
        "best_trial": best.number if best else None,
        "baseline_value": base.value if base else None,
        "gain": gain,
        "relative_gain": _relative(gain, base),
        "time_h": study_hours(study),
        "stop": stop_reasons(study),
    }


def study_hours(study: optuna.Study) -> float | None:
    """Time spent: the recorded ``tunewise.elapsed_s`` (runs only, across resumes), else
    from the first trial start to the last trial end."""
    elapsed = study.user_attrs.get(ELAPSED_KEY)
    if elapsed is not None:
        return float(elapsed) / 3600
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    return _hours(max(ends) - _first_start(study)) if ends else None


# --- phase table --------------------------------------------------------------------------


def phase_table(studies: list[optuna.Study]) -> list[dict[str, Any]]:
    """One row per study: study, phase, baseline, best, trials (finished), time_h, gain,
    gain_pct (relative to the baseline, %) and roi_per_h (gain per hour)."""
    return [_phase_row(study) for study in studies]


def _phase_row(study: optuna.Study) -> dict[str, Any]:
    s = summarize_study(study)
    hours, gain = s["time_h"], s["gain"]
    relative = s["relative_gain"]
    return {
        "study": s["study"],
        "phase": s["phase"],
        "baseline": s["baseline_value"],
        "best": s["best_value"],
        "trials": s["n_finished"],
        "time_h": hours,
        "gain": gain,
        "gain_pct": None if relative is None else relative * 100,
        "roi_per_h": gain / hours if gain is not None and hours else None,
    }


_COLUMNS = {  # key: (header, format)
    "study": ("study", "{}"),
    "phase": ("phase", "{}"),
    "baseline": ("before (baseline)", "{:.4f}"),
    "best": ("after (best)", "{:.4f}"),
    "trials": ("trials", "{}"),
    "time_h": ("time", units.hours),
    "gain": ("gain", "{:+.4f}"),
    "gain_pct": ("gain (%)", "{:+.1f}%"),
    "roi_per_h": ("ROI (gain per hour)", "{:+.4f}"),
}


def render_table(rows: list[dict[str, Any]]) -> str:
    """A small HTML table of ``phase_table`` rows (known columns formatted, others as is)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(_COLUMNS.get(k, (k,))[0])}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(k), k))}</td>" for k in keys) + "</tr>"
        for row in rows
    )
    return f'<table class="tunewise-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "–"
    fmt = _COLUMNS.get(key, (key, "{}"))[1]
    if callable(fmt):
        return fmt(value)
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)


# --- helpers ------------------------------------------------------------------------------


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _sign(study: optuna.Study) -> int:
    return 1 if study.direction == StudyDirection.MAXIMIZE else -1


def _best(study: optuna.Study) -> FrozenTrial | None:
    complete = _complete(study)
    return max(complete, key=lambda t: _sign(study) * t.value) if complete else None


def _gain(study: optuna.Study, best: FrozenTrial | None, base: FrozenTrial | None) -> float | None:
    return None if best is None or base is None else _sign(study) * (best.value - base.value)


def _relative(gain: float | None, base: FrozenTrial | None) -> float | None:
    return None if gain is None or not base.value else gain / abs(base.value)


def _first_start(study: optuna.Study) -> datetime:
    return min(t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start)


def _hours(delta) -> float:
    return delta.total_seconds() / 3600


def _duration(seconds: float) -> str:
    return units.duration(seconds)
