"""experiments.training_tables: the depth tables train real rows, report failures, resume, and launch."""

from __future__ import annotations

import json
import re

import pytest

from dks_jax.data import paths
from experiments import reproduce, tables, training_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Three real steps per row on the real MNIST files (60000 // 16 = 3750 steps per epoch), so that every
# run completes its schedule.
TINY = training_tables.Budget(width=16, num_epochs=3 / 3750, overrides=dict(
    batch_size=16, log_every_steps=1, **{"optimizer.kfac.num_burnin_steps": 1,
                                         "optimizer.kfac.inverse_update_period": 1}))
METHODS = (training_tables.METHODS[0], training_tables.METHODS[3], training_tables.METHODS[5],
           ("broken", dict(model="mlp", method="TAT", activation="no_such_activation")))


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    if not (paths.resolve_data_dir() / "mnist").exists():
        pytest.skip("../shared/data/mnist is absent (set DKS_JAX_DATA_DIR to run this)")
    workdir = tmp_path_factory.mktemp("depth")
    result = training_tables.depth_table("mnist", "tiny_depth", workdir, TINY, depths=(13,),
                                         methods=METHODS)
    return workdir, result


def _rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[1:]]


@pytest.mark.slow
def test_every_row_trains_for_real(tiny_table):
    workdir, result = tiny_table
    rows = _rows(result.markdown)
    assert [(r[0], r[1]) for r in rows] == [(o, m) for o in ("sgd", "kfac") for m, _ in METHODS]
    for optimizer, method, depth, loss, accuracy, seconds in rows:
        summary = result.data["results"][f"{optimizer}|{method}|{depth}"]
        if method == "broken":
            # The failure is a row with its reason, not a lost table.
            assert loss == "-" and accuracy == "-" and "no_such_activation" in seconds
            continue
        assert summary["status"] == "completed" and summary["steps"] == 3
        assert 0.0 <= float(accuracy) <= 1.0 and float(loss) > 0.0
        run_dir = training_tables._run_dir(workdir, "tiny_depth", optimizer, method, 13)
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optimizer"]["name"] == optimizer and config["depth"] == 13 and config["width"] == 16
    assert (workdir / "tiny_depth_accuracy.png").read_bytes()[:8] == PNG_MAGIC
    # The claims are computed from the rows: one line per TAT/EOC row and one ResNet gap per optimizer.
    claims = [line for line in result.markdown.splitlines() if line.startswith("- ")]
    assert len(claims) == 2 * 3
    tat_acc = float(rows[0][4])
    assert f"{tat_acc:.4f} at depth 13" in claims[0]


@pytest.mark.slow
def test_rerun_reuses_completed_rows(tiny_table):
    workdir, first = tiny_table
    summaries = sorted(workdir.glob("tiny_depth_runs/*/summary.json"))
    stamps = [p.stat().st_mtime_ns for p in summaries]
    again = training_tables.depth_table("mnist", "tiny_depth", workdir, TINY, depths=(13,), methods=METHODS)
    assert [p.stat().st_mtime_ns for p in summaries] == stamps  # nothing retrained
    assert _rows(again.markdown) == _rows(first.markdown)


def test_quick_and_full_budgets_match_the_documented_grid():
    assert training_tables.DEPTHS == (10, 50, 100)
    assert [m for m, _ in training_tables.METHODS][:4] == ["TAT leaky_relu", "TAT softplus", "DKS softplus",
                                                          "EOC relu"]
    config = training_tables.row_config("mnist", 10, training_tables.METHODS[0][1], "kfac",
                                        training_tables.QUICK)
    assert (config.width, config.num_epochs, config.tat.c_val_0_target) == (128, 0.5, 0.8)
    assert config.optimizer.kfac.damping == training_tables.KFAC_DAMPING
    assert training_tables.row_config("mnist", 50, training_tables.METHODS[0][1], "sgd",
                                      training_tables.FULL).tat.c_val_0_target == 0.9


def test_launch_tables_list_runnable_commands(tmp_path):
    rc = reproduce.main(["--table=cifar10_depth", f"--workdir={tmp_path}"])
    assert rc == 0
    text = (tmp_path / "cifar10_depth.md").read_text()
    commands = re.findall(r"`python -m experiments.train --config=(configs/cifar10.py):([^ ]+) ", text)
    assert len(commands) == 5 * 4 * 2
    from configs import cifar10  # every listed variant must parse into a valid config
    for _, arg in commands:
        config = cifar10.get_config(arg)
        assert config.depth in (18, 34, 50, 101)
    assert [spec.group for spec in tables.resolve(["imagenet_depth"])] == ["launch"]
