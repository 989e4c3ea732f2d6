"""Multi-objective search: macro-F1 against inference latency and model size.

`objectives: [f1]` (the default) is the single-objective study every other part of
tunewise assumes. `objectives: [f1, latency_ms, params]` (or any of them after `f1`)
makes an Optuna multi-objective study instead: macro-F1 is maximized, latency
(milliseconds per image, measured on the trial's device) and parameter count minimized,
and `study.best_trials` is the Pareto front. What follows from that, said rather than
crashed into:

- Optuna cannot report or prune a multi-objective trial: the pruner is not used.
- Stop rules that watch one best value (plateau, target, roi, noise_floor) do not apply;
  budget and failure_guard do. Skipped rules are listed in the summary.
- Narrowing (the focused phase) and the quick-to-focused gate need one best value: pick a
  point with `best_under` and validate it instead.

Latency is a property of the architecture and the device, not of the weights' values: it
is measured once per model and device in a study's process (warm-up, then the median of a
few timed passes over a fixed batch) after the first trial of that model trained, and
recorded on every trial (user attrs `latency_ms`, `n_params`), so trials of one model never
differ by timing noise alone.
"""

from __future__ import annotations

import logging
import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import optuna
import plotly.graph_objects as go
import torch
from optuna.trial import FrozenTrial, TrialState

from tunewise.errors import ConfigError, did_you_mean
from tunewise.train.models import build_model
from tunewise.train.objective import Objective
from tunewise.study.stoprules import DEFAULT_STOP_RULES, RULES, build_stop_rules
from tunewise.study.identity import IDENTITY_KEY, open_study

# name in params -> (metric name in the study, direction, user attr holding it)
OBJECTIVES: dict[str, tuple[str, str, str]] = {
    "f1": ("macro_f1", "maximize", "macro_f1"),
    "latency_ms": ("latency_ms", "minimize", "latency_ms"),
    "params": ("params", "minimize", "n_params"),
}
LATENCY_BATCH = 32  # images per timed forward pass
LATENCY_WARMUP = 2  # untimed passes first (allocator, cudnn autotune, caches)
LATENCY_RUNS = 5  # timed passes; the median is kept
MULTI_RULES = ("budget", "failure_guard")  # the stop rules that need no single best value

_log = logging.getLogger(__name__)


# --- parameters ---------------------------------------------------------------------------


def check_objectives(names: Any) -> list[str]:
    """`objectives` as given, checked: f1 first, then any of latency_ms, params, no repeats."""
    allowed = ", ".join(OBJECTIVES)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"objectives: {names!r} is not allowed; allowed: a list of {allowed}, f1 first, e.g. [f1, latency_ms]")
    for n in names:
        if n not in OBJECTIVES:
            raise ConfigError(f"objectives: {n!r} is not an objective{did_you_mean(n, OBJECTIVES)}; allowed: {allowed}")
    if names[0] != "f1" or len(set(names)) != len(names):
        raise ConfigError(f"objectives: {names!r} is not allowed; allowed: f1 first, each objective once, e.g. [f1, latency_ms, params]")
    return names


def is_multi(p: dict[str, Any]) -> bool:
    return len(p.get("objectives") or ["f1"]) > 1


