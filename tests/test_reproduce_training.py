"""experiments.training_tables: the depth tables train real rows, report failures, resume, and launch."""

from __future__ import annotations

import json
import re

import pytest

from dks_jax.data import paths
from experiments import reproduce, tables, training_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 60 real steps per point on the real MNIST files (54000 // 16 = 3375 steps per epoch after the 10%
# validation split): enough for a width-32 MLP to leave chance (TAT Leaky ReLU: 44% validation accuracy
# at rate 0.01, 34% at 0.03), so that tuning has something to choose. Width 16 stays at chance.
TINY = training_tables.Protocol(
    depths=(13,), optimizers=("sgd", "kfac"),
    methods=(training_tables.MLP_METHODS[0], training_tables.MLP_METHODS[3], training_tables.MLP_METHODS[5],
             training_tables.Method("broken", dict(model="mlp", method="TAT", activation="no_such_activation"))),
    fields={**training_tables._mlp_fields(32, 60 / 3375), "batch_size": 16, "log_every_steps": 10,
            "optimizer.kfac.num_burnin_steps": 1, "optimizer.kfac.inverse_update_period": 1},
    learning_rates={("sgd", "vanilla"): (0.01, 0.03), ("sgd", "bn"): (0.1,),
                    ("kfac", "vanilla"): (0.01,), ("kfac", "bn"): (0.01,)},
    seeds=(0, 1), parallel=2, description="test budget")


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    if not (paths.resolve_data_dir() / "mnist").exists():
        pytest.skip("../shared/data/mnist is absent (set DKS_JAX_DATA_DIR to run this)")
    workdir = tmp_path_factory.mktemp("depth")
    result = training_tables.depth_table("mnist", "tiny_depth", workdir, TINY, log=lambda *_: None)
    return workdir, result


def _rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[1:]]


@pytest.mark.slow
def test_every_row_is_tuned_on_validation_and_rerun_with_seeds(tiny_table):
    workdir, result = tiny_table
    rows = _rows(result.markdown)
    assert [(r[0], r[1]) for r in rows] == [(o, m.label) for o in ("sgd", "kfac") for m in TINY.methods]
    by_key = {f"{r['optimizer']}|{r['method']}|{r['depth']}": r for r in result.data["rows"]}
    for optimizer, method, depth, chosen, val_acc, test_acc, loss, notes in rows:
        row = by_key[f"{optimizer}|{method}|{depth}"]
        if method == "broken":
            # The failure is a row with its reason, not a lost table.
            assert chosen == "none" and test_acc == "-" and "no_such_activation" in notes
            continue
        sweep_report = json.loads((training_tables._run_dir(workdir, "tiny_depth", optimizer, method, 13)
                                   / "tune" / "sweep.json").read_text())
        points = sweep_report["points"]
        usable = [p for p in points if p["status"] in ("completed", "stopped")]
        assert row["chosen"] is not None, (method, sweep_report["why"])
        # The chosen point is the best on validation among the swept ones, whatever its test accuracy.
        best = max(p["summary"]["validation_accuracy"] for p in usable)
        assert float(val_acc) == pytest.approx(best, abs=1e-4)
        assert row["chosen"]["learning_rate"] in TINY.learning_rates[(optimizer, "bn" if "BN" in method
                                                                      else "vanilla")]
        # Two seeds of the chosen point: the table shows their mean and spread.
        assert len(row["seeds"]) == 2 and [s["steps"] for s in row["seeds"]] == [60, 60]
        accs = [s["test_accuracy"] for s in row["seeds"]]
        assert test_acc.startswith(f"{sum(accs) / 2:.4f} ± ") and test_acc.endswith("(2)")
        assert json.loads((training_tables._run_dir(workdir, "tiny_depth", optimizer, method, 13) / "seed=1"
                           / "config.json").read_text())["seed"] == 1
    assert (workdir / "tiny_depth_accuracy.png").read_bytes()[:8] == PNG_MAGIC
    # The claims are computed from the rows: per optimizer, one line per non-BN method, the BN gap and
    # the TAT-EOC gap at the deepest depth.
    claims = [line for line in result.markdown.splitlines() if line.startswith("- ")]
    assert len(claims) == 2 * (3 + 2)
    tat = by_key["sgd|TAT leaky_relu|13"]["test_accuracy"][0]
    assert f"mean test accuracy {tat:.4f} at depth 13" in claims[0]


@pytest.mark.slow
def test_rerun_reuses_every_finished_run(tiny_table):
    workdir, first = tiny_table
    summaries = sorted(workdir.glob("tiny_depth_runs/*/*/*/summary.json")) + sorted(
        workdir.glob("tiny_depth_runs/*/seed=*/summary.json"))
    assert len(summaries) >= 10
    stamps = [p.stat().st_mtime_ns for p in summaries]
    again = training_tables.depth_table("mnist", "tiny_depth", workdir, TINY, log=lambda *_: None)
    assert [p.stat().st_mtime_ns for p in summaries] == stamps  # nothing retrained
    assert _rows(again.markdown) == _rows(first.markdown)


