"""How many trials do the stop rules save, and how much best value do they give up?

Three families of 100-trial optimization curves (maximize, on a macro-F1-like scale):
- real: the real tunewise studies recorded by `benchmarks/record_studies.py`
  (benchmarks/data/real_studies.json.gz: tiny timm models on digits and synthetic sets,
  TPE and random sampling, some with the median pruner), each trial with its recorded
  value, state and duration. Their noise floor is the seed-to-seed std of the best
  configuration, measured on 3 fresh seeds after the study (the validation phase pools it
  with the baseline's, which after one epoch of training is far noisier).
- synthetic: 200 seeded curves. Each trial's score is what the tuner can attain by then
  (rises from the default settings' score, then flattens), minus how far that trial
  misses it, plus seed-to-seed noise. Baseline, attainable gain, speed, spread and noise
  vary per curve, from "already tuned" (no gain) to "new architecture" (+0.12).
- tpe: Optuna's TPE run for the full budget on standard test functions (Branin, Hartmann6,
  Rosenbrock, Ackley, Styblinski-Tang), each mapped to a score (a random point's median
  -> 0.80, the optimum -> 0.97) plus N(0, 0.005) evaluation noise.

Synthetic and tpe trials get a duration (lognormal, median 2 min) so ROI has hours to
divide by; real trials keep their recorded durations.
Each rule replays each curve trial by trial through `rule.check` (what the callback runs
before recording and `study.stop()`, which only works inside `optimize`), and stops at
the first trial it fires on. For every rule: how many curves it stopped early, the mean
trials saved vs the full budget, and the mean / p90 best value given up (final best of
the full budget minus the best at the stop). Noise-aware rules see the curve's true
noise as the recorded noise floor, as if a validation phase had measured it.

Optuna's own Terminator runs alongside: with BestValueStagnationEvaluator (cheap, all
curves), and with its GP evaluators (RegretBound and EMMR, paired with
MedianErrorEvaluator since these curves have no cross-validation scores), which cost
seconds per curve and need real parameters, so they run on the tpe family only.

An oracle row (it knows the future: it stops at the first trial within 0.005 of the
final best) shows how many trials a rule could save on a family at that tolerance. The default rule
(`expected_gain` with its defaults, the focused phase's) is marked in bold.

    .venv/bin/python benchmarks/stop_rules.py [--families synthetic tpe real] [--processes N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import multiprocessing
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
from optuna import terminator

from tunewise.records import NOISE_FLOOR_KEY, PARAMS_KEY
from tunewise.study.stoprules import ROI, Budget, ExpectedGain, NoiseFloor, Plateau, Target

SEED = 0
BUDGET = 100  # trials per curve: the seed's trial cap
N_SYNTHETIC = 200
TPE_SEEDS = 4  # TPE runs per test function
TPE_NOISE = 0.005  # std of the evaluation noise added to the test functions' scores
T0 = dt.datetime(2024, 1, 1)
REAL = Path(__file__).resolve().parent / "data" / "real_studies.json.gz"
DEFAULT = "expected_gain: chance < 50% of > max(0.005, 0.25 x noise), warm-up 15"
ORACLE = "oracle: first trial within 0.005 of the final best (knows the future)"


# --- curves -------------------------------------------------------------------------------


@dataclass
class Curve:
    family: str
    trials: list[optuna.trial.FrozenTrial]
    noise: float  # the seed-to-seed std, recorded as the noise floor for noise-aware rules
    truth: np.ndarray | None = None  # synthetic: each trial's score without its evaluation noise

    @property
    def values(self) -> np.ndarray:
        """Each trial's value, NaN for a trial that did not complete (pruned)."""
        return np.array([t.value if t.state == optuna.trial.TrialState.COMPLETE else np.nan for t in self.trials])


def timed_trials(values, rng, params=None, distributions=None) -> list[optuna.trial.FrozenTrial]:
    """Trials back to back, each lasting a lognormal number of minutes (median 2)."""
    minutes = rng.lognormal(np.log(2.0), 0.5, size=len(values))
    trials, clock = [], T0
    for i, v in enumerate(values):
        trial = optuna.trial.create_trial(
            value=float(v), params=params[i] if params else None, distributions=distributions)
        trial.datetime_start = clock
        clock = trial.datetime_complete = clock + dt.timedelta(minutes=float(minutes[i]))
        trials.append(trial)
    return trials