def is_multi_study(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def directions(names: Sequence[str]) -> list[str]:
    return [OBJECTIVES[n][1] for n in names]


def metric_names(names: Sequence[str]) -> list[str]:
    return [OBJECTIVES[n][0] for n in names]


def stop_rules(config: dict[str, Any] | None, elapsed_s: Callable[[], float] | None = None) -> tuple[list, list[str]]:
    """(the rules that apply to a multi-objective study, a note per rule left out)."""
    config = dict(config or {})
    wanted = {**DEFAULT_STOP_RULES, **config}
    skipped = [name for name, args in wanted.items() if name in RULES and name not in MULTI_RULES and args not in (None, False)]
    kept = {**{k: v for k, v in config.items() if k in MULTI_RULES or k not in RULES}, **{k: False for k in RULES if k not in MULTI_RULES}}
    notes = [f"stop rule {name} not applied: it watches one best value, and a multi-objective study has a Pareto front instead"
             for name in skipped]
    return build_stop_rules(kept, elapsed_s=elapsed_s), notes


def not_applied(p: dict[str, Any]) -> list[str]:
    """What a multi-objective run with parameters `p` leaves out, one note each."""
    notes = stop_rules(p["stop_rules"])[1]
    if p["pruner"] not in (None, "none", {"name": "none"}):
        notes.append("pruner not used: Optuna cannot prune a multi-objective trial")
    return notes


# --- measuring a model --------------------------------------------------------------------


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_latency(model: torch.nn.Module, img_size: int, device: torch.device, *, amp: str = "auto",
                    batch: int = LATENCY_BATCH, warmup: int = LATENCY_WARMUP, runs: int = LATENCY_RUNS) -> float:
    """Milliseconds per image for inference on `device`: `warmup` untimed passes over a
    batch of `batch` images, then the median of `runs` timed ones, divided by `batch`."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    model = model.eval().to(device)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    if on_cuda:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    mode = "bf16" if amp == "auto" and on_cuda else amp
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)
                if mode in ("bf16", "fp16") else nullcontext())
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + runs):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch


class MultiObjective(Objective):
    """The training objective returning (macro-F1, then latency_ms and/or params as asked).
    No epoch is reported (Optuna cannot prune a multi-objective trial)."""

    prunable = False

    def __init__(self, *args, objectives: Sequence[str] = ("f1", "latency_ms", "params"), **kwargs):
        super().__init__(*args, **kwargs)
        self.objectives = check_objectives(list(objectives))
        self._measured: dict[str, tuple[float, int]] = {}  # model name -> (ms per image, parameters)

    def measure(self, cfg) -> tuple[float, int]:
        """(latency in ms per image, parameter count) of `cfg.model` on this device, once per model."""
        if cfg.model not in self._measured:
            model = build_model(cfg.model, self.data.num_classes)
            n_params = count_params(model)
            latency = measure_latency(model, self.data.images.shape[-1], self.device, amp=cfg.amp)
            del model
            self._measured[cfg.model] = (latency, n_params)
        return self._measured[cfg.model]

    def values(self, trial: optuna.Trial, cfg, result) -> tuple[float, ...]:
        latency, n_params = self.measure(cfg)
        trial.set_user_attr("macro_f1", result.f1)
        trial.set_user_attr("model", cfg.model)
        trial.set_user_attr("latency_ms", round(latency, 5))
        trial.set_user_attr("n_params", n_params)
        trial.set_user_attr("latency_device", str(self.device))
        by_name = {"f1": result.f1, "latency_ms": latency, "params": float(n_params)}
        return tuple(by_name[n] for n in self.objectives)


# --- the study ----------------------------------------------------------------------------


def open_multi_study(name: str, storage, *, objectives: Sequence[str], identity: dict[str, Any],
                     sampler=None, force: bool = False, distributions=None) -> optuna.Study:
    """Create or resume multi-objective study `name`; refuse one made for other objectives,
    and (as study.open_study does for any study) a resume for another setup unless `force`."""
    if name in optuna.get_all_study_names(storage):
        existing = optuna.load_study(study_name=name, storage=storage)
        stored = (existing.user_attrs.get(IDENTITY_KEY) or {}).get("objectives") or ["f1"]
        if list(stored) != list(objectives):
            raise ConfigError(
                f"study {name!r} optimizes {stored} and cannot be resumed with objectives {list(objectives)}: "
                "Optuna cannot change a study's objectives; use a new study name")
    return open_study(name, storage, directions=directions(objectives), sampler=sampler, force=force,
                      identity={**identity, "objectives": list(objectives)}, distributions=distributions)


def refuse_multi(storage, name: str) -> None:
    """A single-objective run must not resume a multi-objective study: say so plainly."""
    if name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        if is_multi_study(study):
            stored = (study.user_attrs.get(IDENTITY_KEY) or {}).get("objectives")
            raise ConfigError(f"study {name!r} is multi-objective ({stored}); resume it with objectives: {stored}, "
                              "or use a new study name for a single-objective search")


# --- the Pareto front ---------------------------------------------------------------------


def objective_names(study: optuna.Study) -> list[str]:
    return list((study.user_attrs.get(IDENTITY_KEY) or {}).get("objectives") or ["f1", "latency_ms", "params"][: len(study.directions)])


def _measure(t: FrozenTrial, name: str, study: optuna.Study) -> float | None:
    """A trial's figure for objective `name`: its value when the study optimizes it, else
    the user attr every multi-objective trial records."""
    names = objective_names(study)
    if t.values is not None and name in names:
        return t.values[names.index(name)]
    return t.user_attrs.get(OBJECTIVES[name][2])


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The trials no other complete trial beats on every objective, best macro-F1 first."""
    return sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))


def best_under(study: optuna.Study, max_latency_ms: float | None = None, max_params: float | None = None) -> FrozenTrial | None:
    """The complete trial with the best macro-F1 among those within both limits (None: no
    limit); None when no trial fits. Also answers for objectives the study only recorded."""
    fits = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        latency, size = _measure(t, "latency_ms", study), _measure(t, "params", study)
        if max_latency_ms is not None and (latency is None or latency > max_latency_ms):
            continue
        if max_params is not None and (size is None or size > max_params):
            continue
        fits.append(t)
    return max(fits, key=lambda t: (t.values[0], -t.number), default=None)


def pareto_rows(study: optuna.Study) -> list[dict[str, Any]]:
    return [{"trial": t.number, "macro-F1": t.values[0], "latency (ms/image)": _measure(t, "latency_ms", study),
             "parameters": _measure(t, "params", study), "model": t.params.get("model", t.user_attrs.get("model", "")),
             "params": {k: v for k, v in t.params.items() if k != "model"}} for t in pareto_front(study)]


def answer(study: optuna.Study, max_latency_ms: float | None = None, max_params: float | None = None) -> str:
    """'Best F1 under X ms / Y parameters' in one sentence."""
    limits = " and ".join(x for x in (f"{max_latency_ms:g} ms per image" if max_latency_ms else "",
                                      f"{max_params:,.0f} parameters" if max_params else "") if x) or "no limit"
    t = best_under(study, max_latency_ms or None, max_params or None)
    if t is None:
        return f"No complete trial of {study.study_name} fits within {limits}."
    return (f"Best macro-F1 within {limits}: {t.values[0]:.4f} (trial {t.number}, "
            f"{_measure(t, 'latency_ms', study):.3f} ms per image, {_measure(t, 'params', study):,.0f} parameters; "
            f"settings {dict(t.params)}).")


def pareto_figure(study: optuna.Study) -> go.Figure:
    """Optuna's Pareto-front plot (2 or 3 objectives), axes named, dominated trials shown."""
    names = metric_names(objective_names(study))
    title = f"{study.study_name}: Pareto front of {', '.join(names)}"
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        from tunewise.report.charts import note

        return note(title, "No complete trial yet.")
    fig = optuna.visualization.plot_pareto_front(study, target_names=names, include_dominated_trials=True)
    fig.update_layout(title=title)
    return fig


def summary_extra(study: optuna.Study, notes: Sequence[str] = ()) -> dict[str, Any]:
    """What a multi-objective summary adds to tuning's: the objectives, the front, notes."""
    return {"objectives": objective_names(study), "pareto_front": pareto_rows(study), "not_applied": list(notes)}
