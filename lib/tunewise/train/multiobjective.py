"""The training objective that returns several values: macro-F1, then latency and/or size.

``MultiObjective`` measures latency and size once per model and device in a study's process
(after the first trial of that model trained) and records them on every trial (user attrs
`latency_ms`, `n_params`), so trials of one model never differ by timing noise alone.
"""

from __future__ import annotations

from typing import Sequence

import optuna

from tunewise.records import LATENCY_KEY, MACRO_F1_KEY, N_PARAMS_KEY
from tunewise.train.latency import count_params, measure_latency
from tunewise.train.objective_names import check_objectives
from tunewise.train.models import build_model
from tunewise.train.objective import Objective

class MultiObjective(Objective):
    """The training objective returning (macro-F1, then latency_ms and/or params as asked).
    No epoch is reported (Optuna cannot prune a multi-objective trial)."""

    def __init__(self, *args, objectives: Sequence[str] = ("f1", "latency_ms", "params"), **kwargs):
        super().__init__(*args, **kwargs)
        self.objectives = check_objectives(list(objectives))
        self._measured: dict[str, tuple[float, int]] = {}  # model name -> (ms per image, parameters)

    def report(self, trial: optuna.Trial, m) -> None:
        """Nothing reported: Optuna cannot prune a multi-objective trial."""

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
        trial.set_user_attr(MACRO_F1_KEY, result.f1)
        trial.set_user_attr("model", cfg.model)
        trial.set_user_attr(LATENCY_KEY, round(latency, 5))
        trial.set_user_attr(N_PARAMS_KEY, n_params)
        trial.set_user_attr("latency_device", str(self.device))
        by_name = {"f1": result.f1, "latency_ms": latency, "params": float(n_params)}
        return tuple(by_name[n] for n in self.objectives)
