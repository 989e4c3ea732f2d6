"""Warm starts from earlier studies in the same storage.

A new study can begin with the best trials of earlier ones: those on the same dataset
(`warm_start_from: [auto]`, matched by the recorded dataset fingerprint), those that
trained the same model family (`[family]`: timm's module, e.g. every convnext_* model), or
named explicitly. Their parameters are enqueued clipped to the new space
(`SearchSpace.clip`), and the lineage is recorded. "Best" is the source's objective
strategy's ranking (from a multi-objective study: its Pareto front by macro-F1). `trials_to_reach` tells the
post-mortem how early a study reached a given score (e.g. a cold study's best).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from tunewise.errors import ConfigError, did_you_mean
from tunewise.records import FINISHED_STATES, LINEAGE_KEY, SPACE_KEY, complete_trials, identity, sign, storage_of
from tunewise.search.narrow import enqueue_new
from tunewise.search.space import SearchSpace
from tunewise.study.strategy import strategy_of

AUTO = "auto"  # the studies recorded on the same dataset
FAMILY = "family"  # the studies that trained the same model family


def model_family(name: str) -> str:
    """timm's module for a model name ("convnext_tiny" -> "convnext"); the name when unknown."""
    from timm.models import model_entrypoint

    try:
        return model_entrypoint(name.split(".")[0]).__module__.rsplit(".", 1)[-1]
    except (RuntimeError, KeyError, AttributeError):
        return name


def study_families(study: optuna.Study) -> set[str]:
    """The model families a study trained: its model, or every choice it searched."""
    model = identity(study).get("model")
    if model and model != "search":
        return {model_family(model)}
    choices = ((study.user_attrs.get(SPACE_KEY) or {}).get("model") or {}).get("choices") or []
    return {model_family(m) for m in choices}


def source_studies(study: optuna.Study, names: list[str]) -> list[optuna.Study]:
    """The studies to warm-start from: named ones, "auto" (every other study recorded on the
    same dataset fingerprint) and "family" (every other study of the same model family)."""
    storage = storage_of(study)
    existing = [n for n in optuna.get_all_study_names(storage) if n != study.study_name]
    fingerprint = identity(study).get("data_fingerprint")
    families = study_families(study)
    chosen: list[str] = []
    for name in names:
        if name in (AUTO, FAMILY):
            for other in existing:
                loaded = optuna.load_study(study_name=other, storage=storage)
                if name == AUTO and identity(loaded).get("data_fingerprint") == fingerprint:
                    chosen.append(other)
                if name == FAMILY and families & study_families(loaded):
                    chosen.append(other)
        elif name in existing:
            chosen.append(name)
        else:
            raise ConfigError(
                f"warm_start_from: no study {name!r} in this storage{did_you_mean(name, existing)}; "
                f"allowed: {', '.join(existing) or 'none yet'}, {AUTO!r} for the studies on the same dataset, "
                f"or {FAMILY!r} for the same model family"
            )
    return [optuna.load_study(study_name=n, storage=storage) for n in dict.fromkeys(chosen)]


def warm_start_from(study: optuna.Study, space: SearchSpace, names: list[str], n: int) -> list[dict[str, Any]]:
    """Enqueue the best `n` trials of each source study, clipped to `space`; record where from.
    Sources optimizing the other way (or with no complete trial) are passed over."""
    enqueued, lineage = [], []
    for source in source_studies(study, names):
        if not complete_trials(source) or sign(source) != sign(study):
            continue
        best = strategy_of(source).ranked(source)[:n]
        for trial in best:
            params = space.clip(trial.params)
            if params and enqueue_new(study, params, trial.number):
                enqueued.append(params)
        lineage.append({"from_study": source.study_name, "trials": [t.number for t in best]})
    if lineage:
        study.set_user_attr(LINEAGE_KEY, {"mode": "warm_start", "sources": lineage})
    return enqueued


def trials_to_reach(study: optuna.Study, target: float) -> int | None:
    """How many finished trials the study needed before its best macro-F1 (its value, or its
    first objective) reached `target`."""
    s = sign(study)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED_STATES]
    for count, t in enumerate(sorted(finished, key=lambda t: t.number), start=1):
        if t.state == TrialState.COMPLETE and s * t.values[0] >= s * target:
            return count
    return None


