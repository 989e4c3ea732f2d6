"""Experiment tracking (issue 14) against a real MLflow tracking server on loopback (SQLite
backend in a temporary folder, started once for the module and stopped at its end), and
TensorBoard event files read back with TensorBoard's own reader.

Real training of timm's test_convnext at 32 px on the built-in digits (1-2 epochs). The
server is shared: the test that stops it mid-study comes last in this file (run alone, it
starts its own through the same fixture).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tunewise import notebook as tw
from tunewise import params as P
from tunewise.errors import ConfigError
from tunewise.execute import phase_params
from tunewise.phases import final as F
from tunewise.phases.tuning import tune
from tunewise.records import TRACKING_RUNS_KEY
from tunewise.study.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SPACE = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}}
FAST = {"dataset": "digits", "img_size": 32, "model": "test_convnext", "batch_size": 128, "hflip": False,
        "device": "cpu", "search_space": SPACE, "pruner": "none"}
PASSWORD = "Tr4ck-Pa55word-q8v"
TRACKING_LOG = "tunewise.study.tracking"


class Server:
    """A real `mlflow server` process group on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.log = folder / "server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                   "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout_s: float = 120) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        """The whole process group (uvicorn and MLflow's job runner): SIGTERM, SIGKILL if it
        lingers; at once with ``kill`` (a crash)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
            except ProcessLookupError:
                pass
        try:  # children left behind by a SIGTERMed leader
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        s.wait_healthy()
        yield s
    finally:
        s.stop()


@pytest.fixture
def mlflow_env(monkeypatch, request):
    """MLflow pointed at ``url`` with an experiment of the test's own; MLflow's HTTP settings
    put back afterwards (the tracker sets its short timeouts only where the user did not)."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.setenv(name, "")  # remembers the value before (or that there was none)...
        monkeypatch.delenv(name)  # ...and the tracker starts from none

    def point(url: str) -> str:
        experiment = request.node.name[:60]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        return experiment

    return point


def runs_of(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_kind: dict[str, list] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("tunewise.kind"), []).append(r)
    return by_kind


def test_one_parent_run_and_one_nested_run_per_trial_across_workers_and_a_resume(server, mlflow_env, tmp_path):
    experiment = mlflow_env(server.url)
    common = {**FAST, "run_dir": str(tmp_path / "run"), "epochs": 2, "tracking": "mlflow"}
    first = tune(P.resolve(overrides={**common, "n_trials": 4, "workers": 2}))
    assert first["n_finished"] == 4
    assert first["tracking"]["unlogged"] == [] and first["tracking"]["warning"] is None
    # The resume prunes every trial after its first epoch: the pruning step is logged too.
    second = tune(P.resolve(overrides={**common, "n_trials": 6, "pruner": {"name": "threshold", "lower": 0.999}}))
    assert second["n_finished"] == 6 and second["trials"]["pruned"] == 2
    assert second["tracking"]["unlogged"] == []
    assert second["tracking"]["parent_run_id"] == first["tracking"]["parent_run_id"]

    client = MlflowClient(server.url)
    by_kind = runs_of(client, experiment)
    [parent] = by_kind["study"]
    assert parent.info.run_id == first["tracking"]["parent_run_id"]
    assert parent.data.params["phase"] == "quick" and parent.data.params["space.lr"].startswith("{")
    assert parent.data.tags["tunewise.stop_reason"] == "budget"
    assert parent.data.metrics["best_value"] == pytest.approx(second["best_value"])
    assert parent.data.metrics["baseline_value"] == pytest.approx(second["baseline_value"])
    assert "gain" in parent.data.metrics

    trials = by_kind["trial"]
    numbers = sorted(int(r.data.tags["tunewise.trial"]) for r in trials)
    assert numbers == list(range(6)), "exactly one nested run per finished trial"
    study = optuna.load_study(study_name="tunewise", storage=open_storage(None, tmp_path / "run"))
    assert study.user_attrs[TRACKING_RUNS_KEY] == {server.url: parent.info.run_id}
    for run in trials:
        trial = study.trials[int(run.data.tags["tunewise.trial"])]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["state"] == trial.state.name
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        f1 = client.get_metric_history(run.info.run_id, "val_macro_f1")
        accuracy = client.get_metric_history(run.info.run_id, "val_accuracy")
        if trial.state == TrialState.COMPLETE:
            assert [m.step for m in f1] == [1, 2] and [m.step for m in accuracy] == [1, 2]
            assert f1[-1].value == pytest.approx(trial.value)
            assert run.data.metrics["macro_f1"] == pytest.approx(trial.value)
        else:
            assert [m.step for m in f1] == [1] and run.data.metrics["pruned_at_epoch"] == 1
            assert run.data.tags["tunewise.pruned_at_epoch"] == "1"


