"""Which tracker the ``tracking`` setting names (the trackers themselves: tracking.py,
tracking_mlflow.py, tracking_tensorboard.py)."""

from __future__ import annotations

from pathlib import Path

from tunewise.study.settings import StudySettings
from tunewise.study.tracking import NoTracking
from tunewise.study.tracking_mlflow import MlflowTracker
from tunewise.study.tracking_mlflow import check_installed as check_mlflow
from tunewise.study.tracking_tensorboard import TensorBoardTracker
from tunewise.study.tracking_tensorboard import check_installed as check_tensorboard


def check_tracking(settings: StudySettings) -> None:
    """ConfigError, before anything runs, when the package ``tracking`` needs is missing."""
    if settings.tracking == "mlflow":
        check_mlflow()
    elif settings.tracking == "tensorboard":
        check_tensorboard()


def open_tracker(settings: StudySettings, metric_names: list[str] | None = None) -> NoTracking:
    """The tracker ``settings.tracking`` names, for the run folder ``settings.run_dir``."""
    if settings.tracking == "mlflow":
        return MlflowTracker.from_environment(Path(settings.run_dir), metric_names or ["value"])
    if settings.tracking == "tensorboard":
        return TensorBoardTracker(Path(settings.run_dir) / "tensorboard", metric_names)
    return NoTracking()
