"""A phase's study made ready, run in this process, and summarized.

`check` builds and checks everything a study needs (search space, sampler, pruner, stop
rules, dataset, model) before any trial trains, so bad input fails at once; `prepare` then
creates or resumes the study. `start_new_study` queues the baseline (the default settings,
trial 0) and any warm-start trials; `run_here` runs the trials in this process; `summarize`
is the summary.json every phase run writes. tuning.tune picks this process or workers.
"""

from __future__ import annotations

import os
import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from tunewise import __version__
from tunewise import config as P
from tunewise import units
from tunewise.atomic import write_json_atomic, write_summary_files
from tunewise.data.cache import ImageData, announce, describe, load_images
from tunewise.data.splits import HeldOut, held_out
from tunewise.records import BASELINE_KEY, BASELINE_MOVED_KEY, SPACE_KEY, baseline_trial, baseline_value
from tunewise.search.samplers import describe_pruner, describe_sampler, make_pruner, make_sampler
from tunewise.search.space import SearchSpace
from tunewise.study.warmstart import warm_start_from
from tunewise.study.workers import other_workers, trial_workers
from tunewise.study.budget import StudyClock, finished_trials
from tunewise.errors import ConfigError
from tunewise.study.identity import check_resume as check_study_resume
from tunewise.study.identity import make_identity, record_params
from tunewise.study.runner import RunResult, run_trials
from tunewise.study.storage import JOURNAL_NAME, label, load_if_exists, open_storage
from tunewise.study.strategy import METRIC, ObjectiveStrategy, SingleObjective, strategy_for, strategy_of
from tunewise.study.tracking import NoTracking
from tunewise.study.trackers import check_tracking, open_tracker
from tunewise.train.hparams import WARMUP_SHARE, TrainConfig
from tunewise.train.loop import undertrained
from tunewise.train.objective import TRAIN_LOSS_ATTR, Objective


@dataclass
class Prepared:
    params: P.RunConfig
    space: SearchSpace
    data: ImageData
    objective: Objective
    study: optuna.Study
    run_dir: Path
    strategy: ObjectiveStrategy = field(default_factory=SingleObjective)  # chosen once, in check()


@dataclass
class Checked:
    """Everything a study needs, built and checked; nothing written yet."""

    space: SearchSpace
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    data: ImageData
    objective: Objective
    strategy: ObjectiveStrategy = field(default_factory=SingleObjective)


def check(p: Mapping[str, Any], space: SearchSpace | None = None) -> Checked:
    """Build and check the search space, sampler, pruner, stop rules, dataset and model
    before any trial trains or any file is written (the dataset cache aside)."""
    p = P.as_config(p)
    study, split = p.study, p.split
    space = space or SearchSpace.from_dict(study.search_space if study.search_space is not None else P.SEED_SPACE)
    sampler = make_sampler(study.sampler, seed=p.train.seed)
    strategy = strategy_for(study.objectives)
    pruner = strategy.pruner(make_pruner(study.pruner))
    strategy.stop_rules(study.stop_rules)  # checks the rules now; built again with the clock in run_here()
    check_tracking(study)  # the tracking package is there
    data = load_images(p.data, study.cache_dir)
    announce(data)  # one line of what was loaded, once per process
    test = holdout(p, data)
    objective = strategy.objective(
        data, space, p.train_settings(), val_fraction=split.val_fraction, split_seed=split.split_seed, holdout=test,
        device=study.device,
    )
    return Checked(space, sampler, pruner, data, objective, strategy)


def prepare(p: Mapping[str, Any], checked: Checked | None = None, *, record: bool = True) -> Prepared:
    """Everything checked and built, the study created or resumed; nothing trained yet.

    `record`: keep `p` in the study for workers that join it later (a joining worker
    passes False, so its machine's overrides do not become the study's)."""
    p = P.as_config(p)
    c = checked or check(p)
    settings = p.study
    run_dir = Path(settings.run_dir)
    storage = open_storage(settings.storage, run_dir)  # last: nothing is written for refused input
    identity = study_identity(p, c)
    strategy = c.strategy
    # A run with its budget spent changes nothing in the study's record (a phase or a data
    # location that changed is recorded by a run that runs trials); force is said and recorded.
    existing = load_if_exists(storage, settings.study_name)
    has_work = existing is None or settings.n_trials is None or finished_trials(existing) < settings.n_trials
    record_identity = record and (has_work or settings.force)
    study = strategy.open_study(settings.study_name, storage, identity=identity, sampler=c.sampler, pruner=c.pruner,
                                force=settings.force, distributions=c.space.distributions, record=record_identity)
    if record_identity and study.user_attrs.get(SPACE_KEY) != c.space.to_dict():
        study.set_user_attr(SPACE_KEY, c.space.to_dict())
    if record:  # what `tunewise worker` on another machine joins with
        record_params(study, P.absolute_paths(p), has_work=has_work)
    with warnings.catch_warnings():  # experimental in Optuna 5, stable enough for a label
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Dashboards label the axis "macro_f1", not "Objective 0" (written once, not on each resume).
        if study.metric_names != list(strategy.metric_names):
            study.set_metric_names(strategy.metric_names)
    if study.trials and p.train.seed is not None:
        # A resumed run with the same seed would replay the first run's random draws
        # (duplicate trials): offset the seed by what the study already holds.
        study.sampler = make_sampler(settings.sampler, seed=p.train.seed + len(study.trials))
    return Prepared(p, c.space, c.data, c.objective, study, run_dir, strategy)


