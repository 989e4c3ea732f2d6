"""The run configuration: every parameter's default, its check, and the views the library
takes of it (the data spec, the fixed training settings).

The edges (params files, `--set`, papermill and notebook parameters; see params.py) speak one
flat set of names; the library below them reads only this module, never params.py.
"""

from __future__ import annotations

from typing import Any, Mapping

from tunewise.data.sources import DataSpec
from tunewise.data.splits import check_test_fraction
from tunewise.errors import ConfigError, did_you_mean
from tunewise.train.hparams import TrainConfig

# Study and data settings (the training settings are TrainConfig's fields, also top level).
STUDY_DEFAULTS: dict[str, Any] = {
    "phase": "quick",  # quick | focused | validate | final | postmortem (recorded with the study)
    "study_name": "tunewise",  # same name again resumes the study
    "storage": None,  # None: a journal file in the run folder; or an Optuna storage URL
    "run_dir": "runs/tunewise",  # where the journal, reports and summaries go
    "n_trials": 20,  # finished trials for the whole study, across resumes
    "timeout": None,  # seconds for the whole study, across resumes (None: no limit)
    "sampler": "tpe",  # name or {name: ..., args}
    "pruner": "median",  # name or {name: ..., args}
    "stop_rules": None,  # None: the seed's defaults (plateau 0.01 over 10, failure guard)
    "search_space": None,  # {param: distribution dict or fixed value}; None: the seed's space
    "baseline": True,  # run the default settings as trial 0, the baseline to beat
    "seeds": [42, 777, 2024],  # validation phase: seeds to retrain with
    "val_fraction": 0.2,  # share of images held out for validation (stratified)
    "split_seed": 42,  # seed of the train/validation split
    "test_fraction": "auto",  # untouched test split: auto (0.1 if every class keeps 10+ test images, else none) | 0 | a share
    "test_seed": 0,  # seed of the test split, drawn first and independent of split_seed
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "cache_dir": None,  # None: $TUNEWISE_CACHE_DIR or ~/.cache/tunewise
    "force": False,  # resume even if the space or dataset changed
    "objectives": ["f1"],  # [f1]: macro-F1 alone; add latency_ms and/or params for a Pareto front
    "workers": 1,  # worker processes filling the study together (one per GPU or CPU slot)
    "gpus": [],  # with workers > 1: GPU indices to spread them over ([]: every visible GPU, or the CPU)
}

# What the later phases build on; ignored by the phases that do not use them.
PHASE_DEFAULTS: dict[str, Any] = {
    "source_study": "",  # focused/validate: the study to build on ("" : the previous phase's)
    "focus_mode": "warm_start",  # focused: warm_start (new study, best trials enqueued) | resume
    "min_relative_gain": 0.05,  # focused: go on only if the quick gain beat this share
    "always_run": False,  # focused: run even when the gate says tuning stopped paying
    "top_share": 0.2,  # focused: narrow the space to the best share of trials...
    "top_k": 0,  # ...or to the best k trials (0: use top_share); validate: configs to retrain
    "margin": 0.1,  # focused: widen narrowed ranges by this share of their width
    "warm_start_n": 5,  # focused: best earlier trials enqueued first
    "folds": 0,  # validate: k stratified folds per seed (0: one split per seed)
    "params_out": "final.yaml",  # validate: winning configuration, written in the run folder
    "final_params": "",  # final: the params file to train ("": params_out in the run folder)
    "final_folds": 0,  # final: also a k-fold ensemble of k models on k-1 folds each (0: single model only)
    "predict_images": "",  # final: a folder or CSV of images to predict with the exported model ("": none)
    "studies": [],  # postmortem: study names to analyse ([] : every study in the storage)
    "interactive": True,  # widgets and live charts (tunewise run sets false)
    "warm_start_from": [],  # start from the best trials of these studies ([auto]: same dataset, [family]: same model family)
    "max_latency_ms": 0.0,  # postmortem: best macro-F1 within this latency, ms per image (0: no limit)
    "max_params": 0,  # postmortem: best macro-F1 within this many parameters (0: no limit)
}

DATA_KEYS = [f for f in DataSpec.__dataclass_fields__]
TRAIN_KEYS = TrainConfig.names()
DEFAULTS: dict[str, Any] = {
    **{k: getattr(DataSpec(), k) for k in DATA_KEYS},
    **{k: getattr(TrainConfig(), k) for k in TRAIN_KEYS},
    **STUDY_DEFAULTS,
    **PHASE_DEFAULTS,
}

PHASES = ("quick", "focused", "validate", "final", "postmortem")

# The seed's wide space for the quick phase (lr, batch size, weight decay, dropout).
SEED_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
}


def check_keys(values: dict[str, Any], where: str) -> None:
    unknown = [k for k in values if k not in DEFAULTS]
    if unknown:
        raise ConfigError(
            "\n".join(f"{where}: unknown parameter {k!r}{did_you_mean(k, DEFAULTS)}" for k in unknown)
            + "\nallowed: " + ", ".join(sorted(DEFAULTS))
        )




