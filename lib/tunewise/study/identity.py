"""What a study is: its identity, and the parameters it was prepared with.

- ``tunewise.identity`` (study user attr) records the phase, search-space and dataset
  fingerprints, the space itself, the fixed settings that change what a score means (data
  settings, split, epochs and the other training settings not searched), where the data
  lies, model, metric, direction and tunewise version. Resuming a study made for a different
  setup is refused (its trials would not be comparable) unless forced, with each difference
  by name and value, before anything is written; a categorical parameter's choices can
  never change (Optuna would fail every later trial). Every accepted change is appended to
  ``tunewise.identity_history``; a forced one is also said (on stderr) and appended to
  ``tunewise.forced`` (what it replaced, old -> new). A worker that joins the study
  (``record=False``) never writes it: its machine's paths and settings stay its own.
- ``record_params`` keeps the run parameters a study was prepared with (``tunewise.params``,
  the storage URL left out, paths absolute), so a worker on another machine can join the
  study knowing only its name and storage.

What a study has spent is in budget.py; crash recovery in recovery.py; every key in
tunewise/records.py.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from datetime import datetime, timezone
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution

from tunewise import __version__
from tunewise.data.sources import DataSpec
from tunewise.errors import ConfigError, did_you_mean
from tunewise.records import (
    FORCED_KEY,
    HISTORY_KEY,
    IDENTITY_KEY,
    PARAMS_KEY,
    TEST_SPLIT_FIELD,
)

# Never recorded in the study: the storage URL may hold a password, and where the study
# lives is what a joining worker is told, not what it reads.
UNRECORDED_PARAMS = ("storage",)
# What a resume may change in the recorded parameters: the study-wide budget.
BUDGET_PARAMS = ("n_trials", "timeout")

# Resuming with any of these changed mixes incomparable trials: refused unless forced.
GUARDED_FIELDS = ("space_fingerprint", "data_fingerprint", "model", "metric", "direction", "settings", "search_space", TEST_SPLIT_FIELD)
# Identity fields holding a mapping, compared key by key (see _flat).
NESTED_FIELDS = ("settings", "search_space", "location")
# The data settings among "settings" (what a data fingerprint change is explained by).
DATA_SETTINGS = tuple(f for f in DataSpec.__dataclass_fields__ if f not in ("dataset", "image_dir"))
DIRECTIONS = ("maximize", "minimize")

_log = logging.getLogger(__name__)


def make_identity(
    *,
    phase: str,
    space_fingerprint: str,
    data_fingerprint: str,
    model: str,
    metric: str,
    direction: str = "maximize",
    settings: dict[str, Any] | None = None,
    search_space: dict[str, Any] | None = None,
    location: dict[str, Any] | None = None,
    test_split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``tunewise.identity`` dict for a study (open_study adds the tunewise version).

    ``settings``: every fixed value that changes what a score means (data settings, split,
    epochs and the other training settings not searched); ``search_space``: the space itself
    (its fingerprint alone cannot say what changed); ``location``: where the data lies
    (absolute paths: shown when the data changed, never refused on its own, since the
    same files may sit elsewhere on another machine); ``test_split``: the held-out test
    split's identity (splits.HeldOut.identity()), refused on change like the data."""
    identity = {
        "phase": phase,
        "space_fingerprint": space_fingerprint,
        "data_fingerprint": data_fingerprint,
        "model": model,
        "metric": metric,
        "direction": direction,
        "tunewise_version": __version__,
    }
    for key, value in (("settings", settings), ("search_space", search_space), ("location", location)):
        if value is not None:
            identity[key] = dict(value)
    if test_split is not None:
        identity[TEST_SPLIT_FIELD] = dict(test_split)
    return identity


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    *,
    direction: str = "maximize",
    directions: list[str] | None = None,
    identity: dict[str, Any],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    force: bool = False,
    distributions: Mapping[str, BaseDistribution] | None = None,
    record: bool = True,
) -> optuna.Study:
    """Create study ``name`` or resume it, refusing (ConfigError) a resume for another setup.

    ``directions`` (one per objective) makes a multi-objective study instead of ``direction``.
    A change of phase, tunewise version or data location is recorded, never refused. A change
    of a GUARDED_FIELDS value is refused unless ``force``; the stored directions, and the
    choices of a categorical parameter the study's trials already used (``distributions``:
    the space about to be searched), can never change. An existing study is checked before
    anything is written to it, so a refused resume leaves the storage as it was.
    ``record=False`` (a joining worker): an existing study's identity is left as it is, even
    when ``force`` lets this process join despite a difference.
    """
    if not name:
        raise ConfigError("study name is empty: give each study a name so it can be resumed")
    wanted = list(directions) if directions else [direction]
    for d in wanted:
        if d not in DIRECTIONS:
            raise ConfigError(
                f"direction {d!r} is not allowed{did_you_mean(d, DIRECTIONS)}; use one of {', '.join(DIRECTIONS)}"
            )
    new = _as_stored({**identity, "direction": ",".join(wanted), "tunewise_version": __version__})
    if name in optuna.get_all_study_names(storage):
        # Read first: creating with load_if_exists would append to a journal even when refused.
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        check_resume(study, new, force=force, directions=wanted, distributions=distributions)
        if not record:
            conflicts = _conflicts(study.user_attrs.get(IDENTITY_KEY), new)
            if conflicts:
                _say(f"study {name!r}: joining with force; its record is left as it is, this worker "
                     f"differs in:\n{_diff_lines(conflicts, _changes(study.user_attrs.get(IDENTITY_KEY), new))}")
            return study
    else:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            directions=wanted,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,  # another worker may have created it a moment ago
        )
        check_resume(study, new, force=force, directions=wanted, distributions=distributions)
    _record_identity(study, new)
    return study


