"""The `tunewise` command.

    tunewise run PHASE [--params FILE] [--set KEY=VALUE ...] [--out DIR]
        execute a phase notebook (quick, focused, validate, final, postmortem) headless
    tunewise pipeline [--params FILE] [--set ...] [--out DIR]
        quick, focused (if the gate says so), validate, final, post-mortem, with an index page
    tunewise predict MODEL_DIR [MODEL_DIR ...] --images DIR|CSV [--tta] [--out predictions.csv]
        predict with exported model folder(s) (several: an ensemble, probabilities averaged)
    tunewise demo [--out DIR]     the pipeline on the built-in digits, a CPU preset
    tunewise tune [--params FILE] [--set ...] [--out DIR]
        run or resume a study through the library alone (no notebook)
    tunewise advise [--params FILE] [--set ...] [--hours H] [--days-left D] [--tuned-before] ...
        is tuning worth it here? the seed's verdict, with its reasons
    tunewise run|tune|pipeline ... --workers N [--gpus 0,1]
        N worker processes fill each study together (one per GPU, or CPU threads split)
    tunewise worker --study NAME [--storage URL] [--set KEY=VALUE ...]
        join a running study from another machine (parameters read from the study)
    tunewise repair JOURNAL
        salvage every readable record of a broken journal file into a new one (original kept)
    tunewise merge --into NAME [--storage URL] SOURCE [SOURCE ...]
        copy the finished trials of independent studies (SOURCE: STORAGE or STORAGE#STUDY)
        into one study, origin recorded, duplicates skipped; then run the post-mortem on it

Bad input, or a resume refused because the study was made for another setup, is one
readable message and exit status 2, with nothing written (add --traceback to see where).
A failed run exits 1: a failed notebook cell, or a study stopped by its failure guard (most
trials failed) or by a setup error; `run` keeps the last good report and writes the failed
one beside it (PHASE.failed.ipynb / .html). A storage lost mid-study (after retrying)
exits 3; Ctrl-C exits 130. The same status for the same outcome from run, pipeline, tune
and worker (errors.EXIT_*; the README's table).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tunewise import units
from tunewise.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STORAGE_LOST,
    TunewiseError,
)
from tunewise.study.storage import StorageLost

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"
DEMO_PARAMS = PARAMS_DIR / "demo.yaml"


def _common(p: argparse.ArgumentParser, with_params: bool = True) -> None:
    if with_params:
        p.add_argument("--params", help="a params YAML file (default: the phase's preset in params/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter (repeatable), e.g. --set n_trials=5")
    p.add_argument("--out", help="run folder (default: the parameters' run_dir)")
    p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, metavar="N", help="worker processes filling the study together")
    p.add_argument("--gpus", metavar="0,1,...", help="GPU indices to spread the workers over (default: every visible GPU)")


def _parser() -> argparse.ArgumentParser:
    from tunewise.params import PHASES

    ap = argparse.ArgumentParser(prog="tunewise", description="Tune timm image classifiers with Optuna, phase by phase.")
    ap.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute one phase notebook headless (papermill)")
    run.add_argument("phase", choices=PHASES)
    _common(run)
    _workers(run)
    pipe = sub.add_parser("pipeline", help="quick, focused, validate, final and post-mortem into one run folder")
    _common(pipe)
    _workers(pipe)
    _common(sub.add_parser("demo", help="the pipeline on the built-in digits (CPU preset)"), with_params=False)
    tune = sub.add_parser("tune", help="run or resume a study through the library (no notebook)")
    _common(tune)
    _workers(tune)
    worker = sub.add_parser("worker", help="join a running study (from another machine)")
    worker.add_argument("--study", required=True, help="the study's name")
    worker.add_argument("--storage", help="its storage URL (default: $TUNEWISE_STORAGE); ${VAR} is read from the environment")
    worker.add_argument("--threads", type=int, help="CPU threads for this worker (default: torch's)")
    worker.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the study's parameters on this machine, e.g. --set device=cuda:1")
    worker.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
    merge = sub.add_parser("merge", help="merge independent studies (e.g. one per GPU) into one")
    merge.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="STORAGE (its only study, or --study) or STORAGE#STUDY; STORAGE is a .journal file or a URL")
    merge.add_argument("--into", required=True, metavar="NAME", help="the study to merge into (created if missing)")
    merge.add_argument("--storage", help="where that study lives (default: the first source's storage)")
    merge.add_argument("--study", help="the study to take from each source storage that names none")
    merge.add_argument("--include-failed", action="store_true", help="copy failed trials too")
    merge.add_argument("--force", action="store_true", help="merge studies of another metric or dataset anyway")
    merge.add_argument("--baseline", metavar="SOURCE",
                       help="measure the merged study against this source's baseline trial (one of the SOURCEs "
                            "as given, or its study name); default: each trial against its own source's")
    merge.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
    rep = sub.add_parser("repair", help="salvage every readable record of a broken journal file into a new one")
    rep.add_argument("journal", help="the journal file (e.g. runs/mine/study.journal); the original is kept beside it")
    rep.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
    pred = sub.add_parser("predict", help="predict images with exported model folder(s); several: an ensemble")
    pred.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="folder(s) the final phase exported")
    pred.add_argument("--images", required=True, metavar="DIR|CSV",
                      help="a folder of images, or a CSV of ids (rows come out in its order, as a sample submission)")
    pred.add_argument("--image-dir", help="CSV only: the folder holding the images (default: the CSV's folder)")
    pred.add_argument("--id-column", default="id", help="CSV only: the id column (default: id, else the first column)")
    pred.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    pred.add_argument("--out", default="predictions.csv", help="the CSV to write (default: predictions.csv)")
    pred.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    pred.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    pred.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
    adv = sub.add_parser("advise", help="is tuning worth it here? the seed's verdict from what is known")
    _common(adv)
    adv.add_argument("--baseline", type=float, help="macro-F1 of the default settings (default: from the study, if it ran)")
    adv.add_argument("--hours", type=float, help="compute time available for tuning (default: the timeout)")
    adv.add_argument("--days-left", type=float, help="days left in the competition")
    adv.add_argument("--tuned-before", action="store_true", default=None, help="this model was tuned already")
    adv.add_argument("--heavy-regularization", action="store_true", default=None,
                     help="label smoothing, weight decay, dropout and mixup are all high already")
    adv.add_argument("--experienced", action="store_true", default=None, help="much manual tuning done on this problem")
    return ap


def _advise(args, overrides: dict) -> int:
    """The advice from the data, the parameters, the flags, and the study if it already ran
    (its baseline and measured noise); nothing is written."""
    from tunewise import params as P
    from tunewise.phases.advice import advise
    from tunewise.notebook import situation
    from tunewise.records import NOISE_FLOOR_KEY, baseline_value
    from tunewise.study.storage import JOURNAL_NAME, load_if_exists, open_storage

    p = P.resolve(args.params, overrides)
    known = {"baseline": args.baseline, "days_left": args.days_left, "tuned_before": args.tuned_before,
             "heavy_regularization": args.heavy_regularization, "experienced": args.experienced}
    journal = Path(p["run_dir"]) / JOURNAL_NAME
    if p["storage"] or journal.exists():
        study = load_if_exists(open_storage(p["storage"], p["run_dir"]), p["study_name"])
        if study is not None:
            known["baseline"] = known["baseline"] if known["baseline"] is not None else baseline_value(study)
            known["noise"] = study.user_attrs.get(NOISE_FLOOR_KEY)
    s = situation(p, **known)
    if args.hours is not None:
        s.hours = args.hours
    print(advise(s).text())
    return 0


def _predict(args) -> int:
    from tunewise.phases.predict import predict

    if args.batch_size < 1:
        from tunewise.errors import ConfigError

        raise ConfigError(f"--batch-size: {args.batch_size} is not allowed; allowed: an integer >= 1")
    result = predict(args.model_dirs, args.images, tta=args.tta, out=args.out, device=args.device,
                     batch_size=args.batch_size, image_dir=args.image_dir, id_column=args.id_column)
    print(f"{len(result)} predictions from {len(args.model_dirs)} model(s){' with flip TTA' if args.tta else ''}: {args.out}")
    return 0


def _overrides(args) -> dict:
    from tunewise import params as P

    overrides = P.parse_set(args.overrides)
    if getattr(args, "out", None):
        overrides["run_dir"] = args.out
    if getattr(args, "workers", None) is not None:
        overrides["workers"] = args.workers
    if getattr(args, "gpus", None) is not None:
        overrides["gpus"] = _gpu_list(args.gpus)
    return overrides


def _gpu_list(text: str) -> list:
    """--gpus 0,1 -> [0, 1]; anything else is left for the parameter check to name."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    return [int(x) if x.isdigit() else x for x in parts]