def resolve(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS <- values, every key and value checked."""
    values = dict(values or {})
    check_keys(values, "parameters")
    p = {**DEFAULTS, **values}
    check_values(p)
    return p


def replace(p: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """`p` with `changes`, checked again (the way phases derive a variant of their parameters)."""
    return resolve({**p, **changes})

def check_values(p: dict[str, Any]) -> None:
    errors = []

    def need(ok: bool, key: str, allowed: str):
        if not ok:
            errors.append(f"{key}: {p[key]!r} is not allowed; allowed: {allowed}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    need(is_int(p["n_trials"]) and p["n_trials"] >= 1, "n_trials", "an integer >= 1")
    need(is_int(p["workers"]) and p["workers"] >= 1, "workers", "an integer >= 1")
    need(isinstance(p["gpus"], list) and all(is_int(g) and g >= 0 for g in p["gpus"]) and len(set(p["gpus"])) == len(p["gpus"]),
         "gpus", "a list of distinct GPU indices such as [0, 1] ([]: every visible GPU)")
    need(p["timeout"] is None or (isinstance(p["timeout"], (int, float)) and not isinstance(p["timeout"], bool) and p["timeout"] > 0),
         "timeout", "seconds > 0, or null for no limit")
    need(isinstance(p["study_name"], str) and p["study_name"].strip() != "", "study_name", "a non-empty name")
    need(p["storage"] is None or isinstance(p["storage"], str), "storage", "null or an Optuna storage URL / journal file path")
    need(isinstance(p["seeds"], list) and p["seeds"] and all(is_int(s) for s in p["seeds"]), "seeds", "a non-empty list of integers")
    need(isinstance(p["val_fraction"], float) and 0 < p["val_fraction"] < 1, "val_fraction", "a number strictly between 0 and 1")
    try:
        check_test_fraction(p["test_fraction"])
    except ConfigError as exc:
        errors.append(str(exc))
    need(is_int(p["test_seed"]) and 0 <= p["test_seed"] < 2**32, "test_seed", "an integer >= 0")
    need(p["search_space"] is None or isinstance(p["search_space"], dict), "search_space", "a mapping of parameter: distribution or value")
    need(p["phase"] in PHASES, "phase", ", ".join(PHASES))
    need(p["focus_mode"] in ("warm_start", "resume"), "focus_mode", "warm_start, resume")
    need(isinstance(p["min_relative_gain"], (int, float)) and not isinstance(p["min_relative_gain"], bool), "min_relative_gain", "a number, e.g. 0.05 for 5%")
    need(isinstance(p["top_share"], (int, float)) and 0 < p["top_share"] <= 1, "top_share", "a share in (0, 1]")
    need(is_int(p["top_k"]) and p["top_k"] >= 0, "top_k", "an integer >= 0")
    need(isinstance(p["margin"], (int, float)) and 0 <= p["margin"] <= 1, "margin", "a share in [0, 1]")
    need(is_int(p["warm_start_n"]) and p["warm_start_n"] >= 0, "warm_start_n", "an integer >= 0")
    need(is_int(p["folds"]) and (p["folds"] == 0 or p["folds"] >= 2), "folds", "0 (one split per seed) or an integer >= 2")
    need(is_int(p["final_folds"]) and (p["final_folds"] == 0 or p["final_folds"] >= 2), "final_folds",
         "0 (a single model) or an integer >= 2 (a k-fold ensemble besides it)")
    need(isinstance(p["final_params"], str), "final_params", "a params file path, or \"\" for params_out in the run folder")
    need(isinstance(p["predict_images"], str), "predict_images", "a folder or CSV of images, or \"\" for none")
    need(isinstance(p["studies"], list) and all(isinstance(x, str) for x in p["studies"]), "studies", "a list of study names")
    need(isinstance(p["warm_start_from"], list) and all(isinstance(x, str) for x in p["warm_start_from"]),
         "warm_start_from", "a list of study names, [auto] for the studies on the same dataset, [family] for the same model family")
    need(isinstance(p["max_latency_ms"], (int, float)) and not isinstance(p["max_latency_ms"], bool) and p["max_latency_ms"] >= 0,
         "max_latency_ms", "milliseconds per image >= 0 (0: no limit)")
    need(is_int(p["max_params"]) and p["max_params"] >= 0, "max_params", "an integer >= 0 (0: no limit)")
    from tunewise.study.objectives import check_objectives  # here: it imports torch and the training stack

    try:
        check_objectives(p["objectives"])
    except ConfigError as exc:
        errors.append(str(exc))
    for flag in ("baseline", "force", "skip_bad_images", "always_run", "interactive"):
        need(isinstance(p[flag], bool), flag, "true or false")
    if errors:
        raise ConfigError("\n".join(errors))


def data_spec(p: dict[str, Any]) -> DataSpec:
    return DataSpec(**{k: p[k] for k in DATA_KEYS})


def train_settings(p: dict[str, Any]) -> dict[str, Any]:
    """The fixed training settings: every TrainConfig field the parameters hold."""
    return {k: p[k] for k in TRAIN_KEYS}
