"""Warm starts from earlier studies in the same storage.

A new study can begin with the best trials of earlier ones: those on the same dataset
(`warm_start_from: [auto]`, matched by the recorded dataset fingerprint) or named
explicitly. Their parameters are enqueued clipped to the new space (`SearchSpace.clip`),
and the lineage is recorded. `trials_to_reach` tells the post-mortem how early a study
reached a given score (e.g. a cold study's best).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from .errors import ConfigError, did_you_mean
from .narrow import LINEAGE_ATTR, best_complete, warm_start
from .space import SearchSpace
from .study import IDENTITY_KEY

AUTO = "auto"


def source_studies(study: optuna.Study, names: list[str]) -> list[optuna.Study]:
    """The studies to warm-start from: named ones, or with "auto" every other study in the
    storage recorded on the same dataset fingerprint."""
    storage = study._storage
    existing = [n for n in optuna.get_all_study_names(storage) if n != study.study_name]
    fingerprint = (study.user_attrs.get(IDENTITY_KEY) or {}).get("data_fingerprint")
    chosen: list[str] = []
    for name in names:
        if name == AUTO:
            for other in existing:
                loaded = optuna.load_study(study_name=other, storage=storage)
                if (loaded.user_attrs.get(IDENTITY_KEY) or {}).get("data_fingerprint") == fingerprint:
                    chosen.append(other)
        elif name in existing:
            chosen.append(name)
        else:
            raise ConfigError(
                f"warm_start_from: no study {name!r} in this storage{did_you_mean(name, existing)}; "
                f"allowed: {', '.join(existing) or 'none yet'}, or {AUTO!r} for the studies on the same dataset"
            )
    return [optuna.load_study(study_name=n, storage=storage) for n in dict.fromkeys(chosen)]


def warm_start_from(study: optuna.Study, space: SearchSpace, names: list[str], n: int) -> list[dict[str, Any]]:
    """Enqueue the best `n` trials of each source study, clipped to `space`; record where from."""
    enqueued, lineage = [], []
    direction = study.direction.name.lower()
    for source in source_studies(study, names):
        trials = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if source.direction != study.direction or not trials:
            continue
        enqueued += warm_start(study, trials, space, n, direction, source_name=source.study_name)
        lineage.append({"from_study": source.study_name, "trials": [t.number for t in best_complete(trials, direction)[:n]]})
    if lineage:
        study.set_user_attr(LINEAGE_ATTR, {"mode": "warm_start", "sources": lineage})
    return enqueued


def trials_to_reach(study: optuna.Study, target: float) -> int | None:
    """How many finished trials the study needed before its best reached `target`."""
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    for count, t in enumerate(sorted(finished, key=lambda t: t.number), start=1):
        if t.state == TrialState.COMPLETE and sign * t.value >= sign * target:
            return count
    return None
