"""What a study is: its identity, and the parameters it was prepared with.

- ``tunewise.identity`` (study user attr) records the phase, search-space and dataset
  fingerprints, model, metric, direction and tunewise version. Resuming a study made for a
  different setup is refused (its trials would not be comparable) unless forced; every
  change is appended to ``tunewise.identity_history``.
- ``record_params`` keeps the run parameters a study was prepared with (``tunewise.params``,
  the storage URL left out), so a worker on another machine can join the study knowing
  only its name and storage.

What a study has spent is in budget.py; crash recovery in recovery.py; every key in
tunewise/records.py.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

import optuna

from tunewise import __version__
from tunewise.errors import ConfigError, did_you_mean
from tunewise.records import HISTORY_KEY, IDENTITY_KEY, PARAMS_KEY

# Never recorded in the study: the storage URL may hold a password, and where the study
# lives is what a joining worker is told, not what it reads.
UNRECORDED_PARAMS = ("storage",)

# Resuming with any of these changed mixes incomparable trials: refused unless forced.
GUARDED_FIELDS = ("space_fingerprint", "data_fingerprint", "model", "metric", "direction")
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
) -> dict[str, Any]:
    """The ``tunewise.identity`` dict for a study (open_study adds the tunewise version)."""
    return {
        "phase": phase,
        "space_fingerprint": space_fingerprint,
        "data_fingerprint": data_fingerprint,
        "model": model,
        "metric": metric,
        "direction": direction,
        "tunewise_version": __version__,
    }


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
) -> optuna.Study:
    """Create study ``name`` or resume it, refusing (ConfigError) a resume for another setup.

    ``directions`` (one per objective) makes a multi-objective study instead of ``direction``.
    A change of phase or tunewise version is recorded, never refused. A change of a
    GUARDED_FIELDS value is refused unless ``force``; the stored directions can never change.
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
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=wanted,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != wanted:
        raise ConfigError(
            f"study {name!r} was created to {', '.join(stored)} and cannot be resumed to "
            f"{', '.join(wanted)}: Optuna cannot change a study's direction; use a new study name"
        )
    _check_identity(study, new, force)
    return study


def _as_stored(identity: dict[str, Any]) -> dict[str, Any]:
    # Compare what the storage will give back (tuples come back as lists, and so on).
    return json.loads(json.dumps(identity))


def _check_identity(study: optuna.Study, new: dict[str, Any], force: bool) -> None:
    old = study.user_attrs.get(IDENTITY_KEY)
    if old == new:
        return
    if old is None:
        study.set_user_attr(IDENTITY_KEY, new)
        return
    changed = {k: [old.get(k), new.get(k)] for k in {*old, *new} if old.get(k) != new.get(k)}
    # A field an older study never recorded cannot conflict: it is only recorded.
    conflicts = {k: v for k, v in changed.items() if k in GUARDED_FIELDS and k in old}
    if conflicts and not force:
        raise ConfigError(_conflict_message(study.study_name, conflicts))
    entry = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "forced": bool(conflicts),
        "changed": changed,
        "previous": old,
    }
    study.set_user_attr(HISTORY_KEY, [*study.user_attrs.get(HISTORY_KEY, []), entry])
    study.set_user_attr(IDENTITY_KEY, new)
    if conflicts:
        _log.warning("study %r resumed with force: %s", study.study_name, _diff_lines(conflicts))


def _conflict_message(name: str, conflicts: dict[str, list[Any]]) -> str:
    return (
        f"study {name!r} was made for a different setup, so its trials are not comparable "
        f"with this run:\n{_diff_lines(conflicts)}\n"
        "To resume it anyway pass force=True (CLI: --force); to keep both, use a new study name."
    )


def _diff_lines(changes: dict[str, list[Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changes.items()))


def record_params(study: optuna.Study, p: dict[str, Any]) -> None:
    """Store the run parameters ``p`` (minus UNRECORDED_PARAMS) in the study, if changed."""
    kept = {k: v for k, v in p.items() if k not in UNRECORDED_PARAMS}
    recorded = json.loads(json.dumps(kept, default=str))  # as the storage will give it back
    if study.user_attrs.get(PARAMS_KEY) != recorded:
        study.set_user_attr(PARAMS_KEY, recorded)


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
