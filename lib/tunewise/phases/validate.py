"""The validation phase: retrain chosen configurations with several seeds, tell a real gain from luck.

The seed's phase 3: "retrain the best parameters with several seeds (42, 777, 2024) to check
the gain is real and not single-split luck". Each seed changes both the train/validation
split and the training seed, so a configuration that only won on one lucky split shows it.
With ``folds=k`` every seed's score is the mean over k stratified folds.

Fresh splits only: given the tuning study's ``split_seed`` and training ``seed``, a validation
seed equal to either is replaced by a derived one (``fresh_seeds``), so no run replays the
split and initialisation the winner was picked on (the winner's curse). Every split is drawn
from the pool the untouched test split left (``holdout``).

``Validation.compare`` pairs two configurations run by run and puts a confidence interval on
the mean difference with the corrected resampled t-test (Nadeau & Bengio 2003; with folds its
repeated k-fold form, Bouckaert & Frank 2004): repeated random splits share most of their
training images, so the plain paired t-test is over-confident. "real gain" only when the whole
interval is on the better side of 0. ``noise_std`` is the seed-to-seed noise, which
``save_noise`` records for the stop rules; ``write_params_file`` writes the winner as a params
file for final training.
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
from tunewise.data.splits import HeldOut, kfold_splits, train_val_split
from tunewise.records import NOISE_FLOOR_KEY
from tunewise.study.storage import shareable
from tunewise.study.trackers import open_tracker
from tunewise.train.loop import NonFiniteLoss, train_and_evaluate

SEEDS = (42, 777, 2024)  # the seed's validation seeds
REAL_GAIN, REAL_LOSS, WITHIN_NOISE = "real gain", "real loss", "within noise"
PAIRED_T = "paired t-test"
NADEAU_BENGIO = "corrected resampled t-test (Nadeau & Bengio 2003)"
BOUCKAERT_FRANK = "corrected repeated k-fold t-test (Bouckaert & Frank 2004)"
MAX_RUNS_SUGGESTED = 100  # beyond this many runs the verdict says "no practical number of runs"
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
    test: str = PAIRED_T  # which test made the interval
    n_runs: int = 0  # paired differences the test used (seeds, or seeds x folds)
    test_train_ratio: float = 0.0  # n_validation / n_train of each run (0: the plain paired t-test)
    p_value: float | None = None  # two-sided, for a difference of 0
    runs_needed: int | None = None  # within noise: runs that would call this difference at this spread

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
    split_seeds: list[int] = field(default_factory=list)  # the split seed each seed used (fresh_seeds)
    train_seeds: list[int] = field(default_factory=list)  # the training seed each seed used
    n_train: int = 0  # training images of one run
    n_val: int = 0  # validation images of one run
    avoided: dict[str, int | None] = field(default_factory=dict)  # the tuning split_seed and seed not replayed

    @property
    def means(self) -> dict[str, float]:
        return {name: float(np.mean(s)) for name, s in self.scores.items()}

    @property
    def stds(self) -> dict[str, float | None]:
        """Sample std (ddof=1) across seeds; None with a single seed."""
        return {name: _sample_std(s) for name, s in self.scores.items()}

    def compare(self, a: str = "baseline", b: str = "best", *, direction: str = "maximize",
                confidence: float = 0.95) -> Comparison:
        """b against a, paired run by run (both trained on the same splits with the same seeds),
        with the corrected resampled t-test for these overlapping splits."""
        for name in (a, b):
            if name not in self.scores:
                raise ConfigError(f"compare: no configuration {name!r}; configurations: {', '.join(self.scores)}")
        ratio = self.n_val / self.n_train if self.n_train else 0.0
        if self.folds:
            return compare_paired(self.run_scores(a), self.run_scores(b), a=a, b=b, direction=direction,
                                  confidence=confidence, test_train_ratio=ratio, folds=self.folds)
        return compare_paired(self.scores[a], self.scores[b], a=a, b=b, direction=direction, confidence=confidence,
                              test_train_ratio=ratio)

    def run_scores(self, name: str) -> list[float]:
        """Every run's score of one configuration (seeds x folds), in run order."""
        return [r["f1"] for r in self.runs if r["config"] == name]

    def table(self) -> list[dict[str, Any]]:
        """One row per configuration: mean, std and the score of every seed."""
        return [
            {"config": name, "mean": self.means[name], "std": self.stds[name],
             **{f"seed {seed}": score for seed, score in zip(self.seeds, scores)}}
            for name, scores in self.scores.items()
        ]

    def seed_table(self) -> list[dict[str, Any]]:
        """Which split and training seed each validation seed used (fresh: never the tuning ones)."""
        return [{"seed": s, "split seed": sp, "training seed": tr}
                for s, sp, tr in zip(self.seeds, self.split_seeds, self.train_seeds)]

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "folds": self.folds, "scores": self.scores, "means": self.means,
                "stds": self.stds, "runs": self.runs, "wall_s": round(self.wall_s, 2),
                "split_seeds": self.split_seeds, "train_seeds": self.train_seeds, "avoided": self.avoided,
                "n_train": self.n_train, "n_val": self.n_val}


