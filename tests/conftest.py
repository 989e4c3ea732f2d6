"""Shared fixtures: a private cache folder per test, and small real image datasets on disk."""

from __future__ import annotations

import pytest

from pngdata import write_png_folder
from tunewise.data import cache


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own disk cache and an empty in-memory cache."""
    monkeypatch.setenv("TUNEWISE_CACHE_DIR", str(tmp_path / "cache"))
    cache.clear_memory()
    yield tmp_path / "cache"
    cache.clear_memory()


@pytest.fixture
def png_folder(tmp_path):
    return write_png_folder(tmp_path / "images")
