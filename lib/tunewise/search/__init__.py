"""Where to look: search spaces (Optuna's serialized distributions, conditionals, fixed
values), samplers and pruners by name, and narrowing a space around the best trials.

Knows nothing of storages or phases (warm starts from other studies: study/warmstart.py)."""
