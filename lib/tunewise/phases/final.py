"""The final phase: retrain the validated winner on every non-test image, export it as a
folder timm loads by itself, and score it once on the untouched test split.

The recipe is the params file validation wrote (``final_params``, default ``params_out`` in
the run folder): the same cached data, normalisation, augmentation and schedule as the
trials, through the same ``train_and_evaluate`` and the Objective's settings checks. With
``final_folds: k`` a k-fold ensemble is trained as well (k models on k-1 folds of the
non-test images, their out-of-fold macro-F1 reported). The baseline recipe (validation's
default settings) is trained the same way, so what tuning bought is measured on the test
split too.

The test split is scored here and nowhere else. Every scoring is appended to a ledger in the
run folder (``test-scores.json``) with a hash of the weights scored and the test split's
fingerprint: a second run refuses a different test split and says whether it scored the same
model as before or a different one (a second look at the test split, which the report names).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import yaml
from sklearn.metrics import confusion_matrix, f1_score

from tunewise import __version__
from tunewise import config as P
from tunewise.atomic import write_json_atomic
from tunewise.data.cache import ImageData, load_images
from tunewise.data.splits import HeldOut, kfold_splits
from tunewise.errors import ConfigError, TunewiseError
from tunewise.records import TEST_SCORE_KEY
from tunewise.study.storage import load_if_exists, open_storage
from tunewise.study.trackers import open_tracker
from tunewise.phases.tuning import holdout
from tunewise.train.hparams import TrainConfig
from tunewise.train.infer import probabilities
from tunewise.train.loop import resolve_device, train_and_evaluate
from tunewise.train.models import model_norm
from tunewise.train.objective import Objective

_log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
TIMM_CONFIG = "config.json"
LINEAGE_FILE = "tunewise.json"
LEDGER_FILE = "test-scores.json"
MODEL_DIR = "model"  # the single model, in the run folder
ENSEMBLE_DIR = "ensemble"  # fold1 ... foldk beneath it
# timm's eval transform that matches how the cache resized the images (data/decode.py).
CROP_MODE = {"squash": "squash", "crop": "center"}


@dataclass
class Recipe:
    """What final trains: the params file's values, and what validation said about them."""

    path: Path
    values: dict[str, Any]  # the params file, resolved (data, split, training settings)
    validation: dict[str, Any] | None  # validation's summary beside the file, when there is one
    baseline: dict[str, Any] | None  # the baseline's training settings (None: unknown, not trained)

    @property
    def train_settings(self) -> dict[str, Any]:
        return P.train_settings(self.values)


@dataclass
class Scored:
    """One model (or ensemble) on the test split."""

    name: str
    f1: float
    accuracy: float
    per_class_f1: list[float]
    confusion: list[list[int]]
    tta: bool
    members: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "macro_f1": self.f1, "accuracy": self.accuracy, "per_class_f1": self.per_class_f1,
                "confusion": self.confusion, "tta": self.tta, "members": self.members}


@dataclass
class FinalResult:
    recipe: Recipe
    classes: list[str]
    test: HeldOut
    model_dir: Path
    weights_sha256: str
    ensemble_dirs: list[Path] = field(default_factory=list)
    oof_f1: float | None = None  # the k-fold ensemble's out-of-fold macro-F1 (non-test images)
    fold_f1: list[float] = field(default_factory=list)
    scores: dict[str, Scored] = field(default_factory=dict)  # single, single_tta, ensemble, baseline
    ledger: dict[str, Any] = field(default_factory=dict)  # this scoring against the earlier ones
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    winner_is_baseline: bool = False  # validation kept the defaults: tuning bought nothing, by construction

    @property
    def model_dirs(self) -> list[Path]:
        """Every exported folder: the single model, then the ensemble members."""
        return [self.model_dir, *self.ensemble_dirs]


# ---- the recipe -------------------------------------------------------------------------

def params_path(p: Mapping[str, Any]) -> Path:
    return Path(p["final_params"]).expanduser() if p["final_params"] else Path(p["run_dir"]) / p["params_out"]


