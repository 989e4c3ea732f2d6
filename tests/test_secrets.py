"""Nothing leaks, nothing is lost: a storage password given in the URL or through ${VAR}
appears in no file of the run folder (executed notebooks with their metadata, HTML,
summaries, the params file), the notebook names ${TUNEWISE_STORAGE} instead and still
opens the study with that variable set, each phase keeps its own summary in a shared
folder, and the kernels talk over IPC (no "running over TCP without encryption" warning).

Real runs against a throw-away PostgreSQL server (tests/conftest_pg.py) with trust
authentication: the server accepts any password, so the URL is the form users write."""

from __future__ import annotations

import json

import nbformat
import optuna

from conftest_pg import postgres  # noqa: F401  (fixture)
from tunewise.cli import main
from tunewise.study.storage import ENV_VAR, has_literal_secret, open_storage, shareable

URL_PASSWORD = "Url-Pa55word-7f3k"
ENV_PASSWORD = "Env-Pa55word-9q2z"
SMALL = ["--set", "epochs=1", "--set", "dataset=synthetic", "--set", "synthetic_samples=200", "--set", "pruner=none", "--set", "batch_size=64",
         "--set", "search_space={lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"]


def test_literal_secrets_are_told_from_references():
    assert has_literal_secret("postgresql://u:pw@h/db") and has_literal_secret("mysql://h/db?password=pw")
    assert not has_literal_secret("postgresql://u:${PW}@h/db") and not has_literal_secret("runs/x/study.journal")
    assert not has_literal_secret("postgresql://u@h/db")
    assert shareable("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert shareable("postgresql://u:${PW}@h/db") == "postgresql://u:${PW}@h/db"


def test_no_password_in_any_file_of_the_run_folder(postgres, tmp_path, monkeypatch, capfd):  # noqa: F811
    database = postgres.new_database().rsplit("/", 1)[1]
    host = f"127.0.0.1:{postgres.port}"
    out = tmp_path / "run"
    quick = main(["run", "quick", "--set", f"storage=postgresql://postgres:{URL_PASSWORD}@{host}/{database}",
                  "--set", "n_trials=2", *SMALL, "--out", str(out)])
    assert quick == 0
    monkeypatch.setenv("TW_TEST_PASSWORD", ENV_PASSWORD)
    validate = main(["run", "validate", "--set", "storage=postgresql://postgres:${TW_TEST_PASSWORD}@" + f"{host}/{database}",
                     "--set", "seeds=[1, 2]", *SMALL, "--out", str(out)])
    assert validate == 0
    printed = capfd.readouterr()
    assert "without encryption" not in printed.out + printed.err  # the kernels ran over IPC

    files = [f for f in out.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"quick.ipynb", "quick.html", "validate.ipynb", "validate.html", "final.yaml",
                                       "summary.json", "summary-quick.json", "summary-validate.json"}
    for f in files:
        data = f.read_bytes()
        assert URL_PASSWORD.encode() not in data, f"the URL's password is in {f.name}"
        assert ENV_PASSWORD.encode() not in data, f"the variable's password is in {f.name}"

    # The executed notebook names the variable that holds the URL, in its cell and metadata...
    nb = nbformat.read(out / "quick.ipynb", as_version=4)
    assert nb.metadata.papermill.parameters["storage"] == "${" + ENV_VAR + "}"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'storage = "${TUNEWISE_STORAGE}"' in injected[0].source
    # ...so it runs again for anyone who sets it; the ${VAR} form stays as the user wrote it.
    monkeypatch.setenv(ENV_VAR, f"postgresql://postgres:{URL_PASSWORD}@{host}/{database}")
    assert "quick" in optuna.get_all_study_names(open_storage("${" + ENV_VAR + "}", out))
    validate_nb = nbformat.read(out / "validate.ipynb", as_version=4)
    assert "${TW_TEST_PASSWORD}" in validate_nb.metadata.papermill.parameters["storage"]

    # Both phases' summaries stay in the shared folder; summary.json is the latest one.
    quick_summary = json.loads((out / "summary-quick.json").read_text())
    validate_summary = json.loads((out / "summary-validate.json").read_text())
    assert quick_summary["phase"] == "quick" and quick_summary["n_finished"] == 2
    assert validate_summary["phase"] == "validate" and validate_summary["source_study"] == "quick"
    assert json.loads((out / "summary.json").read_text())["phase"] == "validate"
    assert quick_summary["inputs"]["study"]["storage"] == f"postgresql://postgres:***@{host}/{database}"


def _headless_failing_run(tmp_path, capfd) -> str:
    """A real headless run that starts a kernel and stops at its first study lookup."""
    assert main(["run", "validate", "--set", "source_study=nope", "--out", str(tmp_path / "run")]) == 1
    printed = capfd.readouterr()
    return printed.out + printed.err


def test_headless_kernels_run_over_ipc_without_the_tcp_warning(tmp_path, capfd):
    from tunewise.execute import ipc_available, kernel_manager_class

    assert ipc_available()  # Linux: Unix sockets
    assert kernel_manager_class({}, str(tmp_path))(kernel_name="python3").transport == "ipc"
    text = _headless_failing_run(tmp_path, capfd)
    assert "ConfigError: study 'nope'" in text  # the kernel ran the notebook...
    assert "without encryption" not in text  # ...over IPC, so ipykernel had nothing to warn about


def test_over_tcp_the_warning_is_there(tmp_path, capfd, monkeypatch):
    """The check above means something: the same run over TCP prints ipykernel's warning."""
    monkeypatch.setattr("tunewise.execute.ipc_available", lambda: False)
    assert "Kernel is running over TCP without encryption" in _headless_failing_run(tmp_path, capfd)
