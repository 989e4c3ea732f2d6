"""The install paths agree: environment.yml's pip section names pyproject's dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e .[test]" in pip_section, "environment.yml must install this package through pip"
    listed = {r for r in pip_section if not r.startswith("-")}
    assert {_name(r) for r in listed} == {_name(r) for r in project["dependencies"]}
    # and with the same version ranges, so neither path drifts
    assert {r.replace(" ", "") for r in listed} == {r.replace(" ", "") for r in project["dependencies"]}


def test_required_top_level_layout():
    for name in ("notebooks", "lib", "params", "tests", "environment.yml", "README.md", "pyproject.toml", "Makefile", ".ci/run", "benchmarks"):
        assert (ROOT / name).exists(), f"{name} is missing"
    assert (ROOT / "lib" / "tunewise" / "__init__.py").exists()
