"""How long does the whole post-mortem take on a 2,000-trial study? (target: under 60 s)

Builds a synthetic study in a journal file, the way tunewise writes one: trial 0 is the
marked baseline, 5 searched parameters (log float, two linear floats, int, categorical),
5 epochs reporting a macro-F1-like score each, about 40% of trials pruned by a percentile
rule and 2% failed, back-to-back timestamps (20-40 s per epoch), and the study attrs
(identity, elapsed time, stop reason). It then opens the study again from the file and
times every figure and table of ``tunewise.charts`` and ``tunewise.postmortem``,
serializing each figure to JSON as a notebook output does. For comparison it also times
importances with fANOVA (Optuna 4's default evaluator; Optuna 5's is PED-ANOVA), and it
replays the trials through ``LiveChart`` to show what one live update costs at that size.

    .venv/bin/python benchmarks/postmortem.py [--trials 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from tunewise.report import charts, tables

from tunewise.phases import postmortem
from tunewise.records import BASELINE_KEY

EPOCHS = 5
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "batch_size": CategoricalDistribution([8, 16, 32]),
    "weight_decay": FloatDistribution(0.0, 0.1),
    "dropout": FloatDistribution(0.0, 0.3),
    "warmup_epochs": IntDistribution(0, 3),
}
PRUNE_PERCENTILE = {2: 25, 3: 15, 4: 10}  # epoch: prune below this percentile of the trials there
BASELINE_PARAMS = {"lr": 1e-3, "batch_size": 32, "weight_decay": 0.05, "dropout": 0.0, "warmup_epochs": 1}


def final_score(p: dict, rng: np.random.Generator) -> float:
    """A macro-F1-like score: best near lr 1e-4, batch 16, little dropout; plus noise."""
    return float(0.95 - 0.03 * (np.log10(p["lr"]) + 4) ** 2 - 0.15 * p["dropout"]
                 - 0.1 * abs(p["weight_decay"] - 0.06) - 0.01 * (p["batch_size"] != 16)
                 - 0.005 * abs(p["warmup_epochs"] - 1) + rng.normal(0, 0.005))


def random_params(rng: np.random.Generator) -> dict:
    return {
        "lr": float(10 ** rng.uniform(-5, -2)),
        "batch_size": int(rng.choice([8, 16, 32])),
        "weight_decay": float(rng.uniform(0, 0.1)),
        "dropout": float(rng.uniform(0, 0.3)),
        "warmup_epochs": int(rng.integers(0, 4)),
    }


def synthetic_trials(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    clock = dt.datetime(2026, 1, 1, 9, 0, 0)
    seen: list[list[float]] = [[] for _ in range(EPOCHS + 1)]
    trials = []
    for number in range(n):
        p = BASELINE_PARAMS if number == 0 else random_params(rng)
        final = final_score(p, rng)
        state, curve = TrialState.COMPLETE, {}
        for epoch in range(1, EPOCHS + 1):
            curve[epoch] = final - 0.25 / epoch ** 1.5 + rng.normal(0, 0.003)
            # A percentile pruner after 5 startup trials, from epoch 2 on; stricter early,
            # as the trials that reach later epochs are the better ones.
            if number >= 5 and epoch in PRUNE_PERCENTILE and curve[epoch] < np.percentile(
                    seen[epoch], PRUNE_PERCENTILE[epoch]):
                state = TrialState.PRUNED
            seen[epoch].append(curve[epoch])
            if state == TrialState.PRUNED:
                break
        if number and rng.random() < 0.02:
            state, curve = TrialState.FAIL, dict(list(curve.items())[: int(rng.integers(0, 2))])
        start = clock
        clock += dt.timedelta(seconds=float(len(curve) * rng.uniform(20, 40)) + 5)
        attrs = {"epochs_run": len(curve), "accuracy": final + 0.01}
        if number == 0:
            attrs[BASELINE_KEY] = True
        if state == TrialState.FAIL:
            attrs["fail_reason"] = "RuntimeError: synthetic failure"
        trial = create_trial(state=state, value=final if state == TrialState.COMPLETE else None,
                             params=p, distributions=DISTRIBUTIONS, intermediate_values=curve,
                             user_attrs=attrs)
        trial.datetime_start, trial.datetime_complete = start, clock
        trials.append(trial)
    return trials


def build_study(path: Path, n: int, seed: int) -> float:
    """Write the synthetic study to a journal file; returns the seconds it took."""
    started = time.perf_counter()
    study = optuna.create_study(study_name="bench", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(str(path))))
    trials = synthetic_trials(n, seed)
    study.add_trials(trials)
    span = (trials[-1].datetime_complete - trials[0].datetime_start).total_seconds()
    study.set_user_attr("tunewise.identity", {"phase": "quick", "model": "convnext_tiny", "metric": "macro_f1"})
    study.set_user_attr("tunewise.elapsed_s", span)
    study.set_user_attr("tunewise.stop_reason", "budget")
    study.set_user_attr("tunewise.stop_details", {"message": f"{n} of {n} trials finished."})
    return time.perf_counter() - started


def steps(study: optuna.Study) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("history", lambda: charts.history(study)),
        ("importances (PED-ANOVA)", lambda: charts.importances(study)),
        ("parallel_coordinate", lambda: charts.parallel_coordinate(study)),
        ("slices", lambda: charts.slices(study)),
        ("contour_top2", lambda: charts.contour_top2(study)),
        ("intermediate_values", lambda: charts.intermediate_values(study)),
        ("timeline", lambda: charts.timeline(study)),
        ("roi_figure", lambda: charts.roi_figure(study)),
        ("roi_curve", lambda: postmortem.roi_curve(study)),
        ("pruning_savings", lambda: postmortem.pruning_savings(study)),
        ("stop_reasons", lambda: postmortem.stop_reasons(study)),
        ("summarize_study", lambda: postmortem.summarize_study(study)),
        ("phase_table + render_table", lambda: tables.phase_table_html(postmortem.phase_table([study]))),
    ]


def timed(fn) -> tuple[float, float, object]:
    """(seconds including JSON serialization of a figure, MB of that JSON, result)."""
    started = time.perf_counter()
    out = fn()
    mb = len(out.to_json()) / 1e6 if hasattr(out, "to_json") else 0.0
    return time.perf_counter() - started, mb, out


def live_chart_cost(study: optuna.Study) -> tuple[float, float]:
    """(mean, last) ms of one LiveChart update while replaying the study trial by trial."""
    trials = study.get_trials(deepcopy=False)
    chart = charts.LiveChart(len(trials))
    growing = optuna.create_study(direction="maximize")
    costs = []
    for trial in trials:
        growing.add_trial(trial)
        started = time.perf_counter()
        chart(growing, trial)
        costs.append(time.perf_counter() - started)
    return 1000 * float(np.mean(costs)), 1000 * float(np.mean(costs[-20:]))


def run_notebook(journal: Path, out: Path) -> dict:
    """The post-mortem as users run it: the notebook through papermill, then its HTML."""
    from tunewise.execute import phase_params, run_phase

    p = phase_params("postmortem", None, {"storage": str(journal), "run_dir": str(out)})
    run = run_phase("postmortem", p)
    return {"ok": run.ok, "wall_s": run.wall_s, "html_mb": run.html.stat().st_size / 1e6 if run.html else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-notebook", dest="notebook", action="store_false",
                    help="skip the end-to-end `tunewise run postmortem` timing")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.journal"
        build_s = build_study(path, args.trials, args.seed)
        started = time.perf_counter()
        study = optuna.load_study(study_name="bench", storage=JournalStorage(JournalFileBackend(str(path))))
        rows = [("open the journal file", time.perf_counter() - started, 0.0)]
        for name, fn in steps(study):
            seconds, mb, out = timed(fn)
            rows.append((name, seconds, mb))
        fanova_s, _, _ = timed(lambda: charts.importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
        live_mean, live_last = live_chart_cost(study)
        counts = postmortem.summarize_study(study)["trials"]
        notebook = run_notebook(path, Path(tmp) / "report") if args.notebook else None
    total = sum(s for _, s, _ in rows)
    print(f"\n## Post-mortem on {args.trials} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
          f"{counts['fail']} failed; 5 params, {EPOCHS} epochs)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Optuna {optuna.__version__}; study written in {build_s:.1f} s (not counted)\n")
    print("| step | seconds | figure JSON MB |")
    print("|---|---:|---:|")
    for name, seconds, mb in rows:
        print(f"| {name} | {seconds:.2f} | {mb:.2f} |")
    print(f"| **total** | **{total:.2f}** | {sum(mb for *_, mb in rows):.2f} |")
    print(f"\ntotal {total:.1f} s (target < 60 s)")
    print(f"for comparison, importances with fANOVA (Optuna 4's default evaluator): {fanova_s:.1f} s")
    print(f"LiveChart update: {live_mean:.1f} ms mean over {args.trials} trials, {live_last:.1f} ms at the last 20")
    if notebook:
        print(f"`tunewise run postmortem` end to end (kernel start, every cell, HTML report): "
              f"{notebook['wall_s']:.1f} s, report {notebook['html_mb']:.1f} MB ({'ok' if notebook['ok'] else 'FAILED'})")
    print(f"\nreproduce: .venv/bin/python benchmarks/postmortem.py --trials {args.trials} --seed {args.seed}")


if __name__ == "__main__":
    main()