def study_identity(p: dict[str, Any], c: Checked) -> dict[str, Any]:
    """What makes this study's scores comparable: the data (fingerprint and settings), the
    split, every fixed training setting, the space, the model and the metric."""
    model = "search" if "model" in c.space.distributions else c.objective.base.model
    searched = set(c.space.distributions) | set(c.space.fixed)
    where = P.absolute_paths(p)
    settings = {
        **{k: p[k] for k in P.DATA_KEYS if k not in ("dataset", "image_dir")},
        **{k: p[k] for k in P.SPLIT_KEYS},
        **{k: v for k, v in P.fixed_training(p, searched).items() if k not in ("model", "pretrained_file")},
    }
    return make_identity(
        phase=p["phase"], space_fingerprint=c.space.fingerprint(), data_fingerprint=c.data.fingerprint,
        model=model, metric=METRIC, settings=settings, search_space=c.space.to_dict(),
        location={k: where[k] for k in ("dataset", "image_dir", "pretrained_file")},
        test_split=c.objective.holdout.identity(),
    )


def check_resume(p: dict[str, Any], c: Checked) -> None:
    """Refuse, reading only, what `prepare` would refuse when it resumes the study: for a
    caller that must write nothing (not even a notebook) when the run is refused."""
    if p["storage"] is None and not os.environ.get("TUNEWISE_STORAGE") and not (Path(p["run_dir"]) / JOURNAL_NAME).is_file():
        return  # no storage yet: a new study
    try:
        storage = open_storage(p["storage"], p["run_dir"], must_exist=True)
    except ConfigError:
        return  # a storage file not made yet: a new study
    study = load_if_exists(storage, p["study_name"])
    if study is None or strategy_of(study).one_best_value != c.strategy.one_best_value:
        return  # a new study; or one of the other kind, which prepare refuses in its own words
    identity = study_identity(p, c)
    if not c.strategy.one_best_value:
        identity = {**identity, "objectives": list(c.strategy.objectives)}
    check_study_resume(study, identity, force=p["force"], directions=c.strategy.directions,
                       distributions=c.space.distributions)


def holdout(p: dict[str, Any], data: ImageData) -> HeldOut:
    """The untouched test split of `data` under `p` (test_fraction, test_seed): drawn before
    and apart from every train/validation split. The final phase scores on its `indices`
    once; everything else trains and validates only on its `pool`."""
    return held_out(data.labels.numpy(), data.classes, p["test_fraction"], p["test_seed"])


def final_test_indices(p: dict[str, Any], data: ImageData):
    """The test split's indices into `data` (empty when there is none): for the final phase only."""
    return holdout(p, data).indices


def baseline_warning(study: optuna.Study) -> str | None:
    """Why the baseline trial looks under-trained for its epochs (its training loss still
    falling steeply at the last epoch), or None (trained, or no baseline curve yet)."""
    base = baseline_trial(study)
    if base is not None and base.user_attrs.get(TRAIN_LOSS_ATTR):
        return undertrained(base.user_attrs[TRAIN_LOSS_ATTR])
    return None


def baseline_params(space: SearchSpace, fixed: dict[str, Any]) -> dict[str, Any]:
    """The default settings (tunewise's, under the user's fixed ones) as a point of the space."""
    return space.clip(_searched_defaults(space, fixed))


def baseline_moved(space: SearchSpace, fixed: dict[str, Any]) -> dict[str, list]:
    """{param: [default, value the baseline uses]} for every searched default that lies outside
    the space: the baseline is then not the defaults, and the gain is not a gain over them."""
    defaults = _searched_defaults(space, fixed)
    used = space.clip(defaults)
    return {k: [v, used.get(k)] for k, v in defaults.items() if used.get(k) != v}


def _searched_defaults(space: SearchSpace, fixed: dict[str, Any]) -> dict[str, Any]:
    defaults = {**TrainConfig().to_dict(), **fixed}
    if defaults["warmup_epochs"] is None:  # the budget-scaled default, as epochs a searched warmup can take
        defaults["warmup_epochs"] = WARMUP_SHARE * defaults["epochs"]
    return {k: defaults[k] for k in space.distributions if k in defaults}


def describe_moved(moved: dict[str, list]) -> str:
    """'lr 0.001 -> 0.003; optimizer adamw -> sampled' for the run's output and result table."""
    return "; ".join(f"{k} {old} -> {'sampled' if new is None else new}" for k, (old, new) in moved.items())


