"""One phase of tuning, end to end: parameters in, a study and a summary out.

`tune` runs (or resumes) the phase's study, in this process or, with `workers` > 1, in
that many worker processes, and writes `summary.json`. What it builds on (checking,
preparing, summarizing) lives in prepare.py and is re-exported here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tunewise.phases.prepare import (  # noqa: F401  (re-exported: the phase's API in one place)
    METRIC,
    Checked,
    Prepared,
    baseline_moved,
    baseline_params,
    baseline_warning,
    check,
    check_resume,
    describe_moved,
    final_test_indices,
    headline,
    holdout,
    load_images,
    prepare,
    run_here,
    start_new_study,
    storage_label,
    study_identity,
    summarize,
)
from tunewise.phases.workers import run_workers


def tune(
    p: dict[str, Any],
    *,
    callbacks: Sequence[Callable] = (),
    show_progress_bar: bool = False,
    prep: Prepared | None = None,
    baseline: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) the phase's study; returns the summary also written to summary.json.

    `callbacks` are extra Optuna callbacks (a notebook's live chart); `prep` reuses an
    earlier `prepare(p)` (a notebook that showed the study before running it); `baseline`
    is the score to beat when this study has no baseline of its own (records.baseline_value).
    With `workers` > 1 the trials run in that many worker processes (workers.py)."""
    if p["workers"] > 1:
        # The workers are other processes: the callbacks (a live chart) follow the study
        # from here instead, called with no trial each time it is polled.
        progress = (lambda study: [cb(study, None) for cb in callbacks]) if callbacks else None
        return run_workers(p, p["workers"], p["gpus"] or None, prep=prep, progress=progress, baseline=baseline)
    return run_here(p, callbacks=callbacks, show_progress_bar=show_progress_bar, prep=prep, baseline=baseline)
