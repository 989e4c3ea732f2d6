"""What a study (or several) did, as numbers and tables: the seed's post-mortem.

- ``roi_curve``: best score and gain over the baseline against wall-clock hours, and when
  80% and 95% of the final gain were reached (the seed's "80/20 rule"; report/charts.py
  draws it).
- ``pruning_savings``: epochs, and so time, that pruning did not spend.
- ``stop_reasons``: why the study stopped, in one sentence.
- ``rule_replay``: where each stop rule would have stopped this study, and what it would
  have given up (the rules replayed on the study's own trials).
- ``phase_table``: one row per study in the seed's case format (baseline -> best, trials,
  hours, gain, gain per hour); report/tables.py renders it.
- ``summarize_study``: the JSON-friendly summary of one study.

The baseline and the best trial are records.py's (the same the summaries and stop rules
use). Gains are signed so that an improvement is positive whichever way the study optimizes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunewise import units
from tunewise.records import (
    BASELINE_FROM_KEY,
    ELAPSED_KEY,
    EPOCHS_RUN_KEY,
    FINISHED_STATES,
    MERGED_BASELINES_KEY,
    STOP_DETAILS_KEY,
    STOP_REASON_KEY,
    TEST_SCORE_KEY,
    VALIDATION_KEY,
    baseline_source,
    baseline_trial,
    baseline_value,
    best_trial,
    complete_trials,
    identity,
    sign,
    source_label,
)
from tunewise.study.stoprules import ExpectedGain, NoiseFloor, Plateau, StopRule, replay

ROI_FRACTIONS = (0.8, 0.95)
_TOLERANCE = 1e-12  # float noise when comparing a gain with a share of the final gain


# --- gain over time -----------------------------------------------------------------------


def roi_curve(study: optuna.Study) -> dict[str, Any]:
    """Best so far and gain over the baseline at each complete trial's completion.

    ``hours`` counts wall-clock time from the study's first trial start, idle time
    between runs of a resumed study included. ``t80_h`` / ``t95_h``: the first time
    80% / 95% of the final gain was reached (None when there is no gain).
    """
    base = baseline_value(study)
    complete = sorted(complete_trials(study), key=lambda t: t.datetime_complete)
    curve: dict[str, Any] = {"trial": [], "hours": [], "best": [], "gain": [], "baseline": base}
    if base is None or not complete:
        return {**curve, "final_gain": None, **{mark_key(f): None for f in ROI_FRACTIONS}}
    start = _first_start(study)
    s = sign(study)
    best = None
    for t in complete:
        if best is None or s * (t.value - best) > 0:
            best = t.value
        curve["trial"].append(t.number)
        curve["hours"].append(_hours(t.datetime_complete - start))
        curve["best"].append(best)
        curve["gain"].append(s * (best - base))
    final = curve["gain"][-1]
    reached = {mark_key(f): _first_reach(curve, f * final) if final > 0 else None for f in ROI_FRACTIONS}
    return {**curve, "final_gain": final, **reached}


def mark_key(fraction: float) -> str:
    return f"t{round(fraction * 100)}_h"  # 0.8 -> "t80_h"


def _first_reach(curve: dict[str, Any], gain: float) -> float:
    return next(h for h, g in zip(curve["hours"], curve["gain"]) if g >= gain - _TOLERANCE)


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
    return int(trial.user_attrs.get(EPOCHS_RUN_KEY, len(trial.intermediate_values)))


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


# The rules a post-mortem replays: the seed's plateau, a patient plateau, the noise floor
# (a no-op until validation recorded the noise) and the expected-gain rule.
def replay_rules() -> dict[str, StopRule]:
    return {
        "plateau 0.01 / 10 (seed)": Plateau(0.01, 10),
        "plateau 0.005 / 20": Plateau(0.005, 20),
        "noise_floor 1x / 10": NoiseFloor(1.0, 10),
        "expected_gain (focused default)": ExpectedGain(),
    }


def rule_replay(study: optuna.Study, rules: dict[str, StopRule] | None = None) -> list[dict[str, Any]]:
    """Where each rule would have stopped this study (its own trials replayed in order) and
    what it would have given up: one row per rule, with the time its saved trials took
    (their recorded durations). [] for a multi-objective study (no single best value)."""
    if len(study.directions) > 1:
        return []
    finished = sorted(study.get_trials(deepcopy=False, states=FINISHED_STATES), key=lambda t: t.number)
    rows = replay(study, rules or replay_rules())
    for row in rows:
        saved = [t for t in finished if row["stopped_at_trial"] is not None and t.number > row["stopped_at_trial"]]
        row["time_saved_s"] = sum(t.duration.total_seconds() for t in saved if t.duration is not None)
    return rows


def summarize_study(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, best value and parameters, baseline, gain, time and stop reason."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        states[t.state.name.lower()] += 1
    best = best_trial(study)
    base = baseline_value(study)
    gain = None if best is None or base is None else sign(study) * (best.value - base)
    return {
        "study": study.study_name,
        "phase": identity(study).get("phase"),
        "direction": study.direction.name.lower(),
        "trials": states,
        "n_finished": sum(t.state in FINISHED_STATES for t in trials),
        "best_value": best.value if best else None,
        "best_params": dict(best.params) if best else None,
        "best_trial": best.number if best else None,
        "baseline_value": base,
        "baseline": baseline_said(study),
        "gain": gain,
        "relative_gain": None if gain is None or not base else gain / abs(base),
        "time_h": study_hours(study),
        "stop": stop_reasons(study),
        "source_gains": source_gains(study),
    }


def baseline_said(study: optuna.Study) -> str:
    """Which baseline the study's gain is measured against, in words."""
    marked = baseline_trial(study)
    source = baseline_source(study)
    if source is not None and marked is not None:
        merged = study.user_attrs.get(MERGED_BASELINES_KEY) or {}
        how = "chosen at merge" if merged.get("chosen") == source else "the best trial's source"
        return f"trial {marked.number}, the baseline of {source} ({how})"
    if marked is not None:
        return f"trial {marked.number} (the default settings)"
    inherited = study.user_attrs.get(BASELINE_FROM_KEY)
    if isinstance(inherited, dict) and inherited.get("value") is not None:
        return f"inherited from study {inherited.get('study')} (trial {inherited.get('trial')})"
    return "the first complete trial (no baseline trial ran)" if complete_trials(study) else "none yet"