def fresh_seeds(seeds: Sequence[int], avoid: int | None) -> list[int]:
    """``seeds`` with any seed equal to ``avoid`` (the tuning study's) replaced by a derived
    one, distinct from ``avoid`` and from the other seeds: validation never replays it."""
    out: list[int] = []
    for s in seeds:
        seed, salt = s, 0
        while seed == avoid or seed in out or (seed != s and seed in seeds):
            salt += 1
            seed = int(np.random.SeedSequence([s, 21, salt]).generate_state(1)[0] % 2**31)
        out.append(seed)
    return out


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
    holdout: HeldOut | None = None,
    tuning_split_seed: int | None = None,
    tuning_seed: int | None = None,
) -> Validation:
    """Train every configuration (defaults <- ``fixed`` <- its params) once per seed, full epochs.

    The seed sets both the split and the training seed (a ``seed`` in the params is
    overridden), except that a seed equal to the tuning study's ``tuning_split_seed`` /
    ``tuning_seed`` is replaced by a derived one (``fresh_seeds``): no run replays the split
    or initialisation the winner was picked on. ``holdout``: the untouched test split; every
    split is drawn from its pool. ``folds`` None or 0: one split per seed; k >= 2: k folds per
    seed. Every configuration is checked before the first run; ``on_run(config, seed, score)``
    follows progress.
    """
    seeds = _checked_seeds(seeds)
    _check_configs(configs)
    start = time.perf_counter()
    # Objective checks the fixed settings and the model's input size, as the tuning phases do.
    objective = Objective(data, None, dict(fixed), val_fraction=val_fraction, split_seed=seeds[0], holdout=holdout,
                          device=device)
    settings = {name: objective.settings(dict(p), where=f"configs.{name}") for name, p in configs.items()}
    pool = holdout.pool if holdout is not None else None
    tuning_val = None
    if tuning_split_seed is not None:
        tuning_val = set(train_val_split(data.labels.numpy(), data.classes, val_fraction, tuning_split_seed, pool=pool)[1].tolist())
    validation = Validation(seeds, {name: [] for name in configs}, folds or None,
                            split_seeds=fresh_seeds(seeds, tuning_split_seed), train_seeds=fresh_seeds(seeds, tuning_seed),
                            avoided={"split_seed": tuning_split_seed, "seed": tuning_seed})
    for seed, split_seed, train_seed in zip(seeds, validation.split_seeds, validation.train_seeds):
        splits = _splits(data, split_seed, folds, val_fraction, pool)
        if tuning_val is not None and any(set(val.tolist()) == tuning_val for _, val in splits):
            raise ConfigError(f"seeds: seed {seed} (split seed {split_seed}) gives the tuning study's own validation "
                              "split; allowed: seeds whose splits differ (on this little data, try other seeds)")
        validation.n_train, validation.n_val = len(splits[0][0]), len(splits[0][1])
        for name, cfg in settings.items():
            f1s = [_run(data, split, replace(cfg, seed=train_seed), objective.device, name, seed, fold, validation.runs)
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


def _splits(data: ImageData, seed: int, folds: int | None, val_fraction: float, pool=None) -> list[tuple]:
    labels = data.labels.numpy()
    if folds:
        return kfold_splits(labels, data.classes, folds, seed=seed, pool=pool)
    return [train_val_split(labels, data.classes, val_fraction, seed=seed, pool=pool)]


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
                 "wall_s": round(result.wall_s, 3), "training_seed": cfg.seed})
    return result.f1


