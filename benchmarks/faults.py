"""Fault injection: what a study keeps when workers are killed, its journal is torn or
broken, the disk fills, or the database goes away; one table.

Each scenario runs real worker processes (tunewise's ``run_trials`` on a real journal file,
or a throw-away PostgreSQL server when its binaries are installed) on a study with a budget
of ``--trials`` finished trials. The objective sleeps instead of training (so a couple of
minutes cover every scenario); what is measured is the storage and the recovery, which
do not care what a trial computes.

Columns: finished trials just before the fault and just after it; trials lost (finished
before the fault, missing or changed after: target 0); recovery, seconds from the fault
until the next trial finished; the final count of finished trials against the budget
(target exact).

    .venv/bin/python benchmarks/faults.py                 # every scenario, 24 trials each
    .venv/bin/python benchmarks/faults.py --kills 8 --trials 40
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from tunewise.records import FINISHED_STATES  # noqa: E402
from tunewise.study.identity import make_identity, open_study  # noqa: E402
from tunewise.study.journal import repair  # noqa: E402
from tunewise.study.storage import open_storage  # noqa: E402

IDENTITY = dict(phase="quick", space_fingerprint="s1", data_fingerprint="d1", model="m", metric="macro_f1")
TORN = b'{"op_code": 6, "worker_id": "dead", "trial_id": 3, "sta'

# One worker: study "w" in the storage given; each trial reports 3 steps over ~sleep_s and
# records x^2 as its value and as a user attr. argv: storage, budget, sleep_s, size limit
# (bytes of file size, 0: none; a write past it fails the way a full disk does).
WORKER = """
import os, resource, signal, sys, time
url, budget, sleep_s, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
import optuna
from tunewise.errors import TunewiseError
from tunewise.study.identity import make_identity, open_study
from tunewise.study.runner import run_trials
from tunewise.study.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
try:
    study = open_study("w", open_storage(url, "."), identity=make_identity(**%r))
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(url) + limit, resource.RLIM_INFINITY))

    def objective(trial):
        x = trial.suggest_float("x", -1.0, 1.0)
        for step in range(3):
            time.sleep(sleep_s / 3)
            trial.report(x * x * step, step)
        trial.set_user_attr("x2", x * x)
        return x * x

    run_trials(study, objective, n_trials=budget, timeout=None)
except TunewiseError as exc:
    print(f"tunewise: error: {exc}", file=sys.stderr)
    sys.exit(2)
""" % (IDENTITY,)


class Bench:
    def __init__(self, root: Path, url: str, budget: int, sleep_s: float) -> None:
        self.root, self.url, self.budget, self.sleep_s = root, url, budget, sleep_s
        self.script = root / "worker.py"
        self.script.write_text(WORKER)
        self.logs: list[Path] = []

    def start(self, limit: int = 0) -> subprocess.Popen:
        log = self.root / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")]))}
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, str(self.script), self.url, str(self.budget), str(self.sleep_s), str(limit)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def study(self) -> optuna.Study:
        return open_study("w", open_storage(self.url, self.root), identity=make_identity(**IDENTITY))

    def finished(self) -> dict[int, tuple]:
        try:
            study = self.study()
        except Exception:  # broken on purpose, between a fault and its repair
            return {}
        return {t.number: (t.params.get("x"), t.value, t.user_attrs.get("x2")) for t in study.get_trials(states=FINISHED_STATES)}

    def wait_finished(self, n: int, procs: list, limit_s: float = 120.0) -> None:
        deadline = time.monotonic() + limit_s
        while len(self.finished()) < n:
            if time.monotonic() > deadline or not any(p.poll() is None for p in procs):
                return
            time.sleep(0.05)

    def recovery_after(self, fault_t: float, before: dict, procs: list, limit_s: float = 120.0) -> float | None:
        """Seconds from the fault until a trial finished that was not finished before it."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if len(self.finished()) > len(before) or len(before) >= self.budget:
                return time.monotonic() - fault_t
            if not any(p.poll() is None for p in procs):
                break
            time.sleep(0.05)
        return None


def lost(before: dict, after: dict) -> int:
    return sum(1 for n, row in before.items() if after.get(n) != row)


def row(name: str, bench: Bench, before: dict, just_after: dict, recovery: list, procs: list) -> dict:
    for p in procs:
        p.wait(timeout=300)
    final = bench.finished()
    return {"scenario": name, "before": len(before), "after": len(just_after), "lost": lost(before, final),
            "recovery_s": (f"{max(recovery):.1f}" if recovery and all(r is not None for r in recovery) else "never"),
            "final": f"{len(final)}/{bench.budget}"}