def check_resume(
    study: optuna.Study,
    new: dict[str, Any],
    *,
    force: bool = False,
    directions: list[str] | None = None,
    distributions: Mapping[str, BaseDistribution] | None = None,
) -> None:
    """Refuse (ConfigError) resuming ``study`` with identity ``new``; reads, never writes.

    The same checks open_study makes, for a caller that wants them before it writes
    anything at all (``tunewise run`` checks here before a kernel starts)."""
    new = _as_stored(new)
    stored = [d.name.lower() for d in study.directions]
    wanted = directions or new.get("direction", "maximize").split(",")
    if stored != wanted:
        raise ConfigError(
            f"study {study.study_name!r} was created to {', '.join(stored)} and cannot be resumed to "
            f"{', '.join(wanted)}: Optuna cannot change a study's direction; use a new study name"
        )
    if distributions:
        _check_distributions(study, distributions)
    conflicts = _conflicts(study.user_attrs.get(IDENTITY_KEY), new)
    if conflicts and not force:
        raise ConfigError(_conflict_message(study.study_name, conflicts))


def _check_distributions(study: optuna.Study, distributions: Mapping[str, BaseDistribution]) -> None:
    """A parameter's kind, log scale and categorical choices are fixed once a trial used them
    (Optuna fails every later trial otherwise): refused, force or not."""
    used: dict[str, BaseDistribution] = {}
    for t in study.get_trials(deepcopy=False):
        for param, dist in t.distributions.items():
            used.setdefault(param, dist)
    problems = []
    for param, dist in distributions.items():
        if param not in used:
            continue
        try:
            optuna.distributions.check_distribution_compatibility(used[param], dist)
        except ValueError:
            problems.append(f"  {param}: {_describe_distribution(used[param])} -> {_describe_distribution(dist)}")
    if problems:
        raise ConfigError(
            f"study {study.study_name!r} cannot search these parameters as given, even with force: its trials "
            "already used them with another kind, scale or set of choices, and Optuna would fail every new "
            "trial (\"CategoricalDistribution does not support dynamic value space\"):\n" + "\n".join(problems)
            + f"\nKeep the old definition, or start a new study from this one's best trials: "
            f"--set study_name={study.study_name}-2 --set 'warm_start_from=[{study.study_name}]'"
        )


def _describe_distribution(dist: BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    return f"{kind} {dist.low:g}..{dist.high:g}" + (" log" if getattr(dist, "log", False) else "")


def _as_stored(identity: dict[str, Any]) -> dict[str, Any]:
    # Compare what the storage will give back (tuples come back as lists, and so on).
    return json.loads(json.dumps(identity))


_MISSING = "(not set)"


def _flat(identity: dict[str, Any] | None) -> dict[str, Any]:
    """One level: {"settings": {"epochs": 1}} -> {"settings.epochs": 1}, so a setting an
    older study never recorded is told apart from one that changed."""
    out: dict[str, Any] = {}
    for key, value in (identity or {}).items():
        if key in NESTED_FIELDS and isinstance(value, dict):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, list[Any]]:
    before, after = _flat(old), _flat(new)
    return {k: [before.get(k, _MISSING), after.get(k, _MISSING)]
            for k in {*before, *after} if before.get(k, _MISSING) != after.get(k, _MISSING)}


def _conflicts(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, list[Any]]:
    if old is None:
        return {}
    recorded = _flat(old)
    # A field an older study never recorded cannot conflict: it is only recorded.
    return {k: v for k, v in _changes(old, new).items()
            if k.split(".", 1)[0] in GUARDED_FIELDS and k in recorded}