def compare_paired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "a", b: str = "b",
                   direction: str = "maximize", confidence: float = 0.95, test_train_ratio: float = 0.0,
                   folds: int | None = None) -> Comparison:
    """b against a on the same runs: a t interval on the mean of d_i = b_i - a_i (n - 1 dof).

    ``test_train_ratio`` = n_validation / n_train of each run. 0: the plain paired t-test
    (variance of the mean s^2 / n). > 0: the runs' training sets overlap, so the variance of
    the mean is inflated to (1/n + n_validation/n_train) * s^2: the corrected resampled t-test
    of Nadeau & Bengio (2003) for repeated hold-out, and with ``folds`` (the n runs are
    seeds x folds) its repeated k-fold form of Bouckaert & Frank (2004). scipy's t gives the
    interval and p-value."""
    _check_compare_options(direction, confidence)
    if len(a_scores) != len(b_scores):
        raise ConfigError(f"compare: {a} has {len(a_scores)} scores and {b} has {len(b_scores)}; "
                          "a paired comparison needs one score per seed on both sides")
    if not (isinstance(test_train_ratio, (int, float)) and test_train_ratio >= 0):
        raise ConfigError(f"test_train_ratio: {test_train_ratio!r} is not allowed; allowed: n_validation / n_train >= 0")
    diffs = np.asarray(b_scores, dtype=float) - np.asarray(a_scores, dtype=float)
    n = len(diffs)
    test = PAIRED_T if test_train_ratio == 0 else BOUCKAERT_FRANK if folds else NADEAU_BENGIO
    mean = float(diffs.mean()) if n else math.nan
    head = f"{b} - {a}: {mean:+.4f}"
    if n < 2:
        return Comparison(a, b, True, n, n, mean, None, None, None, None, confidence, WITHIN_NOISE,
                          f"{head} on {n} seed: one seed cannot tell a real gain from seed or split luck, so it "
                          "counts as within noise; validate with 2 or more seeds (3 recommended)",
                          test=test, n_runs=n, test_train_ratio=float(test_train_ratio))
    std = _sample_std(diffs)
    std_err = std * math.sqrt(1 / n + test_train_ratio)
    if std_err > 0:
        low, high = (float(x) for x in stats.t.interval(confidence, n - 1, loc=mean, scale=std_err))
        p_value = float(2 * stats.t.sf(abs(mean) / std_err, n - 1))
    else:  # every run gave the same difference: the interval is that point
        low = high = mean
        p_value = 1.0 if mean == 0 else 0.0
    verdict = _verdict(low, high, direction)
    needed = _runs_needed(mean, std, test_train_ratio, confidence, n) if verdict == WITHIN_NOISE else None
    explain = _explain(verdict, a, b) + _too_few(verdict, n, needed, mean, direction)
    if test == PAIRED_T:
        message = (f"{head} on average over {n} seeds, paired by seed ({confidence:.0%} CI {low:+.4f} to "
                   f"{high:+.4f}): {explain}")
    else:
        runs = f"{n // folds} seeds x {folds} folds" if folds else f"{n} seeds"
        message = (f"{head} on average over {runs}, paired by {'fold' if folds else 'seed'} ({confidence:.0%} CI "
                   f"{low:+.4f} to {high:+.4f}; {test} on {n} runs, n_val/n_train {test_train_ratio:.3g}, "
                   f"p = {p_value:.3g}): {explain}")
    return Comparison(a, b, True, n, n, mean, std, std_err, low, high, confidence, verdict, message,
                      test=test, n_runs=n, test_train_ratio=float(test_train_ratio), p_value=p_value,
                      runs_needed=needed)


def _runs_needed(mean: float, std: float, ratio: float, confidence: float, n: int) -> int | None:
    """The fewest runs at which this mean difference, at this spread, would leave 0 outside
    the interval; None when no number up to MAX_RUNS_SUGGESTED would (with ratio > 0 the
    variance never falls below ratio * s^2, however many runs)."""
    if mean == 0 or std == 0:
        return None
    for runs in range(n + 1, MAX_RUNS_SUGGESTED + 1):
        if abs(mean) > stats.t.ppf((1 + confidence) / 2, runs - 1) * std * math.sqrt(1 / runs + ratio):
            return runs
    return None


def _too_few(verdict: str, n: int, needed: int | None, mean: float, direction: str) -> str:
    if verdict != WITHIN_NOISE or mean == 0:
        return ""
    if needed is not None:
        return (f"; too few runs to call it: {n} runs cannot separate a difference this size from the spread, "
                f"about {needed} would")
    return (f"; {n} runs are not too few here: at this spread no practical number of runs "
            f"(up to {MAX_RUNS_SUGGESTED}) would call a difference this small")