def _worker(args, overrides: dict) -> int:
    from tunewise.phases.workers import join_study

    summary = join_study(args.study, args.storage, overrides=overrides, threads=args.threads)
    _print_study(summary)
    return _study_status(summary)


def _study_status(summary: dict) -> int:
    """The exit status of a study run by `tune` or `worker` (as `run` gives for its notebook)."""
    from tunewise.execute import FAILED_STOPS

    if summary["interrupted"]:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary["stop_reason"] in FAILED_STOPS else EXIT_OK


def _runs_status(runs) -> int:
    if any(r.storage_lost for r in runs):
        return EXIT_STORAGE_LOST
    return EXIT_OK if all(r.ok for r in runs) else EXIT_FAILED


def _merge(args) -> int:
    from tunewise.study.merge import merge_studies

    sources = []
    for source in args.sources:
        storage, _, name = source.rpartition("#") if "#" in source else (source, "", "")
        sources.append((name or args.study or _only_study(storage, but=args.into), storage))
    result = merge_studies(sources, args.into, args.storage or sources[0][1],
                           include_failed=args.include_failed, force=args.force,
                           baseline=_baseline_index(args.baseline, args.sources, sources))
    for s in result["sources"]:
        skipped = ", ".join(f"{n} {state}" for state, n in s["not_copied"].items())
        print(f"{s['study']} @ {s['storage']}: {s['copied']} copied, {s['duplicates']} already there"
              + (f", not copied: {skipped}" if skipped else ""))
    baselines = result["baselines"]
    if baselines["sources"]:
        print("baseline: " + (f"{baselines['chosen']}'s baseline trial" if baselines["chosen"] else
                              "each source's own baseline trial (" + ", ".join(
                                  f"{k}: trial {v}" for k, v in baselines["sources"].items()) + ")"))
    print(f"merged into {result['target']} @ {result['storage']}: {result['n_trials']} trials "
          f"({result['copied']} new); next: tunewise run postmortem --set storage={args.storage or sources[0][1]} "
          f"--set 'studies=[{result['target']}]'")
    return 0


