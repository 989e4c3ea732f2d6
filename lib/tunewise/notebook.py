"""The few calls a phase notebook makes, each showing its result.

Notebooks stay thin: a parameters cell of literals, then one or two of these per cell.
Everything here also runs headless under papermill (`interactive=False`): widgets and
live charts are skipped, static charts are drawn at the end instead.
"""

from __future__ import annotations

import ast
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.io as pio
from optuna.trial import TrialState
from IPython.display import HTML, display

from tunewise import params as P
from tunewise import records
from tunewise import units
from tunewise.phases import postmortem, tuning
from tunewise.phases.advice import Situation, advise
from tunewise.phases.source import check_matches, latest_complete, open_existing_storage
from tunewise.atomic import write_summary_files
from tunewise.report import inputs
from tunewise.data.cache import describe
from tunewise.errors import ConfigError, TunewiseError, did_you_mean
from tunewise.records import ADVICE_KEY, LINEAGE_KEY, SPACE_KEY, baseline_value, identity
from tunewise.search.narrow import Narrowed, best_complete, narrow_space, warm_start
from tunewise.search.space import SearchSpace
from tunewise.study import pareto
from tunewise.study.budget import finished_trials
from tunewise.study.stoprules import (ExpectedGain, Verdict, build_stop_rules, percent_below,
                                      should_continue_optimization, trials_text)
from tunewise.study.storage import load_if_exists, open_storage
from tunewise.study.strategy import strategy_of
from tunewise.study.tracking import tracking_line
from tunewise.report.tables import html_table, phase_table_html
from tunewise.phases.validate import (Validation, log_validation, noise_std, optimism, save_noise, validate_configs,
                                      write_params_file)
from tunewise.records import IDENTITY_KEY, PARAMS_KEY, TEST_SPLIT_FIELD, VALIDATION_KEY

# JupyterLab draws plotly's own mime type natively, and the HTML report turns it into
# interactive charts with one embedded plotly.js (see report.py).
pio.renderers.default = "plotly_mimetype"
optuna.logging.set_verbosity(optuna.logging.WARNING)


# A parameter only one phase notebook's cell sets: run in JupyterLab, where nothing injects
# `phase`, it tells the phase (its summary file and inputs table are named for it).
_PHASE_MARKERS = {"focus_mode": "focused", "params_out": "validate", "max_latency_ms": "postmortem"}


RUN_DIR_ENV = "TUNEWISE_RUN_DIR"  # where a notebook run in a kernel writes when run_dir is left at its default
TRACEBACK_ENV = "TUNEWISE_TRACEBACK"  # 1: tunewise's errors in a cell show their full traceback


def resolve(namespace: dict[str, Any]) -> dict[str, Any]:
    """The notebook's parameters (its cell plus anything papermill injected), checked.

    A name the parameters cell assigns that is not a parameter is an error naming the
    closest one (`n_trail = 3` would otherwise be ignored). With $TUNEWISE_RUN_DIR set, a
    notebook run in a kernel (JupyterLab, nbval) with run_dir left at its default writes
    there instead (`tunewise run` always names its run folder)."""
    install_error_display()
    for source in parameters_cells(namespace.get("_ih") or []):
        unknown = sorted(name for name in assigned_names(source) or () if name not in P.DEFAULTS)
        if unknown:
            raise ConfigError("\n".join(f"parameters cell: {name!r} is not a tunewise parameter{did_you_mean(name, P.DEFAULTS)}; "
                                        "allowed: the names of params/*.yaml and --set" for name in unknown))
    values = {k: namespace[k] for k in P.DEFAULTS if k in namespace}
    if "phase" not in values:  # a notebook of an older tunewise: its cell says no phase
        values["phase"] = next((ph for key, ph in _PHASE_MARKERS.items() if key in values), "quick")
    if (os.environ.get(RUN_DIR_ENV) and values.get("interactive", P.DEFAULTS["interactive"])
            and values.get("run_dir", P.DEFAULTS["run_dir"]) == P.DEFAULTS["run_dir"]):
        values["run_dir"] = os.environ[RUN_DIR_ENV]
    return P.resolve(None, values)


def assigned_names(source: str) -> set[str] | None:
    """The public names a cell assigns at top level (None: not Python, e.g. a magic)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name) and not n.id.startswith("_")}
    return names


def parameters_cells(history: list[str]) -> list[str]:
    """The cells that set this run's parameters, from the kernel's input history (IPython's
    `_ih`, the current cell last): the ones run just before the current cell that assign a
    parameter, i.e. the parameters cell and the cell papermill injects after it."""
    cells = []
    for source in reversed(history[:-1]):
        names = assigned_names(source)
        if not names or not names & set(P.DEFAULTS):
            break
        cells.append(source)
    return cells


def install_error_display() -> None:
    """In a kernel, tunewise's own errors show as the CLI's one-line message (the cell is
    still marked failed, so papermill and nbval stop there); `%tb` or $TUNEWISE_TRACEBACK=1
    shows the traceback. Other exceptions keep IPython's usual display."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and TunewiseError not in shell.custom_exceptions:
        shell.set_custom_exc((*shell.custom_exceptions, TunewiseError), _show_tunewise_error)


def _show_tunewise_error(shell, etype, value, tb, tb_offset=None):
    shell._get_exc_info((etype, value, tb))  # sys.last_*: what %tb and %debug read
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return None
    red, reset = "\x1b[0;31m", "\x1b[0m"
    stb = [f"{red}{etype.__name__}{reset}: {value}",
           f"(tunewise error: run %tb for the traceback, or set {TRACEBACK_ENV}=1)"]
    shell._showtraceback(etype, value, stb)  # an error output: the cell counts as failed
    return stb


install_error_display()  # importing this module in a kernel is what every phase notebook does first


