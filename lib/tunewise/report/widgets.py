"""The search-space editor: ipywidgets that read and write the ``search_space`` dict.

One row per parameter, from the serialized form of ``tunewise.space``:

- float or int with ``log: true``: a ``SelectionRangeSlider`` over log-spaced values
  (ipywidgets has no log range slider), the original bounds among them exactly;
- float: ``FloatRangeSlider``; int: ``IntRangeSlider`` on the parameter's step;
- categorical: ``SelectMultiple`` (the last selected choice cannot be deselected);
- fixed values: shown read-only.

Sliders reach a decade beyond the original bounds for log parameters and one range
width beyond them otherwise (not below 0 where the range starts at 0 or above), except
where training would refuse the wider bound. Each searched parameter can also be fixed
at one value with its "fix" checkbox.

``editor.value`` is the dict a params file holds: same keys in the same order, untouched
bounds and choices as given (ints stay ints), ``log``/``step``/``when`` kept.
``editor.save(path)`` writes it as ``search_space:`` YAML that ``params.resolve`` reads.
"""

from __future__ import annotations

import copy
import html
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml
from ipywidgets import (
    HTML,
    Checkbox,
    Dropdown,
    FloatRangeSlider,
    FloatText,
    HBox,
    IntRangeSlider,
    IntText,
    Label,
    Layout,
    SelectionRangeSlider,
    SelectMultiple,
    VBox,
)

from tunewise.atomic import write_text_atomic
from tunewise.errors import ConfigError
from tunewise.train.hparams import TrainConfig
from tunewise.search.space import SearchSpace

LOG_POINTS_PER_DECADE = 10
_NAME_WIDTH = "200px"
_SLIDER_WIDTH = "420px"


