"""`pytest --nbval-lax notebooks/`: the phase notebooks run in order (1_quick ... 4_postmortem)
with their committed defaults, each building on the studies of the one before. They write
into a throw-away run folder ($TUNEWISE_RUN_DIR, removed at the end), not runs/tunewise; set
TUNEWISE_RUN_DIR yourself to keep what they wrote."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

RUN_DIR_ENV = "TUNEWISE_RUN_DIR"  # read by tunewise.notebook.resolve
_RUN_DIR = pytest.StashKey[str]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """Around each notebook cell's setup (the first one starts the notebook's kernel, which
    copies this environment): the shared throw-away run folder."""
    if os.environ.get(RUN_DIR_ENV):
        yield
        return
    if _RUN_DIR not in item.config.stash:
        path = tempfile.mkdtemp(prefix="tunewise-notebooks-")
        item.config.stash[_RUN_DIR] = path
        item.config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
    os.environ[RUN_DIR_ENV] = item.config.stash[_RUN_DIR]
    try:
        yield
    finally:
        del os.environ[RUN_DIR_ENV]