def _record_identity(study: optuna.Study, new: dict[str, Any]) -> None:
    old = study.user_attrs.get(IDENTITY_KEY)
    if old == new:
        return
    if old is None:
        study.set_user_attr(IDENTITY_KEY, new)
        return
    changed = _changes(old, new)
    conflicts = _conflicts(old, new)  # here only when forced: check_resume refused them otherwise
    entry = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "forced": bool(conflicts),
        "changed": changed,
        "previous": old,
    }
    if conflicts:
        # A named action, never a side effect: said, and recorded with what it replaced.
        replaced = {k: v for k, v in changed.items() if k.split(".", 1)[0] in GUARDED_FIELDS}
        _say(f"study {study.study_name!r}: force=true replaces its recorded identity:\n"
             f"{_diff_lines(conflicts, changed)}")
        forced = {"at": entry["at"], "host": socket.gethostname(), "replaced": replaced}
        study.set_user_attr(FORCED_KEY, [*study.user_attrs.get(FORCED_KEY, []), forced])
    study.set_user_attr(HISTORY_KEY, [*study.user_attrs.get(HISTORY_KEY, []), entry])
    study.set_user_attr(IDENTITY_KEY, new)


def _say(text: str) -> None:
    """To stderr, whatever logging is set up (a notebook shows it under the cell)."""
    print(f"tunewise: {text}", file=sys.stderr, flush=True)


def _conflict_message(name: str, conflicts: dict[str, list[Any]], changed: dict[str, list[Any]] | None = None) -> str:
    return (
        f"study {name!r} was made for a different setup, so its trials are not comparable "
        f"with this run:\n{_diff_lines(conflicts, changed)}\n"
        "To resume it anyway: --set force=true (the CLI has no --force flag; from Python force=True, "
        "in a params file force: true); to keep both, use a new study name (--set study_name=NAME)."
    )


def _diff_lines(conflicts: dict[str, list[Any]], changed: dict[str, list[Any]] | None = None) -> str:
    """By name and value; a fingerprint only where no value says what changed (the same
    dataset setting with other files in it, or a study that recorded no space)."""
    shown = dict(conflicts)
    if any(k.startswith("search_space.") for k in shown):
        shown.pop("space_fingerprint", None)
    if "data_fingerprint" in shown:
        # Where the data lies is never refused on its own, but it explains the new fingerprint.
        shown.update({k: v for k, v in (changed or {}).items() if k.startswith("location.")})
        if any(k.startswith("location.") or k.split(".", 1)[-1] in DATA_SETTINGS for k in shown if "." in k):
            shown.pop("data_fingerprint")
        else:
            old, new = shown.pop("data_fingerprint")
            shown["data_fingerprint"] = [old, f"{new} (same data settings: the files themselves changed)"]
    return "\n".join(f"  {_label(k)}: {_value(old)} -> {_value(new)}" for k, (old, new) in sorted(shown.items(), key=_order))


def _label(key: str) -> str:
    # settings and location hold parameters by their own names (what --set takes)
    return key.split(".", 1)[1] if key.startswith(("settings.", "location.")) else key


def _value(value: Any) -> str:
    return value if value == _MISSING else repr(value)


def _order(item: tuple[str, Any]) -> tuple[int, str]:
    key = item[0]
    return ({"location": 0, "settings": 1, "search_space": 2}.get(key.split(".", 1)[0], 3) if "." in key else 3, key)


def record_params(study: optuna.Study, p: dict[str, Any], *, has_work: bool = True) -> None:
    """Store the run parameters ``p`` (minus UNRECORDED_PARAMS) in a study that has none
    (created now, or by an older tunewise): what a worker joining later starts from.

    Afterwards they are the study's record, changed by no resume and no join; only the
    budget (BUDGET_PARAMS) follows a resume that raises or lowers it and has trials to run
    (``has_work``), since joining workers stop at the recorded budget. A run with nothing
    left to do writes nothing."""
    kept = {k: v for k, v in p.items() if k not in UNRECORDED_PARAMS}
    recorded = json.loads(json.dumps(kept, default=str))  # as the storage will give it back
    stored = study.user_attrs.get(PARAMS_KEY)
    if not isinstance(stored, dict):
        study.set_user_attr(PARAMS_KEY, recorded)
        return
    changed = {k: (stored.get(k), recorded.get(k)) for k in BUDGET_PARAMS if stored.get(k) != recorded.get(k)}
    if has_work and changed:
        study.set_user_attr(PARAMS_KEY, {**stored, **{k: new for k, (_, new) in changed.items()}})
        _log.info("study %r: budget recorded for joining workers: %s", study.study_name,
                  ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))


def recorded_params(study: optuna.Study) -> dict[str, Any]:
    """The parameters ``record_params`` stored; ConfigError if the study has none."""
    recorded = study.user_attrs.get(PARAMS_KEY)
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"study {study.study_name!r} has no recorded parameters ({PARAMS_KEY}): it was not "
            "prepared by this version of tunewise; start it with `tunewise run` or "
            "`tunewise tune` first, then join it"
        )
    return dict(recorded)
