"""Single macro-F1 or a Pareto front: the one place that decides, and everything that follows.

`objectives: [f1]` (the default) makes a ``SingleObjective`` study; `[f1, latency_ms,
params]` (or any of them after `f1`) a ``ParetoFront`` one. Choose once (``strategy_for(objectives)``
for a run's objectives, ``strategy_of(study)`` for a study on disk) and ask it: the
directions and metric names, whether the pruner is used, which stop rules apply (and a note
for each one left out), the training objective, how to open the study, what its summary
adds, which final charts to draw, and what the later phases can do with it.

What follows from a Pareto front, said rather than crashed into:

- Optuna cannot report or prune a multi-objective trial: the pruner is not used.
- Stop rules that watch one best value (plateau, target, roi, noise_floor) do not apply;
  budget and failure_guard do. Skipped rules are listed in the summary.
- Narrowing (the focused phase) and the quick-to-focused gate need one best value: pick a
  point with `best_under` and validate it instead.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from tunewise.errors import ConfigError
from tunewise.records import identity, ranked
from tunewise.study import pareto
from tunewise.study.identity import open_study
from tunewise.study.settings import StudySettings
from tunewise.study.storage import load_if_exists
from tunewise.study.stoprules import DEFAULT_STOP_RULES, RULES, StopRule, build_stop_rules
from tunewise.train.multiobjective import MultiObjective
from tunewise.train.objective_names import check_objectives, directions, metric_names
from tunewise.train.objective import Objective

METRIC = "macro_f1"  # what every tunewise study optimizes first
PARETO_RULES = ("budget", "failure_guard")  # the stop rules that need no single best value


class ObjectiveStrategy:
    """What a study's objectives decide. The answers here are macro-F1 alone's (one best
    value, pruning, every stop rule, the focused phase's gate); ParetoFront overrides them."""

    objectives: tuple[str, ...] = ("f1",)
    one_best_value = True  # a gate, narrowing, validation and the phase table can use it
    final_charts = ("history", "importances")  # report/charts.py functions, drawn in this order

    @property
    def directions(self) -> list[str]:
        return ["maximize"]

    @property
    def metric_names(self) -> list[str]:
        return [METRIC]

    def pruner(self, pruner: optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
        return pruner

    def stop_rules(self, config: dict[str, Any] | None,
                   elapsed_s: Callable[[], float] | None = None) -> tuple[list[StopRule], list[str]]:
        """(the stop rules that apply, a note per rule left out)."""
        return build_stop_rules(config, elapsed_s=elapsed_s), []

    def not_applied(self, settings: StudySettings) -> list[str]:
        """What a run with these study settings leaves out, one note each."""
        return []

    def objective(self, *args, **kwargs) -> Objective:
        return Objective(*args, **kwargs)

    def open_study(self, name: str, storage, *, identity: dict[str, Any], sampler=None, pruner=None,
                   force: bool = False, distributions=None, record: bool = True) -> optuna.Study:
        """Create or resume study `name`; a multi-objective study of that name is refused.
        `record=False`: a joining worker, which leaves the study's identity as it is."""
        existing = load_if_exists(storage, name)
        if existing is not None and len(existing.directions) > 1:
            stored = _stored_objectives(existing)
            raise ConfigError(f"study {name!r} is multi-objective ({stored}); resume it with objectives: {stored}, "
                              "or use a new study name for a single-objective search")
        return open_study(name, storage, identity=identity, sampler=sampler, pruner=pruner, force=force,
                          distributions=distributions, record=record)

    def summary_extra(self, study: optuna.Study, settings: StudySettings) -> dict[str, Any]:
        return {}

    def final_tables(self, study: optuna.Study) -> list[tuple[str, list[dict[str, Any]]]]:
        """(caption, rows) of each table that closes a phase, after the final charts."""
        return []

    live_chart_note = None  # None: a live chart of the score per trial is drawn while it runs
    gate_note = None  # None: the seed's gate between phases applies

    def refuse_narrowing(self, study: optuna.Study) -> None:
        """ConfigError when the focused phase cannot narrow around `study` (never here)."""

    def ranked(self, study: optuna.Study) -> list[FrozenTrial]:
        """The trials worth starting from (a warm start), best first: every complete trial."""
        return ranked(study.get_trials(deepcopy=False), study.directions[0])


class SingleObjective(ObjectiveStrategy):
    """Macro-F1 alone: one best value, pruning, every stop rule, the focused phase's gate."""


class ParetoFront(ObjectiveStrategy):
    """Macro-F1 against latency and/or size: a Pareto front, no pruning, no single-value rules."""

    one_best_value = False
    final_charts = ("pareto_figure",)
    live_chart_note = ("Multi-objective search: no live chart (it draws one score per trial); "
                       "the Pareto front is drawn when the search ends.")
    gate_note = ("<b>No gate for a multi-objective study.</b> The seed's rule compares one best score with the "
                 "baseline; here every point of the Pareto front trades macro-F1 for speed or size. Pick one "
                 "(<code>best_under</code>) and validate it.")

    def __init__(self, objectives: Sequence[str]) -> None:
        self.objectives = tuple(check_objectives(list(objectives)))

    @property
    def directions(self) -> list[str]:
        return directions(self.objectives)

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.objectives)

    def pruner(self, pruner: optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()  # Optuna cannot prune a multi-objective trial

    def stop_rules(self, config: dict[str, Any] | None,
                   elapsed_s: Callable[[], float] | None = None) -> tuple[list[StopRule], list[str]]:
        config = dict(config or {})
        wanted = {**DEFAULT_STOP_RULES, **config}
        skipped = [name for name, args in wanted.items()
                   if name in RULES and name not in PARETO_RULES and args not in (None, False)]
        kept = {**{k: v for k, v in config.items() if k in PARETO_RULES or k not in RULES},
                **{k: False for k in RULES if k not in PARETO_RULES}}
        notes = [f"stop rule {name} not applied: it watches one best value, and a multi-objective study "
                 "has a Pareto front instead" for name in skipped]
        return build_stop_rules(kept, elapsed_s=elapsed_s), notes

    def not_applied(self, settings: StudySettings) -> list[str]:
        notes = self.stop_rules(settings.stop_rules)[1]
        if settings.pruner not in (None, "none", {"name": "none"}):
            notes.append("pruner not used: Optuna cannot prune a multi-objective trial")
        return notes

    def objective(self, *args, **kwargs) -> Objective:
        return MultiObjective(*args, objectives=self.objectives, **kwargs)

    def open_study(self, name: str, storage, *, identity: dict[str, Any], sampler=None, pruner=None,
                   force: bool = False, distributions=None, record: bool = True) -> optuna.Study:
        """Create or resume multi-objective study `name`; refuse one made for other objectives,
        and (as identity.open_study does for any study) a resume for another setup unless `force`."""
        existing = load_if_exists(storage, name)
        if existing is not None:
            stored = _stored_objectives(existing) or ["f1"]
            if list(stored) != list(self.objectives):
                raise ConfigError(
                    f"study {name!r} optimizes {stored} and cannot be resumed with objectives {list(self.objectives)}: "
                    "Optuna cannot change a study's objectives; use a new study name")
        return open_study(name, storage, directions=self.directions, sampler=sampler, force=force,
                          identity={**identity, "objectives": list(self.objectives)}, distributions=distributions,
                          record=record)

    def summary_extra(self, study: optuna.Study, settings: StudySettings) -> dict[str, Any]:
        """The objectives, the front, and what was left out."""
        return {"objectives": pareto.objective_names(study), "pareto_front": pareto.pareto_rows(study),
                "not_applied": self.not_applied(settings)}

    def final_tables(self, study: optuna.Study) -> list[tuple[str, list[dict[str, Any]]]]:
        return [(f"Pareto front of {study.study_name}", pareto.pareto_rows(study))]

    def ranked(self, study: optuna.Study) -> list[FrozenTrial]:
        """The Pareto front, best macro-F1 first."""
        return pareto.pareto_front(study)

    def refuse_narrowing(self, study: optuna.Study) -> None:
        raise ConfigError(
            f"source_study: {study.study_name} is multi-objective: the focused phase narrows around one best value; "
            "allowed: a single-objective study (objectives: [f1]), or pick a point of the front with best_under and validate it"
        )


def strategy_for(objectives: Sequence[str] | None) -> ObjectiveStrategy:
    """The strategy a run with these `objectives` uses ([f1] or none: macro-F1 alone)."""
    names = list(objectives or ["f1"])
    return ParetoFront(names) if len(names) > 1 else SingleObjective()


def strategy_of(study: optuna.Study) -> ObjectiveStrategy:
    """The strategy a study on disk was made with (from its directions and identity)."""
    return ParetoFront(pareto.objective_names(study)) if len(study.directions) > 1 else SingleObjective()


def _stored_objectives(study: optuna.Study) -> list[str] | None:
    return identity(study).get("objectives")
