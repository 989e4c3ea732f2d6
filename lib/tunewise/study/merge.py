"""Independent studies merged into one: the other way to use several GPUs (one study each),
then one post-mortem over all their trials.

``merge_studies(sources, target, storage)`` copies the finished trials with their origin
(``tunewise.origin``); copying the same trial twice is skipped, so a merge can be re-run.
Studies optimizing opposite ways are refused; another metric or dataset unless forced.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.distributions import check_distribution_compatibility
from optuna.trial import FrozenTrial, TrialState

from tunewise.errors import ConfigError
from tunewise.records import (
    BASELINE_KEY,
    ELAPSED_KEY,
    FINISHED_STATES,
    IDENTITY_KEY,
    MERGED_BASELINES_KEY,
    MERGED_ELAPSED_KEY,
    MERGED_KEY,
    ORIGIN_KEY,
    PARAMS_KEY,
    STOP_DETAILS_KEY,
    STOP_REASON_KEY,
    identity,
    source_label,
    storage_of,
)
from tunewise.study.storage import load_if_exists, load_study, location, open_storage

MERGE_CHECKED = ("metric", "data_fingerprint")  # besides the direction


def merge_studies(
    sources: list[tuple[str, str]],
    target_name: str,
    target_storage: str,
    *,
    include_failed: bool = False,
    force: bool = False,
    baseline: int | None = None,
) -> dict[str, Any]:
    """Copy the finished (COMPLETE, PRUNED; with ``include_failed`` also FAIL) trials of
    each ``(study name, storage)`` into study ``target_name`` (created if needed).

    Each copy keeps its parameters, distributions, value, intermediate values, times and
    user attrs, plus ``tunewise.origin`` (the first study it came from). A trial whose
    origin, parameters and value are already in the target is skipped, so merging again
    copies nothing twice. Studies with opposite directions are refused; a different metric
    or dataset is refused unless ``force``. Returns the counts.

    Each source's baseline trial is recorded (``tunewise.merged_baselines``): the merged
    study is measured against ``sources[baseline]``'s when given, else each trial against
    its own source's (records.baseline_trial).
    """
    if not sources:
        raise ConfigError("merge: no source studies; allowed: one or more (study name, storage) pairs")
    loaded = []
    for name, url in sources:
        if not url:
            raise ConfigError(f"merge: no storage given for study {name!r}; allowed: a storage URL or .journal file")
        loaded.append(load_study(name, open_storage(url, ".", must_exist=True)))
    if not target_storage:
        raise ConfigError("merge: no target storage; allowed: a storage URL or .journal file")
    storage = open_storage(target_storage, ".")
    target = load_if_exists(storage, target_name)
    differences = _check_mergeable(loaded, target, force)
    if baseline is not None and not 0 <= baseline < len(loaded):
        raise ConfigError(f"merge: baseline source {baseline} is not one of the {len(loaded)} sources")
    if baseline is not None and _baseline_of(loaded[baseline]) is None:
        raise ConfigError(f"merge: --baseline {_label(loaded[baseline])} has no complete baseline trial; "
                          "allowed: a source whose baseline (default settings) trial completed")
    present = target.get_trials(deepcopy=False) if target is not None else []
    seen = {_key(_origin_of(t, target), t) for t in present}
    states = (*FINISHED_STATES, TrialState.FAIL) if include_failed else FINISHED_STATES
    per_source, to_copy = [], []
    for index, source in enumerate(loaded):
        counts = {"study": source.study_name, "storage": location(storage_of(source)),
                  "copied": 0, "duplicates": 0, "not_copied": {}}
        for t in source.get_trials(deepcopy=False):
            if t.state not in states:
                state = t.state.name.lower()
                counts["not_copied"][state] = counts["not_copied"].get(state, 0) + 1
                continue
            origin = _origin_of(t, source)
            key = _key(origin, t)
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            counts["copied"] += 1
            to_copy.append((t.datetime_start or datetime.min, index, t.number, _copy(t, origin)))
        per_source.append(counts)
    to_copy.sort(key=lambda item: item[:3])  # interleaved in time, as the trials ran
    copies = [item[3] for item in to_copy]
    _check_distributions([*present, *copies])  # before anything is written
    if target is None:
        target = optuna.create_study(study_name=target_name, storage=storage, direction=loaded[0].direction)
    target.add_trials(copies)
    _record_merge(target, loaded, per_source, differences)
    baselines = _record_baselines(target, loaded, baseline)
    return {
        "target": target_name,
        "storage": location(storage_of(target)),
        "copied": len(copies),
        "duplicates": sum(c["duplicates"] for c in per_source),
        "sources": per_source,
        "n_trials": len(target.get_trials(deepcopy=False)),
        "forced": differences,
        "baselines": baselines,
    }


def _baseline_of(study: optuna.Study) -> FrozenTrial | None:
    """A source's own baseline trial: the earliest complete one marked, its origin its own."""
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get(BASELINE_KEY)), None)


def _record_baselines(target: optuna.Study, sources: list[optuna.Study], chosen: int | None) -> dict[str, Any]:
    """Where each source's baseline trial landed in ``target``, and which one it is measured
    against (None: each trial against its own source's); recorded in MERGED_BASELINES_KEY."""
    present = {_key(_origin_of(t, target), t): t for t in target.get_trials(deepcopy=False)}
    merged = dict(target.user_attrs.get(MERGED_BASELINES_KEY) or {"sources": {}, "chosen": None})
    found = dict(merged.get("sources") or {})
    chosen_label = merged.get("chosen")
    for index, source in enumerate(sources):
        base = _baseline_of(source)
        copy = present.get(_key(_origin_of(base, source), base)) if base is not None else None
        if copy is None:
            continue
        label = source_label(copy)
        found[label] = copy.number
        if index == chosen:
            chosen_label = label
    record = {"sources": found, "chosen": chosen_label}
    if found and record != target.user_attrs.get(MERGED_BASELINES_KEY):
        target.set_user_attr(MERGED_BASELINES_KEY, record)
    return record