def test_quick_and_full_protocols_match_the_documented_grid():
    assert training_tables.MLP_QUICK.depths == (10, 50, 100)
    assert [m.label for m in training_tables.MLP_METHODS][:4] == ["TAT leaky_relu", "TAT softplus",
                                                                  "DKS softplus", "EOC relu"]
    config = training_tables.row_config("mnist", 10, training_tables.MLP_METHODS[0], "kfac",
                                        training_tables.MLP_QUICK)
    assert (config.width, config.num_epochs, config.tat.c_val_0_target) == (128, 0.5, 0.8)
    assert config.optimizer.kfac.damping == training_tables.KFAC_DAMPING
    assert config.validation_fraction == 0.1
    # The depth tables set their own fields: configs/mnist.py's K-FAC label smoothing (chosen for its
    # default run) is not one of them.
    assert config.label_smoothing == 0.0
    from configs import mnist  # pylint: disable=g-import-not-at-top
    assert (mnist.get_config("optimizer=kfac").label_smoothing, mnist.get_config("").label_smoothing) == (
        0.1, 0.0)
    assert training_tables.row_config("mnist", 50, training_tables.MLP_METHODS[0], "sgd",
                                      training_tables.MLP_FULL).tat.c_val_0_target == 0.9
    # Every method has its own grid, and K-FAC sweeps its damping in the full protocol.
    assert training_tables.MLP_FULL.axes("kfac", training_tables.MLP_METHODS[0]).keys() == {
        "learning_rate", "optimizer.kfac.damping"}
    assert training_tables.MLP_QUICK.axes("sgd", training_tables.MLP_METHODS[5])["learning_rate"] == [
        0.03, 0.1, 0.3, 1.0]
    # Quick mode trains SGD rows only (a K-FAC point costs ~75 s of compilation on 2 cores); full has both.
    assert training_tables.MLP_QUICK.optimizers == ("sgd",)
    assert training_tables.MLP_FULL.optimizers == ("sgd", "kfac")


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


def test_cifar10_quick_rows_are_the_cifar10_configs_variants():
    protocol = training_tables.CIFAR_QUICK
    assert protocol.depths == (18, 34) and protocol.seeds == (0, 1)
    configs = {m.label: training_tables.row_config("cifar10", 18, m, "sgd", protocol)
               for m in training_tables.CIFAR_METHODS}
    assert [(c.model, c.method, c.activation) for c in configs.values()] == [
        ("vanilla_resnet", "TAT", "leaky_relu"), ("vanilla_resnet", "DKS", "softplus"),
        ("vanilla_resnet", "EOC", "relu"), ("tat_resnet", "TAT", "leaky_relu"),
        ("resnet_bn", "untransformed", "relu")]
    for label, c in configs.items():
        assert (c.dataset, c.width_multiplier, c.num_epochs, c.validation_fraction) == ("cifar10", 0.25, 0.6,
                                                                                       0.1), label
        assert c.schedule.warmup_epochs == pytest.approx(0.06)
    # The per-architecture choices come from configs/cifar10.py: PLN for the transformed vanilla nets,
    # shortcut weight 0.8 for the TAT-ResNet, its own (larger) grid for batch norm.
    assert configs["TAT leaky_relu"].pln_mode == "const" and configs["EOC relu"].pln_mode == ""
    assert configs["ResNet, TAT leaky_relu (shortcut weight 0.8)"].shortcut_weight == 0.8
    assert protocol.axes("sgd", training_tables.CIFAR_METHODS[4])["learning_rate"] == [0.1, 0.3, 1.0]
    assert "cifar10_quick_depth" in [spec.name for spec in tables.list_tables()]
    # K-FAC rows: the three vanilla methods at both shapes, each with 2 rates x 2 dampings.
    assert sorted((m.label, d) for o, m, d in protocol.specs() if o == "kfac") == [
        ("DKS softplus", 18), ("DKS softplus", 34), ("EOC relu", 18), ("EOC relu", 34),
        ("TAT leaky_relu", 18), ("TAT leaky_relu", 34)]
    assert len(protocol.specs()) == 16
    assert protocol.axes("kfac", training_tables.CIFAR_METHODS[0]) == {
        "learning_rate": [0.01, 0.1], "optimizer.kfac.damping": [0.1, 1.0]}
    # The table states each row's transformation targets as its configs hold them.
    assert configs["ResNet, TAT leaky_relu (shortcut weight 0.8)"].tat.c_val_0_target == 0.75
    assert training_tables._targets_text("cifar10", protocol) == (
        "Targets: TAT leaky_relu: eta 0.9; DKS softplus: zeta 1.5; ResNet, TAT leaky_relu (shortcut weight "
        "0.8): eta 0.75.")
    assert "TAT leaky_relu: eta 0.8 at depth 10, eta 0.9 at depth 50, 100" in training_tables._targets_text(
        "mnist", training_tables.MLP_QUICK)


