"""The validation phase: retrain chosen configurations with several seeds, tell a real gain from luck.

The seed's phase 3: "retrain the best parameters with several seeds (42, 777, 2024) to check
the gain is real and not single-split luck". Each seed changes both the train/validation
split and the training seed, so a configuration that only won on one lucky split shows it.
With ``folds=k`` every seed's score is the mean over k stratified folds.

``Validation.compare`` pairs two configurations seed by seed and puts a t confidence
interval on the mean difference: "real gain" only when the whole interval is on the
better side of 0. ``noise_std`` is the seed-to-seed noise, which ``save_noise`` records
for the stop rules; ``write_params_file`` writes the winner as a params file for final
training.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
import yaml
from scipy import stats

from tunewise import config as P
from tunewise.atomic import write_text_atomic
from tunewise.data.cache import ImageData
from tunewise.errors import ConfigError, TunewiseError, is_int, is_number
from tunewise.train.hparams import TrainConfig
from tunewise.train.objective import Objective
from tunewise.data.splits import kfold_splits, train_val_split
from tunewise.records import NOISE_FLOOR_KEY
from tunewise.study.storage import shareable
from tunewise.train.loop import NonFiniteLoss, train_and_evaluate

SEEDS = (42, 777, 2024)  # the seed's validation seeds
REAL_GAIN, REAL_LOSS, WITHIN_NOISE = "real gain", "real loss", "within noise"
DIRECTIONS = ("maximize", "minimize")
# params.PHASES has no "final": the file records the phase that chose its values.
PARAMS_FILE_PHASE = "validate"


class RunDiverged(TunewiseError):
    """A configuration's loss turned NaN/inf on one of the validation seeds."""


@dataclass(frozen=True)
class Comparison:
    """b against a: the mean difference b - a, its t confidence interval and a verdict."""

    a: str
    b: str
    paired: bool  # True: differences seed by seed; False: Welch's test on two groups
    n_a: int
    n_b: int
    mean_diff: float  # b - a (paired: mean of the per-seed differences)
    std_diff: float | None  # paired: sample std of the per-seed differences; else None
    std_err: float | None  # standard error of mean_diff (None: too few scores to tell)
    ci_low: float | None
    ci_high: float | None
    confidence: float
    verdict: str  # real gain | real loss | within noise
    message: str  # one sentence with the numbers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Validation:
    """Scores of every configuration, one per seed (the mean over folds with ``folds``)."""

    seeds: list[int]
    scores: dict[str, list[float]]  # config -> score per seed, in ``seeds`` order
    folds: int | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # one row per training run
    wall_s: float = 0.0

    @property
    def means(self) -> dict[str, float]:
        return {name: float(np.mean(s)) for name, s in self.scores.items()}

    @property
    def stds(self) -> dict[str, float | None]:
        """Sample std (ddof=1) across seeds; None with a single seed."""
        return {name: _sample_std(s) for name, s in self.scores.items()}

    def compare(self, a: str = "baseline", b: str = "best", *, direction: str = "maximize",
                confidence: float = 0.95) -> Comparison:
        """b against a, paired by seed (both trained on the same splits with the same seeds)."""
        for name in (a, b):
            if name not in self.scores:
                raise ConfigError(f"compare: no configuration {name!r}; configurations: {', '.join(self.scores)}")
        return compare_paired(self.scores[a], self.scores[b], a=a, b=b, direction=direction, confidence=confidence)

    def table(self) -> list[dict[str, Any]]:
        """One row per configuration: mean, std and the score of every seed."""
        return [
            {"config": name, "mean": self.means[name], "std": self.stds[name],
             **{f"seed {seed}": score for seed, score in zip(self.seeds, scores)}}
            for name, scores in self.scores.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "folds": self.folds, "scores": self.scores, "means": self.means,
                "stds": self.stds, "runs": self.runs, "wall_s": round(self.wall_s, 2)}