def _label(study: optuna.Study) -> str:
    return f"{study.study_name}@{location(storage_of(study))}"


def _check_mergeable(sources: list[optuna.Study], target: optuna.Study | None,
                     force: bool) -> dict[str, dict[str, Any]]:
    """Refuse opposite directions always, other metrics or data unless ``force``; returns
    the differences that ``force`` let through."""
    studies = ([target] if target is not None else []) + sources
    directions = {_label(s): s.direction.name.lower() for s in studies}
    if len(set(directions.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in directions.items())
        raise ConfigError(f"merge: the studies optimize in opposite directions ({listed}); their "
                          "values cannot share one study, even with force")
    differences = {}
    for field in MERGE_CHECKED:
        values = {_label(s): identity(s).get(field) for s in studies}
        if len(set(map(str, values.values()))) > 1:
            differences[field] = values
    if differences and not force:
        lines = "\n".join(f"  {field}: " + ", ".join(f"{k}={v!r}" for k, v in values.items())
                          for field, values in differences.items())
        raise ConfigError(f"merge: the studies are not comparable:\n{lines}\n"
                          "To merge anyway pass force=True (CLI: --force).")
    return differences


def _origin_of(trial: FrozenTrial, study: optuna.Study) -> dict[str, Any]:
    """Where ``trial`` first ran: its recorded origin if it was merged before, else here."""
    origin = trial.user_attrs.get(ORIGIN_KEY)
    if isinstance(origin, dict):
        return origin
    start = trial.datetime_start.isoformat() if trial.datetime_start else None
    return {"study": study.study_name, "storage": location(storage_of(study)),
            "number": trial.number, "datetime_start": start}


def _key(origin: dict[str, Any], trial: FrozenTrial) -> tuple:
    # The storage is left out: a journal file that moved still holds the same trials; the
    # start time tells apart same-named studies in different storages.
    params = json.dumps(trial.params, sort_keys=True, default=str)
    return (origin.get("study"), origin.get("number"), origin.get("datetime_start"), params,
            json.dumps(trial.values))


def _copy(trial: FrozenTrial, origin: dict[str, Any]) -> FrozenTrial:
    system_attrs = {k: v for k, v in trial.system_attrs.items()
                    if k not in ("fixed_params", "failed_trial", "retry_history")}  # about the source's numbering
    return FrozenTrial(
        number=0,  # given by the target
        state=trial.state,
        value=None,
        values=trial.values,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=dict(trial.params),
        distributions=dict(trial.distributions),
        user_attrs={**trial.user_attrs, ORIGIN_KEY: origin},
        system_attrs=system_attrs,
        intermediate_values=dict(trial.intermediate_values),
        trial_id=0,
    )


def _check_distributions(trials: list[FrozenTrial]) -> None:
    """A parameter must keep one kind of distribution (and one set of choices) in a study."""
    seen: dict[str, Any] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name in seen:
                try:
                    check_distribution_compatibility(seen[name], dist)
                except ValueError:
                    raise ConfigError(f"merge: parameter {name!r} is {seen[name]} in one study and {dist} "
                                      "in another; allowed: the same kind of distribution and the same "
                                      "choices") from None
            else:
                seen[name] = dist


def _record_merge(target: optuna.Study, sources: list[optuna.Study], per_source: list[dict],
                  differences: dict) -> None:
    attrs = target.user_attrs
    entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sources": per_source,
             "forced": differences}
    target.set_user_attr(MERGED_KEY, [*attrs.get(MERGED_KEY, []), entry])
    # Time spent: the sum over the studies merged (each counted once, however often merged),
    # so gain per hour is per hour of compute, as if the studies had run one after another.
    elapsed = dict(attrs.get(MERGED_ELAPSED_KEY) or {})
    if not elapsed and attrs.get(ELAPSED_KEY) is not None:
        elapsed[_label(target)] = float(attrs[ELAPSED_KEY])  # the target's own runs, if any
    for source in sources:
        if source.user_attrs.get(ELAPSED_KEY) is not None:
            elapsed[_label(source)] = float(source.user_attrs[ELAPSED_KEY])
    target.set_user_attr(MERGED_ELAPSED_KEY, elapsed)
    if elapsed:
        target.set_user_attr(ELAPSED_KEY, round(sum(elapsed.values()), 3))
    if IDENTITY_KEY not in attrs:
        identities = [identity(s) for s in sources]
        keys = dict.fromkeys(k for i in identities for k in i)
        merged = {k: (identities[0].get(k) if len({json.dumps(i.get(k)) for i in identities}) == 1
                      else "mixed") for k in keys}
        target.set_user_attr(IDENTITY_KEY, merged)
    if PARAMS_KEY not in attrs and PARAMS_KEY in sources[0].user_attrs:
        target.set_user_attr(PARAMS_KEY, sources[0].user_attrs[PARAMS_KEY])
    names = ", ".join(_label(s) for s in sources)
    target.set_user_attr(STOP_REASON_KEY, "merged")
    target.set_user_attr(STOP_DETAILS_KEY, {"message": f"Merged from {names}.",
                                            "copied": sum(c["copied"] for c in per_source)})
