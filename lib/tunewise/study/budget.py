"""What a study has spent, across all its runs: finished trials and time.

``finished_trials`` counts COMPLETE + PRUNED trials (failed ones do not use up a budget);
``StudyClock`` keeps the time spent across runs in ``tunewise.elapsed_s``.
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial

from tunewise.records import ELAPSED_KEY, FINISHED_STATES


def finished_trials(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials in the study (failed trials do not use up the budget)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    """How many more trials must finish for the study to hold ``n_trials`` finished ones."""
    return max(0, n_trials - finished_trials(study))


class StudyClock:
    """Time spent on a study across all its runs (``tunewise.elapsed_s``).

    Counts from construction. Also an Optuna callback: passed to ``study.optimize`` it
    flushes after every trial, so stop rules reading ``tunewise.elapsed_s`` see fresh time.
    Several workers sharing a study each write earlier-runs + own wall time, so the value
    is the study's wall time, not the sum of worker time.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._before_s = float(study.user_attrs.get(ELAPSED_KEY, 0.0))
        self._started = time.monotonic()

    def run_wall_s(self) -> float:
        """Seconds since this run started."""
        return time.monotonic() - self._started

    def elapsed_s(self) -> float:
        """Seconds spent on the study: earlier runs plus this run so far."""
        return self._before_s + self.run_wall_s()

    def flush(self) -> float:
        """Store elapsed_s() in the study and return it."""
        elapsed = round(self.elapsed_s(), 3)
        self._study.set_user_attr(ELAPSED_KEY, elapsed)
        return elapsed

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.flush()