def validate_configs(
    data: ImageData,
    configs: Mapping[str, Mapping[str, Any]],
    fixed: Mapping[str, Any],
    *,
    seeds: Sequence[int] = SEEDS,
    folds: int | None = None,
    val_fraction: float = 0.2,
    device: str = "auto",
    on_run: Callable[[str, int, float], None] | None = None,
) -> Validation:
    """Train every configuration (defaults <- ``fixed`` <- its params) once per seed, full epochs.

    The seed sets both the split and the training seed (a ``seed`` in the params is
    overridden). ``folds`` None or 0: one split per seed; k >= 2: k folds per seed.
    Every configuration is checked before the first run; ``on_run(config, seed, score)``
    follows progress.
    """
    seeds = _checked_seeds(seeds)
    _check_configs(configs)
    start = time.perf_counter()
    # Objective checks the fixed settings and the model's input size, as the tuning phases do.
    objective = Objective(data, None, dict(fixed), val_fraction=val_fraction, split_seed=seeds[0], device=device)
    settings = {name: objective.settings(dict(p), where=f"configs.{name}") for name, p in configs.items()}
    validation = Validation(seeds, {name: [] for name in configs}, folds or None)
    for seed in seeds:
        splits = _splits(data, seed, folds, val_fraction)
        for name, cfg in settings.items():
            f1s = [_run(data, split, replace(cfg, seed=seed), objective.device, name, seed, fold, validation.runs)
                   for fold, split in enumerate(splits)]
            score = float(np.mean(f1s))
            validation.scores[name].append(score)
            if on_run is not None:
                on_run(name, seed, score)
    validation.wall_s = time.perf_counter() - start
    return validation


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
    if not (isinstance(seeds, list) and seeds and all(is_int(s) for s in seeds)):
        raise ConfigError(f"seeds: {seeds!r} is not allowed; "
                          "allowed: a non-empty list of integers, e.g. [42, 777, 2024]")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        # The same seed twice gives the same score twice: it would fake agreement.
        raise ConfigError(f"seeds: {', '.join(map(str, repeated))} listed more than once; allowed: distinct seeds")
    return seeds


def _check_configs(configs: Mapping[str, Mapping[str, Any]]) -> None:
    if not isinstance(configs, Mapping) or not configs:
        raise ConfigError("configs: needs at least one configuration, e.g. {'baseline': {}, 'best': study.best_params}")
    for name, params in configs.items():
        if not isinstance(params, Mapping):
            raise ConfigError(f"configs.{name}: must be a mapping of setting: value, got {type(params).__name__}")


def _splits(data: ImageData, seed: int, folds: int | None, val_fraction: float) -> list[tuple]:
    labels = data.labels.numpy()
    if folds:
        return kfold_splits(labels, data.classes, folds, seed=seed)
    return [train_val_split(labels, data.classes, val_fraction, seed=seed)]


def _run(data: ImageData, split: tuple, cfg: TrainConfig, device, name: str, seed: int, fold: int,
         runs: list[dict[str, Any]]) -> float:
    """Train one configuration on one split; its macro-F1, with a row appended to ``runs``."""
    train_idx, val_idx = split
    try:
        result = train_and_evaluate(data, train_idx, val_idx, cfg, device=device)
    except NonFiniteLoss as exc:
        raise RunDiverged(f"configs.{name}: diverged on seed {seed} ({exc}); "
                          "a configuration that diverges on some seeds is not a safe winner") from None
    runs.append({"config": name, "seed": seed, "fold": fold, "f1": result.f1, "accuracy": result.accuracy,
                 "wall_s": round(result.wall_s, 3)})
    return result.f1


def compare_paired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "a", b: str = "b",
                   direction: str = "maximize", confidence: float = 0.95) -> Comparison:
    """b against a on the same seeds: a t interval on the mean of d_i = b_i - a_i (n - 1 dof)."""
    _check_compare_options(direction, confidence)
    if len(a_scores) != len(b_scores):
        raise ConfigError(f"compare: {a} has {len(a_scores)} scores and {b} has {len(b_scores)}; "
                          "a paired comparison needs one score per seed on both sides")
    diffs = np.asarray(b_scores, dtype=float) - np.asarray(a_scores, dtype=float)
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    head = f"{b} - {a}: {mean:+.4f}"
    if n < 2:
        return Comparison(a, b, True, n, n, mean, None, None, None, None, confidence, WITHIN_NOISE,
                          f"{head} on {n} seed: one seed cannot tell a real gain from seed or split luck, so it "
                          "counts as within noise; validate with 2 or more seeds (3 recommended)")
    std = _sample_std(diffs)
    std_err = std / math.sqrt(n)
    low, high = _interval(mean, std_err, n - 1, confidence)
    verdict = _verdict(low, high, direction)
    return Comparison(a, b, True, n, n, mean, std, std_err, low, high, confidence, verdict,
                      f"{head} on average over {n} seeds, paired by seed ({confidence:.0%} CI {low:+.4f} to "
                      f"{high:+.4f}): {_explain(verdict, a, b)}")