@pytest.mark.slow
def test_tiny_cifar10_table_trains_a_vanilla_and_a_batch_norm_row(tmp_path):
    if not (paths.resolve_data_dir() / "cifar10_jpeg").exists():
        pytest.skip("../shared/data/cifar10_jpeg is absent")
    base = training_tables._cifar_config_fn(width=1 / 16, num_epochs=40 * 16 / 45000, batch_size=16)

    def tiny(depth, method, optimizer):
        c = base(depth, method, optimizer)
        c.eval_batch_size = 500
        return c

    protocol = training_tables.dataclasses.replace(
        training_tables.CIFAR_QUICK, optimizers=("sgd",), only={},
        methods=(training_tables.CIFAR_METHODS[0], training_tables.CIFAR_METHODS[4]),
        depths=(18,), learning_rates={("sgd", "vanilla"): (0.005,), ("sgd", "bn"): (0.1,)}, seeds=(0,),
        config_fn=tiny, description="test budget")
    result = training_tables.depth_table("cifar10", "tiny_cifar", tmp_path, protocol, log=lambda *_: None)
    rows = {r["method"]: r for r in result.data["rows"]}
    assert list(rows) == ["TAT leaky_relu", "ResNet-V2 + BN (relu)"]
    # 40 real steps at width 1/16 (4-32 channels) on the real images: the batch-norm net leaves chance
    # (16.6% test when this was written); the vanilla net, at this width and budget, may not, and then its
    # row says why instead of reporting a chance-level accuracy as a result.
    (bn,) = rows["ResNet-V2 + BN (relu)"]["seeds"]
    assert bn["steps"] == 40 and bn["test_accuracy"] > 0.12
    vanilla = rows["TAT leaky_relu"]
    assert vanilla["seeds"] or "learning_rate=0.005: " in vanilla["why"]
    for summary in vanilla["seeds"]:
        assert summary["steps"] == 40 and summary["test_accuracy"] > 0.11
    assert (tmp_path / "tiny_cifar_accuracy.png").read_bytes()[:8] == PNG_MAGIC


def _fake_row(optimizer, method, depth, accuracies):
    from dks_jax.train import sweep
    seeds = [sweep.PointResult({"seed": i}, "", "completed", "", {"test_accuracy": a})
             for i, a in enumerate(accuracies)]
    return training_tables.Row(optimizer, method, depth, sweep.SweepResult(seeds, 0, "", "validation_accuracy"),
                               seeds)


def test_protocol_only_restricts_an_optimizers_rows_and_claims_compare_shared_rows():
    tat, eoc, bn = training_tables.MLP_METHODS[0], training_tables.MLP_METHODS[3], training_tables.MLP_METHODS[5]
    protocol = training_tables.dataclasses.replace(
        TINY, methods=(tat, eoc, bn), depths=(10, 50), only={"kfac": ((tat.label, eoc.label), (10,))})
    assert [(o, m.label, d) for o, m, d in protocol.specs()] == [
        ("sgd", tat.label, 10), ("sgd", tat.label, 50), ("sgd", eoc.label, 10), ("sgd", eoc.label, 50),
        ("sgd", bn.label, 10), ("sgd", bn.label, 50), ("kfac", tat.label, 10), ("kfac", eoc.label, 10)]
    acc = {("sgd", tat.label, 10): (0.90, 0.92), ("sgd", tat.label, 50): (0.89, 0.91),
           ("sgd", eoc.label, 10): (0.90, 0.90), ("sgd", eoc.label, 50): (0.50, 0.60),
           ("sgd", bn.label, 10): (0.95, 0.95), ("sgd", bn.label, 50): (0.94, 0.96),
           ("kfac", tat.label, 10): (0.95, 0.97), ("kfac", eoc.label, 10): (0.80, 0.80)}
    rows = [_fake_row(o, m, d, acc[(o, m.label, d)]) for o, m, d in protocol.specs()]
    lines = training_tables.claims(rows, protocol)
    # SGD has both depths: the depth claims; K-FAC has one depth: its accuracies there, and EOC vs TAT.
    assert f"- sgd, {tat.label}: mean test accuracy 0.9100 at depth 10, 0.9000 at depth 50 (a drop of 0.0100)." \
        in lines
    assert f"- sgd, depth 50: {tat.label} minus {eoc.label}: +0.3500." in lines
    assert f"- kfac, depth 10: {tat.label} minus {eoc.label}: +0.1600." in lines
    assert f"- kfac, {tat.label}: mean test accuracy 0.9600 at depth 10." in lines
    # The optimizers compared on the rows both have, at equal steps.
    assert lines[-1] == f"- kfac minus sgd, same rows and steps: +0.0500 ({tat.label}, depth 10), -0.1000 " \
        f"({eoc.label}, depth 10)."
    with pytest.raises(ValueError, match=r"Protocol.only\['kfac'\].*\['101'\].*depths \[10, 50\]"):
        training_tables.dataclasses.replace(protocol, only={"kfac": ((tat.label,), (101,))})
    with pytest.raises(ValueError, match=r"Protocol.only\['adam'\]"):
        training_tables.dataclasses.replace(protocol, only={"adam": ((tat.label,), (10,))})


