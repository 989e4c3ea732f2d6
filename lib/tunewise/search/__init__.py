"""Where to look: search spaces (Optuna's serialized distributions, conditionals, fixed
values), samplers and pruners by name, narrowing a space around the best trials, and warm
starts from earlier studies."""