class SpaceEditor:
    """Widgets for one search space; ``.widget`` shows them, ``.value`` reads them."""

    def __init__(self, space: Mapping[str, Any]) -> None:
        SearchSpace.from_dict(space)  # a broken space fails here, every problem named
        self._rows = [_row(name, spec) for name, spec in space.items()]
        self._callbacks: list[Callable[[dict[str, Any]], None]] = []
        self.status = HTML()
        self.widget = VBox([row.widget for row in self._rows] + [self.status])
        for row in self._rows:
            row.on_change(self._changed)
        self._show_status()

    @property
    def value(self) -> dict[str, Any]:
        """The search space the widgets say now, in the params file's form."""
        return {row.name: row.value() for row in self._rows}

    def on_change(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(value)`` after every change."""
        self._callbacks.append(callback)

    def save(self, path: str | Path) -> Path:
        """Write ``search_space: <value>`` as YAML, atomically; ConfigError if invalid."""
        value = self.value
        SearchSpace.from_dict(value)
        text = yaml.safe_dump({"search_space": value}, sort_keys=False)
        return write_text_atomic(Path(path), text)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _changed(self) -> None:
        self._show_status()
        value = self.value
        for callback in self._callbacks:
            callback(value)

    def _show_status(self) -> None:
        try:
            space = SearchSpace.from_dict(self.value)
        except ConfigError as exc:
            self.status.value = f'<span style="color:#c00">{_escape(str(exc))}</span>'
            return
        self.status.value = (f"{len(space.distributions)} searched, {len(space.fixed)} fixed "
                             f"(space {space.fingerprint()})")


def _row(name: str, spec: Any) -> _Row:
    if not isinstance(spec, Mapping):
        return _FixedRow(name, spec)
    if spec["type"] == "categorical":
        return _ChoiceRow(name, spec)
    return _RangeRow(name, spec)


class _Row:
    """One parameter: a name label, its widgets, and its value in the serialized form."""

    def __init__(self, name: str, spec: Any, controls: list) -> None:
        self.name = name
        self.spec = spec
        if isinstance(spec, Mapping) and "when" in spec:
            label = f"{name} (when {_when_text(spec['when'])})"
        else:
            label = name
        self.widget = HBox([Label(label, layout=Layout(width=_NAME_WIDTH)), *controls])

    def value(self) -> Any:
        raise NotImplementedError

    def on_change(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` when any of the row's widgets changes."""


class _FixedRow(_Row):
    def __init__(self, name: str, spec: Any) -> None:
        super().__init__(name, spec, [Label(f"fixed at {spec!r}")])

    def value(self) -> Any:
        return copy.deepcopy(self.spec)


class _SearchedRow(_Row):
    """A searched parameter: its range widget, and a checkbox to fix it at one value."""

    def __init__(self, name: str, spec: Mapping, chooser, fixed_input, readout: Callable[[], str] | None = None) -> None:
        self.chooser = chooser
        self.fix = Checkbox(value=False, description="fix at", indent=False, layout=Layout(width="70px"))
        self.fixed_input = fixed_input
        self.fixed_input.layout.display = "none"
        # A readout of our own where the widget's says too little (see _log_readout, _choice_readout).
        self.readout = Label(readout(), layout=Layout(width="280px")) if readout else None
        if readout:
            chooser.observe(lambda _: setattr(self.readout, "value", readout()), names="value")
        super().__init__(name, spec, [chooser, *([self.readout] if readout else []), self.fix, fixed_input])
        self.fix.observe(self._toggle, names="value")

    def value(self) -> Any:
        if self.fix.value:
            return self.fixed_value()
        return self.searched_value()

    def fixed_value(self) -> Any:
        raise NotImplementedError

    def searched_value(self) -> dict[str, Any]:
        raise NotImplementedError

    def on_change(self, handler: Callable[[], None]) -> None:
        for widget in (self.chooser, self.fix, self.fixed_input):
            widget.observe(lambda _: handler(), names="value")

    def _toggle(self, change) -> None:
        self.chooser.disabled = change["new"]
        self.fixed_input.layout.display = "" if change["new"] else "none"


class _RangeRow(_SearchedRow):
    def __init__(self, name: str, spec: Mapping) -> None:
        self.is_int = spec["type"] == "int"
        low, high = spec["low"], spec["high"]
        lo, hi = _slider_bounds(name, spec)
        readout = None
        if spec.get("log"):
            chooser = _log_slider(lo, hi, low, high, self.is_int)
            # The slider's own readout joins the ends with a hyphen: "1e-05-0.01" reads as one number.
            chooser.readout = False
            readout = lambda: " to ".join(chooser.label)  # noqa: E731
        elif self.is_int:
            chooser = IntRangeSlider(value=(low, high), min=lo, max=hi, step=spec.get("step", 1))
        else:
            step = spec.get("step") or _linear_step(hi - lo)
            chooser = FloatRangeSlider(value=(low, high), min=lo, max=hi, step=step, readout_format=".4g")
        chooser.layout.width = _SLIDER_WIDTH
        middle = _middle(low, high, spec)
        fixed = IntText(value=middle) if self.is_int else FloatText(value=middle)
        super().__init__(name, spec, chooser, fixed, readout)

    def searched_value(self) -> dict[str, Any]:
        low, high = self.chooser.value
        return {**self.spec, "low": self._number(low, "low"), "high": self._number(high, "high")}

    def fixed_value(self) -> int | float:
        return int(self.fixed_input.value) if self.is_int else float(self.fixed_input.value)

    def _number(self, value: float, key: str) -> int | float:
        """The original bound where the slider still holds it (its type kept), else the
        slider's value without the float noise of slider steps (0.30000000000000004)."""
        if value == self.spec[key]:
            return self.spec[key]
        return int(value) if self.is_int else float(f"{value:.12g}")


class _ChoiceRow(_SearchedRow):
    def __init__(self, name: str, spec: Mapping) -> None:
        self.choices = list(spec["choices"])
        # Options carry positions, not the choices: ipywidgets matches values with ==, which
        # would merge choices like True and 1 (both allowed in a space).
        options = [(str(c), i) for i, c in enumerate(self.choices)]
        chooser = SelectMultiple(options=options, value=tuple(range(len(options))),
                                 rows=min(len(options), 5), layout=Layout(width=_SLIDER_WIDTH))
        chooser.observe(_keep_one_selected, names="value")
        super().__init__(name, spec, chooser, Dropdown(options=options, value=0), self._readout)

    def _readout(self) -> str:
        """What is selected, in words: a list with every row highlighted is hard to read."""
        chosen = [str(self.choices[i]) for i in sorted(self.chooser.value)]
        if len(chosen) == len(self.choices):
            return f"all {len(chosen)} searched (ctrl-click to drop one)"
        return f"{len(chosen)} of {len(self.choices)} searched: {', '.join(chosen)}"

    def searched_value(self) -> dict[str, Any]:
        return {**self.spec, "choices": [self.choices[i] for i in sorted(self.chooser.value)]}

    def fixed_value(self) -> Any:
        return self.choices[self.fixed_input.value]


def _keep_one_selected(change) -> None:
    if not change["new"]:
        change["owner"].value = change["old"]


# --- slider ranges ------------------------------------------------------------------------


def _slider_bounds(name: str, spec: Mapping) -> tuple[int | float, int | float]:
    """The original bounds widened (a decade for log, one range width otherwise), each
    wider bound kept only where training accepts it."""
    low, high = spec["low"], spec["high"]
    if spec.get("log"):
        # Rounded so that 1e-5 / 10 is the grid's 1e-06, not 1.0000000000000002e-06.
        lo, hi = float(f"{low / 10:.12g}"), float(f"{high * 10:.12g}")
        if spec["type"] == "int":
            lo, hi = max(1, math.floor(lo)), int(hi)
    else:
        width = (high - low) or abs(high) or 1
        lo = max(low - width, 0) if low >= 0 else low - width
        step = spec.get("step") or (1 if spec["type"] == "int" else None)
        if step:  # on the parameter's grid, which passes through low
            width = step * max(1, math.floor(width / step))
            lo = low - step * math.floor((low - lo) / step)
        hi = high + width
        if spec["type"] == "float":  # no float noise in the slider's ends (0.6100000000000001)
            lo, hi = float(f"{lo:.12g}"), float(f"{hi:.12g}")
    return (lo if _trainable(name, lo) else low), (hi if _trainable(name, hi) else high)


def _trainable(name: str, value: float) -> bool:
    """Whether training accepts ``value`` for ``name`` (names training does not know: yes)."""
    if name not in TrainConfig.names():
        return True
    try:
        TrainConfig.from_dict({name: value})
    except ConfigError:
        return False
    return True


def _log_slider(lo, hi, low, high, is_int: bool) -> SelectionRangeSlider:
    """A range slider over round log-spaced values from lo to hi, plus the exact bounds."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    grid = np.logspace(first, last, (last - first) * LOG_POINTS_PER_DECADE + 1)
    values = {round(v) if is_int else float(f"{v:.2g}") for v in grid}
    values = sorted(v for v in values | {lo, hi, low, high} if lo <= v <= hi)
    options = [(str(v) if is_int else f"{v:.3g}", v) for v in values]
    return SelectionRangeSlider(options=options, index=(values.index(low), values.index(high)))


def _linear_step(width: float) -> float:
    """About a thousandth of the slider's width, a power of ten."""
    return 10.0 ** (math.floor(math.log10(width)) - 2) if width > 0 else 0.01


def _middle(low, high, spec: Mapping) -> int | float:
    """A starting value for "fix at": the middle of the range (geometric for log)."""
    middle = math.sqrt(low * high) if spec.get("log") else (low + high) / 2
    if spec["type"] == "int":
        step = spec.get("step", 1)
        return low + step * round((middle - low) / step)
    return float(f"{middle:.3g}")


def _when_text(when: Mapping) -> str:
    return ", ".join(f"{k} = {v}" for k, v in when.items())


def _escape(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")