# JupyterLab right-aligns every table cell; text reads better left, numbers right (digits in columns).
_TABLE_STYLE = ("<style>table.tunewise-nb td,table.tunewise-nb th{text-align:left}"
                "table.tunewise-nb td.num,table.tunewise-nb th.num{text-align:right;font-variant-numeric:tabular-nums}</style>")


def table(rows: list[dict[str, Any]], caption: str = "") -> HTML:
    """Rows as an HTML table: numbers with 4 significant digits, mappings as "key value"
    pairs, None as a dash; a column of numbers only is right-aligned, any other left."""
    if not rows:
        return HTML(f"<p><i>{html.escape(caption)}: nothing to show</i></p>")
    return HTML(_TABLE_STYLE + html_table(rows, columns=list(rows[0]), cell=lambda _key, v: _fmt(v), caption=caption,
                                          css_class="tunewise-nb", align_numbers=True))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items()) or "–"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return "–" if v is None else str(v)


def _score(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def show_params(p: dict[str, Any], keys: list[str] | None = None) -> HTML:
    """Every value this run uses, in one table (report/inputs.py), marked where it differs
    from the notebook's committed defaults, and the studies a later phase builds on.
    ``keys`` is accepted for older notebooks: the table always shows the phase's inputs."""
    return HTML(inputs.render(p, studies=_built_on(p)))


def _built_on(p: dict[str, Any]) -> list[optuna.Study]:
    """The studies this phase reads; [] where they are not there yet (the cell that needs
    them says so with its own message)."""
    try:
        if p["phase"] == "focused":
            return [load_study(p, p["source_study"] or "quick")]
        if p["phase"] == "validate":
            return [validation_source(p)]
        if p["phase"] == "postmortem":
            return _all_postmortem_studies(p)
    except (ConfigError, KeyError, OSError):
        pass
    return []


def situation(p: dict[str, Any], **known) -> Situation:
    """What the advisor knows from the parameters and the data (cached: no re-decode)."""
    data = tuning.load_images(P.data_spec(p), p["cache_dir"])
    hours = p["timeout"] / 3600 if p["timeout"] else None
    return Situation(n_images=len(data), n_classes=data.num_classes, hours=hours, **known)


def preflight(p: dict[str, Any]) -> HTML:
    """What the data says before any trial: size and classes, and the seed's advice."""
    data = tuning.load_images(P.data_spec(p), p["cache_dir"])
    info = describe(data)
    counts = info["class_counts"]
    low, high = min(counts.values()), max(counts.values())
    per_class = f"{low} per class" if low == high else f"{low}-{high} per class"
    source = re.sub(r" \(\d+ images, \d+ classes, \d+px\)$", "", info["description"])  # said just before
    how = {"disk": "read from the decoded cache", "memory": "already in memory"}.get(data.origin, "decoded now")
    facts = f"{info['n_images']} images in {info['classes']} classes ({per_class}) at {info['img_size']} px: {source}, {how}."
    advice = advise(situation(p))
    test = tuning.holdout(p, data)
    return HTML(f"<p><b>Pre-flight.</b> {html.escape(facts)}</p><p><b>Advice.</b> {html.escape(advice.text())}</p>"
                f"<p><b>Test split.</b> {html.escape(test.note)}.</p>" + _baseline_check(p))


def _baseline_check(p: dict[str, Any]) -> str:
    """The warning when the study's baseline trial looks under-trained for its epochs."""
    try:
        storage = open_storage(p["storage"], p["run_dir"], must_exist=True)  # the pre-flight writes nothing
    except ConfigError:
        storage = None
    if storage is None or p["study_name"] not in optuna.get_all_study_names(storage):
        return ("<p><b>Baseline.</b> Its training curve is checked once trial 0 (the default settings) has run; "
                "the result below repeats the check.</p>")
    warning = tuning.baseline_warning(optuna.load_study(study_name=p["study_name"], storage=storage))
    if warning is None:
        return "<p><b>Baseline.</b> Its training loss had flattened out by the last epoch: a fair baseline.</p>"
    return f"<p><b>Warning: the baseline looks under-trained.</b> {html.escape(warning)}.</p>"


def space_editor(p: dict[str, Any]):
    """The search-space editor (interactive runs); None under papermill."""
    if not p["interactive"]:
        return None
    from tunewise.report.widgets import SpaceEditor

    editor = SpaceEditor(p["search_space"] if p["search_space"] is not None else P.SEED_SPACE)
    display(editor.widget)
    return editor


def with_space(p: dict[str, Any], editor) -> dict[str, Any]:
    """The parameters with the editor's space (what the sliders say now)."""
    return P.replace(p, search_space=editor.value) if editor is not None else p


def search(p: dict[str, Any], *, prep: tuning.Prepared | None = None, baseline: float | None = None) -> dict[str, Any]:
    """Run (or resume) the phase's study; a live chart and progress bar while it runs."""
    prep = prep or tuning.prepare(p)
    if ADVICE_KEY not in prep.study.user_attrs:
        # The prediction, kept so the post-mortem can put it next to what happened.
        prep.study.set_user_attr(ADVICE_KEY, advise(situation(p)).to_dict())
    callbacks = []
    note = prep.strategy.live_chart_note
    if p["interactive"] and note:
        display(HTML(f"<p><i>{html.escape(note)}</i></p>"))
    elif p["interactive"]:
        callbacks.append(live_chart(p, prep.study))
        callbacks.append(forecast_readout(p, prep.study))
    summary = tuning.tune(p, callbacks=callbacks, prep=prep, baseline=baseline)
    for live in callbacks:
        live(prep.study, None)  # the final state, also when no trial ran (a finished study)
    return summary


def live_chart(p: dict[str, Any], study: optuna.Study):
    """The live chart and progress bar, shown with the study as it is now: a resumed or
    finished study's trials are drawn at once, not after the next trial."""
    from tunewise.report.charts import LiveChart

    live = LiveChart(p["n_trials"], title=f"{p['study_name']}: macro-F1 per trial")
    live.display()
    live(study, None)
    return live


def expected_gain_rule(p: dict[str, Any]) -> tuple[ExpectedGain, bool]:
    """The phase's expected-gain rule and True, or the default one and False when the phase
    does not stop on it (the readout still shows what the budget is expected to buy)."""
    for rule in build_stop_rules(p["stop_rules"]):
        if isinstance(rule, ExpectedGain):
            return rule, True
    return ExpectedGain(), False


def forecast_text(study: optuna.Study, rule: ExpectedGain, stops_on_it: bool) -> str:
    """One line: what the trials left in the budget are expected to buy, with its 80% range,
    the chance of a gain that counts, and so whether the rule would stop or go on."""
    complete = len(records.complete_trials(study))
    f, left = rule.forecast(study)
    if f is None:
        return f"<i>Expected gain of the remaining budget: shown from 5 completed trials ({complete} so far).</i>"
    threshold, source = rule.threshold(study)
    counts = "the noise floor's share" if source == "noise_floor" else "min_gain"
    spend = f" (~{units.duration(left['trials'] * left['seconds_per_trial'])})" if left["seconds_per_trial"] else ""
    text = (f"<b>The {trials_text(left['trials'])} left{spend}</b> are expected to gain "
            f"<b>+{f.expected_gain:.4f}</b> (80% range +{f.low:.4f} to +{f.high:.4f}); chance of more than "
            f"{threshold:.4g} ({counts}): <b>{percent_below(f.chance)}</b>.")
    if not stops_on_it:
        return text + " <i>(expected_gain is not a stop rule of this phase.)</i>"
    if complete < rule.warmup_trials:
        return text + f" The rule judges from {rule.warmup_trials} completed trials ({complete} so far)."
    verdict = "stops" if f.chance < rule.max_chance else "goes on"
    return text + f" expected_gain {verdict}: it stops below {rule.max_chance:.0%}."


def forecast_readout(p: dict[str, Any], study: optuna.Study):
    """A line under the live chart, redrawn after every trial: forecast_text."""
    from ipywidgets import HTML as HTMLWidget

    rule, stops_on_it = expected_gain_rule(p)
    widget = HTMLWidget(forecast_text(study, rule, stops_on_it))
    display(widget)

    def update(study: optuna.Study, trial) -> None:
        widget.value = forecast_text(study, rule, stops_on_it)

    return update


def show_result(summary: dict[str, Any]) -> HTML:
    """The study's result: scores and gain, trials by state, the best parameters one per row."""
    if summary.get("skipped"):
        return show_headline(summary)
    gain, rel = summary["gain"], summary["relative_gain"]
    rows = [
        {"": "best macro-F1", "value": _score(summary["best_value"])},
        {"": "baseline (default settings)" if not summary.get("baseline_moved") else
             f"baseline (the defaults moved into the space: {tuning.describe_moved(summary['baseline_moved'])})",
         "value": _score(summary["baseline_value"])},
        {"": "gain over the baseline" if not summary.get("source_study") else
             f"gain over {summary['source_study']}'s baseline (its best trials were re-run here first: "
             f"compare with {summary['source_study']}'s best for what this phase added)",
         "value": "–" if gain is None else f"{gain:+.4f}" + ("" if rel is None else f" ({rel:+.1%})")},
        {"": "baseline check", "value": summary.get("baseline_check") or "trained: its loss had flattened out"},
        {"": "time spent", "value": units.duration(summary["elapsed_s"])},
        {"": "stopped", "value": f"{summary['stop_reason']}: {(summary['stop_details'] or {}).get('message', '')}"},
    ]
    if summary.get("tracking"):
        rows.append({"": "tracked in", "value": tracking_line(summary["tracking"])})
    states = {state: n for state, n in summary["trials"].items() if n or state in ("complete", "pruned")}
    params = [{"parameter": k, "best value": v} for k, v in (summary["best_params"] or {}).items()]
    result = HTML(table(rows, f"Result of study {summary['study_name']}").data
                  + table([states], f"{summary['n_finished']} finished trials, by state").data
                  + table(params, "Best parameters").data)
    if not summary.get("workers"):
        return result
    # A worker this run did not start (one that joined from another machine) has only its host and pid.
    workers = [{"worker": w["index"] if w["index"] is not None else f"{w.get('host')} pid {w['pid']}",
                "GPU": "" if w["index"] is None else "cpu" if w["gpu"] is None else w["gpu"],
                "threads": w["threads"] or "", "trials run": w["trials_run"],
                "exit status": "" if w["exit_code"] is None else w["exit_code"], "log": w["log"] or ""}
               for w in summary["workers"]]
    return HTML(result.data + table(workers, f"{len(workers)} workers filled the study together").data)


def load_study(p: dict[str, Any], name: str) -> optuna.Study:
    storage = open_storage(p["storage"], p["run_dir"])
    study = load_if_exists(storage, name)
    if study is None:
        names = optuna.get_all_study_names(storage)
        raise ConfigError(
            f"study {name!r} is not in {tuning.storage_label(p)}; studies there: {', '.join(names) or 'none'}"
            + did_you_mean(name, names)
        )
    return study


def verdict(study: optuna.Study, p: dict[str, Any]) -> HTML:
    """The seed's question between phases, answered from the study."""
    gate_note = strategy_of(study).gate_note
    if gate_note:
        return HTML(f"<p>{gate_note}</p>")
    v = should_continue_optimization(study, baseline_value(study), p["min_relative_gain"])
    word = "Worth another phase" if v.go else "Not worth another phase"
    relation = advice_relation(study.user_attrs.get(ADVICE_KEY), v.go)
    return HTML(f"<p><b>{word}.</b> {html.escape(v.reason)}</p>" + (f"<p>{html.escape(relation)}</p>" if relation else ""))


def advice_relation(advice: dict[str, Any] | None, go: bool) -> str:
    """How the measured gate relates to the pre-flight advice, when the two disagree: the
    advice is the seed's average for this kind of situation, before any trial; the gate is
    this study's own measured gain (one split: validation then checks it against noise)."""
    if not advice:
        return ""
    advised = advice.get("verdict") != "skip"
    if advised == go:
        return ""
    if go:
        return ("The pre-flight advice said not to tune: that is the seed's average for a situation like this one, "
                "given before any trial. This gate is measured on this study's own trials, on one split; "
                "the validation phase checks whether the gain holds across seeds.")
    return ("The pre-flight advice expected tuning to pay (the seed's average for a situation like this one, before "
            "any trial); measured on this study's own trials, it did not pay enough to go on.")


def final_charts(study: optuna.Study) -> None:
    """Static charts at the end of a phase (in every run, headless or not)."""
    from tunewise.report import charts

    for figure in charts.final_charts(study):
        figure.show()
    for caption, rows in strategy_of(study).final_tables(study):
        display(table(rows, caption))


def show_headline(summary: dict[str, Any]) -> HTML:
    """The phase's one-line result (what the run's index page shows), and its files."""
    files = [f"{what}: <code>{html.escape(str(summary[key]))}</code>"
             for key, what in (("params_file", "winning settings"),) if summary.get(key)]
    return HTML(f"<p><b>{html.escape(str(summary.get('headline', '')))}</b></p>"
                + "".join(f"<p>{f}</p>" for f in files))


def save_summary(p: dict[str, Any], summary: dict[str, Any]) -> HTML:
    """write_summary, said in words (a notebook's last cell)."""
    path = write_summary(p, summary)
    return HTML(f"<p>Summary saved to <code>{html.escape(str(path))}</code>.</p>")


def write_summary(p: dict[str, Any], summary: dict[str, Any]) -> Path:
    """summary-PHASE.json (and summary.json, the latest phase's), with the values the run
    used (storage redacted), so a script reading a run folder can tell what produced it."""
    return write_summary_files(p["run_dir"], p["phase"], {**summary, "inputs": inputs.summary_inputs(p)})


# ---- focused phase ----------------------------------------------------------------------

@dataclass
class Focus:
    """The gate's verdict and the narrowed space, from the quick study."""

    source: optuna.Study
    verdict: Verdict
    narrowed: Narrowed | None
    go: bool


def study_space(study: optuna.Study, p: dict[str, Any]) -> SearchSpace:
    """The space a study searched (recorded when it was prepared), else the parameters'."""
    raw = study.user_attrs.get(SPACE_KEY) or p["search_space"] or P.SEED_SPACE
    return SearchSpace.from_dict(raw)


def focus(p: dict[str, Any]) -> Focus:
    source = load_study(p, p["source_study"] or "quick")
    strategy_of(source).refuse_narrowing(source)
    # Same data and settings as the quick study, or its baseline and best trials mean nothing
    # here (`tunewise run` fills them in from its record; a cell edited by hand may not).
    check_matches(p, "focused", source)
    v = should_continue_optimization(source, baseline_value(source), p["min_relative_gain"])
    go = v.go or p["always_run"]
    narrowed = None
    if go:
        narrowed = narrow_space(
            source.get_trials(deepcopy=False), study_space(source, p), direction=source.direction.name.lower(),
            top_share=p["top_share"], top_k=p["top_k"] or None, margin=p["margin"],
        )
    return Focus(source, v, narrowed, go)


def show_focus(f: Focus) -> HTML:
    word = "Worth a focused phase" if f.verdict.go else "Not worth a focused phase"
    text = f"<p><b>{word}.</b> {html.escape(f.verdict.reason)}</p>"
    if not f.go:
        return HTML(text + "<p>The focused search is skipped (set <code>always_run: true</code> to run it anyway).</p>")
    relation = advice_relation(f.source.user_attrs.get(ADVICE_KEY), f.verdict.go)
    text += f"<p>{html.escape(relation)}</p>" if relation else ""
    if not f.verdict.go:
        text += "<p>Running anyway: <code>always_run</code> is set.</p>"
    rows = table(f.narrowed.table, f"Search space narrowed from {len(f.narrowed.top_numbers)} best trials of {f.source.study_name}")
    return HTML(text + rows.data)


def focused_search(p: dict[str, Any], f: Focus) -> dict[str, Any]:
    """Search the narrowed space: a new study warm-started with the best quick trials,
    or (focus_mode: resume) the quick study itself, continued in the narrowed space."""
    if not f.go:
        summary = {
            "phase": p["phase"], "study_name": None, "skipped": True, "source_study": f.source.study_name,
            "verdict": {"go": False, "reason": f.verdict.reason, **f.verdict.figures},
            "headline": f"skipped: {f.verdict.reason}",
        }
        write_summary(p, summary)
        return summary
    space = f.narrowed.space.to_dict()
    if p["focus_mode"] == "resume":
        # One study keeps one set of choices per categorical parameter (Optuna fails every
        # trial otherwise): the narrowed ranges apply, the choices stay the source's.
        old = study_space(f.source, p).to_dict()
        space = {k: (old[k] if isinstance(v, dict) and v.get("type") == "categorical" and k in old else v)
                 for k, v in space.items()}
        q = P.replace(p, study_name=f.source.study_name, search_space=space, force=True,
                      n_trials=finished_trials(f.source) + p["n_trials"])
        f.source.set_user_attr(LINEAGE_KEY, {"from_study": f.source.study_name, "trials": f.narrowed.top_numbers, "mode": "resume"})
        summary = search(q)
    else:
        own_baseline = p["new_study"]
        q = P.replace(p, search_space=space, baseline=own_baseline)
        prep = tuning.prepare(q)
        # Measured against the quick study's baseline (recorded, so the post-mortem agrees),
        # unless it is a study of its own (new_study: other data or settings) with its own.
        base = None if own_baseline else records.inherit_baseline(prep.study, f.source)
        warm_start(prep.study, f.source.get_trials(deepcopy=False), f.narrowed.space, p["warm_start_n"],
                   prep.study.direction.name.lower(), source_name=f.source.study_name)
        summary = search(q, prep=prep, baseline=base)
    summary["source_study"] = f.source.study_name
    summary["narrowed"] = f.narrowed.to_dict()
    write_summary(p, summary)
    return summary


# ---- validation phase -------------------------------------------------------------------

def _studies(p: dict[str, Any]) -> list[optuna.Study]:
    storage = open_storage(p["storage"], p["run_dir"])
    return [optuna.load_study(study_name=n, storage=storage) for n in optuna.get_all_study_names(storage)]


def validation_source(p: dict[str, Any]) -> optuna.Study:
    """The study named by source_study, else the one whose last trial finished latest
    (the focused study when it ran, the quick one when the gate skipped it); refused
    when `p` holds other data or settings than it (epochs aside: validation retrains
    with full epochs)."""
    if p["source_study"]:
        study = load_study(p, p["source_study"])
    else:
        storage = open_existing_storage(p)
        study = latest_complete(storage) if storage is not None else None
        if study is None:
            raise ConfigError(f"source_study: no study with complete trials in {tuning.storage_label(p)}; run the quick phase first")
    check_matches(p, "validate", study)
    return study


def validation_configs(study: optuna.Study, k: int) -> dict[str, dict[str, Any]]:
    """baseline (the default settings), best, and the next best k-1 distinct settings."""
    ranked = best_complete(study.get_trials(deepcopy=False), study.direction.name.lower())
    if not ranked:
        raise ConfigError(f"source_study: {study.study_name} has no complete trial to validate")
    configs: dict[str, dict[str, Any]] = {"baseline": {}}
    seen: list[dict] = []
    for t in ranked:
        if t.params in seen:
            continue
        seen.append(t.params)
        configs["best" if len(seen) == 1 else f"top{len(seen)}"] = dict(t.params)
        if len(seen) >= max(k, 1):
            break
    return configs


def tuning_seeds(p: dict[str, Any], source: optuna.Study | None) -> tuple[int, int]:
    """(split_seed, seed) the source study's trials used (its recorded parameters, else p's):
    the validation runs must not replay them."""
    recorded = (source.user_attrs.get(PARAMS_KEY) if source is not None else None) or {}
    return recorded.get("split_seed", p["split_seed"]), recorded.get("seed", p["seed"])


def validation_holdout(p: dict[str, Any], data, source: optuna.Study | None):
    """The test split under p, which must be the one the source study held out (else the
    validation runs could train on images the study never saw, or on its test images)."""
    test = tuning.holdout(p, data)
    recorded = ((source.user_attrs.get(IDENTITY_KEY) or {}).get(TEST_SPLIT_FIELD)) if source is not None else None
    if recorded is not None and recorded != test.identity():
        raise ConfigError(
            f"test_fraction/test_seed: study {source.study_name} held out the test split {recorded}, these parameters "
            f"give {test.identity()}; allowed: the study's test_fraction and test_seed"
        )
    return test


def run_validation(p: dict[str, Any], configs: dict[str, dict[str, Any]], source: optuna.Study | None = None) -> Validation:
    """Retrain the configurations on fresh splits of the non-test images (never the source
    study's split seed or training seed)."""
    data = tuning.load_images(P.data_spec(p), p["cache_dir"])
    test = validation_holdout(p, data, source)
    split_seed, seed = tuning_seeds(p, source)
    runs = len(configs) * len(p["seeds"]) * max(p["folds"], 1)
    bar = _progress(runs, "runs") if p["interactive"] else None

    def on_run(name: str, seed: int, score: float) -> None:
        if bar is not None:
            bar.value += 1
        print(f"{name:>9}  seed {seed:>5}  macro-F1 {score:.4f}")

    return validate_configs(data, configs, P.train_settings(p), seeds=p["seeds"], folds=p["folds"] or None,
                            val_fraction=p["val_fraction"], device=p["device"], on_run=on_run, holdout=test,
                            tuning_split_seed=split_seed, tuning_seed=seed)


def _progress(total: int, label: str):
    from ipywidgets import IntProgress

    bar = IntProgress(value=0, min=0, max=total, description=label)
    display(bar)
    return bar


def study_scores(source: optuna.Study, configs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Each configuration's score in the study that chose it (baseline: its trial 0)."""
    ranked = best_complete(source.get_trials(deepcopy=False), source.direction.name.lower())
    by_params = {}
    for t in ranked:
        by_params.setdefault(repr(sorted(t.params.items())), t.value)
    scores = {name: by_params.get(repr(sorted(params.items()))) for name, params in configs.items() if name != "baseline"}
    return {"baseline": baseline_value(source), **scores}


def show_validation(v: Validation, comparison, source: optuna.Study | None = None,
                    configs: dict[str, dict[str, Any]] | None = None) -> HTML:
    """The scores, the verdict, the seeds used (fresh splits) and, given the source study and
    the configurations, the optimism of the search."""
    word = {"real gain": "A real gain", "real loss": "A real loss"}.get(comparison.verdict, "Within noise")
    avoided = v.avoided or {}
    fresh = ""
    if avoided.get("split_seed") is not None:
        fresh = (f"<p><b>Fresh splits.</b> The tuning study split with split_seed {avoided['split_seed']} and trained "
                 f"with seed {avoided.get('seed')}; no validation run replays them (a seed equal to either is replaced "
                 "by a derived one), and no run sees the test split.</p>"
                 + table(v.seed_table(), "Seeds each validation run used").data)
    gap = ""
    if source is not None and configs is not None:
        rows = [{"config": name, "in its study": o["in_study"], "mean on fresh splits": o["fresh_mean"],
                 "optimism (study - fresh)": o["gap"]}
                for name, o in optimism(study_scores(source, configs), v).items()]
        gap = (table(rows, f"Optimism of the search: scores in {source.study_name} against fresh splits").data
               + "<p>The winner was picked on one split, so its score there carries that split's luck; the gap to its "
                 "mean on fresh splits is what the search's own figure overstated (the baseline is the control).</p>")
    # How this relates to the gate: the search phases scored every trial on one split.
    relation = {
        "real gain": f"Retrained on {len(v.seeds)} seeds, the gain the search measured on one split holds.",
        "real loss": f"Retrained on {len(v.seeds)} seeds, the tuned settings do worse: the search's gain was luck of its split.",
    }.get(comparison.verdict, f"The search measured its gain on one split; retrained on {len(v.seeds)} seeds it is within "
                              "the seed-to-seed noise, so the gate's go-ahead may have been luck of that split.")
    return HTML(table(v.table(), "macro-F1 per configuration and seed").data
                + f"<p><b>{word}.</b> {html.escape(comparison.message)}</p><p>{html.escape(relation)}</p>" + fresh + gap)


def record_validation(p: dict[str, Any], source: optuna.Study, v: Validation, comparison, configs) -> dict[str, Any]:
    """Save the measured noise to the studies on the same data (their stop rules use it),
    write the winner as a params file, and the phase summary."""
    noise = noise_std(v)
    fingerprint = identity(source).get("data_fingerprint")
    for s in _studies(p):
        if identity(s).get("data_fingerprint") == fingerprint:
            save_noise(s, noise)
    winner_name = "best" if comparison.verdict == "real gain" else "baseline"
    note = (f"From study {source.study_name}: {comparison.message.rstrip('.')}.\n"
            + ("Winner: best." if winner_name == "best" else "Winner: baseline, the defaults: the tuned settings did not beat them beyond noise."))
    # Absolute paths: the file works from any folder (built-in dataset names stay names).
    where = P.absolute_paths(p)
    path = write_params_file(Path(where["run_dir"]) / p["params_out"], where, configs[winner_name], note)
    means = v.means
    gaps = optimism(study_scores(source, configs), v)
    best_gap = gaps.get("best", {}).get("gap")
    # On the study it validated, so the post-mortem can put it next to the study's best.
    source.set_user_attr(VALIDATION_KEY, {
        "best_fresh_mean": means.get("best"), "baseline_fresh_mean": means.get("baseline"), "optimism": best_gap,
        "verdict": comparison.verdict, "test": comparison.test, "n_runs": comparison.n_runs})
    summary = {
        "phase": p["phase"], "source_study": source.study_name, "dataset": where["dataset"], "image_dir": where["image_dir"],
        "seeds": v.seeds, "folds": v.folds,
        "split_seeds": v.split_seeds, "training_seeds": v.train_seeds, "tuning_seeds_avoided": v.avoided,
        "configs": configs, "table": v.table(), "comparison": comparison.to_dict(), "noise_std": noise,
        "optimism": gaps, "winner": winner_name, "params_file": str(path), "wall_s": round(v.wall_s, 2),
        # what the final phase trains the baseline recipe with, and the trial the winner came from
        "baseline_settings": P.train_settings(p), "best_trial": _best_trial(source, configs.get("best")),
        "headline": f"{comparison.verdict}: best {means['best']:.4f} vs baseline {means['baseline']:.4f} "
                    f"over {len(v.seeds)} seeds (noise {noise:.4f}; {comparison.test}); winner {winner_name}"
                    + ("" if best_gap is None else f"; optimism of the search {best_gap:+.4f}"),
    }
    tracked = log_validation(p, source, v, comparison, summary)
    if tracked is not None:
        summary["tracking"] = tracked
    write_summary(p, summary)
    return summary


def _best_trial(study: optuna.Study, params: dict[str, Any] | None) -> int | None:
    """The number of the study's best complete trial with these parameters."""
    if params is None:
        return None
    for t in best_complete(study.get_trials(deepcopy=False), study.direction.name.lower()):
        if t.params == params:
            return t.number
    return None


# ---- post-mortem ------------------------------------------------------------------------

def _all_postmortem_studies(p: dict[str, Any]) -> list[optuna.Study]:
    studies = [load_study(p, n) for n in p["studies"]] if p["studies"] else _studies(p)
    if not studies:
        raise ConfigError(f"studies: no study in {tuning.storage_label(p)}; allowed: names of studies there")
    return studies


def postmortem_studies(p: dict[str, Any]) -> list[optuna.Study]:
    """The single-objective studies (one best value each: what the charts and tables
    below read); the multi-objective ones are in `pareto_studies`."""
    return [s for s in _all_postmortem_studies(p) if strategy_of(s).one_best_value]


def pareto_studies(p: dict[str, Any]) -> list[optuna.Study]:
    return [s for s in _all_postmortem_studies(p) if not strategy_of(s).one_best_value]


def show_pareto(studies: list[optuna.Study], p: dict[str, Any]) -> None:
    """Each multi-objective study's Pareto front (figure and table) and the best macro-F1
    within `max_latency_ms` / `max_params`."""
    if not studies:
        display(HTML("<p><i>No multi-objective study here (set <code>objectives: [f1, latency_ms, params]</code> "
                     "to search for one).</i></p>"))
        return
    from tunewise.report import charts

    for s in studies:
        charts.pareto_figure(s).show()
        display(table(pareto.pareto_rows(s), f"Pareto front of {s.study_name}"))
        display(HTML(f"<p><b>{html.escape(pareto.answer(s, p['max_latency_ms'] or None, p['max_params'] or None))}</b></p>"))


# The post-mortem's charts of one study, under its heading: (section, chart) in reading order.
def _study_charts():
    from tunewise.report import charts

    return [
        ("Optimization history, with the best so far", charts.history),
        ("Gain against time: where 80% and 95% of the final gain were reached", charts.roi_figure),
        ("Which parameters mattered", charts.importances),
        (None, charts.contour_top2),
        (None, charts.parallel_coordinate),
        (None, charts.slices),
        ("Learning curves: the score after each epoch (what the pruner judged)", charts.intermediate_values),
        ("When each trial ran", charts.timeline),
    ]


def show_study_charts(studies: list[optuna.Study]) -> None:
    """Every chart of each study, grouped under the study's name (not interleaved)."""
    if not studies:
        display(HTML("<p><i>No single-objective study to chart.</i></p>"))
    for s in studies:
        n = len(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        display(HTML(f"<h2>Study {html.escape(s.study_name)}</h2><p>{n} complete trials of {len(s.trials)}.</p>"))
        for section, draw in _study_charts():
            if section:
                display(HTML(f"<h4>{html.escape(section)}</h4>"))
            draw(s).show()


def show_phase_table(studies: list[optuna.Study]) -> HTML:
    rows = postmortem.phase_table(studies)
    small = [r["study"] for r in rows if r["roi_per_h"] is not None
             and (r["trials"] < FEW_TRIALS or (r["time_h"] or 0) * 3600 < SHORT_S)]
    note = (f"<p><i>ROI (gain per hour) of {', '.join(map(html.escape, small))}: from fewer than {FEW_TRIALS} trials or "
            f"under {units.duration(SHORT_S)}, too little to rate; read the gain, not the rate.</i></p>") if small else ""
    return HTML("<p><b>The phases side by side</b> (the seed's case format)</p>" + phase_table_html(rows) + note
                + _merged_baselines_html(studies))


def _merged_baselines_html(studies: list[optuna.Study]) -> str:
    """For a merged study: which baseline its gain is measured against, and each source's
    own gain over its own baseline."""
    out = ""
    for s in studies:
        rows = postmortem.source_gains(s)
        if rows or records.baseline_source(s):
            out += f"<p>{html.escape(s.study_name)}: gain measured against {html.escape(postmortem.baseline_said(s))}.</p>"
        if rows:
            out += table([{"source": r["source"], "baseline": r["baseline"], "best": r["best"],
                           "gain": None if r["gain"] is None else f"{r['gain']:+.4f}",
                           "gain %": None if r["gain_pct"] is None else f"{r['gain_pct']:+.1f}%"} for r in rows],
                         f"{s.study_name}: each source against its own baseline").data
    return out


def show_stops_and_savings(studies: list[optuna.Study]) -> HTML:
    rows = []
    for s in studies:
        stop = postmortem.stop_reasons(s)
        saved = postmortem.pruning_savings(s)
        rows.append({"study": s.study_name, "stopped by": stop["reason"], "why": stop["message"], "pruning": saved["text"]})
    return table(rows, "Why each study stopped, and what pruning saved")


def show_rule_replay(studies: list[optuna.Study]) -> HTML:
    """Where each stop rule would have stopped each study, and what it would have given up
    (postmortem.rule_replay: the rules replayed on the study's own trials)."""
    rows = []
    for s in studies:
        for r in postmortem.rule_replay(s):
            stop = r["stopped_at_trial"]
            rows.append({
                "study": s.study_name, "rule": r["rule"],
                "would stop at": "never (ran to the end)" if stop is None else f"trial {stop}",
                "trials saved": r["trials_saved"], "time saved": units.duration(r["time_saved_s"]),
                "best at its stop": _score(r["best_at_stop"]),
                "given up": "–" if r["given_up"] is None else f"{r['given_up']:.4f}",
            })
    if not rows:
        return HTML("<p><i>No single-objective study to replay the stop rules on.</i></p>")
    return table(rows, "Where each stop rule would have stopped, and the macro-F1 it would have given up "
                       "(the study's own trials, replayed)")


def show_advice_vs_outcome(studies: list[optuna.Study]) -> HTML:
    """What the advisor predicted when each study started, next to what happened."""
    rows = []
    for s in studies:
        a = s.user_attrs.get(ADVICE_KEY)
        out = postmortem.summarize_study(s)
        rel = out["relative_gain"]
        hours = out["time_h"]
        rows.append({
            "study": s.study_name,
            "advised": f"{a['verdict']} ({a['n_trials']} trials)" if a else "no advice recorded",
            "expected gain": a["expected_gain"] if a else "",
            "actual gain": None if rel is None else f"{rel:+.2%}",
            "trials": out["n_finished"],
            "time": units.hours(hours, none="–"),
            "gain per hour": per_hour(rel, hours, out["n_finished"]),
        })
    return table(rows, "Advice at the start, and what happened")


def show_estimates(studies: list[optuna.Study]) -> HTML:
    """The study's best, the validation mean on fresh splits and the test score, side by side."""
    rows = [postmortem.estimates(s) for s in studies]
    return HTML(table(rows, "Three estimates of the winner: in its study, on fresh splits, on the test split").data
                + "<p>The study's best was picked on one split and is optimistic; the validation mean retrains on "
                  "fresh splits; the test score (written once by the final phase) is the only one no choice has "
                  "seen. An empty cell: that phase has not run.</p>")


FEW_TRIALS = 10  # fewer finished trials than this: rates and charts say little
SHORT_S = 600  # a rate over less time than this is mostly noise and start-up cost


def per_hour(relative_gain: float | None, hours: float | None, n_trials: int) -> str:
    """Relative gain per hour with its basis, or why it is held back (a +134815% per hour
    from 3 trials in 12 s says nothing)."""
    if relative_gain is None or not hours:
        return "–"
    basis = f"{n_trials} trials in {units.hours(hours)}"
    if n_trials < FEW_TRIALS or hours * 3600 < SHORT_S:
        return f"not shown: {basis} is too little to rate"
    return f"{relative_gain / hours:+.1%} per hour ({basis})"


def show_warm_starts(studies: list[optuna.Study]) -> HTML:
    """For each warm-started study: how many trials it needed to reach its source's best,
    against how many the source needed."""
    from tunewise.study.warmstart import trials_to_reach

    by_name = {s.study_name: s for s in studies}
    rows = []
    for s in studies:
        lineage = s.user_attrs.get(LINEAGE_KEY) or {}
        sources = lineage.get("sources") or ([{"from_study": lineage["from_study"]}] if lineage.get("from_study") else [])
        for src in sources:
            cold = by_name.get(src["from_study"])
            target = records.best_value(cold) if cold is not None and cold is not s else None
            if target is None:
                continue
            rows.append({"warm study": s.study_name, "from": cold.study_name, "cold best": target,
                         "cold needed (trials)": trials_to_reach(cold, target),
                         "warm reached it after (trials)": trials_to_reach(s, target) or "not reached"})
    return table(rows, "Warm starts: how early each reached its source's best")


def postmortem_summary(p: dict[str, Any], studies: list[optuna.Study]) -> dict[str, Any]:
    """The post-mortem's summary.json: each single-objective study in `studies`, the phase
    table, and each multi-objective study's front with the best macro-F1 within the limits."""
    rows = postmortem.phase_table(studies)
    best = max((r for r in rows if r["best"] is not None), key=lambda r: r["best"], default=None)
    limits = (p["max_latency_ms"] or None, p["max_params"] or None)
    fronts = [{"study": s.study_name, "front": pareto.pareto_rows(s), "best_under_limits": pareto.answer(s, *limits)}
              for s in pareto_studies(p)]
    counted = f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}"
    headline = [f"{counted}; best macro-F1 {best['best']:.4f} in {best['study']}" if best
                else f"{counted}, none complete"] if studies or not fronts else []
    headline += [f"{f['study']}: {len(f['front'])} trials on the Pareto front" for f in fronts]
    summary = {
        "phase": p["phase"], "studies": [postmortem.summarize_study(s) for s in studies], "phase_table": rows,
        "estimates": [postmortem.estimates(s) for s in studies],
        "pareto": fronts, "headline": "; ".join(headline),
    }
    write_summary(p, summary)
    return summary


# ---- final phase ------------------------------------------------------------------------

def run_final(p: dict[str, Any]):
    """Retrain the validated winner (and the baseline, and the k-fold ensemble), export it,
    score it once on the test split (phases/final.py)."""
    from tunewise.phases.final import run_final as train_final

    return train_final(p)


def show_final(r) -> HTML:
    """The test scores next to the study's best and the validation mean, the per-class F1
    table, which model was scored, and a confusion matrix of the single model."""
    from tunewise.phases.final import summary as final_summary
    from tunewise.report import charts

    s = final_summary({"phase": "final", "final_folds": len(r.ensemble_dirs)}, r)
    notes = "".join(f"<p><i>{html.escape(n)}</i></p>" for n in r.notes)
    if not r.scores:
        return HTML(f"<p><b>No test score.</b> {html.escape(r.test.note)}</p>{notes}"
                    f"<p>Exported: {html.escape(', '.join(map(str, r.model_dirs)))}</p>")
    rows = [{"": "study's best (the split it was picked on)", "macro-F1": s["study_best"], "accuracy": None},
            {"": "validation mean (fresh splits)", "macro-F1": s["validation_mean"], "accuracy": None}]
    if r.oof_f1 is not None:
        rows.append({"": f"{len(r.ensemble_dirs)}-fold out-of-fold (non-test images)", "macro-F1": r.oof_f1, "accuracy": None})
    rows += [{"": f"test: {x.name}", "macro-F1": x.f1, "accuracy": x.accuracy} for x in r.scores.values()]
    per_class = [{"class": c, **{x.name: x.per_class_f1[i] for x in r.scores.values()}} for i, c in enumerate(r.classes)]
    display(charts.confusion(r.scores["single"].confusion, r.classes, "Test split: single model"))
    ledger = r.ledger.get("message", "")
    warn = "color:#b00" if r.ledger.get("status") == "different model" else ""
    return HTML(table(rows, "Scores: the search's figure, validation's, and the untouched test split").data
                + (f"<p><b>What tuning bought on the test split:</b> {s['tuning_bought_on_test']:+.4f} macro-F1</p>"
                   if s["tuning_bought_on_test"] is not None else "")
                + f"<p style='{warn}'><b>Model scored:</b> {html.escape(ledger)}</p>" + notes
                + table(per_class, "F1 per class on the test split").data
                + f"<p>Exported (timm folders): {html.escape(', '.join(map(str, r.model_dirs)))}</p>")


def record_final(p: dict[str, Any], r) -> dict[str, Any]:
    from tunewise.phases.final import log_final
    from tunewise.phases.final import summary as final_summary

    summary = final_summary(p, r)
    tracked = log_final(p, r, summary)
    if tracked is not None:
        summary["tracking"] = tracked
    write_summary(p, summary)
    return summary


def predict_images(p: dict[str, Any], r):
    """Predict `predict_images` (a folder or CSV) with the exported model(s): every folder of
    the ensemble when there is one, else the single model; predictions.csv in the run folder."""
    if not p["predict_images"]:
        return HTML("<p><i>predict_images is empty: nothing to predict. From a shell: "
                    "<code>tunewise predict MODEL_DIR... --images DIR|CSV [--tta] --out predictions.csv</code></i></p>")
    from tunewise.phases.predict import predict

    dirs = r.ensemble_dirs or [r.model_dir]
    out = Path(p["run_dir"]) / "predictions.csv"
    tta = bool(r.recipe.values["hflip"])
    rows = predict(dirs, p["predict_images"], tta=tta, out=out, device=p["device"])
    display(table(rows.head(10).to_dict("records"), f"First predictions of {len(rows)} (written to {out})"))
    return rows