def _baseline_index(wanted: str | None, given: list[str], sources: list[tuple[str, str]]) -> int | None:
    """Which source ``merge --baseline`` names: a SOURCE as given, its storage, or its study
    name when only one source has it; ConfigError otherwise."""
    if wanted is None:
        return None
    for matches in ([i for i, g in enumerate(given) if g == wanted],
                    [i for i, (_, storage) in enumerate(sources) if storage == wanted],
                    [i for i, (name, _) in enumerate(sources) if name == wanted]):
        if len(matches) == 1:
            return matches[0]
    from tunewise.errors import ConfigError

    raise ConfigError(f"merge: --baseline {wanted!r} names no single source; allowed: one of "
                      f"{', '.join(given)} (as given), or a study name only one of them holds")


def _only_study(storage: str, but: str) -> str:
    """The name of the one study in ``storage`` other than ``but`` (the merge target, which
    may live there from an earlier merge); ConfigError when it holds none or several."""
    import optuna

    from tunewise.errors import ConfigError
    from tunewise.study.storage import open_storage, redact

    names = [n for n in optuna.get_all_study_names(open_storage(storage, ".", must_exist=True)) if n != but]
    if len(names) != 1:
        raise ConfigError(f"merge: {redact(storage)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                          "allowed: name one as STORAGE#STUDY, or pass --study")
    return names[0]


def _print_study(s: dict) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"study {s['study_name']} ({s['phase']}): {s['n_finished']} finished trials {s['trials']}")
    print(f"best macro-F1 {fmt(s['best_value'])}   baseline {fmt(s['baseline_value'])}   gain {fmt(s['gain'])}")
    print(f"best parameters: {s['best_params']}")
    message = (s["stop_details"] or {}).get("message", "")
    print(f"stopped: {s['stop_reason']}: {message} Time spent on the study: {units.duration(s['elapsed_s'])}")
    if s.get("tracking"):
        from tunewise.study.tracking import tracking_line

        print(f"tracked in {tracking_line(s['tracking'])}")


