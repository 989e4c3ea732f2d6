"""A study's life: its identity and resume checks, what it has spent (budget), crash
recovery, storages and their outages, stop rules, the runner with its study-wide budget, the
objective strategy (single macro-F1 or a Pareto front) and the front's answers, warm starts
from earlier studies, worker processes, and merging studies. Every key it records, and what
"best", "baseline" and "better" mean, is tunewise/records.py."""
