"""Sweeps: a grid of config fields, runs in their own workdirs, chosen on validation, failures as rows."""

import json
import os
import sys

import pytest

from conftest import REPO, load_config
from dks_jax import configlib
from dks_jax.train import sweep


def _result(point, status="completed", **summary):
    return sweep.PointResult(point, "/w", status, "" if status == "completed" else "why",
                             {"chance_accuracy": 0.1, **summary})


def test_grid_and_point_names():
    points = sweep.grid({"learning_rate": [0.001, 0.01], "seed": [0, 1]})
    assert points == [{"learning_rate": 0.001, "seed": 0}, {"learning_rate": 0.001, "seed": 1},
                      {"learning_rate": 0.01, "seed": 0}, {"learning_rate": 0.01, "seed": 1}]
    assert sweep.point_name(points[1]) == "learning_rate=0.001,seed=1"
    with pytest.raises(configlib.ConfigError, match="no values"):
        sweep.grid({"seed": []})


def test_axes_are_parsed_in_the_fields_type():
    config = configlib.base_config()
    assert sweep.parse_axis(config, "learning_rate=1e-3,3e-3") == ("learning_rate", [0.001, 0.003])
    assert sweep.parse_axis(config, "optimizer.name=sgd,kfac") == ("optimizer.name", ["sgd", "kfac"])
    with pytest.raises(configlib.ConfigError, match="did you mean learning_rate"):
        sweep.parse_axis(config, "learnig_rate=1,2")


def test_selection_uses_validation_only_and_breaks_ties_by_loss():
    results = [
        _result({"lr": 1}, validation_accuracy=0.90, validation_loss=0.30, test_accuracy=0.99),
        _result({"lr": 2}, validation_accuracy=0.95, validation_loss=0.20, test_accuracy=0.10),
        _result({"lr": 3}, validation_accuracy=0.95, validation_loss=0.10, test_accuracy=0.50),
        _result({"lr": 4}, "diverged", validation_accuracy=None),
    ]
    chosen, why = sweep.select(results)
    assert chosen == 2  # best validation accuracy, tie broken by validation loss; test accuracy ignored
    assert why.startswith("highest validation accuracy 0.9500 (next: 0.9500 at lr=2")
    assert "1 of 4 points not usable" in why
    with pytest.raises(configlib.ConfigError, match="validation split"):
        sweep.select(results, metric="test_accuracy")
    assert sweep.select([results[3]])[0] is None


def test_seeds_are_averaged_not_picked():
    # lr=1 has the luckiest single seed (0.99) but the lower mean; lr=2 is better on average; lr=3 has
    # the best mean of its usable seeds but diverged at one seed, so it is not a setting that trains.
    acc = {(1, 0): 0.99, (1, 1): 0.80, (2, 0): 0.95, (2, 1): 0.94, (3, 0): 0.99}
    results = [_result({"lr": lr, "seed": seed}, validation_accuracy=acc[(lr, seed)], validation_loss=0.1)
               for lr, seed in acc] + [_result({"lr": 3, "seed": 1}, "diverged", validation_accuracy=None)]
    chosen, why = sweep.select(results)
    assert results[chosen].point == {"lr": 2, "seed": 0}
    assert why.startswith("highest mean validation accuracy 0.9450 over 2 seeds (next: 0.8950 at lr=1;")
    assert "1 of 3 settings not usable at every seed" in why
    table = sweep.markdown(sweep.SweepResult(results, chosen, why, "validation_accuracy"), ["lr", "seed"])
    assert table.count("**chosen**") == 2 and "Chosen: lr=2, highest mean" in table
    # Without a seed axis nothing is averaged: the best point wins.
    assert sweep.select([_result({"lr": lr}, validation_accuracy=acc[(lr, 0)], validation_loss=0.1)
                         for lr in (1, 2)])[0] == 0


