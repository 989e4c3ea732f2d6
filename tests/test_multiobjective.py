"""Multi-objective search: macro-F1 against latency and size, the Pareto front, best F1
under a limit, and the single-objective features that do not apply said, not crashed into."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import create_trial

from tunewise import notebook as tw
from tunewise.report.charts import pareto_figure
from tunewise.study import pareto
from tunewise.study.strategy import ParetoFront
from tunewise.train.latency import count_params, measure_latency
from tunewise.train.objective_names import check_objectives, directions
from tunewise import params as P
from tunewise.errors import ConfigError
from tunewise.train.models import build_model
from tunewise.study.storage import open_storage
from tunewise.phases.tuning import tune

F1_LAT_SIZE = ["f1", "latency_ms", "params"]
TWO_MODELS = {
    "model": {"type": "categorical", "choices": ["test_convnext", "test_resnet"]},
    "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
}


def toy_study(points) -> optuna.Study:
    """(f1, latency_ms, params) per trial, no training."""
    study = optuna.create_study(directions=directions(F1_LAT_SIZE))
    study.set_user_attr("tunewise.identity", {"objectives": F1_LAT_SIZE})
    for i, values in enumerate(points):
        study.add_trial(create_trial(values=list(values), params={"lr": 0.001 * (i + 1)},
                                     distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1.0)}))
    return study


POINTS = [(0.90, 2.0, 300_000), (0.85, 1.0, 200_000), (0.80, 0.5, 100_000), (0.84, 1.5, 250_000), (0.70, 0.6, 120_000)]


def test_objectives_are_checked():
    assert check_objectives(["f1", "params"]) == ["f1", "params"]
    with pytest.raises(ConfigError, match=r"'latncy_ms' is not an objective \(did you mean 'latency_ms'"):
        check_objectives(["f1", "latncy_ms"])
    for bad in (["latency_ms", "f1"], ["f1", "f1"], [], "f1"):
        with pytest.raises(ConfigError, match="objectives:"):
            check_objectives(bad)
    with pytest.raises(ConfigError, match="objectives"):
        P.resolve(overrides={"objectives": ["f1", "size"]})


def test_pareto_front_and_best_under_a_limit():
    study = toy_study(POINTS)
    # (0.84, 1.5, 250K) is beaten on every objective by (0.85, 1.0, 200K); (0.70, 0.6, 120K) by nobody
    # on latency except trial 2, which is also smaller and better: dominated too.
    assert [t.number for t in pareto.pareto_front(study)] == [0, 1, 2]
    assert pareto.best_under(study).number == 0
    assert pareto.best_under(study, max_latency_ms=1.2).number == 1
    assert pareto.best_under(study, max_params=150_000).number == 2
    assert pareto.best_under(study, max_latency_ms=1.2, max_params=150_000).number == 2
    assert pareto.best_under(study, max_latency_ms=0.1) is None
    assert pareto.answer(study, max_latency_ms=1.2).startswith("Best macro-F1 within 1.2 ms per image: 0.8500 (trial 1")
    assert "No complete trial" in pareto.answer(study, max_params=10)
    fig = pareto_figure(study)
    assert fig.layout.title.text.endswith("Pareto front of macro_f1, latency_ms, params")
    assert sum(len(tr.x) for tr in fig.data if tr.x is not None) == len(POINTS)


def test_best_under_reads_recorded_figures_when_not_an_objective():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("tunewise.identity", {"objectives": ["f1", "params"]})
    for f1, size, latency in [(0.9, 300, 5.0), (0.8, 100, 1.0)]:
        study.add_trial(create_trial(values=[f1, size], user_attrs={"latency_ms": latency}))
    assert pareto.best_under(study, max_latency_ms=2.0).values == [0.8, 100]


def test_value_stop_rules_are_left_out_with_a_note():
    rules, notes = ParetoFront(F1_LAT_SIZE).stop_rules({"plateau": {"min_delta": 0.01, "window": 10}, "budget": {"max_trials": 5}})
    assert sorted(r.name for r in rules) == ["budget", "failure_guard"]
    assert notes == ["stop rule plateau not applied: it watches one best value, and a multi-objective study "
                     "has a Pareto front instead"]
    with pytest.raises(ConfigError, match="not a stop rule"):
        ParetoFront(F1_LAT_SIZE).stop_rules({"plateu": True})


def test_latency_is_a_median_per_image_and_params_a_count():
    model = build_model("test_resnet", 10)
    ms = measure_latency(model, 32, torch.device("cpu"), batch=4, warmup=1, runs=3)
    assert 0 < ms < 1000
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 1000


def run(tmp_path, **extra):
    return tune(P.resolve(overrides={"run_dir": str(tmp_path), "epochs": 1, "batch_size": 64, "hflip": False,
                                     "sampler": {"name": "nsgaii", "population_size": 4}, **extra}))


def test_a_small_multi_model_multi_objective_study(tmp_path):
    summary = run(tmp_path, study_name="pareto", n_trials=3, objectives=F1_LAT_SIZE, search_space=TWO_MODELS)
    storage = open_storage(None, tmp_path)
    study = optuna.load_study(study_name="pareto", storage=storage)
    assert study.metric_names == ["macro_f1", "latency_ms", "params"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert summary["n_finished"] == 3 and len(complete) == 3 and summary["stop_reason"] == "budget"
    for t in complete:
        f1, latency, size = t.values
        assert 0 <= f1 <= 1 and latency > 0 and size == t.user_attrs["n_params"]
        assert t.intermediate_values == {}  # nothing reported: Optuna cannot prune these
        assert t.user_attrs["latency_device"] == "cpu"
    # one latency and size per model: trials of one architecture differ by F1 only
    by_model = {}
    for t in complete:
        by_model.setdefault(t.user_attrs["model"], set()).add(tuple(t.values[1:]))
    assert all(len(v) == 1 for v in by_model.values())
    assert complete[0].user_attrs.get("tunewise.baseline") is True  # the defaults, as in every study
    assert summary["objectives"] == F1_LAT_SIZE and summary["pareto_front"]
    assert summary["best_value"] == max(t.values[0] for t in complete)
    assert any("plateau not applied" in n for n in summary["not_applied"])
    assert "pruner not used" in summary["not_applied"][-1]

    # resuming it as another kind of study is refused, plainly
    with pytest.raises(ConfigError, match="is multi-objective"):
        run(tmp_path, study_name="pareto", n_trials=4, search_space=TWO_MODELS)
    with pytest.raises(ConfigError, match=r"cannot be resumed with objectives \['f1', 'params'\]"):
        run(tmp_path, study_name="pareto", n_trials=4, objectives=["f1", "params"], search_space=TWO_MODELS)

    # a single-objective study beside it, warm-started from the front; the post-mortem splits them
    run(tmp_path, study_name="single", n_trials=2, search_space=TWO_MODELS, baseline=False, warm_start_from=["pareto"],
        warm_start_n=1, pruner="none")
    single = optuna.load_study(study_name="single", storage=storage)
    assert single.trials[0].params == pareto.pareto_front(study)[0].params
    p = P.resolve(overrides={"run_dir": str(tmp_path), "max_latency_ms": 1000.0})
    assert [s.study_name for s in tw.postmortem_studies(p)] == ["single"]
    assert [s.study_name for s in tw.pareto_studies(p)] == ["pareto"]
    tw.show_pareto(tw.pareto_studies(p), p)  # draws, does not raise
    summary = tw.postmortem_summary(p, tw.postmortem_studies(p))
    [front] = summary["pareto"]
    assert front["study"] == "pareto" and len(front["front"]) == len(pareto.pareto_front(study))
    assert front["best_under_limits"].startswith("Best macro-F1 within 1000 ms per image:")
    assert summary["headline"] == f"1 study; best macro-F1 {summary['studies'][0]['best_value']:.4f} in single; " \
        f"pareto: {len(front['front'])} trials on the Pareto front"
    assert "No gate for a multi-objective study" in tw.verdict(study, p).data
    with pytest.raises(ConfigError, match="is multi-objective: the focused phase narrows around one best value"):
        tw.focus({**p, "source_study": "pareto"})