def _report(run) -> None:
    status = "ok" if run.ok else "FAILED"
    print(f"[{run.phase}] {status} in {units.duration(run.wall_s)}: {run.notebook}" + (f", {run.html}" if run.html else ""))
    if run.summary and run.summary.get("headline"):
        print(f"[{run.phase}] {run.summary['headline']}")
    if not run.ok and run.error.startswith("cell "):
        print(f"tunewise: {run.phase} notebook failed at {run.error}", file=sys.stderr)
        print(f"tunewise: the executed notebook, error marked, is kept at {run.notebook}", file=sys.stderr)
    elif not run.ok:
        print(f"tunewise: {run.phase} failed: {run.error}", file=sys.stderr)
        print(f"tunewise: its report is at {run.notebook}", file=sys.stderr)


def _run(args) -> int:
    from tunewise import params as P
    from tunewise.execute import phase_params, pipeline, run_phase

    if args.command == "merge":
        return _merge(args)
    if args.command == "repair":
        from tunewise.study.journal import repair

        print(repair(args.journal).text())
        return 0
    if args.command == "predict":
        return _predict(args)
    overrides = _overrides(args)
    if args.command == "worker":
        return _worker(args, overrides)
    if args.command == "advise":
        return _advise(args, overrides)
    if args.command == "tune":
        from tunewise.phases.tuning import tune

        p = P.resolve(args.params, overrides)
        callbacks = []
        if p["workers"] > 1:
            from tunewise.study.workers import ProgressPrinter

            printer = ProgressPrinter(p["n_trials"])
            callbacks.append(lambda study, trial: printer(study))
        summary = tune(p, callbacks=callbacks)
        _print_study(summary)
        print(f"summary: {Path(p['run_dir']) / 'summary.json'}")
        return _study_status(summary)
    if args.command == "run":
        p = phase_params(args.phase, args.params, overrides)
        run = run_phase(args.phase, p, progress=True)
        _report(run)
        return _runs_status([run])
    file = DEMO_PARAMS if args.command == "demo" else args.params
    out = Path(overrides.pop("run_dir", None) or ("runs/demo" if args.command == "demo" else P.resolve(file)["run_dir"]))
    runs = pipeline(file, overrides, out, progress=True)
    for run in runs:
        _report(run)
    print(f"index: {out / 'index.html'}")
    return _runs_status(runs)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except StorageLost as exc:  # mid-study, after retrying: its own status, for scripts that restart
        if args.traceback:
            raise
        print(f"tunewise: error: {exc}", file=sys.stderr)
        return EXIT_STORAGE_LOST
    except TunewiseError as exc:
        if args.traceback:
            raise
        print(f"tunewise: error: {exc}", file=sys.stderr)
        # A setup error that stopped a running study is a failed run, as in a notebook.
        return EXIT_FAILED if getattr(exc, "during_study", False) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tunewise: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
