"""``tracking: tensorboard``: the same curves as MLflow gets, as TensorBoard event files.

``RUN_DIR/tensorboard/STUDY/trial-0007/``: one folder per trial (TensorBoard draws each as
a run): validation macro-F1 and accuracy and the training loss per epoch (step = epoch),
the objective value(s), the epoch a pruned trial stopped at, and its parameters as text.
``RUN_DIR/tensorboard/STUDY/study/``: each trial's value and the best so far (step = trial
number), and the study's headline when a run ends. ``tensorboard --logdir RUN_DIR/tensorboard``.

optuna-integration's TensorBoardCallback needs TensorFlow (and, like the MLflow callback,
is deprecated in optuna-integration 4.9): torch's own SummaryWriter writes the files here.
A trial whose folder holds an event file is logged already and is not written again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunewise.errors import ConfigError
from tunewise.records import best_value
from tunewise.study.tracking import Tracker, pruned_at, trial_curves

STUDY_FOLDER = "study"


def check_installed() -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("tracking: tensorboard needs the package tensorboard (not installed); allowed: none, "
                          "mlflow, or install it with pip install 'tunewise[tracking]'") from None


def _writer(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


def folder_name(study_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("._") or "study"


class TensorBoardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, root: Path, metric_names: list[str] | None = None) -> None:
        check_installed()
        super().__init__(str(root))
        self.root = Path(root)
        self._metric_names = list(metric_names or ["value"])
        self.folder: Path | None = None

    def _open_study(self, study: optuna.Study) -> None:
        self.folder = self.root / folder_name(study.study_name)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder) if self.folder else None}

    def _trial_folder(self, number: int) -> Path:
        return self.folder / f"trial-{number:04d}"

    def _logged(self, study: optuna.Study) -> set[int]:
        return {int(d.name.split("-", 1)[1]) for d in self.folder.glob("trial-*")
                if d.name.split("-", 1)[1].isdigit() and any(d.glob("events.out.tfevents.*"))}

    def _log_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with _writer(self._trial_folder(trial.number)) as w:
            for name, points in trial_curves(trial).items():
                for step, value in points:
                    w.add_scalar(name, value, step)
            for name, value in zip(self._metric_names, trial.values or []):
                w.add_scalar(name, value, 0)
            stopped = pruned_at(trial)
            if stopped is not None:
                w.add_scalar("pruned_at_epoch", stopped, 0)
            w.add_text("trial", f"state {trial.state.name}; params `{json.dumps(trial.params, default=str)}`")
        if trial.state == TrialState.COMPLETE:
            best = best_value(study)
            with _writer(self.folder / STUDY_FOLDER) as w:
                w.add_scalar(self._metric_names[0], trial.values[0], trial.number)
                if best is not None:
                    w.add_scalar(f"best_{self._metric_names[0]}", best, trial.number)

    def _log_summary(self, study: optuna.Study, summary: dict[str, Any]) -> None:
        with _writer(self.folder / STUDY_FOLDER) as w:
            w.add_text("summary", str(summary.get("headline", "")), int(summary.get("n_finished") or 0))

    def _log_phase(self, study: optuna.Study | None, name: str, record: dict[str, Any]) -> None:
        self.folder = self.root / name
        with _writer(self.folder) as w:
            for key, value in (record.get("metrics") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    w.add_scalar(key, value, 0)
            for i, one in enumerate(record.get("runs") or []):
                for key, value in (one.get("metrics") or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        w.add_scalar(f"runs/{key}", value, i)
            w.add_text("params", json.dumps(record.get("params") or {}, default=str))