def test_validation_and_final_model_are_logged_and_no_password_in_any_file(server, mlflow_env, tmp_path, capfd):
    host = server.url.split("//", 1)[1]
    experiment = mlflow_env(f"http://alice:{PASSWORD}@{host}")
    root = tmp_path / "run"
    common = {**FAST, "run_dir": str(root), "epochs": 1, "test_fraction": 0.5, "tracking": "mlflow"}
    summary = tune(P.resolve(overrides={**common, "n_trials": 2}))
    assert summary["tracking"]["where"] == f"http://alice:***@{host}" and summary["tracking"]["unlogged"] == []
    val = P.resolve(overrides={**common, "phase": "validate", "seeds": [42, 777]})
    source = tw.validation_source(val)
    configs = tw.validation_configs(source, 1)
    validation = tw.run_validation(val, configs, source)
    checked = tw.record_validation(val, source, validation, validation.compare("baseline", "best"), configs)
    assert checked["tracking"]["unlogged"] == []
    p = phase_params("final", None, {"run_dir": str(root), "final_params": str(root / "final.yaml"), "tracking": "mlflow"})
    final = F.run_final(p, log=print)
    recorded = tw.record_final(p, final)
    assert recorded["tracking"]["unlogged"] == []

    client = MlflowClient(server.url)
    by_kind = runs_of(client, experiment)
    [parent], [validate], [last] = by_kind["study"], by_kind["validate"], by_kind["final"]
    assert validate.data.tags["mlflow.parentRunId"] == parent.info.run_id == last.data.tags["mlflow.parentRunId"]
    assert validate.data.tags["tunewise.verdict"] == checked["comparison"]["verdict"]
    assert validate.data.metrics["mean.best"] == pytest.approx(validation.means["best"])
    assert len(by_kind["validate run"]) == len(validation.runs) == 4  # 2 configurations x 2 seeds
    assert last.data.metrics["test.single.macro_f1"] == pytest.approx(final.scores["single"].f1)
    assert "model/model.safetensors" in {f.path for f in client.list_artifacts(last.info.run_id, "model")}

    printed = capfd.readouterr()
    assert PASSWORD not in printed.out + printed.err
    files = [f for f in root.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"summary-quick.json", "summary-validate.json", "summary-final.json", "study.journal"}
    for f in files:
        assert PASSWORD.encode() not in f.read_bytes(), f"the tracking URI's password is in {f.name}"


