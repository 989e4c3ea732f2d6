"""One phase of tuning, end to end: parameters in, a study and a summary out.

`prepare` checks and builds everything a study needs (parameters, search space,
sampler, pruner, stop rules, storage, dataset, model) before any trial trains, so bad
input fails at once. `tune` then runs the trials (resuming the study if it exists),
with the default settings as the baseline trial 0, and writes `summary.json`.
"""

from __future__ import annotations

import os
import warnings

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from tunewise import __version__
from tunewise import config as P
from tunewise.data.cache import ImageData, describe, load_images
from tunewise.data.splits import HeldOut, held_out
from tunewise.train.hparams import WARMUP_SHARE, TrainConfig
from tunewise.study import objectives as MO
from tunewise.atomic import write_json_atomic
from tunewise.train.loop import undertrained
from tunewise.train.objective import TRAIN_LOSS_ATTR, Objective
from tunewise.search.warmstart import warm_start_from
from tunewise.study.runner import RunResult, run_trials
from tunewise.search.samplers import describe_pruner, describe_sampler, make_pruner, make_sampler
from tunewise.search.space import SearchSpace
from tunewise.study.stoprules import build_stop_rules
from tunewise.study.storage import open_storage, redact
from tunewise.study.identity import SPACE_ATTR, StudyClock, make_identity, open_study, record_params

BASELINE_ATTR = "tunewise.baseline"
METRIC = "macro_f1"


@dataclass
class Prepared:
    params: dict[str, Any]
    space: SearchSpace
    data: ImageData
    objective: Objective
    study: optuna.Study
    run_dir: Path


@dataclass
class Checked:
    """Everything a study needs, built and checked; nothing written yet."""

    space: SearchSpace
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    data: ImageData
    objective: Objective


def check(p: dict[str, Any], space: SearchSpace | None = None) -> Checked:
    """Build and check the search space, sampler, pruner, stop rules, dataset and model
    before any trial trains or any file is written (the dataset cache aside)."""
    space = space or SearchSpace.from_dict(p["search_space"] if p["search_space"] is not None else P.SEED_SPACE)
    sampler = make_sampler(p["sampler"], seed=p["seed"])
    pruner = make_pruner(p["pruner"])
    multi = MO.is_multi(p)
    # Checks the rules now; built again with the clock in tune().
    if multi:
        pruner = optuna.pruners.NopPruner()  # Optuna cannot prune a multi-objective trial
        MO.stop_rules(p["stop_rules"])
    else:
        build_stop_rules(p["stop_rules"])
    data = load_images(P.data_spec(p), p["cache_dir"])
    test = holdout(p, data)
    kind, extra = (MO.MultiObjective, {"objectives": p["objectives"]}) if multi else (Objective, {})
    objective = kind(
        data, space, P.train_settings(p), val_fraction=p["val_fraction"], split_seed=p["split_seed"], holdout=test,
        device=p["device"], **extra,
    )
    return Checked(space, sampler, pruner, data, objective)


def prepare(p: dict[str, Any], checked: Checked | None = None, *, record: bool = True) -> Prepared:
    """Everything checked and built, the study created or resumed; nothing trained yet.

    `record`: keep `p` in the study for workers that join it later (a joining worker
    passes False, so its machine's overrides do not become the study's)."""
    c = checked or check(p)
    run_dir = Path(p["run_dir"])
    storage = open_storage(p["storage"], run_dir)  # last: nothing is written for refused input
    model = "search" if "model" in c.space.distributions else c.objective.base.model
    identity = make_identity(
        phase=p["phase"], space_fingerprint=c.space.fingerprint(), data_fingerprint=c.data.fingerprint,
        model=model, metric=METRIC, test_split=c.objective.holdout.identity(),
    )
    if MO.is_multi(p):
        study = MO.open_multi_study(p["study_name"], storage, objectives=p["objectives"], identity=identity,
                                    sampler=c.sampler, force=p["force"])
    else:
        MO.refuse_multi(storage, p["study_name"])
        study = open_study(p["study_name"], storage, identity=identity, sampler=c.sampler, pruner=c.pruner, force=p["force"])
    study.set_user_attr(SPACE_ATTR, c.space.to_dict())
    if record:
        record_params(study, p)  # what `tunewise worker` on another machine joins with
    with warnings.catch_warnings():  # experimental in Optuna 5, stable enough for a label
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Dashboards label the axis "macro_f1", not "Objective 0".
        study.set_metric_names(MO.metric_names(p["objectives"]) if MO.is_multi(p) else [METRIC])
    if study.trials and p["seed"] is not None:
        # A resumed run with the same seed would replay the first run's random draws
        # (duplicate trials): offset the seed by what the study already holds.
        study.sampler = make_sampler(p["sampler"], seed=p["seed"] + len(study.trials))
    return Prepared(p, c.space, c.data, c.objective, study, run_dir)


def holdout(p: dict[str, Any], data: ImageData) -> HeldOut:
    """The untouched test split of `data` under `p` (test_fraction, test_seed): drawn before
    and apart from every train/validation split. The final phase scores on its `indices`
    once; everything else trains and validates only on its `pool`."""
    return held_out(data.labels.numpy(), data.classes, p["test_fraction"], p["test_seed"])


def final_test_indices(p: dict[str, Any], data: ImageData):
    """The test split's indices into `data` (empty when there is none): for the final phase only."""
    return holdout(p, data).indices