def load_recipe(p: Mapping[str, Any]) -> Recipe:
    """The params file (checked like any other) and validation's summary beside it."""
    path = params_path(p)
    if not path.is_file():
        raise ConfigError(f"final_params: {path} does not exist; allowed: the params file the validation phase "
                          f"wrote (params_out, {p['params_out']} in its run folder) or another params file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"final_params: {path} is not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"final_params: {path} holds a {type(raw).__name__}; allowed: a mapping of parameter: value")
    P.check_keys(raw, str(path))
    values = P.resolve(raw)
    validation = _validation_summary(path.parent)
    baseline = None
    if validation is not None and validation.get("baseline_settings"):
        baseline = dict(validation["baseline_settings"])
        TrainConfig.from_dict(baseline, where="baseline_settings")
    return Recipe(path, values, validation, baseline)


def _validation_summary(folder: Path) -> dict[str, Any] | None:
    for name in ("summary-validate.json", "summary.json"):
        f = folder / name
        if f.is_file():
            try:
                s = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if s.get("phase") == "validate":
                return s
            # final run in validate's own folder replaced its summary.json: it kept a copy
            if s.get("phase") == "final" and s.get("validation_summary"):
                return s["validation_summary"]
    return None


def check(p: Mapping[str, Any]) -> Recipe:
    """Everything final needs, checked before any training or writing: the params file,
    final_folds, the test-score ledger's test split."""
    recipe = load_recipe(p)
    return recipe


# ---- training ---------------------------------------------------------------------------

def run_final(p: Mapping[str, Any], *, log: Callable[[str], None] = print) -> FinalResult:
    """Train, export and score once on the test split; see the module docstring."""
    start = time.perf_counter()
    recipe = check(p)
    values = recipe.values
    data = load_images(P.data_spec(values), p["cache_dir"] or values["cache_dir"])
    test = holdout(values, data)
    run_dir = Path(p["run_dir"])
    earlier = _read_ledger(run_dir)
    _check_ledger(earlier, test, run_dir)
    k = p["final_folds"]
    labels = data.labels.numpy()
    folds = kfold_splits(labels, data.classes, k, seed=values["split_seed"], pool=test.pool) if k else []
    # The Objective's settings path: model name, pretrained file, batch size and input size
    # checked exactly as for a trial, before anything trains.
    objective = Objective(data, None, recipe.train_settings, val_fraction=values["val_fraction"],
                          split_seed=values["split_seed"], holdout=test, device=p["device"])
    cfg = objective.settings({}, where="final_params")
    base_cfg = objective.settings(recipe.baseline, where="baseline_settings") if recipe.baseline else None
    device = resolve_device(p["device"])
    result = FinalResult(recipe, list(data.classes), test, run_dir / MODEL_DIR, "")
    if not len(test.indices):
        result.notes.append(f"{test.note}: the models are trained and exported, but there is no test score")

    log(f"training the winner on {len(test.pool)} non-test images ({cfg.model}, {cfg.epochs} epochs)")
    single = train_and_evaluate(data, test.pool, [], cfg, device=device, keep_model=True).model
    baseline_model = None
    if base_cfg is not None and base_cfg == cfg:
        result.winner_is_baseline = True
        result.notes.append("the winner is the baseline (validation found no real gain): one model, trained once")
    elif base_cfg is not None:
        log("training the baseline recipe the same way")
        baseline_model = train_and_evaluate(data, test.pool, [], base_cfg, device=device, keep_model=True).model
    else:
        result.notes.append(f"no baseline trained: no validation summary with baseline_settings beside {recipe.path}")
    members = []
    if folds:
        oof = np.zeros((len(labels), data.num_classes), dtype=np.float32)
        mean, std = model_norm(single)
        for i, (train_idx, val_idx) in enumerate(folds, 1):
            log(f"fold {i}/{k}: training on {len(train_idx)} images")
            model = train_and_evaluate(data, train_idx, [], cfg, device=device, keep_model=True).model
            oof[val_idx] = probabilities([model], data.images[val_idx], mean, std, device=device).numpy()
            result.fold_f1.append(_f1(labels[val_idx], oof[val_idx].argmax(1), data.num_classes))
            members.append(model)
        pooled = test.pool
        result.oof_f1 = _f1(labels[pooled], oof[pooled].argmax(1), data.num_classes)

    lineage = _lineage(recipe, data, test)
    result.weights_sha256 = weights_sha256(single)
    if len(test.indices):
        result.scores = _score_all(data, test, cfg, single, members, baseline_model, device)
        result.ledger = _ledger_entry(result, earlier)
    lineage["test"] = _test_record(result)
    export_model(single, result.model_dir, data.classes, values, {**lineage, "role": "single model, every non-test image",
                                                                   "weights_sha256": result.weights_sha256})
    for i, model in enumerate(members, 1):
        folder = run_dir / ENSEMBLE_DIR / f"fold{i}"
        export_model(model, folder, data.classes, values, {**lineage, "role": f"ensemble member {i} of {k}",
                                                          "fold_f1": result.fold_f1[i - 1], "oof_f1": result.oof_f1,
                                                          "weights_sha256": weights_sha256(model)})
        result.ensemble_dirs.append(folder)
    if len(test.indices):
        _append_ledger(run_dir, earlier, result)
        _record_on_study(p, lineage.get("study"), lineage["test"], result.weights_sha256)
    result.wall_s = time.perf_counter() - start
    return result