def synthetic_curve(seed: int) -> Curve:
    rng = np.random.default_rng([SEED, seed])
    baseline = rng.uniform(0.75, 0.93)  # the default settings' score
    ceiling = min(baseline + rng.uniform(0.0, 0.12), 0.99)  # best attainable by tuning
    tau = rng.uniform(3, 40)  # trials until the tuner has found ~63 % of the gain
    spread = rng.uniform(0.01, 0.08)  # how far a typical trial lands below the attainable
    noise = rng.uniform(0.002, 0.015)
    t = np.arange(BUDGET)
    attainable = baseline + (ceiling - baseline) * (1 - np.exp(-t / tau))
    truth = attainable - rng.exponential(spread, BUDGET)
    truth[0] = baseline  # trial 0: the default settings
    values = truth + rng.normal(0, noise, BUDGET)
    return Curve("synthetic", timed_trials(np.clip(values, 0, 1), rng), noise, truth)


def branin(x):
    x1, x2 = x
    return ((x2 - 5.1 / (4 * np.pi**2) * x1**2 + 5 / np.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * np.pi)) * np.cos(x1) + 10)


_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])


def hartmann6(x):
    return -np.sum(np.array([1.0, 1.2, 3.0, 3.2]) * np.exp(-np.sum(_H6_A * (np.asarray(x) - _H6_P) ** 2, axis=1)))


def rosenbrock(x):
    x = np.asarray(x)
    return np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def ackley(x):
    x = np.asarray(x)
    return (-20 * np.exp(-0.2 * np.sqrt(np.mean(x**2))) - np.exp(np.mean(np.cos(2 * np.pi * x)))
            + 20 + np.e)


def styblinski_tang(x):
    x = np.asarray(x)
    return 0.5 * np.sum(x**4 - 16 * x**2 + 5 * x)


# name: (function, bounds per dimension, global minimum)
TEST_FUNCTIONS = {
    "branin": (branin, [(-5, 10), (0, 15)], 0.397887),
    "hartmann6": (hartmann6, [(0, 1)] * 6, -3.32237),
    "rosenbrock4": (rosenbrock, [(-2.048, 2.048)] * 4, 0.0),
    "ackley5": (ackley, [(-32.768, 32.768)] * 5, 0.0),
    "styblinski_tang4": (styblinski_tang, [(-5, 5)] * 4, -39.16617 * 4),
}


def tpe_curve(name: str, seed: int) -> Curve:
    fn, bounds, f_min = TEST_FUNCTIONS[name]
    rng = np.random.default_rng([SEED, seed, list(TEST_FUNCTIONS).index(name)])
    lows, highs = np.array(bounds, dtype=float).T
    f_median = np.median([fn(x) for x in rng.uniform(lows, highs, size=(2000, len(bounds)))])

    def score(x) -> float:  # a random point's median -> 0.80, the optimum -> 0.97
        regret = (fn(x) - f_min) / (f_median - f_min)
        return max(0.0, 0.80 + 0.17 * (1 - regret) + rng.normal(0, TPE_NOISE))

    def objective(trial: optuna.Trial) -> float:
        return score([trial.suggest_float(f"x{i}", lo, hi) for i, (lo, hi) in enumerate(bounds)])

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=BUDGET)
    done = study.trials
    trials = timed_trials([t.value for t in done], rng, [t.params for t in done], done[0].distributions)
    return Curve("tpe", trials, TPE_NOISE)


def real_studies() -> list[dict]:
    if not REAL.exists():
        return []
    with gzip.open(REAL, "rt") as f:
        return json.load(f)["studies"]


def real_curve(study: dict) -> Curve:
    """A recorded study's trials back to back with their recorded durations; pruned trials
    stay pruned (with their intermediate values)."""
    trials, clock = [], T0
    for t in study["trials"]:
        state = optuna.trial.TrialState[t["state"]]
        if state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            continue
        trial = optuna.trial.create_trial(
            state=state, value=t["value"] if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values=dict(enumerate(t["iv"])))
        trial.datetime_start = clock
        clock = trial.datetime_complete = clock + dt.timedelta(seconds=float(t["s"] or 1.0))
        trials.append(trial)
    best_scores = study["noise_scores"]["best"]
    return Curve("real", trials[:BUDGET], float(np.std(best_scores, ddof=1)))