def baseline_params(space: SearchSpace, fixed: dict[str, Any]) -> dict[str, Any]:
    """The default settings (tunewise's, under the user's fixed ones) as a point of the space."""
    defaults = {**TrainConfig().to_dict(), **fixed}
    if defaults["warmup_epochs"] is None:  # the budget-scaled default, as epochs a searched warmup can take
        defaults["warmup_epochs"] = WARMUP_SHARE * defaults["epochs"]
    return space.clip({k: defaults[k] for k in space.distributions if k in defaults})


def baseline_value(study: optuna.Study) -> float | None:
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(BASELINE_ATTR):
            return t.values[0]  # macro-F1, in a multi-objective study too
    return None


def baseline_warning(study: optuna.Study) -> str | None:
    """Why the baseline trial looks under-trained for its epochs (its training loss still
    falling steeply at the last epoch), or None (trained, or no baseline curve yet)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(BASELINE_ATTR) and t.user_attrs.get(TRAIN_LOSS_ATTR):
            return undertrained(t.user_attrs[TRAIN_LOSS_ATTR])
    return None


def tune(
    p: dict[str, Any],
    *,
    callbacks: Sequence[Callable] = (),
    show_progress_bar: bool = False,
    prep: Prepared | None = None,
    baseline: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) the phase's study; returns the summary also written to summary.json.

    `callbacks` are extra Optuna callbacks (a notebook's live chart); `prep` reuses an
    earlier `prepare(p)` (a notebook that showed the study before running it); `baseline`
    is the score to beat when this study has no baseline trial of its own (a focused
    study warm-started from the quick one is measured against the quick baseline).
    With `workers` > 1 the trials run in that many worker processes (workers.py)."""
    if p["workers"] > 1:
        from tunewise.study.workers import run_workers

        # The workers are other processes: the callbacks (a live chart) follow the study
        # from here instead, called with no trial each time it is polled.
        progress = (lambda study: [cb(study, None) for cb in callbacks]) if callbacks else None
        return run_workers(p, p["workers"], p["gpus"] or None, prep=prep, progress=progress, baseline=baseline)
    prep = prep or prepare(p)
    study = prep.study
    start_new_study(prep)
    clock = StudyClock(study)
    if MO.is_multi_study(study):
        rules, _ = MO.stop_rules(p["stop_rules"], elapsed_s=clock.elapsed_s)
    else:
        rules = build_stop_rules(p["stop_rules"], elapsed_s=clock.elapsed_s)
    result = run_trials(
        study, prep.objective, n_trials=p["n_trials"], timeout=p["timeout"], callbacks=[*rules, *callbacks], clock=clock,
        show_progress_bar=show_progress_bar,
    )
    summary = summarize(prep, result, baseline)
    write_json_atomic(prep.run_dir / "summary.json", summary)
    return summary


def start_new_study(prep: Prepared) -> None:
    """Queue what a study with no trials yet starts with: the baseline (the default
    settings) and the warm-start trials. Done once, before any trial or worker runs."""
    study, p = prep.study, prep.params
    if study.trials:
        return
    if p["baseline"]:
        study.enqueue_trial(baseline_params(prep.space, P.train_settings(p)), user_attrs={BASELINE_ATTR: True})
    if p["warm_start_from"]:
        warm_start_from(study, prep.space, p["warm_start_from"], p["warm_start_n"])


def summarize(prep: Prepared, result: RunResult, baseline: float | None = None) -> dict[str, Any]:
    study, p = prep.study, prep.params
    states = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    for t in study.get_trials():
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    base = baseline_value(study) if baseline is None else baseline
    best = result.best_value
    gain = None if base is None or best is None else best - base
    return {
        "headline": headline(best, base, result.n_finished, result.elapsed_s),
        "study_name": study.study_name,
        "phase": p["phase"],
        "storage": storage_label(p),
        "metric": METRIC,
        "best_value": best,
        "best_params": result.best_params,
        "baseline_value": base,
        "baseline_check": baseline_warning(study),
        "gain": gain,
        "relative_gain": None if gain is None or not base else gain / base,
        "trials": states,
        "n_finished": result.n_finished,
        "stop_reason": result.stop_reason,
        "stop_details": result.stop_details,
        "elapsed_s": round(result.elapsed_s, 2),
        "run_wall_s": round(result.run_wall_s, 2),
        "interrupted": result.interrupted,
        "data": describe(prep.data),
        "test_split": {**prep.objective.holdout.identity(), "note": prep.objective.holdout.note},
        "sampler": describe_sampler(p["sampler"]),
        "pruner": describe_pruner(p["pruner"]),
        "search_space": prep.space.to_dict(),
        "tunewise_version": __version__,
        **(MO.summary_extra(study, MO.not_applied(p)) if MO.is_multi_study(study) else {}),
    }


def headline(best: float | None, base: float | None, n_finished: int, elapsed_s: float) -> str:
    if best is None:
        return f"no trial completed ({n_finished} finished)"
    vs = f" vs baseline {base:.4f} ({(best - base) / base:+.1%})" if base else ""
    return f"best macro-F1 {best:.4f}{vs}, {n_finished} trials, {elapsed_s / 60:.1f} min"


def storage_label(p: dict[str, Any]) -> str:
    """Where the study lives, safe to show (passwords masked)."""
    url = p["storage"] or os.environ.get("TUNEWISE_STORAGE")
    return redact(url) if url else str(Path(p["run_dir"]) / "study.journal")