def _source_study(p: Mapping[str, Any], study_name: str | None):
    """The study the winner came from, in this run's storage, or None."""
    if not study_name:
        return None
    try:
        return load_if_exists(open_storage(p["storage"], p["run_dir"], must_exist=True), study_name)
    except TunewiseError:
        return None


def _record_on_study(p: Mapping[str, Any], study_name: str | None, test: dict[str, Any] | None, weights: str) -> None:
    """The test score on the study the winner came from (``tunewise.test_score``), so the
    post-mortem sets it beside the study's best and the validation mean. A study that cannot
    be found (another storage, a renamed study) only loses that line: the score stays in this
    phase's summary and test-scores.json."""
    if not study_name or not test:
        return
    study = _source_study(p, study_name)
    if study is None:
        _log.warning("test score not recorded on study %r: not found in this run's storage", study_name)
        return
    single = test.get("single") or next((v for k, v in test.items() if isinstance(v, dict) and "macro_f1" in v), {})
    study.set_user_attr(TEST_SCORE_KEY, {"value": single.get("macro_f1"), "accuracy": single.get("accuracy"),
                                         "weights_sha256": weights, "scored_at": test.get("scored_at"), "scores": test})


def _f1(y_true, y_pred, n: int) -> float:
    return float(f1_score(y_true, y_pred, average="macro", labels=list(range(n)), zero_division=0))


def _score(name: str, labels: np.ndarray, probs: np.ndarray, n: int, tta: bool, members: int = 1) -> Scored:
    pred = probs.argmax(1)
    per_class = f1_score(labels, pred, average=None, labels=list(range(n)), zero_division=0)
    return Scored(name, _f1(labels, pred, n), float((pred == labels).mean()), [float(x) for x in per_class],
                  confusion_matrix(labels, pred, labels=list(range(n))).tolist(), tta, members)


def _score_all(data: ImageData, test: HeldOut, cfg: TrainConfig, single, members, baseline_model, device) -> dict[str, Scored]:
    """The test split, scored once per model: the single model (and with flip TTA when the
    recipe flips, i.e. the data allows it), the ensemble, the baseline."""
    idx = test.indices
    images, labels, n = data.images[idx], data.labels.numpy()[idx], data.num_classes
    mean, std = model_norm(single)
    out = {"single": _score("single model", labels, probabilities([single], images, mean, std, device=device).numpy(), n, False)}
    if cfg.hflip:
        probs = probabilities([single], images, mean, std, tta=True, device=device).numpy()
        out["single_tta"] = _score("single model + flip TTA", labels, probs, n, True)
    if members:
        probs = probabilities(members, images, mean, std, tta=cfg.hflip, device=device).numpy()
        out["ensemble"] = _score(f"{len(members)}-fold ensemble" + (" + flip TTA" if cfg.hflip else ""), labels, probs, n,
                                 cfg.hflip, len(members))
    if baseline_model is not None:
        b_mean, b_std = model_norm(baseline_model)
        out["baseline"] = _score("baseline recipe", labels, probabilities([baseline_model], images, b_mean, b_std,
                                                                          device=device).numpy(), n, False)
    return out


