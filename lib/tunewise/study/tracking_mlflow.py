"""``tracking: mlflow``: one parent run per study, one nested run per trial.

Where: ``$MLFLOW_TRACKING_URI`` (a team's server; credentials through MLflow's own
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, or in the URI, masked wherever tunewise shows
it), else ``sqlite:///RUN_DIR/mlflow.db`` with artifacts in ``RUN_DIR/mlartifacts`` (MLflow's
own default store is SQLite now). The experiment is ``$MLFLOW_EXPERIMENT_NAME`` or "tunewise".

The parent run (named after the study) holds the phase, identity, search space, sampler
and pruner as params, and after each run the stop reason, best value, baseline and gain.
Every run and every worker of the study finds the same parent: its id is recorded in the
study (``TRACKING_RUNS_KEY``, per server) and it carries a tag ``tunewise.study_key`` made
of the study's name and storage. Each trial's nested run carries ``tunewise.trial``; a
trial already there is never logged again.

optuna-integration's ``MLflowCallback`` logs each trial's parameters, objective values and
its standard tags (number, state, direction, distributions). What it lacks tunewise adds
with MLflow's client: it makes a run of its own per trial with no explicit parent (nesting
only under the fluent API's active run, which a worker process does not have), it logs
the final values only (no per-epoch steps, nothing for a pruned trial), it cannot tell a
trial already logged, and an unreachable server raises inside Optuna's loop. So tunewise
makes the nested run itself, logs the curves into it, and hands its id to the callback,
which resumes that run instead of making one (its ``mlflow_run_id`` system attr).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunewise.errors import ConfigError
from tunewise.records import (
    BASELINE_KEY,
    FAIL_REASON_KEY,
    IDENTITY_KEY,
    PRUNE_REASON_KEY,
    TRACKING_RUNS_KEY,
    storage_of,
)
from tunewise.study.storage import location, redact, slot_lock
from tunewise.study.tracking import Tracker, pruned_at, trial_curves

EXPERIMENT = "tunewise"  # when $MLFLOW_EXPERIMENT_NAME is not set
# Short and few retries: a dead server must not stall the trials (MLflow's defaults retry
# for minutes). The user's own settings of these variables win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
QUIET_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # "View run ... at URL" would print a URL's password
STUDY_KEY_TAG = "tunewise.study_key"
KIND_TAG = "tunewise.kind"  # study | trial | validate | final
TRIAL_TAG = "tunewise.trial"
_MAX_TEXT = 5000


def check_installed() -> None:
    """ConfigError naming the field when MLflow or optuna-integration is missing."""
    try:
        import mlflow  # noqa: F401
        import optuna_integration.mlflow  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"tracking: mlflow needs the packages mlflow and optuna-integration ({exc.name} is not "
                          "installed); allowed: none, tensorboard, or install them with "
                          "pip install 'tunewise[tracking]'") from None


def study_key(study: optuna.Study) -> str:
    """The study's name and storage, as one tag value every worker computes alike."""
    text = f"{study.study_name}\0{location(storage_of(study))}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class MlflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, uri: str, metric_names: list[str], artifact_location: str | None = None,
                 experiment: str = EXPERIMENT) -> None:
        check_installed()
        from mlflow import MlflowClient

        password = urlsplit(uri).password if "://" in uri else None
        # The URL as a whole first (an error message naming it shows it redacted), then any
        # password left on its own.
        super().__init__(redact(uri), secrets=((uri, redact(uri)), (password or "", "***")))
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        if password:
            os.environ[QUIET_URLS] = "true"
        else:
            os.environ.setdefault(QUIET_URLS, "true")  # one line per trial is noise
        # A new SQLite store logs its schema set-up at INFO ("Creating initial MLflow database
        # tables...", alembic's migrations): red stderr lines in every first report, not news.
        for name in ("mlflow.store", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._uri = uri
        self._client = MlflowClient(tracking_uri=uri)
        self._metric_names = list(metric_names)
        self._artifact_location = artifact_location
        self._experiment_name = experiment
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.phase_run_id: str | None = None  # log_phase's run (validation, final)
        self._key: str | None = None
        self._partial: dict[int, tuple[str, bool]] = {}  # trial -> (its run, curves logged): begun when the server went away

    @classmethod
    def from_environment(cls, run_dir: Path, metric_names: list[str]) -> "MlflowTracker":
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            run_dir = run_dir.resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{run_dir / 'mlflow.db'}"
            artifacts = (run_dir / "mlartifacts").as_uri()
        return cls(uri, metric_names, artifacts, os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)

    def _describe(self) -> dict[str, Any]:
        ids = {"parent_run_id": self.parent_id} if self.phase_run_id is None else {"run_id": self.phase_run_id}
        return {"experiment": self._experiment_name, "experiment_id": self.experiment_id, **ids}

    # --- the study's parent run ----------------------------------------------------------------

    def _experiment(self) -> str:
        if self.experiment_id is None:
            found = self._client.get_experiment_by_name(self._experiment_name)
            if found is None:
                try:
                    self.experiment_id = self._client.create_experiment(self._experiment_name,
                                                                        artifact_location=self._artifact_location)
                except Exception:  # made by another worker meanwhile
                    found = self._client.get_experiment_by_name(self._experiment_name)
                    if found is None:
                        raise
            if found is not None:
                self.experiment_id = found.experiment_id
        return self.experiment_id

    def _open_study(self, study: optuna.Study) -> None:
        self._key = study_key(study)
        experiment = self._experiment()
        lock = slot_lock(study)  # two workers starting at once make one parent, not two
        lock.acquire()
        try:
            self.parent_id = self._recorded_parent(study) or self._tagged_parent(experiment)
            if self.parent_id is None:
                self.parent_id = self._new_parent(study, experiment)
            runs = dict(study.user_attrs.get(TRACKING_RUNS_KEY) or {})
            if runs.get(self.where) != self.parent_id:
                study.set_user_attr(TRACKING_RUNS_KEY, {**runs, self.where: self.parent_id})
        finally:
            lock.release()
        self._client.update_run(self.parent_id, status="RUNNING")

    def _recorded_parent(self, study: optuna.Study) -> str | None:
        run_id = (study.user_attrs.get(TRACKING_RUNS_KEY) or {}).get(self.where)
        if not run_id:
            return None
        try:
            run = self._client.get_run(run_id)
        except Exception as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "RESOURCE_DOES_NOT_EXIST" in str(exc):
                return None  # another server under the same name, or the run was removed
            raise
        return run_id if run.info.lifecycle_stage == "active" else None

    def _tagged_parent(self, experiment: str) -> str | None:
        runs = self._client.search_runs(
            [experiment], f"tags.`{STUDY_KEY_TAG}` = '{self._key}' and tags.`{KIND_TAG}` = 'study'",
            max_results=1, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _new_parent(self, study: optuna.Study, experiment: str) -> str:
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        info = self._info
        tags = {STUDY_KEY_TAG: self._key, KIND_TAG: "study", "tunewise.study": study.study_name,
                "tunewise.storage": str(info.get("storage", "")), "tunewise.phase": str(info.get("phase", "")),
                MLFLOW_RUN_NOTE: f"tunewise study {study.study_name!r} ({info.get('phase', '')} phase)"}
        run = self._client.create_run(experiment, run_name=study.study_name, tags=tags)
        self._log_params(run.info.run_id, parent_params(study, info))
        return run.info.run_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch
            self._client.log_batch(run_id, params=items[i:i + 100])

    # --- trials ----------------------------------------------------------------------------------

    def _logged(self, study: optuna.Study) -> set[int]:
        numbers: set[int] = set()
        token = None
        while True:
            page = self._client.search_runs(
                [self.experiment_id],
                f"tags.`{STUDY_KEY_TAG}` = '{self._key}' and tags.`{KIND_TAG}` = 'trial'",
                max_results=1000, page_token=token)
            numbers |= {int(r.data.tags[TRIAL_TAG]) for r in page if r.data.tags.get(TRIAL_TAG, "").isdigit()}
            token = page.token
            if not token:
                return numbers

    def _log_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        run_id, filled = self._partial.get(trial.number, (None, False))
        if run_id is None:
            start = trial.datetime_start.timestamp() * 1000 if trial.datetime_start else None
            run = self._client.create_run(
                self.experiment_id, run_name=f"trial {trial.number}", start_time=int(start) if start else None,
                tags={MLFLOW_PARENT_RUN_ID: self.parent_id, STUDY_KEY_TAG: self._key, KIND_TAG: "trial",
                      TRIAL_TAG: str(trial.number)})
            run_id = run.info.run_id
            self._partial[trial.number] = (run_id, False)
        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, points in trial_curves(trial).items()
                   for step, value in points]
        stopped = pruned_at(trial)
        if stopped is not None:
            metrics.append(Metric("pruned_at_epoch", stopped, now, 0))
        tags = [RunTag(k, _text(v)) for k, v in trial_tags(trial).items()]
        if not filled:  # once: a second try after the server came back must not repeat the curves' points
            for i in range(0, max(len(metrics), 1), 1000):
                self._client.log_batch(run_id, metrics=metrics[i:i + 1000], tags=tags if i == 0 else [])
            self._partial[trial.number] = (run_id, True)
        self._callback(study, trial, run_id)
        if trial.state == TrialState.FAIL:
            self._client.set_terminated(run_id, "FAILED")
        self._partial.pop(trial.number, None)

    def _callback(self, study: optuna.Study, trial: FrozenTrial, run_id: str) -> None:
        """optuna-integration's MLflowCallback, on the run made above: parameters, objective
        values, and its tags (number, state, direction, distributions); it ends the run."""
        from optuna_integration.mlflow import MLflowCallback
        from optuna_integration.mlflow.mlflow import RUN_ID_ATTRIBUTE_KEY

        with warnings.catch_warnings():
            # Deprecated in optuna-integration 4.9 (removal planned for 6.0); the extra pins < 6.
            warnings.simplefilter("ignore", FutureWarning)
            callback = MLflowCallback(tracking_uri=self._uri, metric_name=self._metric_names[:len(trial.values or [])]
                                      or "value", create_experiment=False,
                                      mlflow_kwargs={"run_name": f"trial {trial.number}"}, tag_trial_user_attrs=False)
        frozen = copy.copy(trial)
        frozen._system_attrs = {**trial.system_attrs, RUN_ID_ATTRIBUTE_KEY: run_id}
        callback(study, frozen)

    # --- the study's outcome, and the phases after tuning ------------------------------------

    def _log_summary(self, study: optuna.Study, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        step = int(summary.get("n_finished") or 0)
        now = int(time.time() * 1000)
        figures = {"best_value": summary.get("best_value"), "baseline_value": summary.get("baseline_value"),
                   "gain": summary.get("gain"), "relative_gain": summary.get("relative_gain"),
                   "n_finished": summary.get("n_finished"), "elapsed_s": summary.get("elapsed_s"),
                   **{f"trials_{k}": v for k, v in (summary.get("trials") or {}).items()}}
        metrics = [Metric(k, float(v), now, step) for k, v in figures.items() if isinstance(v, (int, float))]
        details = summary.get("stop_details") or {}
        tags = {"tunewise.stop_reason": summary.get("stop_reason"), "tunewise.stop_message": details.get("message"),
                "tunewise.best_params": summary.get("best_params"), "tunewise.headline": summary.get("headline"),
                MLFLOW_RUN_NOTE: summary.get("headline")}
        self._client.log_batch(self.parent_id, metrics=metrics,
                               tags=[RunTag(k, _text(v)) for k, v in tags.items() if v is not None])
        self._client.set_terminated(self.parent_id, "KILLED" if summary.get("interrupted") else "FINISHED")

    def _log_phase(self, study: optuna.Study | None, name: str, record: dict[str, Any]) -> None:
        """A run for a phase after tuning (validation, final), nested under the study it
        builds on when that study has a run on this server; one nested run per training run."""
        from mlflow.entities import Metric, RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        experiment = self._experiment()
        parent = (study.user_attrs.get(TRACKING_RUNS_KEY) or {}).get(self.where) if study is not None else None
        tags = {KIND_TAG: name, **({MLFLOW_PARENT_RUN_ID: parent} if parent else {}),
                **({"tunewise.study": study.study_name} if study is not None else {}), **(record.get("tags") or {})}
        run = self._client.create_run(experiment, run_name=name, tags={k: _text(v) for k, v in tags.items()})
        run_id = self.phase_run_id = run.info.run_id
        now = int(time.time() * 1000)
        self._log_params(run_id, record.get("params") or {})
        metrics = [Metric(k, float(v), now, 0) for k, v in (record.get("metrics") or {}).items() if _is_number(v)]
        self._client.log_batch(run_id, metrics=metrics)
        for i, one in enumerate(record.get("runs") or []):
            child = self._client.create_run(experiment, run_name=str(one.get("name", f"{name} run {i}")),
                                            tags={MLFLOW_PARENT_RUN_ID: run_id, KIND_TAG: f"{name} run"})
            self._client.log_batch(
                child.info.run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in (one.get("metrics") or {}).items() if _is_number(v)],
                tags=[RunTag(k, _text(v)) for k, v in (one.get("params") or {}).items()])
            self._client.set_terminated(child.info.run_id)
        for folder in record.get("artifacts") or []:
            self._client.log_artifacts(run_id, str(folder), artifact_path=Path(folder).name)
        self._client.set_terminated(run_id)


def parent_params(study: optuna.Study, info: dict[str, Any]) -> dict[str, Any]:
    """What a study's parent run holds as params: the phase, sampler, pruner, what makes
    its scores comparable (identity) and one ``space.NAME`` per searched parameter."""
    identity = study.user_attrs.get(IDENTITY_KEY) or {}
    params = {"phase": info.get("phase"), "study_name": study.study_name, "sampler": info.get("sampler"),
              "pruner": info.get("pruner"), "n_trials": info.get("n_trials"),
              "directions": ",".join(d.name.lower() for d in study.directions)}
    for key in ("model", "metric", "data_fingerprint", "space_fingerprint"):
        if key in identity:
            params[f"identity.{key}"] = identity[key]
    for key, value in (identity.get("settings") or {}).items():
        params[f"fixed.{key}"] = value
    for key, value in (info.get("search_space") or {}).items():
        params[f"space.{key}"] = value
    return {k: v for k, v in params.items() if v is not None}


def trial_tags(trial: FrozenTrial) -> dict[str, Any]:
    """What a trial's run carries besides MLflowCallback's tags: why it failed or was pruned,
    whether it is the baseline, how far it trained."""
    attrs = trial.user_attrs
    tags = {"tunewise.state": trial.state.name, "tunewise.baseline": bool(attrs.get(BASELINE_KEY))}
    for key in (FAIL_REASON_KEY, PRUNE_REASON_KEY, "epochs_run", "best_epoch"):
        if attrs.get(key) is not None:
            tags[f"tunewise.{key}"] = attrs[key]
    stopped = pruned_at(trial)
    if stopped is not None:
        tags["tunewise.pruned_at_epoch"] = stopped
    return tags


def _text(value: Any) -> str:
    return str(value)[:_MAX_TEXT]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
