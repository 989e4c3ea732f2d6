"""Search spaces read from YAML or dicts, in Optuna's own serialized distribution form.

    lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    batch_size: {type: categorical, choices: [8, 16, 32, 64]}
    epochs: {type: int, low: 3, high: 10, step: 1}
    optimizer: {type: categorical, choices: [adamw, sgd]}
    momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
    label_smoothing: 0.1      # a plain value fixes the parameter

``when`` maps other parameters to a required value (or a list of allowed values); the
parameter is suggested only when every entry holds. Every distribution is built and every
condition checked in ``SearchSpace.from_dict``, so a bad space fails at once with one
message listing all its problems, instead of inside every trial.

``sample(trial)`` suggests the active parameters, ``to_dict()`` writes the space back,
``clip(params)`` adapts parameters from an earlier study for warm starts (``enqueue_trial``)
and ``fingerprint()`` tells a resumed study whether its space changed.
"""

from __future__ import annotations

import copy
import decimal
import hashlib
import json
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import BaseTrial

from tunewise.errors import ConfigError, did_you_mean

TYPES = ("float", "int", "categorical")
_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
# What YAML, JSON and every Optuna storage hold without loss.
_SCALARS = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; build it with ``SearchSpace.from_dict``.

    distributions: searched parameter -> Optuna distribution.
    fixed: parameter -> value it always takes.
    conditions: conditional parameter -> {other parameter: allowed values}.
    order: every parameter name, each after the parameters its ``when`` reads.
    """

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, Any]
    conditions: dict[str, dict[str, list]]
    order: tuple[str, ...]

    @classmethod
    def from_dict(cls, raw: Mapping, where: str = "search_space") -> SearchSpace:
        """Validate ``raw`` and build every distribution; ConfigError lists all problems."""
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{where}: must be a mapping of parameter name -> distribution or fixed value, "
                f"got {type(raw).__name__}"
            )
        distributions, fixed, raw_when, problems = _parse_entries(raw, where)
        conditions: dict[str, dict[str, list]] = {}
        for name, when in raw_when.items():
            condition, when_problems = _parse_when(when, name, raw, distributions, fixed)
            problems += [f"{where}.{name}: {p}" for p in when_problems]
            conditions[name] = condition
        order, cycle = _dependency_order(list(raw), conditions)
        if cycle:
            problems.append(f"{where}: the when conditions form a cycle: {' -> '.join(cycle)}")
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(distributions, fixed, conditions, tuple(order))

    def sample(self, trial: BaseTrial) -> dict[str, Any]:
        """Suggest every active parameter on ``trial``; fixed values included, flat dict."""
        params: dict[str, Any] = {}
        for name in self.order:
            if name in self.fixed:
                params[name] = self.fixed[name]
            elif self._active(name, params):
                params[name] = _suggest(trial, name, self.distributions[name])
        return params

    def to_dict(self) -> dict[str, Any]:
        """The serialized form (plain, YAML-safe); ``from_dict`` of it gives this space back."""
        out: dict[str, Any] = {}
        for name in self.order:
            if name in self.fixed:
                out[name] = copy.deepcopy(self.fixed[name])
                continue
            out[name] = _serialize(self.distributions[name])
            if name in self.conditions:
                out[name]["when"] = {
                    ref: values[0] if len(values) == 1 else list(values)
                    for ref, values in self.conditions[name].items()
                }
        return out

    def fingerprint(self) -> str:
        """A short stable hash of ``to_dict()``: it changes exactly when the space does."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``sample`` could have returned ``params`` (fixed values included)."""
        for name in self.order:
            active = name in self.fixed or self._active(name, params)
            if active != (name in params):
                return False
            if name in self.fixed and not _equal(params[name], self.fixed[name]):
                return False
            if active and name in self.distributions:
                if not _in_distribution(self.distributions[name], params[name]):
                    return False
        return set(params) <= set(self.order)

    def clip(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The searched parameters of ``params`` made valid here, for ``enqueue_trial``.

        Numbers are clipped into [low, high] and snapped to the step (or to an int);
        categorical values not among the choices, unknown or fixed parameters and
        conditional parameters whose condition fails are dropped, so the sampler picks them.
        """
        if not isinstance(params, Mapping):
            raise ConfigError(f"params to clip must be a mapping, got {type(params).__name__}")
        clipped: dict[str, Any] = {}
        # Conditions read fixed values too, so they are visible while clipping.
        seen: dict[str, Any] = dict(self.fixed)
        for name in self.order:
            if name in self.fixed or name not in params or not self._active(name, seen):
                continue
            value = _clip_value(self.distributions[name], params[name])
            if value is not None:
                clipped[name] = seen[name] = value
        return clipped

    def _active(self, name: str, params: Mapping[str, Any]) -> bool:
        return all(
            ref in params and any(_equal(params[ref], v) for v in allowed)
            for ref, allowed in self.conditions.get(name, {}).items()
        )


def _parse_entries(raw: Mapping, where: str):
    """(distributions, fixed values, raw ``when`` per parameter, problems) of a space."""
    problems: list[str] = []
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    raw_when: dict[str, Any] = {}
    for name, spec in raw.items():
        field = f"{where}.{name}"
        if not isinstance(name, str) or not name:
            problems.append(f"{field}: parameter names must be non-empty strings")
        elif isinstance(spec, Mapping):
            dist, when, spec_problems = _parse_distribution(spec)
            problems += [f"{field}: {p}" for p in spec_problems]
            if dist is not None:
                distributions[name] = dist
            if when is not None:
                raw_when[name] = when
        elif _is_plain(spec):
            fixed[name] = spec
        else:
            problems.append(
                f"{field}: a fixed value must be null, true/false, a number, a string or a "
                f"list of those, got {type(spec).__name__}; to search it, write a mapping "
                f"with a type ({', '.join(TYPES)})"
            )
    return distributions, fixed, raw_when, problems


def _parse_distribution(spec: Mapping) -> tuple[BaseDistribution | None, Any, list[str]]:
    """(distribution or None, raw ``when`` or None, problems) for one parameter mapping."""
    kind = spec.get("type")
    if kind not in TYPES:
        problem = (
            "needs a type"
            if kind is None
            else f"unknown type {kind!r}{did_you_mean(str(kind), TYPES)}"
        )
        return None, None, [f"{problem}; allowed types: {', '.join(TYPES)}"]
    problems = [
        f"unknown key {key!r}{did_you_mean(str(key), _KEYS[kind])}; "
        f"a {kind} parameter takes: {', '.join(_KEYS[kind])}"
        for key in spec
        if key not in _KEYS[kind]
    ]
    if kind == "categorical":
        problems += _choices_problems(spec.get("choices"))
    else:
        problems += _range_problems(kind, spec)
    if problems:
        return None, spec.get("when"), problems
    return _build(kind, spec), spec.get("when"), []


def _build(kind: str, spec: Mapping) -> BaseDistribution:
    """The Optuna distribution of a spec that passed every check."""
    if kind == "categorical":
        return CategoricalDistribution(spec["choices"])
    if kind == "int":
        return IntDistribution(spec["low"], spec["high"], spec.get("log", False),
                               spec.get("step", 1))
    return FloatDistribution(spec["low"], spec["high"], spec.get("log", False), spec.get("step"))


def _choices_problems(choices: Any) -> list[str]:
    if choices is None:
        return ["missing choices (a non-empty list of values)"]
    if not isinstance(choices, list):
        return [f"choices must be a list, got {choices!r}"]
    if not choices:
        return ["choices must not be empty: list at least one value"]
    problems = [
        f"choice {c!r} is a {type(c).__name__}; choices must be null, true/false, "
        "numbers or strings"
        for c in choices
        if not isinstance(c, _SCALARS)
    ]
    scalars = [c for c in choices if isinstance(c, _SCALARS)]
    for i, choice in enumerate(scalars):
        if any(_equal(choice, other) for other in scalars[:i]):
            problems.append(f"choice {choice!r} is listed twice")
    return problems


def _range_problems(kind: str, spec: Mapping) -> list[str]:
    """Problems with low/high/log/step of a float or int parameter (Optuna's own rules)."""
    problems = []
    number = Integral if kind == "int" else Real
    noun = "an integer" if kind == "int" else "a number"
    bounds = {}
    for key in ("low", "high"):
        value = spec.get(key)
        if value is None:
            problems.append(f"missing {key} ({kind} parameters need low and high)")
        elif not _is_number(value, number):
            problems.append(f"{key} must be {noun}, got {value!r}{_yaml_hint(value)}")
        else:
            bounds[key] = value
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problems.append(f"log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        if not _is_number(step, number) or step <= 0:
            problems.append(f"step must be {noun} > 0, got {step!r}{_yaml_hint(step)}")
        elif log is True:
            problems.append("step cannot be combined with log: true; drop one of them")
    if len(bounds) < 2:
        return problems
    low, high = bounds["low"], bounds["high"]
    if low > high:
        problems.append(f"low ({low}) must be <= high ({high})")
    elif log is True and low <= 0:
        problems.append(f"log: true needs low > 0, got low ({low})")
    elif step is not None and not problems:
        # Optuna would silently lower high to the last step; say so instead.
        last = _snap_down(low, high, step)
        if last != high:
            problems.append(f"high ({high}) must be low ({low}) plus a multiple of step "
                            f"({step}), e.g. high: {last:g}")
    return problems


def _parse_when(
    when: Any,
    name: str,
    raw: Mapping,
    distributions: Mapping[str, BaseDistribution],
    fixed: Mapping[str, Any],
) -> tuple[dict[str, list], list[str]]:
    """({referenced parameter: allowed values}, problems) for one ``when`` mapping."""
    if not isinstance(when, Mapping) or not when:
        return {}, [f"when must map other parameters to values, e.g. when: {{optimizer: sgd}}; "
                    f"got {when!r}"]
    condition: dict[str, list] = {}
    problems = []
    for ref, wanted in when.items():
        if ref not in raw:
            others = [str(n) for n in raw if n != name]
            problems.append(f"when refers to {ref!r}, which is not in the space"
                            f"{did_you_mean(str(ref), others)}; parameters: {', '.join(others)}")
            continue
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or not all(isinstance(v, _SCALARS) for v in values):
            problems.append(f"when {ref}: needs a value or a non-empty list of values "
                            f"(null, true/false, numbers or strings), got {wanted!r}")
            continue
        condition[ref] = values
        if ref in fixed:
            never = [v for v in values if not _equal(fixed[ref], v)]
            allowed = f"{ref} is fixed at {fixed[ref]!r}"
        elif ref in distributions:
            never = [v for v in values if not _in_distribution(distributions[ref], v)]
            allowed = f"{ref} is {_describe(distributions[ref])}"
        else:
            continue  # the referenced parameter is broken and reported on its own
        for value in never:
            hint = did_you_mean(str(value), [str(c) for c in _choices(distributions.get(ref))])
            problems.append(f"when {ref}: {value!r} can never hold{hint}; {allowed}")
    return condition, problems


def _dependency_order(
    names: list[str], conditions: Mapping[str, Mapping[str, list]]
) -> tuple[list[str], list[str]]:
    """(names with each after the ones its condition reads, a cycle or [])."""
    deps = {n: [r for r in conditions.get(n, {}) if r in names] for n in names}
    order: list[str] = []
    remaining = list(names)
    while remaining:
        # Declaration order wins whenever the dependencies allow it.
        ready = next((n for n in remaining if all(d in order for d in deps[n])), None)
        if ready is None:
            return order, _find_cycle(remaining, deps)
        order.append(ready)
        remaining.remove(ready)
    return order, []


def _find_cycle(remaining: list[str], deps: Mapping[str, list[str]]) -> list[str]:
    # Every remaining name waits on another remaining one, so walking those edges must loop.
    path = [remaining[0]]
    while True:
        nxt = next(d for d in deps[path[-1]] if d in remaining)
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)


def _suggest(trial: BaseTrial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_categorical(name, list(dist.choices))


def _serialize(dist: BaseDistribution) -> dict[str, Any]:
    """The shortest serialized form: log and step only where they differ from the default."""
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    out: dict[str, Any] = {"type": _kind(dist), "low": dist.low, "high": dist.high}
    if dist.log:
        out["log"] = True
    if dist.step != _default_step(dist):
        out["step"] = dist.step
    return out


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"one of {list(dist.choices)}"
    text = f"{_kind(dist)} in [{dist.low}, {dist.high}]"
    if dist.log:
        text += " (log)"
    if dist.step != _default_step(dist):
        text += f" with step {dist.step}"
    return text


def _kind(dist: FloatDistribution | IntDistribution) -> str:
    return "int" if isinstance(dist, IntDistribution) else "float"


def _default_step(dist: FloatDistribution | IntDistribution) -> int | None:
    return 1 if isinstance(dist, IntDistribution) else None


def _in_distribution(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return any(_equal(value, c) for c in dist.choices)
    if not _is_number(value, Real) or not dist.low <= value <= dist.high:
        return False
    if dist.step is None:
        return True
    # Optuna's own tolerance: sampled steps carry float noise (0.30000000000000004).
    k = (value - dist.low) / dist.step
    return abs(k - round(k)) < 1e-8


def _clip_value(dist: BaseDistribution, value: Any) -> Any:
    """``value`` made valid for ``dist``, or None when it has to be dropped."""
    if isinstance(dist, CategoricalDistribution):
        return next((c for c in dist.choices if _equal(value, c)), None)
    if not _is_number(value, Real):
        return None
    inside = min(max(value, dist.low), dist.high)
    if isinstance(dist, IntDistribution):
        return int(_snap(dist, inside))
    return float(inside) if dist.step is None else _snap(dist, inside)


def _snap(dist: FloatDistribution | IntDistribution, value: Real) -> float:
    """The grid point low + k * step nearest to ``value`` (inside [low, high], so is the point).

    Decimal arithmetic keeps 0.1 + 2 * 0.1 at 0.3, as Optuna does for its grids.
    """
    low, step = decimal.Decimal(str(dist.low)), decimal.Decimal(str(dist.step))
    k = ((decimal.Decimal(str(value)) - low) / step).to_integral_value()
    return float(low + k * step)


def _snap_down(low: Real, high: Real, step: Real) -> float:
    """The last grid point low + k * step not above ``high``, exact in decimal like Optuna."""
    d_low, d_step = decimal.Decimal(str(low)), decimal.Decimal(str(step))
    return float(((decimal.Decimal(str(high)) - d_low) // d_step) * d_step + d_low)


def _choices(dist: BaseDistribution | None) -> tuple:
    return dist.choices if isinstance(dist, CategoricalDistribution) else ()


def _equal(a: Any, b: Any) -> bool:
    # True == 1 in Python, but `when: {use_ema: true}` must not match a choice of 1.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _is_number(value: Any, number: type) -> bool:
    return (
        isinstance(value, number)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _SCALARS)


def _yaml_hint(value: Any) -> str:
    """PyYAML reads 1e-5 (no dot) as a string: point at the fix when that is what happened."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (a string: YAML needs a dot in exponent numbers, e.g. 1.0e-5)"