# ---- export -----------------------------------------------------------------------------

def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of the weights (names, shapes, dtypes, bytes, in name order): the same
    weights, the same hash, whatever file they are saved in."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def export_model(model: torch.nn.Module, folder: Path, classes: list[str], values: Mapping[str, Any],
                 lineage: Mapping[str, Any]) -> Path:
    """model.safetensors + config.json through timm's save_for_hf (architecture, num_classes,
    label_names, the pretrained config with input size, mean, std, resize), so
    ``timm.create_model("local-dir:FOLDER", pretrained=True)`` rebuilds it without tunewise;
    tunewise.json beside them holds the training parameters and lineage. Written to a
    temporary folder and renamed into place: a reader sees the old folder or the new one."""
    from timm.models import save_for_hf

    model = model.to(memory_format=torch.contiguous_format).cpu().eval()
    mean, std = model_norm(model)
    size = int(values["img_size"])
    data_config = {"input_size": (3, size, size), "crop_pct": 1.0, "crop_mode": CROP_MODE[values["resize"]],
                   "interpolation": "bilinear", "mean": tuple(mean), "std": tuple(std)}
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_for_hf(model, str(tmp), model_config={"label_names": list(classes)}, safe_serialization=True,
                data_config=data_config)
    write_json_atomic(tmp / LINEAGE_FILE, {**lineage, "classes": list(classes), "img_size": size,
                                           "resize": values["resize"], "params": dict(values)})
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _lineage(recipe: Recipe, data: ImageData, test: HeldOut) -> dict[str, Any]:
    v = recipe.validation or {}
    comparison = v.get("comparison") or {}
    return {
        "tunewise_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params_file": str(recipe.path),
        "study": v.get("source_study"),
        "trial": v.get("best_trial"),
        "validation": {"verdict": comparison.get("verdict"), "winner": v.get("winner"), "message": comparison.get("message"),
                       "means": {r["config"]: r["mean"] for r in v.get("table", [])}} if v else None,
        "dataset_fingerprint": data.fingerprint,
        "dataset": data.description,
        "test_split": test.identity(),
    }


def _test_record(result: FinalResult) -> dict[str, Any] | None:
    if not result.scores:
        return None
    s = result.scores
    return {"scored_at": result.ledger.get("at"), "split": result.test.identity(),
            **{name: {"macro_f1": x.f1, "accuracy": x.accuracy} for name, x in s.items()}}


# ---- the test-score ledger ----------------------------------------------------------------

def _read_ledger(run_dir: Path) -> list[dict[str, Any]]:
    f = run_dir / LEDGER_FILE
    if not f.is_file():
        return []
    try:
        entries = json.loads(f.read_text())["scorings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"run_dir: {f} is not a readable test-score ledger; allowed: the file final wrote "
                          "(or remove it to start a fresh record)") from None
    return list(entries)


def _check_ledger(earlier: list[dict[str, Any]], test: HeldOut, run_dir: Path) -> None:
    """A run folder scores one test split: another one (other test_fraction/test_seed, or
    other data) would re-draw it, so it is refused."""
    if earlier and len(test.indices) and earlier[0]["test_split"] != test.identity():
        raise ConfigError(
            f"test_fraction/test_seed: {run_dir / LEDGER_FILE} records scores on the test split "
            f"{earlier[0]['test_split']}, these parameters give {test.identity()}; the test split is drawn once. "
            "allowed: the recorded test_fraction and test_seed, or another run_dir for another dataset")


