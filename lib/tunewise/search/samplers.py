"""Optuna samplers and pruners built from a name or a small mapping, checked up front.

A spec is a name (``"tpe"``), a mapping (``{name: tpe, n_startup_trials: 5}``) or None for
the default (tpe / median). Names ignore case, ``_`` and ``-``. Argument names are checked
against the Optuna constructor, so a typo fails before the study starts rather than being
silently ignored, and ``describe_*`` gives the normalized form a study records.

tunewise defaults, applied unless the spec sets them:

- ``tpe``: ``multivariate=True`` (models parameters jointly; for conditional spaces add
  ``group: true`` so each sub-space is modelled on its own).
- ``median``: ``n_startup_trials=5, n_warmup_steps=1``: no pruning until 5 trials have
  finished, and never on the first epoch, whose score says little.
- ``hyperband``: ``min_resource=1, reduction_factor=3`` (one epoch minimum, keep a third).
- ``patient``: ``{name: patient, patience: 2, wrapped: median}`` wraps another pruner spec;
  without ``wrapped`` it prunes on patience alone.

Samplers that take a ``seed`` get the ``seed`` argument of ``make_sampler`` unless the
spec sets one.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any, Mapping

from optuna import pruners, samplers

from tunewise.errors import ConfigError, did_you_mean, is_int, is_number

_SAMPLER_CLASSES = {
    "tpe": samplers.TPESampler,
    "random": samplers.RandomSampler,
    "cmaes": samplers.CmaEsSampler,
    "gp": samplers.GPSampler,
    "qmc": samplers.QMCSampler,
    "nsgaii": samplers.NSGAIISampler,
    "grid": samplers.GridSampler,
    "bruteforce": samplers.BruteForceSampler,
}
_PRUNER_CLASSES = {
    "none": pruners.NopPruner,
    "median": pruners.MedianPruner,
    "percentile": pruners.PercentilePruner,
    "hyperband": pruners.HyperbandPruner,
    "successivehalving": pruners.SuccessiveHalvingPruner,
    "patient": pruners.PatientPruner,
    "wilcoxon": pruners.WilcoxonPruner,
    "threshold": pruners.ThresholdPruner,
}
SAMPLERS = tuple(_SAMPLER_CLASSES)
PRUNERS = tuple(_PRUNER_CLASSES)
DEFAULT_SAMPLER = "tpe"
DEFAULT_PRUNER = "median"

_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpe": {"multivariate": True},
    "median": {"n_startup_trials": 5, "n_warmup_steps": 1},
    "hyperband": {"min_resource": 1, "reduction_factor": 3},
}
# Optuna imports these lazily, at the first trial; find out before the study starts.
_EXTRA_PACKAGES = {"cmaes": "cmaes"}


def make_sampler(spec: str | Mapping | None = None, seed: int | None = None):
    """The Optuna sampler for ``spec``; ``seed`` goes to samplers that take one."""
    desc = describe_sampler(spec)
    name, args = desc["name"], {k: v for k, v in desc.items() if k != "name"}
    cls = _SAMPLER_CLASSES[name]
    package = _EXTRA_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"sampler: {name} needs the {package!r} package (pip install {package})")
    if "seed" in _spec_params(cls):
        args.setdefault("seed", seed)
    return _construct("sampler", cls, args)


def make_pruner(spec: str | Mapping | None = None):
    """The Optuna pruner for ``spec``."""
    return _build_pruner(describe_pruner(spec), "pruner")


def describe_sampler(spec: str | Mapping | None = None) -> dict[str, Any]:
    """The normalized ``{name: ..., **arguments}`` of a sampler spec, defaults filled in."""
    return _describe(spec, "sampler", _SAMPLER_CLASSES, DEFAULT_SAMPLER)


def describe_pruner(spec: str | Mapping | None = None) -> dict[str, Any]:
    """The normalized ``{name: ..., **arguments}`` of a pruner spec, defaults filled in."""
    return _describe(spec, "pruner", _PRUNER_CLASSES, DEFAULT_PRUNER)


def _describe(spec: Any, field: str, classes: Mapping[str, type], default: str) -> dict:
    name, args = _name_and_args(spec, field, classes, default)
    args = {**_DEFAULTS.get(name, {}), **args}
    if name == "patient" and args.get("wrapped") is not None:
        args["wrapped"] = _describe(args["wrapped"], f"{field}.wrapped", _PRUNER_CLASSES,
                                    DEFAULT_PRUNER)
    _check_args(field, name, classes[name], args)
    return {"name": name, **args}


def _name_and_args(spec: Any, field: str, classes: Mapping[str, type], default: str):
    if spec is None:
        spec = default
    if isinstance(spec, str):
        raw_name, args = spec, {}
    elif isinstance(spec, Mapping) and "name" in spec:
        raw_name, args = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"{field}: expected a name ({', '.join(classes)}) or a mapping with "
                          f"a name and arguments, e.g. {{name: {default}}}; got {spec!r}")
    name = str(raw_name).lower().replace("_", "").replace("-", "")
    if name not in classes:
        raise ConfigError(f"{field}: unknown {field.split('.')[0]} {raw_name!r}"
                          f"{did_you_mean(name, classes)}; allowed: {', '.join(classes)}")
    return name, args


def _check_args(field: str, name: str, cls: type, args: Mapping[str, Any]) -> None:
    """Every argument exists, every required one is there, simple types match the default."""
    params = _spec_params(cls)
    allowed = f"allowed: {', '.join(params)}" if params else "it takes no arguments"
    problems = []
    for arg, value in args.items():
        if arg not in params:
            problems.append(f"{field}.{arg}: not an argument of {name} ({cls.__name__})"
                            f"{did_you_mean(str(arg), params)}; {allowed}")
        elif not _fits_default(value, params[arg].default):
            expected = type(params[arg].default).__name__
            problems.append(f"{field}.{arg}: must be {expected} like the default "
                            f"({params[arg].default!r}), got {value!r}")
    for arg, param in params.items():
        if param.default is inspect.Parameter.empty and arg not in args:
            problems.append(f"{field}.{arg}: required by {name} ({cls.__name__})")
    if problems:
        raise ConfigError("\n".join(problems))


def _spec_params(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor arguments a spec may set, as the spec spells them."""
    params = {
        p.name: p
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if cls is pruners.PatientPruner:
        # The spec nests a pruner spec under `wrapped`; None keeps Optuna's patience-only mode.
        del params["wrapped_pruner"]
        params["wrapped"] = inspect.Parameter("wrapped", inspect.Parameter.KEYWORD_ONLY,
                                              default=None)
    return params


def _fits_default(value: Any, default: Any) -> bool:
    """Catch "5" or 0.5 for an int argument early; only bool/int/float defaults are checked."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return is_int(value)
    if isinstance(default, float):
        return is_number(value, finite=False)
    return True


def _build_pruner(desc: Mapping[str, Any], field: str):
    name, args = desc["name"], {k: v for k, v in desc.items() if k != "name"}
    if name == "patient":
        wrapped = args.pop("wrapped", None)
        args["wrapped_pruner"] = (
            None if wrapped is None else _build_pruner(wrapped, f"{field}.wrapped")
        )
    return _construct(field, _PRUNER_CLASSES[name], args)


def _construct(field: str, cls: type, args: Mapping[str, Any]):
    """``cls(**args)``, with Optuna's complaints about the values turned into a ConfigError."""
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ConfigError(f"{field}: {cls.__name__}({shown}) rejected its arguments: {exc}") from exc