def source_gains(study: optuna.Study) -> list[dict[str, Any]]:
    """For a merged study with several source baselines: each source's baseline, its best
    trial and the gain between them (empty for any other study)."""
    merged = study.user_attrs.get(MERGED_BASELINES_KEY) or {}
    sources = merged.get("sources") or {}
    if len(sources) < 2:
        return []
    complete = complete_trials(study)
    rows = []
    for source, number in sources.items():
        base = next((t for t in complete if t.number == number), None)
        own = [t for t in complete if source_label(t) == source]
        best = best_trial(study, own) if own else None
        gain = None if base is None or best is None else sign(study) * (best.values[0] - base.values[0])
        rows.append({"source": source, "baseline_trial": number, "baseline": base.values[0] if base else None,
                     "best_trial": best.number if best else None, "best": best.values[0] if best else None,
                     "gain": gain, "gain_pct": None if gain is None or not base or not base.values[0]
                     else 100 * gain / abs(base.values[0])})
    return rows


def study_hours(study: optuna.Study) -> float | None:
    """Time spent: the recorded ``tunewise.elapsed_s`` (runs only, across resumes), else
    from the first trial start to the last trial end."""
    elapsed = study.user_attrs.get(ELAPSED_KEY)
    if elapsed is not None:
        return float(elapsed) / 3600
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    return _hours(max(ends) - _first_start(study)) if ends else None


def estimates(study: optuna.Study) -> dict[str, Any]:
    """The three estimates of the winner's score, side by side: its best in the study (picked
    on one split, so flattered by selection), its mean on fresh validation splits (recorded
    by the validation phase), and its score on the untouched test split (recorded once by the
    final phase under TEST_SCORE_KEY; None until then)."""
    best = best_trial(study)
    validation = study.user_attrs.get(VALIDATION_KEY) or {}
    test = study.user_attrs.get(TEST_SCORE_KEY) or {}
    test_value = test.get("value") if isinstance(test, dict) else test
    return {
        "study": study.study_name,
        "best in study": best.value if best else None,
        "validation mean": validation.get("best_fresh_mean"),
        "optimism": validation.get("optimism"),
        "validation verdict": validation.get("verdict"),
        "test score": test_value,
    }


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


# --- helpers ------------------------------------------------------------------------------


def _first_start(study: optuna.Study) -> datetime:
    return min(t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start)


def _hours(delta) -> float:
    return delta.total_seconds() / 3600


def _duration(seconds: float) -> str:
    return units.duration(seconds)