def sigkills(root: Path, url: str, budget: int, kills: int, name: str) -> dict:
    """Three workers; ``kills`` times a random one is SIGKILLed at a random moment (mid-trial,
    or mid-append: nothing tells the killer which) and a replacement started."""
    bench = Bench(root, url, budget, sleep_s=0.3)
    bench.study()  # created before the workers race for it
    rng = random.Random(0)
    procs = [bench.start() for _ in range(3)]
    first_before: dict = {}
    first_after: dict = {}
    recovery = []
    for k in range(kills):
        bench.wait_finished(2 + k * (budget - 6) // max(kills, 1), procs)
        time.sleep(rng.uniform(0.0, 0.3))
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            break
        before = bench.finished()
        first_before = first_before or before
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        fault_t = time.monotonic()
        victim.wait()
        first_after = first_after or bench.finished()
        procs.append(bench.start())
        recovery.append(bench.recovery_after(fault_t, before, procs))
    return row(f"{kills} SIGKILLs of 3 workers ({name})", bench, first_before, first_after, recovery, procs)


def half_done_then_killed(root: Path, budget: int) -> tuple["Bench", int]:
    """A journal study one worker has half filled when it is SIGKILLed: (the bench, trials finished)."""
    bench = Bench(root, str(root / "study.journal"), budget, sleep_s=0.1)
    first = bench.start()
    bench.wait_finished(budget // 2, [first])
    first.send_signal(signal.SIGKILL)
    first.wait()
    return bench, bench.finished()


def torn_tail(root: Path, budget: int) -> dict:
    bench, before = half_done_then_killed(root, budget)
    with open(bench.url, "ab") as fh:  # what a writer killed mid-append leaves
        fh.write(TORN)
    fault_t = time.monotonic()
    procs = [bench.start()]
    recovery = [bench.recovery_after(fault_t, before, procs)]
    return row("torn journal tail (journal)", bench, before, bench.finished(), recovery, procs)


def broken_middle(root: Path, budget: int) -> dict:
    """A fragment glued to the record after it, in the middle: the open refuses with the
    file and line; `tunewise repair` salvages, and the study resumes."""
    bench, before = half_done_then_killed(root, budget)
    lines = Path(bench.url).read_bytes().splitlines(keepends=True)
    Path(bench.url).write_bytes(b"".join(lines[:-1]) + TORN + lines[-1])
    fault_t = time.monotonic()
    refused = bench.start()
    refused.wait(timeout=60)
    assert refused.returncode == 2 and "tunewise repair" in bench.logs[-1].read_text(), bench.logs[-1].read_text()
    repair(bench.url)
    procs = [bench.start()]
    recovery = [bench.recovery_after(fault_t, before, procs)]
    return row("broken record mid-file + repair (journal)", bench, before, bench.finished(), recovery, procs)


def full_disk(root: Path, budget: int) -> dict:
    """The worker's journal writes fail past a few kB (RLIMIT_FSIZE): it stops with one
    message; a worker started once there is room again finishes the study."""
    bench = Bench(root, str(root / "study.journal"), budget, sleep_s=0.05)
    bench.study()
    full = bench.start(limit=6000)
    full.wait(timeout=120)
    before = bench.finished()
    message = bench.logs[-1].read_text().strip().splitlines()
    assert full.returncode == 2 and "the disk is full" in message[-1], message
    fault_t = time.monotonic()
    procs = [bench.start()]
    recovery = [bench.recovery_after(fault_t, before, procs)]
    return row("full disk (journal)", bench, before, before, recovery, procs)


def outage(root: Path, server, url: str, budget: int) -> dict:
    """The PostgreSQL server stops for 3 s under two workers and comes back."""
    bench = Bench(root, url, budget, sleep_s=0.3)
    bench.study()
    procs = [bench.start() for _ in range(2)]
    bench.wait_finished(budget // 3, procs)
    before = bench.finished()
    server.stop("immediate")
    fault_t = time.monotonic()
    time.sleep(3)
    server.start()
    recovery = [bench.recovery_after(fault_t, before, procs)]
    return row("3 s server outage (PostgreSQL)", bench, before, bench.finished(), recovery, procs)


def postgres():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from conftest_pg import PostgresServer, _bin_dir
    except ImportError:
        return None
    bin_dir = _bin_dir()
    if bin_dir is None:
        return None
    server = PostgresServer(bin_dir)
    server.start()
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24, help="the study's budget of finished trials")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs per storage")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL scenarios")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunewise-faults-") as tmp:
        def folder(name: str) -> Path:
            (Path(tmp) / name).mkdir()
            return Path(tmp) / name

        rows.append(sigkills(folder("kills"), str(Path(tmp) / "kills" / "study.journal"), args.trials, args.kills, "journal"))
        rows.append(torn_tail(folder("torn"), args.trials))
        rows.append(broken_middle(folder("broken"), args.trials))
        rows.append(full_disk(folder("full"), args.trials))
        server = None if args.no_postgres else postgres()
        if server is not None:
            try:
                rows.append(sigkills(folder("pg-kills"), server.new_database(), args.trials, args.kills, "PostgreSQL"))
                rows.append(outage(folder("pg-outage"), server, server.new_database(), args.trials))
            finally:
                if server.running():
                    server.stop("fast")
                server.cleanup()
    cols = ["scenario", "before", "after", "lost", "recovery_s", "final"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print(" | ".join(c.ljust(widths[c]) for c in cols))
    print("-|-".join("-" * widths[c] for c in cols))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(widths[c]) for c in cols))
    print(f"({time.perf_counter() - start:.0f} s; before/after: finished trials just before and after the fault; "
          "lost: finished before, missing or changed at the end; recovery: fault to the next finished trial)")


if __name__ == "__main__":
    main()