def test_progress_curves_read_each_validation_evaluation_once(tmp_path):
    records = [{"kind": "train", "step": 10, "loss": 2.0, "time": 100.0},
               {"kind": "train", "step": 20, "loss": 1.0, "time": 101.0},
               {"kind": "eval", "split": "validation", "step": 20, "accuracy": 0.3, "time": 103.0},
               {"kind": "train", "step": 30, "loss": 0.5, "time": 104.0},
               {"kind": "eval", "split": "validation", "step": 40, "accuracy": 0.5, "time": 106.0},
               # The end of training evaluates again at the same step, and on test.
               {"kind": "eval", "split": "validation", "step": 40, "accuracy": 0.5, "time": 107.0},
               {"kind": "eval", "split": "test", "step": 40, "accuracy": 0.4, "time": 108.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curves = training_tables._progress_curves(tmp_path, {"steps": 40, "epochs": 2.0})
    assert curves == {"epoch": [1.0, 2.0], "validation_accuracy": [0.3, 0.5], "train_loss": [1.5, 0.5],
                      "seconds": [3.0, 6.0]}


def test_progress_runs_are_the_quick_tables_tat_row_at_its_chosen_settings():
    sgd, kfac = (training_tables.progress_config(o, 2.0) for o in ("sgd", "kfac"))
    row = training_tables.row_config("cifar10", 18, training_tables.CIFAR_METHODS[0], "kfac",
                                     training_tables.CIFAR_QUICK)
    assert (kfac.model, kfac.method, kfac.activation, kfac.width_multiplier, kfac.pln_mode) == (
        row.model, row.method, row.activation, row.width_multiplier, row.pln_mode)
    assert (sgd.optimizer.name, sgd.learning_rate) == ("sgd", 0.01)
    assert (kfac.optimizer.name, kfac.learning_rate, kfac.optimizer.kfac.damping) == ("kfac", 0.01, 0.1)
    # 45,000 training images / 128 = 351 steps per epoch: evaluations at 176, 352, 528 and the end (702).
    assert kfac.eval_every_steps == 176 and kfac.num_epochs == 2.0 and kfac.validation_fraction == 0.1


@pytest.mark.slow
def test_tiny_kfac_progress_compares_the_optimizers_evaluation_by_evaluation(tmp_path):
    if not (paths.resolve_data_dir() / "cifar10_jpeg").exists():
        pytest.skip("../shared/data/cifar10_jpeg is absent")

    def tiny(optimizer, num_epochs):
        c = training_tables.progress_config(optimizer, num_epochs, width=1 / 16, batch_size=16)
        c.eval_every_steps, c.eval_batch_size = 10, 500
        c.optimizer.kfac.num_burnin_steps = 1
        return c

    result = training_tables.kfac_progress(tmp_path, "tiny_progress", 20 * 16 / 45000, config_fn=tiny,
                                           log=lambda *_: None)
    for optimizer in ("sgd", "kfac"):
        data = result.data[optimizer]
        assert data["summary"]["steps"] == 20 and data["curves"]["epoch"] == pytest.approx(
            [10 * 16 / 45000, 20 * 16 / 45000], rel=1e-3)
    lines = [line for line in result.markdown.splitlines() if re.match(r"\| 0\.0\d \| ", line)]
    assert len(lines) == 2 and "evaluations" in result.markdown
    assert (tmp_path / "tiny_progress_accuracy.png").read_bytes()[:8] == PNG_MAGIC
    # Finished runs are read, not trained again.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("tiny_progress_runs/*/summary.json")}
    assert len(stamps) == 2
    training_tables.kfac_progress(tmp_path, "tiny_progress", 20 * 16 / 45000, config_fn=tiny, log=lambda *_: None)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("tiny_progress_runs/*/summary.json")} == stamps