# --- rules --------------------------------------------------------------------------------


class TerminatorRule:
    """Optuna's Terminator with the same `check` shape as the tunewise rules."""

    def __init__(self, terminator_: terminator.BaseTerminator) -> None:
        self.terminator = terminator_

    def check(self, study, trial):
        return {} if self.terminator.should_terminate(study) else None


def stagnation_terminator() -> TerminatorRule:
    return TerminatorRule(terminator.Terminator(terminator.BestValueStagnationEvaluator(max_stagnation_trials=30)))


def gp_terminator(evaluator: str) -> Callable[[], TerminatorRule]:
    def make() -> TerminatorRule:
        improvement = getattr(terminator, evaluator)(seed=SEED)
        return TerminatorRule(terminator.Terminator(improvement, terminator.MedianErrorEvaluator(improvement)))
    return make


BOTH = ("synthetic", "tpe", "real")
FAMILIES = ("synthetic", "tpe", "real")
# label: (fresh rule, sees the noise floor, families it runs on)
RULES: dict[str, tuple[Callable[[], object], bool, tuple[str, ...]]] = {
    "plateau 0.01 / 10 (seed)": (lambda: Plateau(0.01, 10), False, BOTH),
    "plateau 0.005 / 20": (lambda: Plateau(0.005, 20), False, BOTH),
    "plateau 0.02 / 10": (lambda: Plateau(0.02, 10), False, BOTH),
    "plateau 0.01 / 10 + noise floor": (lambda: Plateau(0.01, 10), True, BOTH),
    "noise_floor 1x / 10": (lambda: NoiseFloor(1.0, 10), True, BOTH),
    "noise_floor 2x / 10": (lambda: NoiseFloor(2.0, 10), True, BOTH),
    "target 0.96": (lambda: Target(0.96), False, BOTH),
    "roi 0.01/h (10, warm-up 10)": (lambda: ROI(0.01, 10, 10), False, BOTH),
    "roi 0.03/h (10, warm-up 10)": (lambda: ROI(0.03, 10, 10), False, BOTH),
    "budget 20 trials (seed's quick phase, for reference)": (lambda: Budget(max_trials=20), False, BOTH),
    "optuna Terminator, stagnation 30": (stagnation_terminator, False, BOTH),
    DEFAULT: (lambda: ExpectedGain(), True, BOTH),
    "expected_gain, chance < 30%": (lambda: ExpectedGain(max_chance=0.3), True, BOTH),
    "expected_gain, chance < 50% of > 0.003, warm-up 30 (less given up)":
        (lambda: ExpectedGain(0.003, 0.0, 0.5, 30), True, BOTH),
    "expected_gain, chance < 50% of > max(0.008, 0.5 x noise) (more saved)":
        (lambda: ExpectedGain(0.008, 0.5, 0.5), True, BOTH),
    "expected_gain, no trend": (lambda: ExpectedGain(trend_weight=0.0), True, BOTH),
    "budget 60 trials": (lambda: Budget(max_trials=60), False, BOTH),
    "budget 80 trials": (lambda: Budget(max_trials=80), False, BOTH),
    "optuna Terminator, RegretBound + median": (gp_terminator("RegretBoundEvaluator"), False, ("tpe",)),
    "optuna Terminator, EMMR + median": (gp_terminator("EMMREvaluator"), False, ("tpe",)),
}


def stops_on(curve: Curve, noise_recorded: bool) -> dict[str, int]:
    """Trials each rule lets run (BUDGET when it never fires) on one replay of the curve."""
    pending = {label: make() for label, (make, noisy, families) in RULES.items()
               if noisy == noise_recorded and curve.family in families}
    stops = dict.fromkeys(pending, BUDGET)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(PARAMS_KEY, {"n_trials": BUDGET})  # the budget tunewise records with a study
    if noise_recorded:
        study.set_user_attr(NOISE_FLOOR_KEY, curve.noise)
    for n, trial in enumerate(curve.trials, start=1):
        study.add_trial(trial)
        frozen = study.get_trials(deepcopy=False)[-1]
        for label, rule in list(pending.items()):
            if rule.check(study, frozen) is not None:
                stops[label] = n
                del pending[label]
        if not pending:
            break
    return stops