def test_validation_folds_are_averaged_like_seeds():
    # Cross-validation: lr=1 wins on fold 0 alone, lr=2 on the mean over the 3 folds x 2 seeds.
    acc = {1: [0.99, 0.90, 0.91], 2: [0.97, 0.96, 0.95]}
    results = [_result({"lr": lr, "validation_fold": f, "seed": s}, validation_accuracy=acc[lr][f] + s / 1000,
                       validation_loss=0.1) for lr in acc for f in range(3) for s in (0, 1)]
    chosen, why = sweep.select(results)
    assert results[chosen].point["lr"] == 2
    assert why.startswith("highest mean validation accuracy 0.9605 over 6 runs (seeds x validation folds)")
    assert sweep.select([r for r in results if r.point["validation_fold"] == 0])[1].startswith(
        "highest mean validation accuracy 0.9905 over 2 runs")
    results[-1] = _result(results[-1].point, "diverged", validation_accuracy=None)
    assert "not usable at every seed and fold" in sweep.select(results)[1]


def test_at_chance_runs_are_not_usable():
    row = sweep._classify({}, REPO, {"status": "completed", "validation_accuracy": 0.11,
                                      "chance_accuracy": 0.1})
    assert row.status == "at_chance" and not row.usable and "did not learn" in row.reason


def _child_environment(_):
    return {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")}


def test_workers_get_one_blas_thread_each_and_the_parent_environment_is_restored(monkeypatch):
    import concurrent.futures
    import multiprocessing
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")  # XLA's flags are appended to the user's
    with sweep.worker_environment(1), concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        seen = pool.submit(_child_environment, None).result()
    assert seen == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "3", "XLA_FLAGS":
                    "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    assert "OPENBLAS_NUM_THREADS" not in os.environ and os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    with sweep.worker_environment(None):  # no --threads_per_point: the libraries' defaults
        assert "OPENBLAS_NUM_THREADS" not in os.environ


@pytest.mark.slow
def test_real_sweep_chooses_on_validation_and_reports_failures(tmp_path):
    base = load_config("default.py:tiny,optimizer=sgd", max_steps=40, log_every_steps=10)
    axes = {"learning_rate": [0.003, 0.03, 1e30], "activation": ["leaky_relu", "no_such_activation"]}
    # Only the activation axis's bad value and the huge rate fail; they are rows, not a crash.
    result = sweep.run_sweep(base, axes, tmp_path, parallel=2, threads_per_point=1)
    by_point = {sweep.point_name(r.point): r for r in result.results}
    assert len(by_point) == 6
    bad = by_point["learning_rate=0.003,activation=no_such_activation"]
    assert bad.status == "failed" and "no_such_activation" in bad.reason
    assert by_point["learning_rate=1e+30,activation=leaky_relu"].status in ("diverged", "at_chance")
    best = result.best
    assert best is not None and best.point["activation"] == "leaky_relu"
    assert best.point["learning_rate"] in (0.003, 0.03)
    usable = [r for r in result.results if r.usable]
    assert best.metric("validation_accuracy") == max(r.metric("validation_accuracy") for r in usable)
    # Every point held out a validation split and was evaluated on it and on test.
    config = json.loads((tmp_path / sweep.point_name(best.point) / "config.json").read_text())
    assert config["validation_fraction"] == sweep.DEFAULT_VALIDATION_FRACTION
    assert {"validation_accuracy", "test_accuracy"} <= set(best.summary)
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["chosen"] == best.point and "validation accuracy" in report["why"]
    assert "**chosen**" in (tmp_path / "sweep.md").read_text()
    # A rerun reads finished points instead of training them again.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")}
    again = sweep.run_sweep(base, axes, tmp_path, parallel=2)
    assert again.chosen == result.chosen
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")} == stamps


@pytest.mark.slow
def test_sweep_cli(tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep",
                           "--config=configs/default.py:tiny,optimizer=sgd", f"--workdir={tmp_path}",
                           "--sweep=learning_rate=0.003,0.03", "--config.max_steps=40", "--parallel=2",
                           "--threads_per_point=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "| learning_rate | validation acc." in proc.stdout and "Chosen: learning_rate=" in proc.stdout
    assert (tmp_path / "sweep.md").exists()