def test_tensorboard_writes_the_same_curves_as_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    common = {**FAST, "run_dir": str(run_dir), "epochs": 2, "tracking": "tensorboard"}
    summary = tune(P.resolve(overrides={**common, "n_trials": 2}))
    assert summary["tracking"]["unlogged"] == []
    summary = tune(P.resolve(overrides={**common, "n_trials": 3, "pruner": {"name": "threshold", "lower": 0.999}}))
    study = optuna.load_study(study_name="tunewise", storage=open_storage(None, run_dir))
    folder = run_dir / "tensorboard" / "tunewise"
    assert sorted(d.name for d in folder.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    for trial in study.trials:
        events = EventAccumulator(str(folder / f"trial-{trial.number:04d}")).Reload()
        f1 = [(e.step, e.value) for e in events.Scalars("val_macro_f1")]
        steps = [1, 2] if trial.state == TrialState.COMPLETE else [1]
        assert [s for s, _ in f1] == steps and [e.step for e in events.Scalars("val_accuracy")] == steps
        assert f1[-1][1] == pytest.approx(trial.intermediate_values[steps[-1]], rel=1e-6)
        if trial.state == TrialState.PRUNED:
            assert [e.value for e in events.Scalars("pruned_at_epoch")] == [1]
        else:
            assert events.Scalars("macro_f1")[0].value == pytest.approx(trial.value, rel=1e-6)
    best = EventAccumulator(str(folder / "study")).Reload().Scalars("best_macro_f1")
    assert best[-1].value == pytest.approx(study.best_value, rel=1e-6)


def test_unknown_tracking_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"tracking: .*allowed: none, mlflow, tensorboard"):
        P.resolve(overrides={"run_dir": str(tmp_path), "tracking": "wandb"})
    assert not any(tmp_path.iterdir())


# Last: it stops the shared server.
def test_a_server_stopped_mid_study_costs_one_warning_and_the_study_finishes(server, mlflow_env, tmp_path, caplog):
    host = server.url.split("//", 1)[1]
    experiment = mlflow_env(f"http://bob:{PASSWORD}@{host}")  # the errors name the URL: masked

    def stop_server(study, trial):
        if trial is not None and trial.number == 1:  # trial 0 is logged already, trial 1 is not yet
            server.stop(kill=True)

    caplog.set_level(logging.WARNING, logger=TRACKING_LOG)
    p = P.resolve(overrides={**FAST, "run_dir": str(tmp_path / "run"), "epochs": 1, "n_trials": 4, "tracking": "mlflow"})
    summary = tune(p, callbacks=[stop_server])
    assert summary["n_finished"] == 4 and summary["stop_reason"] == "budget"
    tracking = summary["tracking"]
    assert tracking["unlogged"] == ["trial 1", "trial 2", "trial 3", "study summary"]
    assert tracking["logged_trials"] == 1 and "cannot log to mlflow" in tracking["warning"]
    warnings = [r.getMessage() for r in caplog.records if r.name == TRACKING_LOG]
    assert sum("cannot log to mlflow" in w for w in warnings) == 1, warnings
    assert any("could not be logged" in w and "trial 1, trial 2, trial 3, study summary" in w for w in warnings)
    assert f"bob:***@{host}" in tracking["warning"]
    assert not any(PASSWORD in w for w in warnings) and PASSWORD not in caplog.text
    assert not any(PASSWORD.encode() in f.read_bytes() for f in (tmp_path / "run").rglob("*") if f.is_file())
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["tracking"]["unlogged"] == tracking["unlogged"]
    # The server's own database: trial 0 got there, nothing after it.
    stored = MlflowClient(f"sqlite:///{server.folder / 'mlflow.db'}")
    assert [r.data.tags["tunewise.trial"] for r in runs_of(stored, experiment)["trial"]] == ["0"]

    # The server back (another port: the run is found by its tag, not the recorded id): the
    # next run of the study logs what was missing, once.
    again = Server(server.folder)
    try:
        again.wait_healthy()
        mlflow_env(again.url)
        resumed = tune(p)
        assert resumed["tracking"]["unlogged"] == [] and resumed["tracking"]["logged_trials"] == 4
        by_kind = runs_of(MlflowClient(again.url), experiment)
        assert len(by_kind["study"]) == 1 and resumed["tracking"]["parent_run_id"] == tracking["parent_run_id"]
        assert sorted(r.data.tags["tunewise.trial"] for r in by_kind["trial"]) == ["0", "1", "2", "3"]
    finally:
        again.stop()
