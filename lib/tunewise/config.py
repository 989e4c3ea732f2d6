"""The run configuration: one frozen `RunConfig` made of sections, each with its fields'
defaults, comments and checks side by side.

- `data`: which pixels (`tunewise.data.sources.DataSpec`, also the cache key);
- `split`: how the images are split for scoring a trial (`tunewise.data.splits.SplitSettings`);
- `train`: the fixed training settings (`tunewise.train.hparams.TrainConfig`);
- `study`: the study and its budget, sampler, pruner, stop rules, storage
  (`tunewise.study.settings.StudySettings`);
- `phase`: what the later phases build on and how (`PhaseSettings`, here).

Each section is defined in the layer that reads it, so the layers below take their section
(`plan_workers(cfg.study, ...)`, `load_images(cfg.data)`) and never import this module.

The edges (params files, `--set`, papermill and notebook parameters; see params.py) speak one
flat set of names, the same in every section: `RunConfig.from_flat` resolves them once, and
`cfg["n_trials"]` / `dict(cfg)` give the flat view back where a flat name is what is needed
(papermill's parameters, the record a study keeps). The library below reads this module,
never params.py; functions take the section they need (`cfg.data`, `cfg.train`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

from tunewise.data.sources import BUILTIN, DataSpec
from tunewise.errors import ConfigError, FieldChecks, did_you_mean, is_int, is_number
from tunewise.train.hparams import TrainConfig
from tunewise.data.splits import SplitSettings
from tunewise.study.settings import PHASES, StudySettings  # noqa: F401  (PHASES: re-exported)

FOCUS_MODES = ("warm_start", "resume")
# Each phase's notebook in notebooks/, numbered in pipeline order (1_quick.ipynb, ...).
NOTEBOOK_FILES = {phase: f"{i}_{phase}.ipynb" for i, phase in enumerate(PHASES, start=1)}

# Parameters holding a file or folder: recorded absolute (study record, final.yaml), so a
# worker or a params file works from any folder. Built-in dataset names stay names.
PATH_KEYS = ("dataset", "image_dir", "run_dir", "cache_dir", "pretrained_file")
# What decides which images, split into which train/validation halves, a score is measured on.
SPLIT_KEYS = ("val_fraction", "split_seed")
# Training settings that never change a score (memory and speed only).
SCORE_NEUTRAL_KEYS = ("eval_batch_size",)

# The seed's wide space for the quick phase (lr, batch size, weight decay, dropout).
SEED_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
}


@dataclass(frozen=True)
class PhaseSettings:
    """What the later phases build on and how; ignored by the phases that do not use them."""

    source_study: str = ""  # focused/validate: the study to build on ("" : the previous phase's)
    focus_mode: str = "warm_start"  # focused: warm_start (new study, best trials enqueued) | resume
    min_relative_gain: float = 0.05  # focused: go on only if the quick gain beat this share
    always_run: bool = False  # focused: run even when the gate says tuning stopped paying
    top_share: float = 0.2  # focused: narrow the space to the best share of trials...
    top_k: int = 0  # ...or to the best k trials (0: use top_share); validate: configs to retrain
    margin: float = 0.1  # focused: widen narrowed ranges by this share of their width
    warm_start_n: int = 5  # focused: best earlier trials enqueued first
    seeds: list = field(default_factory=lambda: [42, 777, 2024])  # validation phase: seeds to retrain with
    folds: int = 0  # validate: k stratified folds per seed (0: one split per seed)
    params_out: str = "final.yaml"  # validate: winning configuration, written in the run folder
    final_params: str = ""  # final: the params file to train ("": params_out in the run folder)
    final_folds: int = 0  # final: also a k-fold ensemble of k models on k-1 folds each (0: single model only)
    predict_images: str = ""  # final: a folder or CSV of images to predict with the exported model ("": none)
    studies: list = field(default_factory=list)  # postmortem: study names to analyse ([] : every study in the storage)
    interactive: bool = True  # widgets and live charts (tunewise run sets false)
    warm_start_from: list = field(default_factory=list)  # start from the best trials of these studies ([auto]: same dataset, [family]: same model family)
    max_latency_ms: float = 0.0  # postmortem: best macro-F1 within this latency, ms per image (0: no limit)
    max_params: int = 0  # postmortem: best macro-F1 within this many parameters (0: no limit)
    new_study: bool = False  # focused/validate: use data or training settings other than the source study's

    def problems(self) -> list[str]:
        c = FieldChecks(self)
        c.need(self.focus_mode in FOCUS_MODES, "focus_mode", ", ".join(FOCUS_MODES))
        c.need(is_number(self.min_relative_gain), "min_relative_gain", "a number, e.g. 0.05 for 5%")
        c.need(is_number(self.top_share) and 0 < self.top_share <= 1, "top_share", "a share in (0, 1]")
        c.need(is_int(self.top_k) and self.top_k >= 0, "top_k", "an integer >= 0")
        c.need(is_number(self.margin) and 0 <= self.margin <= 1, "margin", "a share in [0, 1]")
        c.need(is_int(self.warm_start_n) and self.warm_start_n >= 0, "warm_start_n", "an integer >= 0")
        c.need(isinstance(self.seeds, list) and bool(self.seeds) and all(is_int(s) for s in self.seeds), "seeds",
               "a non-empty list of integers")
        c.need(is_int(self.folds) and (self.folds == 0 or self.folds >= 2), "folds",
               "0 (one split per seed) or an integer >= 2")
        c.need(isinstance(self.studies, list) and all(isinstance(x, str) for x in self.studies), "studies",
               "a list of study names")
        c.need(isinstance(self.warm_start_from, list) and all(isinstance(x, str) for x in self.warm_start_from),
               "warm_start_from",
               "a list of study names, [auto] for the studies on the same dataset, [family] for the same model family")
        c.need(is_number(self.max_latency_ms) and self.max_latency_ms >= 0, "max_latency_ms",
               "milliseconds per image >= 0 (0: no limit)")
        c.need(is_int(self.max_params) and self.max_params >= 0, "max_params", "an integer >= 0 (0: no limit)")
        c.need(is_int(self.final_folds) and (self.final_folds == 0 or self.final_folds >= 2), "final_folds",
               "0 (a single model) or an integer >= 2 (a k-fold ensemble besides it)")
        c.need(isinstance(self.final_params, str), "final_params", "a params file path, or \"\" for params_out in the run folder")
        c.need(isinstance(self.predict_images, str), "predict_images", "a folder or CSV of images, or \"\" for none")
        for flag in ("always_run", "interactive", "new_study"):
            c.need(isinstance(getattr(self, flag), bool), flag, "true or false")
        return c.errors


def _data_problems(data: DataSpec) -> list[str]:
    # The data spec checks its own values when the images load; resolving checks the flag
    # a wrong type of which would only surface deep in decoding.
    if not isinstance(data.skip_bad_images, bool):
        return [f"skip_bad_images: {data.skip_bad_images!r} is not allowed; allowed: true or false"]
    return []


# section name -> its type, in the order the flat names are listed
SECTIONS: dict[str, type] = {
    "data": DataSpec, "split": SplitSettings, "train": TrainConfig, "study": StudySettings, "phase": PhaseSettings,
}
# flat name -> the section that holds it
SECTION_OF: dict[str, str] = {f.name: section for section, kind in SECTIONS.items() for f in fields(kind)}
DATA_KEYS = [f.name for f in fields(DataSpec)]
TRAIN_KEYS = TrainConfig.names()
DEFAULTS: dict[str, Any] = {name: getattr(kind(), name) for kind in SECTIONS.values() for name in (f.name for f in fields(kind))}


@dataclass(frozen=True, eq=False)
class RunConfig(Mapping):
    """Every parameter of a run, resolved once, in sections; also the flat mapping of names."""

    data: DataSpec = field(default_factory=DataSpec)
    split: SplitSettings = field(default_factory=SplitSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    study: StudySettings = field(default_factory=StudySettings)
    phase: PhaseSettings = field(default_factory=PhaseSettings)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "RunConfig":
        """DEFAULTS <- `values` (flat names), every key and value checked (ConfigError)."""
        check_keys(values, "parameters")
        by_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for name, value in values.items():
            by_section[SECTION_OF[name]][name] = value
        cfg = cls(**{s: SECTIONS[s](**kw) for s, kw in by_section.items()})
        cfg.check()
        return cfg

    def check(self) -> None:
        errors = [*_data_problems(self.data), *self.study.problems(), *self.split.problems(), *self.phase.problems()]
        if errors:
            raise ConfigError("\n".join(errors))

    def replace(self, **changes: Any) -> "RunConfig":
        """This config with some flat names changed, checked again."""
        return RunConfig.from_flat({**self.flat(), **changes})

    def flat(self) -> dict[str, Any]:
        """The flat names and values, as a params file holds them."""
        return {name: self[name] for name in DEFAULTS}

    def train_settings(self) -> dict[str, Any]:
        """The fixed training settings, as a dict of TrainConfig fields."""
        return self.train.to_dict()

    # Mapping: the flat view, for the edges.
    def __getitem__(self, name: str) -> Any:
        section = SECTION_OF.get(name)
        if section is None:
            raise KeyError(name)
        return getattr(getattr(self, section), name)

    def __iter__(self) -> Iterator[str]:
        return iter(DEFAULTS)

    def __len__(self) -> int:
        return len(DEFAULTS)

    def __repr__(self) -> str:
        return f"RunConfig({', '.join(f'{s}={getattr(self, s)!r}' for s in SECTIONS)})"


def check_keys(values: Mapping[str, Any], where: str) -> None:
    unknown = [k for k in values if k not in DEFAULTS]
    if unknown:
        raise ConfigError(
            "\n".join(f"{where}: unknown parameter {k!r}{did_you_mean(k, DEFAULTS)}" for k in unknown)
            + "\nallowed: " + ", ".join(sorted(DEFAULTS))
        )


def resolve(values: Mapping[str, Any] | None = None) -> RunConfig:
    """DEFAULTS <- values (flat names), every key and value checked."""
    return RunConfig.from_flat(dict(values or {}))


def as_config(p: Mapping[str, Any]) -> RunConfig:
    """`p` as a RunConfig: itself when it is one, else its flat names resolved and checked
    (a phase's entry points take either, so a dict of every parameter still works)."""
    return p if isinstance(p, RunConfig) else resolve(p)


def replace(p: Mapping[str, Any], **changes: Any) -> RunConfig:
    """`p` with `changes`, checked again (the way phases derive a variant of their parameters)."""
    return resolve({**p, **changes})


def data_spec(p: Mapping[str, Any]) -> DataSpec:
    if isinstance(p, RunConfig):
        return p.data
    return DataSpec(**{k: p[k] for k in DATA_KEYS})


def train_settings(p: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed training settings: every TrainConfig field the parameters hold."""
    return {k: p[k] for k in TRAIN_KEYS}


def absolute_paths(p: Mapping[str, Any]) -> dict[str, Any]:
    """`p` with every PATH_KEYS value made absolute (against the current folder); empty
    values, built-in dataset names and URLs are left as they are."""
    out = dict(p)
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value or "://" in value or (key == "dataset" and value in BUILTIN):
            continue
        out[key] = os.path.abspath(os.path.expanduser(value))
    return out


def fixed_training(p: Mapping[str, Any], searched: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The training settings a study holds fixed (not searched), score-neutral ones left out."""
    return {k: p[k] for k in TRAIN_KEYS if k not in searched and k not in SCORE_NEUTRAL_KEYS}
