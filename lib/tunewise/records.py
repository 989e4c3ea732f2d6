"""What a tunewise study records in Optuna, and how those records are read.

Every user-attribute key a study or trial carries is named here, once, as ``*_KEY`` (the
strings never change: studies already on disk must still read). Next to them, the one
definition each of what the summaries, stop rules, charts and the post-mortem all ask:

- ``sign`` / ``better``: which way is better (the first objective's direction);
- ``best_trial``: the best complete trial (multi-objective: best first objective, macro-F1,
  which always lies on the Pareto front); ``ranked`` orders trials best first;
- ``baseline_trial`` / ``baseline_value``: the score a study is measured against.

The lowest layer: it knows Optuna and nothing of tunewise's other modules.
"""

from __future__ import annotations

from typing import Any, Iterable

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# --- study user attributes ------------------------------------------------------------------
IDENTITY_KEY = "tunewise.identity"  # phase, fingerprints, model, metric, direction(s), objectives, version
HISTORY_KEY = "tunewise.identity_history"  # every change of identity on resume: when, what, forced
FORCED_KEY = "tunewise.forced"  # every force=true that replaced the identity: when, host, {field: [old, new]}
ELAPSED_KEY = "tunewise.elapsed_s"  # seconds spent on the study across all its runs
PARAMS_KEY = "tunewise.params"  # the run parameters the study was prepared with (no storage URL)
SPACE_KEY = "tunewise.search_space"  # the search space the study searches, as a dict
STOP_REASON_KEY = "tunewise.stop_reason"  # why it stopped: budget, a stop rule's name, ...
STOP_DETAILS_KEY = "tunewise.stop_details"  # that reason's figures and a readable "message"
NOISE_FLOOR_KEY = "tunewise.noise_floor"  # seed-to-seed std of the score, from validation
LINEAGE_KEY = "tunewise.lineage"  # where a warm start or a focused resume came from
BASELINE_FROM_KEY = "tunewise.baseline_from"  # {study, trial, value}: a baseline inherited from a source study
ADVICE_KEY = "tunewise.advice"  # the advisor's prediction when the study started
MERGED_KEY = "tunewise.merged_from"  # one entry per merge into this study
MERGED_ELAPSED_KEY = "tunewise.merged_elapsed_s"  # seconds spent, per merged source study
# On a merged study: {"sources": {"STUDY@STORAGE": its baseline trial's number here},
# "chosen": one of them (`merge --baseline`), or None: each trial against its own source's}
MERGED_BASELINES_KEY = "tunewise.merged_baselines"
TEST_SCORE_KEY = "tunewise.test_score"  # {"value": macro-F1 on the untouched test split, ...}: the final phase's one score
VALIDATION_KEY = "tunewise.validation"  # the validation phase's result, on the study it validated
TRACKING_RUNS_KEY = "tunewise.tracking_runs"  # {tracking server (password masked): its MLflow run id of this study}
TEST_SPLIT_FIELD = "test_split"  # the field of tunewise.identity holding the test split's {fraction, seed, n, indices_sha256}

# --- trial user attributes ------------------------------------------------------------------
BASELINE_KEY = "tunewise.baseline"  # True on the trial that runs the default settings
# On the baseline trial, {param: [default, value used]} for defaults outside the search space
# (numbers clipped to its edge; a categorical default not among the choices: null, sampled).
BASELINE_MOVED_KEY = "tunewise.baseline_moved"
WORKER_KEY = "tunewise.worker"  # who runs it: host, pid namespace, pid, process start, trial
RETRY_OF_KEY = "tunewise.retry_of"  # the trial this one re-runs after its worker died
RETRIES_KEY = "tunewise.retries"  # how many times these parameters were retried
PHASE_KEY = "tunewise.phase"  # the phase of the study when the trial ran
WARM_START_KEY = "tunewise.warm_start_from"  # the source trial's number, on a warm-start trial
ORIGIN_KEY = "tunewise.origin"  # on a merged trial: {study, storage, number, datetime_start}
FAIL_REASON_KEY = "fail_reason"  # "ExcType: message", or what the objective said
PRUNE_REASON_KEY = "prune_reason"  # why a trial was pruned when not by the pruner (a NaN loss)
EPOCHS_RUN_KEY = "epochs_run"  # epochs the trial trained
# Measured on every multi-objective trial, objective or not (see train/latency.py).
MACRO_F1_KEY = "macro_f1"
LATENCY_KEY = "latency_ms"
N_PARAMS_KEY = "n_params"

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # what a trial budget counts