def run_here(
    p: dict[str, Any],
    *,
    callbacks: Sequence[Callable] = (),
    show_progress_bar: bool = False,
    prep: Prepared | None = None,
    baseline: float | None = None,
    joined: bool = False,
    summary_file: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the phase's study in this process; returns the summary also written
    to summary.json (arguments as tuning.tune's). ``joined``: a worker joining a study that
    another process started, which leaves the study's earlier trials to that one's tracking.
    ``summary_file``: a joining worker's own name for it under the run folder instead ("": none),
    so it never replaces the study owner's summary.json."""
    prep = prep or prepare(p)
    settings = prep.params.study
    study = prep.study
    start_new_study(prep)
    tracker = start_tracking(prep, sync=not joined)
    clock = StudyClock(study)
    rules, _ = prep.strategy.stop_rules(settings.stop_rules, elapsed_s=clock.elapsed_s)
    result = run_trials(
        study, prep.objective, n_trials=settings.n_trials, timeout=settings.timeout,
        callbacks=[*rules, *callbacks, tracker.on_trial], clock=clock, show_progress_bar=show_progress_bar,
    )
    summary = summarize(prep, result, baseline)
    finish_tracking(tracker, prep, summary, sync=not joined)
    if summary_file is None:
        write_summary_files(prep.run_dir, settings.phase, summary)
    elif summary_file:
        write_json_atomic(prep.run_dir / summary_file, summary)
    return summary


def start_tracking(prep: Prepared, *, sync: bool = True) -> NoTracking:
    """The study's tracker (``tracking``), its parent run found or made before the first trial."""
    tracker = open_tracker(prep.params.study, prep.strategy.metric_names)
    p = prep.params
    tracker.start(prep.study, {"phase": p["phase"], "storage": storage_label(p), "sampler": describe_sampler(p["sampler"]),
                               "pruner": describe_pruner(p["pruner"]), "search_space": prep.space.to_dict(),
                               "n_trials": p["n_trials"]}, sync=sync)
    return tracker


def finish_tracking(tracker: NoTracking, prep: Prepared, summary: dict[str, Any], *, sync: bool = True) -> None:
    """The study's outcome logged; the summary gets ``tracking``: where, and what could not be logged."""
    entry = tracker.finish(prep.study, summary, sync=sync)
    if entry is not None:
        summary["tracking"] = entry


def start_new_study(prep: Prepared) -> None:
    """Queue what a study with no trials yet starts with: the baseline (the default
    settings) and the warm-start trials. Done once, before any trial or worker runs."""
    study, p = prep.study, prep.params
    if study.trials:
        return
    if p.study.baseline:
        fixed = p.train_settings()
        moved = baseline_moved(prep.space, fixed)
        attrs = {BASELINE_KEY: True, **({BASELINE_MOVED_KEY: moved} if moved else {})}
        study.enqueue_trial(baseline_params(prep.space, fixed), user_attrs=attrs)
        if moved:
            print(f"note: the search space leaves out defaults, so the baseline trial uses "
                  f"{describe_moved(moved)}; its gain is over that point, not over the defaults")
    if p.phase.warm_start_from:
        warm_start_from(study, prep.space, p.phase.warm_start_from, p.phase.warm_start_n)


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
        # Defaults outside the space: the baseline trial ran these instead (None: it ran the defaults).
        "baseline_moved": _moved_on(study),
        "gain": gain,
        "relative_gain": None if gain is None or not base else gain / base,
        "trials": states,
        "n_finished": result.n_finished,
        "stop_reason": result.stop_reason,
        "stop_details": result.stop_details,
        "elapsed_s": round(result.elapsed_s, 2),
        "run_wall_s": round(result.run_wall_s, 2),
        "interrupted": result.interrupted,
        "dataset": P.absolute_paths(p)["dataset"],  # what was searched, absolute (or a built-in name)
        "data": describe(prep.data),
        "test_split": {**prep.objective.holdout.identity(), "note": prep.objective.holdout.note},
        "sampler": describe_sampler(p["sampler"]),
        "pruner": describe_pruner(p["pruner"]),
        "search_space": prep.space.to_dict(),
        "tunewise_version": __version__,
        **prep.strategy.summary_extra(study, p.study),
        # Every worker that ran a trial, from the storage (one that joined from another
        # machine too); listed when there were several.
        **({"workers": other_workers(study, [])} if len(trial_workers(study)) > 1 else {}),
    }


def _moved_on(study: optuna.Study) -> dict[str, list] | None:
    base = baseline_trial(study)
    return base.user_attrs.get(BASELINE_MOVED_KEY) if base is not None else None


def headline(best: float | None, base: float | None, n_finished: int, elapsed_s: float) -> str:
    if best is None:
        return f"no trial completed ({n_finished} finished)"
    vs = f" vs baseline {base:.4f} ({(best - base) / base:+.1%})" if base else ""
    return f"best macro-F1 {best:.4f}{vs}, {n_finished} trials, {units.duration(elapsed_s)}"


def storage_label(p: dict[str, Any]) -> str:
    """Where the study lives, safe to show (passwords masked)."""
    return label(p["storage"], p["run_dir"])





