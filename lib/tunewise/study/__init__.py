"""A study's life: its records (the user-attribute keys and what "baseline", "best" and
"better" mean), identity and resume checks, storages and their outages, stop rules, the
runner with its study-wide budget, worker processes, and merging studies."""