def _ledger_entry(result: FinalResult, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    same = [e for e in earlier if e["weights_sha256"] == result.weights_sha256]
    if not earlier:
        status, message = "first", f"first scoring of the test split (model {result.weights_sha256[:12]})"
    elif same:
        status = "same model"
        message = (f"the same model as scored at {same[0]['at']} (weights {result.weights_sha256[:12]}): "
                   "the test split was not looked at again with another model")
    else:
        first = earlier[0]
        status = "different model"
        message = (f"a DIFFERENT model (weights {result.weights_sha256[:12]}) from the one first scored at {first['at']} "
                   f"(weights {first['weights_sha256'][:12]}, macro-F1 {first['macro_f1']:.4f}): this is look number "
                   f"{len({e['weights_sha256'] for e in earlier}) + 1} at the test split, so this score is no longer "
                   "unbiased; the first one is the honest figure")
    return {"at": now, "status": status, "message": message, "earlier": len(earlier)}


def _append_ledger(run_dir: Path, earlier: list[dict[str, Any]], result: FinalResult) -> None:
    best = result.scores.get("single")
    entry = {"at": result.ledger["at"], "weights_sha256": result.weights_sha256, "test_split": result.test.identity(),
             "macro_f1": best.f1 if best else math.nan, "params_file": str(result.recipe.path),
             "scores": {k: v.f1 for k, v in result.scores.items()}}
    write_json_atomic(run_dir / LEDGER_FILE, {"scorings": [*earlier, entry]})


# ---- the summary --------------------------------------------------------------------------

def summary(p: Mapping[str, Any], r: FinalResult) -> dict[str, Any]:
    """The phase's summary.json: test scores next to the study's best and validation's mean."""
    v = r.recipe.validation or {}
    optimism = (v.get("optimism") or {}).get("best" if v.get("winner") == "best" else "baseline") or {}
    scores = {k: s.to_dict() for k, s in r.scores.items()}
    single = r.scores.get("single")
    base = r.scores.get("baseline")
    bought = single.f1 - base.f1 if single and base else (0.0 if single and r.winner_is_baseline else None)
    if single:
        head = f"test macro-F1 {single.f1:.4f} (accuracy {single.accuracy:.3f})"
        if "single_tta" in r.scores:
            head += f", flip TTA {r.scores['single_tta'].f1:.4f}"
        if "ensemble" in r.scores:
            head += f", {len(r.ensemble_dirs)}-fold ensemble {r.scores['ensemble'].f1:.4f}"
        if bought is not None:
            head += f"; tuning bought {bought:+.4f} over the baseline recipe on the test split"
        head += f"; {r.ledger.get('status')} (model {r.weights_sha256[:12]})"
    else:
        head = f"trained and exported; no test score ({r.test.note})"
    return {
        "phase": p["phase"], "params_file": str(r.recipe.path), "headline": head,
        "classes": r.classes, "test_split": {**r.test.identity(), "note": r.test.note},
        "scores": scores, "tuning_bought_on_test": bought,
        "study_best": optimism.get("in_study"), "validation_mean": optimism.get("fresh_mean"),
        "oof_f1": r.oof_f1, "fold_f1": r.fold_f1, "final_folds": p["final_folds"],
        "model_dir": str(r.model_dir), "ensemble_dirs": [str(d) for d in r.ensemble_dirs],
        "weights_sha256": r.weights_sha256, "ledger": r.ledger, "notes": r.notes,
        "training_settings": r.recipe.train_settings, "wall_s": round(r.wall_s, 2), "tunewise_version": __version__,
        "validation_summary": r.recipe.validation,  # what the recipe came with, for a re-run in the same folder
    }


def log_final(p: Mapping[str, Any], r: FinalResult, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The final model logged where ``tracking`` says (None: nowhere): a run under the source
    study's run with the training settings, the test scores, and the model folder as an
    artifact. Never raises for an unreachable destination: the entry lists what was not logged."""
    settings = P.as_config(p).study
    if settings.tracking == "none":
        return None
    metrics = {f"test.{name}.{key}": value for name, s in r.scores.items()
               for key, value in (("macro_f1", s.f1), ("accuracy", s.accuracy))}
    metrics.update({k: summary.get(k) for k in ("tuning_bought_on_test", "study_best", "validation_mean", "oof_f1",
                                                "wall_s")})
    record = {"params": {**{f"train.{k}": v for k, v in r.recipe.train_settings.items()},
                         "params_file": str(r.recipe.path), "final_folds": len(r.ensemble_dirs)},
              "metrics": metrics, "artifacts": [r.model_dir],
              "tags": {"tunewise.weights_sha256": r.weights_sha256, "tunewise.ledger": r.ledger.get("status"),
                       "tunewise.headline": summary.get("headline"), "mlflow.note.content": summary.get("headline")}}
    source = _source_study(p, (r.recipe.validation or {}).get("source_study"))
    return open_tracker(settings).log_phase(source, "final", record)
