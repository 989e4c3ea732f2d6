"""The `tunewise` command.

    tunewise tune [--params FILE] [--set KEY=VALUE ...] [--out DIR]   run or resume a study
    tunewise demo [--out DIR]                                         a short study on digits

Bad input is one readable message and exit status 2 (add --traceback to see where);
Ctrl-C leaves the study consistent and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import TunewiseError

DEMO_PARAMS = Path(__file__).resolve().parents[2] / "params" / "demo.yaml"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tunewise", description="Tune timm image classifiers with Optuna, phase by phase.")
    ap.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("tune", "run or resume a study headless"), ("demo", "a short study on the built-in digits")):
        p = sub.add_parser(name, help=text, description=text)
        if name == "tune":
            p.add_argument("--params", help="a params YAML file (e.g. params/quick.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one parameter (repeatable), e.g. --set n_trials=5")
        p.add_argument("--out", help="run folder (default: the params' run_dir)")
        p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return ap


def _print_summary(s: dict) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"\nstudy {s['study_name']} ({s['phase']}): {s['n_finished']} finished trials {s['trials']}")
    print(f"best macro-F1 {fmt(s['best_value'])}   baseline {fmt(s['baseline_value'])}   gain {fmt(s['gain'])}")
    print(f"best parameters: {s['best_params']}")
    message = (s["stop_details"] or {}).get("message", "")
    print(f"stopped: {s['stop_reason']}: {message} Time spent on the study: {s['elapsed_s']:.1f} s")


def _tune(args) -> int:
    from . import params as P
    from .tuning import tune

    file = getattr(args, "params", None) or (DEMO_PARAMS if args.command == "demo" else None)
    overrides = P.parse_set(args.overrides)
    if args.out:
        overrides["run_dir"] = args.out
    p = P.resolve(file, overrides)
    summary = tune(p)
    _print_summary(summary)
    print(f"summary: {Path(p['run_dir']) / 'summary.json'}")
    return 130 if summary["interrupted"] else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _tune(args)
    except TunewiseError as exc:
        if args.traceback:
            raise
        print(f"tunewise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunewise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