def evaluate(job: tuple[str, object, int]) -> tuple[str, np.ndarray, dict[str, int], np.ndarray | None]:
    family, arg, seed = job
    if family == "real":
        curve = real_curve(arg)
    else:
        curve = synthetic_curve(seed) if family == "synthetic" else tpe_curve(arg, seed)
    return curve.family, curve.values, {**stops_on(curve, False), **stops_on(curve, True)}, curve.truth


def init_worker() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # GP fit retries warn per trial
    warnings.simplefilter("ignore")  # optuna.terminator is deprecated / experimental
    import torch
    torch.set_num_threads(1)  # one process per core already


# --- report -------------------------------------------------------------------------------


def oracle_stop(values: np.ndarray, tolerance: float = 0.005) -> int:
    best_so_far = np.fmax.accumulate(values)
    return int(np.argmax(best_so_far >= np.nanmax(values) - tolerance)) + 1


def table(results: list[tuple], family: str, default: str | None = None) -> str:
    """One row per rule; the synthetic family, whose scores without noise are known, also
    gets the true score given up: the true score of the trial picked at the end (best
    observed) minus that of the trial picked at the stop, so luck in the noise is not counted."""
    rows = [(values, {**stops, ORACLE: oracle_stop(values)}, truth)
            for fam, values, stops, truth in results if fam == family]
    has_truth = all(truth is not None for _, _, truth in rows)
    extra = " true given up: mean | p90 |" if has_truth else ""
    lines = [f"**{family}** ({len(rows)} curves, budget {BUDGET} trials)", "",
             "| rule | stopped early | trials saved (mean) | best given up: mean | p90 |" + extra,
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if has_truth else "")]
    for label, (_, _, families) in [*RULES.items(), (ORACLE, (None, None, BOTH))]:
        if family not in families:
            continue
        used = np.array([stops[label] for _, stops, _ in rows])
        given_up = np.array([np.nanmax(values) - np.nanmax(values[:n]) for (values, _, _), n in zip(rows, used)])
        name = f"**{label}** (default)" if label == default else label
        line = (f"| {name} | {np.mean(used < BUDGET):.0%} | {np.mean(BUDGET - used):.1f} | "
                f"{given_up.mean():.4f} | {np.quantile(given_up, 0.9):.4f} |")
        if has_truth:
            true = np.array([truth[np.nanargmax(values)] - truth[np.nanargmax(values[:n])]
                             for (values, _, truth), n in zip(rows, used)])
            line += f" {true.mean():.4f} | {np.quantile(true, 0.9):.4f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay the stop rules on the curve families.")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--processes", type=int, default=os.cpu_count(), help="worker processes (default: every core)")
    args = parser.parse_args()
    started = time.perf_counter()
    # The GP-heavy tpe jobs first, so the cores finish together.
    jobs = []
    if "tpe" in args.families:
        jobs += [("tpe", name, seed) for name in TEST_FUNCTIONS for seed in range(TPE_SEEDS)]
    if "real" in args.families:
        jobs += [("real", study, 0) for study in real_studies()]
    if "synthetic" in args.families:
        jobs += [("synthetic", None, seed) for seed in range(N_SYNTHETIC)]
    with multiprocessing.Pool(args.processes, initializer=init_worker) as pool:
        results = pool.map(evaluate, jobs, chunksize=1)
    for family in FAMILIES:
        if family in args.families:
            print(table(results, family, DEFAULT), end="\n\n")
    command = " ".join(["benchmarks/stop_rules.py", *sys.argv[1:]])
    print(f"Command: `.venv/bin/python {command}` (seed {SEED}); "
          f"machine: {platform.processor() or platform.machine()}, nproc={os.cpu_count()}, "
          f"{args.processes} processes, Python {platform.python_version()}, Optuna {optuna.__version__}; "
          f"took {time.perf_counter() - started:.0f} s.")

if __name__ == "__main__":
    main()