def compare_unpaired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "a", b: str = "b",
                     direction: str = "maximize", confidence: float = 0.95) -> Comparison:
    """b against a on different seeds: Welch's t interval on mean(b) - mean(a)."""
    _check_compare_options(direction, confidence)
    xa, xb = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    na, nb = len(xa), len(xb)
    mean = float(xb.mean() - xa.mean()) if na and nb else math.nan
    head = f"mean {b} - mean {a}: {mean:+.4f}"
    if min(na, nb) < 2:
        return Comparison(a, b, False, na, nb, mean, None, None, None, None, confidence, WITHIN_NOISE,
                          f"{head} ({na} vs {nb} scores): without 2 or more scores on each side the noise "
                          "cannot be measured, so it counts as within noise")
    va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
    std_err = math.sqrt(va + vb)
    # Welch-Satterthwaite; with no spread on either side the interval is a point anyway.
    dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)) if std_err > 0 else na + nb - 2
    low, high = _interval(mean, std_err, dof, confidence)
    verdict = _verdict(low, high, direction)
    return Comparison(a, b, False, na, nb, mean, None, std_err, low, high, confidence, verdict,
                      f"{head} ({na} vs {nb} runs on different seeds, Welch {confidence:.0%} CI {low:+.4f} to "
                      f"{high:+.4f}): {_explain(verdict, a, b)}")


def _check_compare_options(direction: str, confidence: float) -> None:
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction: {direction!r} is not allowed; allowed: {', '.join(DIRECTIONS)}")
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ConfigError(f"confidence: {confidence!r} is not allowed; allowed: a number strictly between 0 and 1")


def _interval(mean: float, std_err: float, dof: float, confidence: float) -> tuple[float, float]:
    half = float(stats.t.ppf((1 + confidence) / 2, dof)) * std_err if std_err > 0 else 0.0
    return mean - half, mean + half


def _verdict(low: float, high: float, direction: str) -> str:
    better_low, better_high = (low, high) if direction == "maximize" else (-high, -low)
    if better_low > 0:
        return REAL_GAIN
    if better_high < 0:
        return REAL_LOSS
    return WITHIN_NOISE


def _explain(verdict: str, a: str, b: str) -> str:
    if verdict == REAL_GAIN:
        return f"a real gain, every value in the interval favours {b}"
    if verdict == REAL_LOSS:
        return f"a real loss, every value in the interval favours {a}"
    return "within noise, the interval includes 0, so the difference may be seed or split luck"


def _sample_std(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def noise_std(validation: Validation) -> float:
    """The seed-to-seed std of the score: the configurations' sample variances pooled (ddof=1)."""
    groups = [np.asarray(s, dtype=float) for s in validation.scores.values() if len(s) >= 2]
    if not groups:
        raise ConfigError(f"seeds: measuring the seed-to-seed noise needs at least 2 seeds, "
                          f"got {len(validation.seeds)}")
    squares = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    dof = sum(len(g) - 1 for g in groups)
    return math.sqrt(squares / dof)


def save_noise(study: optuna.Study, value: float) -> None:
    """Record the noise in the study; the stop rules then treat smaller gains as no progress."""
    if not (is_number(value) and value >= 0):
        raise ConfigError(f"noise: {value!r} is not allowed; allowed: a finite number >= 0 (the std across seeds)")
    study.set_user_attr(NOISE_FLOOR_KEY, float(value))


def write_params_file(path: str | Path, base_params: Mapping[str, Any], winner: Mapping[str, Any], note: str) -> Path:
    """Write ``base_params`` with the ``winner``'s values fixed, nothing searched, as a params file.

    ``search_space`` is written as {} (no parameter searched): null would mean the seed's
    default space. Every value is checked before anything is written, and the file appears
    whole or not at all.
    """
    P.check_keys(dict(winner), "winner")
    values = P.resolve({**base_params, **winner, "search_space": {}, "phase": PARAMS_FILE_PHASE,
                        "storage": shareable(base_params.get("storage"))})  # never a password
    TrainConfig.from_dict(P.train_settings(values), where="winner")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"Final training parameters, written by tunewise's validation phase on {stamp}.",
              *str(note).splitlines(),
              "The winning configuration's values are fixed below; search_space is {} (nothing searched)."]
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(dict(values), sort_keys=False)
    return write_text_atomic(Path(path), text)
