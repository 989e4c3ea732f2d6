"""Run parameters at the edges: one flat set of names shared by params/*.yaml, `--set
KEY=VALUE` and the notebooks' parameters cells.

Resolution order: DEFAULTS, then the params file, then overrides (`tunewise run` puts the
phase's preset under the file: see execute.phase_params). Unknown keys are
errors with the closest valid key suggested; every value is checked before any work.
The names, defaults and checks live in config.py, which is what the library reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunewise.config import DEFAULTS, PHASES, SEED_SPACE, absolute_paths, check_keys, data_spec, replace, train_settings
from tunewise.config import resolve as resolve_values
from tunewise.errors import ConfigError

__all__ = ["DEFAULTS", "PHASES", "SEED_SPACE", "absolute_paths", "check_keys", "data_spec", "parse_set", "read_params_file",
           "replace", "resolve", "train_settings"]


def read_params_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params: {path} does not exist; allowed: a YAML file such as params/quick.yaml")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of parameter: value, got {type(values).__name__}")
    check_keys(values, str(path))
    return values


def parse_set(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings, each VALUE read as YAML (numbers, lists, dicts, null)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: {item!r} is not KEY=VALUE; e.g. --set n_trials=5")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    check_keys(out, "--set")
    return out


def resolve(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS <- params file <- overrides, every key and value checked."""
    values = dict(read_params_file(file)) if file else {}
    if overrides:
        check_keys(overrides, "parameters")
        values.update(overrides)
    return resolve_values(values)
