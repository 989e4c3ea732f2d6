"""The study section of a run's configuration: one study, its storage and budget, how it
searches and when it stops, with each field's default, comment and check side by side.

The study layer's functions take this section (or the values they need from it), never the
whole run configuration (tunewise/config.py, above this layer, assembles the sections).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunewise.errors import ConfigError, FieldChecks, is_int, is_number
from tunewise.train.objective_names import check_objectives

PHASES = ("quick", "focused", "validate", "final", "postmortem")
TRACKING = ("none", "mlflow", "tensorboard")  # where trials are also logged (study/tracking.py)


@dataclass(frozen=True)
class StudySettings:
    """One study: its name and storage, its budget, how it searches and when it stops."""

    phase: str = "quick"  # quick | focused | validate | final | postmortem (recorded with the study)
    study_name: str = "tunewise"  # same name again resumes the study
    storage: str | None = None  # None: a journal file in the run folder; or an Optuna storage URL
    run_dir: str = "runs/tunewise"  # where the journal, reports and summaries go
    n_trials: int = 20  # finished trials for the whole study, across resumes
    timeout: float | None = None  # seconds for the whole study, across resumes (None: no limit)
    sampler: Any = "tpe"  # name or {name: ..., args}
    pruner: Any = "median"  # name or {name: ..., args}
    stop_rules: dict | None = None  # None: the seed's defaults (plateau 0.01 over 10, failure guard)
    search_space: dict | None = None  # {param: distribution dict or fixed value}; None: the seed's space
    baseline: bool = True  # run the default settings as trial 0, the baseline to beat
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cache_dir: str | None = None  # None: $TUNEWISE_CACHE_DIR or ~/.cache/tunewise
    force: bool = False  # resume even if the space or dataset changed
    objectives: list = field(default_factory=lambda: ["f1"])  # [f1]: macro-F1 alone; add latency_ms and/or params for a Pareto front
    workers: int = 1  # worker processes filling the study together (one per GPU or CPU slot)
    gpus: list = field(default_factory=list)  # with workers > 1: GPU indices to spread them over ([]: every visible GPU, or the CPU)
    tracking: str = "none"  # none | mlflow ($MLFLOW_TRACKING_URI, else RUN_DIR/mlflow.db) | tensorboard (RUN_DIR/tensorboard)

    def problems(self) -> list[str]:
        c = FieldChecks(self)
        c.need(self.phase in PHASES, "phase", ", ".join(PHASES))
        c.need(self.tracking in TRACKING, "tracking", ", ".join(TRACKING))
        c.need(is_int(self.n_trials) and self.n_trials >= 1, "n_trials", "an integer >= 1")
        c.need(is_int(self.workers) and self.workers >= 1, "workers", "an integer >= 1")
        c.need(isinstance(self.gpus, list) and all(is_int(g) and g >= 0 for g in self.gpus)
               and len(set(self.gpus)) == len(self.gpus),
               "gpus", "a list of distinct GPU indices such as [0, 1] ([]: every visible GPU)")
        c.need(self.timeout is None or (is_number(self.timeout) and self.timeout > 0), "timeout",
               "seconds > 0, or null for no limit")
        c.need(isinstance(self.study_name, str) and self.study_name.strip() != "", "study_name", "a non-empty name")
        c.need(self.storage is None or isinstance(self.storage, str), "storage",
               "null or an Optuna storage URL / journal file path")
        c.need(self.search_space is None or isinstance(self.search_space, dict), "search_space",
               "a mapping of parameter: distribution or value")
        for flag in ("baseline", "force"):
            c.need(isinstance(getattr(self, flag), bool), flag, "true or false")
        try:
            check_objectives(self.objectives)
        except ConfigError as exc:
            c.errors.append(str(exc))
        return c.errors