# --- better, best, baseline -----------------------------------------------------------------


def direction_sign(direction: StudyDirection | str) -> int:
    """+1 when bigger is better, -1 when smaller is: sign * value is always 'higher is better'."""
    if isinstance(direction, StudyDirection):
        return 1 if direction == StudyDirection.MAXIMIZE else -1
    return 1 if str(direction).lower() == "maximize" else -1


def sign(study: optuna.Study) -> int:
    """``direction_sign`` of the study's first objective (macro-F1 in every tunewise study)."""
    return direction_sign(study.directions[0])


def better(study: optuna.Study, a: float, b: float) -> bool:
    """Whether first-objective value ``a`` is strictly better than ``b`` in ``study``."""
    return sign(study) * a > sign(study) * b


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def ranked(trials: Iterable[FrozenTrial], direction: StudyDirection | str = "maximize") -> list[FrozenTrial]:
    """The complete ``trials``, best first objective first (ties keep trial order)."""
    s = direction_sign(direction)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return sorted(complete, key=lambda t: (-s * t.values[0], t.number))


def best_trial(study: optuna.Study, complete: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The complete trial with the best first objective (the earliest among equals); in a
    multi-objective study it lies on the Pareto front. None when no trial completed."""
    complete = complete_trials(study) if complete is None else complete
    s = sign(study)
    return max(complete, key=lambda t: (s * t.values[0], -t.number), default=None)


def best_value(study: optuna.Study) -> float | None:
    best = best_trial(study)
    return None if best is None else best.values[0]


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial marked ``BASELINE_KEY`` (the default settings), else None. A merged
    study holds one per source: the one ``merge --baseline`` chose, else the baseline of the
    best trial's own source (``baseline_source`` says which)."""
    complete = complete_trials(study)
    source = baseline_source(study, complete)
    if source is not None:
        number = study.user_attrs[MERGED_BASELINES_KEY]["sources"][source]
        found = next((t for t in complete if t.number == number), None)
        if found is not None:
            return found
    return next((t for t in complete if t.user_attrs.get(BASELINE_KEY)), None)


def source_label(trial: FrozenTrial) -> str | None:
    """``STUDY@STORAGE`` of the study a merged trial first ran in (None: not merged)."""
    origin = trial.user_attrs.get(ORIGIN_KEY)
    return f"{origin.get('study')}@{origin.get('storage')}" if isinstance(origin, dict) else None


def baseline_source(study: optuna.Study, complete: list[FrozenTrial] | None = None) -> str | None:
    """Which source's baseline a merged study is measured against: the one chosen at merge
    time, else the best trial's source; None for a study that was not merged with baselines."""
    merged = study.user_attrs.get(MERGED_BASELINES_KEY)
    if not isinstance(merged, dict) or not merged.get("sources"):
        return None
    if merged.get("chosen") in merged["sources"]:
        return merged["chosen"]
    best = best_trial(study, complete)
    source = source_label(best) if best is not None else None
    return source if source in merged["sources"] else None


def baseline_value(study: optuna.Study) -> float | None:
    """The score ``study`` is measured against: its baseline trial's first objective; else
    the baseline it inherited from the study it was warm-started from (``BASELINE_FROM_KEY``);
    else its first complete trial's. None while no trial completed and nothing is inherited."""
    marked = baseline_trial(study)
    if marked is not None:
        return marked.values[0]
    inherited = study.user_attrs.get(BASELINE_FROM_KEY)
    if isinstance(inherited, dict) and inherited.get("value") is not None:
        return float(inherited["value"])
    complete = complete_trials(study)
    return complete[0].values[0] if complete else None


def inherit_baseline(study: optuna.Study, source: optuna.Study) -> float | None:
    """Record that ``study`` (with no baseline trial of its own, e.g. a warm-started focused
    study) is measured against ``source``'s baseline; returns that value."""
    value = baseline_value(source)
    marked = baseline_trial(source)
    if value is not None:
        study.set_user_attr(BASELINE_FROM_KEY, {"study": source.study_name,
                                                "trial": marked.number if marked else None, "value": value})
    return value


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study's records live in. Optuna has no public accessor for it; the few
    places that need it (the slot lock, settling another worker's trial, where a study lives,
    the other studies beside it) all come through here."""
    return study._storage


def identity(study: optuna.Study) -> dict[str, Any]:
    """The study's recorded identity (empty when it has none)."""
    return study.user_attrs.get(IDENTITY_KEY) or {}
