"""What a later phase builds on: the source study, and the data and settings it was made with.

The focused and validation phases measure against a study that already ran (its baseline,
its best trials). Their scores mean something only on the same images, split and training
settings, so those come from the source study's record (``tunewise.params``, the same record
``tunewise worker`` joins with), not from a preset:

- ``inherit`` fills them in from the record, under what the user gave; a value the user gave
  that contradicts the record is refused, naming both, unless ``new_study`` is set.
- ``check_matches`` is the same check for parameters already resolved (a notebook's cell).

Exempt: ``epochs`` in the validation phase, which retrains both the baseline and the best
settings "with full epochs", the same for both, so their comparison stays fair.
Everything here reads the storage and writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import optuna
from optuna.trial import TrialState

from tunewise import config as P
from tunewise.errors import ConfigError
from tunewise.records import PARAMS_KEY, SPACE_KEY
from tunewise.study.storage import JOURNAL_NAME, open_storage
from tunewise.study.strategy import strategy_of

LATER_PHASES = ("focused", "validate")
# What a later phase may set for itself although its source was made otherwise.
PHASE_OWN = {"focused": (), "validate": ("epochs",)}
# Every key a later phase may take from its source (source_keys: those it holds fixed).
SOURCE_KEYS = (*P.DATA_KEYS, *P.SPLIT_KEYS, *P.TRAIN_KEYS)


def open_existing_storage(p: Mapping[str, Any]):
    """The run's storage if it is already there, else None (nothing is created)."""
    if not p["storage"] and not os.environ.get("TUNEWISE_STORAGE") and not (Path(p["run_dir"]) / JOURNAL_NAME).is_file():
        return None
    try:
        return open_storage(p["storage"], p["run_dir"], must_exist=True)
    except ConfigError:
        return None


def latest_complete(storage) -> optuna.Study | None:
    """The single-objective study whose last complete trial finished latest (the focused
    study when it ran, the quick one when the gate skipped it); None if none has one."""

    def last_complete(s: optuna.Study):
        ends = [t.datetime_complete for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        return max(ends) if ends else None

    studies = [optuna.load_study(study_name=n, storage=storage) for n in optuna.get_all_study_names(storage)]
    candidates = [(last_complete(s), s) for s in studies if strategy_of(s).one_best_value]
    candidates = [(end, s) for end, s in candidates if end is not None]
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def find_source(p: Mapping[str, Any], phase: str) -> optuna.Study | None:
    """The study ``phase`` builds on, if it is there yet (None: the notebook says why)."""
    storage = open_existing_storage(p)
    if storage is None:
        return None
    name = p["source_study"] or ("quick" if phase == "focused" else "")
    if not name:
        return latest_complete(storage)
    return optuna.load_study(study_name=name, storage=storage) if name in optuna.get_all_study_names(storage) else None


def source_keys(source: optuna.Study) -> list[str]:
    """The data, split and fixed training settings of ``source`` (its searched ones left out)."""
    recorded = source.user_attrs.get(PARAMS_KEY) or {}
    space = source.user_attrs.get(SPACE_KEY) or recorded.get("search_space") or P.SEED_SPACE
    training = P.fixed_training({k: None for k in P.TRAIN_KEYS}, set(space))
    return [k for k in (*P.DATA_KEYS, *P.SPLIT_KEYS, *training) if k in recorded]


def _same(key: str, a: Any, b: Any) -> bool:
    if key in P.PATH_KEYS:
        # a notebook writes "" where a params file leaves a path out; paths compare absolute
        a, b = (P.absolute_paths({key: v or None})[key] for v in (a, b))
    return a == b


def inherit(p: dict[str, Any], phase: str, explicit: Iterable[str], source: optuna.Study | None = None) -> dict[str, Any]:
    """``p`` with the source study's data and settings in place of any the user did not give
    (``explicit``: the keys the user's params file and --set hold); ConfigError when a
    given one contradicts the source, unless ``new_study``. No source yet: ``p`` as it is."""
    source = source if source is not None else find_source(p, phase)
    if source is None:
        return p
    recorded = source.user_attrs.get(PARAMS_KEY) or {}
    explicit = set(explicit)
    taken, conflicts = {}, []
    for key in source_keys(source):
        if key in explicit:
            if not _same(key, p[key], recorded[key]) and key not in PHASE_OWN[phase]:
                conflicts.append((key, p[key], recorded[key]))
        elif not _same(key, p[key], recorded[key]):
            taken[key] = recorded[key]
    if conflicts and not p["new_study"]:
        raise ConfigError(_conflict_message(phase, source.study_name, conflicts, "--set"))
    space = source.user_attrs.get(SPACE_KEY)
    if phase == "focused" and "search_space" not in explicit and space and space != p["search_space"]:
        taken["search_space"] = space  # the focused phase narrows the space its source searched
    return P.replace(p, **taken) if taken else p


def check_matches(p: Mapping[str, Any], phase: str, source: optuna.Study) -> None:
    """Refuse (ConfigError) parameters whose data or settings are not ``source``'s, unless
    ``new_study``: a notebook run by hand whose cell says other data than the source's."""
    if p["new_study"]:
        return
    recorded = source.user_attrs.get(PARAMS_KEY) or {}
    conflicts = [(k, p[k], recorded[k]) for k in source_keys(source)
                 if k not in PHASE_OWN[phase] and not _same(k, p[k], recorded[k])]
    if conflicts:
        raise ConfigError(_conflict_message(phase, source.study_name, conflicts, "the parameters"))


def _conflict_message(phase: str, source: str, conflicts: list[tuple[str, Any, Any]], where: str) -> str:
    lines = "\n".join(f"  {k}: {mine!r} here, {theirs!r} in study {source!r}" for k, mine, theirs in conflicts)
    return (
        f"{phase}: {where} contradict the study this phase builds on ({source!r}); its scores, baseline "
        f"and best trials were measured on its own data and settings:\n{lines}\n"
        f"allowed: leave these out (they are taken from study {source!r}), set them to the values above, or "
        "--set new_study=true (new_study: true) to search or validate on these values as a study of its own"
    )