def compare_unpaired(a_scores: Sequence[float], b_scores: Sequence[float], *, a: str = "a", b: str = "b",
                     direction: str = "maximize", confidence: float = 0.95) -> Comparison:
    """b against a on different seeds: Welch's t interval on mean(b) - mean(a) (scipy's)."""
    _check_compare_options(direction, confidence)
    xa, xb = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    na, nb = len(xa), len(xb)
    mean = float(xb.mean() - xa.mean()) if na and nb else math.nan
    head = f"mean {b} - mean {a}: {mean:+.4f}"
    if min(na, nb) < 2:
        return Comparison(a, b, False, na, nb, mean, None, None, None, None, confidence, WITHIN_NOISE,
                          f"{head} ({na} vs {nb} scores): without 2 or more scores on each side the noise "
                          "cannot be measured, so it counts as within noise", test="Welch's t-test", n_runs=na + nb)
    std_err = math.sqrt(xa.var(ddof=1) / na + xb.var(ddof=1) / nb)
    if std_err > 0:
        result = stats.ttest_ind(xb, xa, equal_var=False)
        low, high = (float(x) for x in result.confidence_interval(confidence))
        p_value = float(result.pvalue)
    else:  # no spread on either side: the interval is a point
        low = high = mean
        p_value = 1.0 if mean == 0 else 0.0
    verdict = _verdict(low, high, direction)
    return Comparison(a, b, False, na, nb, mean, None, std_err, low, high, confidence, verdict,
                      f"{head} ({na} vs {nb} runs on different seeds, Welch {confidence:.0%} CI {low:+.4f} to "
                      f"{high:+.4f}): {_explain(verdict, a, b)}", test="Welch's t-test", n_runs=na + nb, p_value=p_value)


def _check_compare_options(direction: str, confidence: float) -> None:
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction: {direction!r} is not allowed; allowed: {', '.join(DIRECTIONS)}")
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ConfigError(f"confidence: {confidence!r} is not allowed; allowed: a number strictly between 0 and 1")


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
    """The seed-to-seed std of the score: the configurations' sample variances pooled (ddof=1),
    the baseline's left out when others were retrained. The stop rules judge progress among the
    searched settings; an under-trained baseline can swing far more (std 0.11 against the best's
    0.01 on one-epoch digits) and would make every gain look like noise."""
    searched = {name: s for name, s in validation.scores.items() if name != "baseline" and len(s) >= 2}
    pool = searched or validation.scores
    groups = [np.asarray(s, dtype=float) for s in pool.values() if len(s) >= 2]
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


def optimism(in_study: Mapping[str, float | None], validation: Validation) -> dict[str, dict[str, float | None]]:
    """The winner's curse, measured: each configuration's score in the study that chose it
    against its mean on the fresh validation splits. ``gap`` > 0 is how much the search's
    own figure flattered it (selection on one split's noise); the baseline, never selected,
    is the control."""
    out = {}
    for name, score in in_study.items():
        fresh = validation.means.get(name)
        out[name] = {"in_study": score, "fresh_mean": fresh,
                     "gap": None if score is None or fresh is None else float(score - fresh)}
    return out


def log_validation(p: Mapping[str, Any], source: optuna.Study, v: Validation, comparison: Comparison,
                   summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The validation phase logged where ``tracking`` says (None: nowhere): a run under the
    source study's run with the verdict and each configuration's mean and std, and one
    nested run per training run (configuration, seed, fold: macro-F1, accuracy). Never
    raises for an unreachable destination: the returned entry lists what was not logged."""
    settings = P.as_config(p).study
    if settings.tracking == "none":
        return None
    c = comparison
    metrics = {**{f"mean.{k}": m for k, m in v.means.items()}, **{f"std.{k}": s for k, s in v.stds.items()},
               "noise_std": summary.get("noise_std"), "mean_diff": c.mean_diff, "ci_low": c.ci_low,
               "ci_high": c.ci_high, "p_value": c.p_value, "wall_s": v.wall_s}
    params = {"source_study": source.study_name, "seeds": v.seeds, "folds": v.folds, "split_seeds": v.split_seeds,
              "training_seeds": v.train_seeds, "winner": summary.get("winner"),
              **{f"config.{name}": values for name, values in (summary.get("configs") or {}).items()}}
    runs = [{"name": f"{r['config']} seed {r['seed']}" + (f" fold {r['fold']}" if v.folds else ""),
             "params": {"config": r["config"], "seed": r["seed"], "fold": r["fold"], "training_seed": r["training_seed"]},
             "metrics": {"macro_f1": r["f1"], "accuracy": r["accuracy"], "wall_s": r["wall_s"]}} for r in v.runs]
    record = {"params": params, "metrics": metrics, "runs": runs,
              "tags": {"tunewise.verdict": c.verdict, "tunewise.test": c.test, "tunewise.headline": summary.get("headline"),
                       "mlflow.note.content": summary.get("headline")}}
    return open_tracker(settings).log_phase(source, "validate", record)
