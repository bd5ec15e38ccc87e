"""Training tables: test accuracy against depth per method and optimizer, from real training runs.

``mnist_depth`` and ``fashion_mnist_depth`` train vanilla MLPs of depth {10, 50, 100} with
{TAT Leaky ReLU, TAT softplus, DKS softplus, EOC ReLU, untransformed ReLU with standard init} and the
batch-norm residual MLP of the same depth, each with SGD and K-FAC, on the real idx files in
``../shared/data``. ``--quick`` (2 CPU cores, well within an hour for both tables) trains width-128 nets
for half an epoch; the full mode trains width-256 nets for 2 epochs. The papers' claims to check: TAT
stays close to the ResNet and does not degrade with depth; EOC does degrade.

``cifar10_depth`` and ``imagenet_depth`` are launch tables for accelerators: they list the exact
commands (configs/cifar10.py, configs/imagenet.py) and the expected run time per row, and fill in the
accuracy of every row whose run directory already holds a ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from configs import mnist as mnist_config
from experiments import tables

DEPTHS = (10, 50, 100)
# (row label, config fields). TAT's eta = 0.9 is unreachable with 10 Leaky ReLU layers (their maximal
# C(0) is 0.87), so the 10-layer row uses eta = 0.8.
METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("TAT leaky_relu", dict(model="mlp", method="TAT", activation="leaky_relu")),
    ("TAT softplus", dict(model="mlp", method="TAT", activation="softplus")),
    ("DKS softplus", dict(model="mlp", method="DKS", activation="softplus")),
    ("EOC relu", dict(model="mlp", method="EOC", activation="relu")),
    ("untransformed relu (standard init)", dict(model="mlp", method="untransformed",
                                                activation="relu", init="lecun_normal")),
    ("ResNet + BN (relu)", dict(model="residual_mlp_bn", method="untransformed", activation="relu",
                                init="he_normal")),
)
OPTIMIZERS = ("sgd", "kfac")
# One setting per optimizer for every row, no per-row tuning. The K-FAC damping is configs/mnist.py's
# (tuned on MNIST with the 50-layer TAT Leaky ReLU MLP). Its peak learning rate of 0.01 (tuned at depth 50)
# diverges for TAT at depth 100 (and for TAT softplus at depth 50 with width 128) within half an epoch;
# 0.003 trains every depth (depth-100 TAT Leaky ReLU, width 128, half an epoch: 0.916 with SGD, 0.932
# with K-FAC).
LEARNING_RATE = {"sgd": 0.003, "kfac": 0.003}
KFAC_DAMPING = mnist_config.KFAC_DAMPING


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much each row trains.

    Attributes:
      width: Units per hidden layer.
      num_epochs: Epochs (the cosine schedule spans them).
      overrides: Further config fields (the tests shrink the runs with these).
    """

    width: int
    num_epochs: float
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        epochs = "half an epoch" if self.num_epochs == 0.5 else f"{self.num_epochs:g} epochs"
        return f"width {self.width}, {epochs}"


QUICK = Budget(width=128, num_epochs=0.5)
FULL = Budget(width=256, num_epochs=2.0)


def row_config(dataset: str, depth: int, fields: dict[str, Any], optimizer: str, budget: Budget):
    """The locked training config of one row."""
    from dks_jax import configlib

    c = configlib.base_config()
    configlib.set_fields(c, {
        "dataset": dataset, "depth": depth, "width": budget.width, "num_epochs": budget.num_epochs,
        "batch_size": 128, "optimizer.name": optimizer, "learning_rate": LEARNING_RATE[optimizer],
        "schedule.name": "cosine", "schedule.warmup_epochs": 0.1 * budget.num_epochs,
        "weight_decay": 1e-5, "optimizer.kfac.damping": KFAC_DAMPING,
        "checkpoint_every_steps": 10**9,  # one checkpoint, at the end
        "eval_every_steps": 10**9, "log_every_steps": 50})
    configlib.set_fields(c, fields)
    if c.method == "TAT" and c.activation == "leaky_relu" and depth < 13:
        c.tat.c_val_0_target = 0.8
    configlib.set_fields(c, budget.overrides)
    return c


def _run(config, workdir: Path) -> dict[str, Any]:
    """Trains one row, or returns the summary of a run that already completed in ``workdir``."""
    from dks_jax.train import loop

    summary_path = workdir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "completed":
            return summary
    try:
        return loop.train_and_evaluate(config, workdir, progress=False)
    except (ValueError, loop.TrainingDivergedError) as err:
        # A diverged row is a result (EOC at depth may do it), not a reason to lose the table.
        return {"status": "failed", "message": str(err).splitlines()[0][:160]}


def _run_dir(workdir: Path, name: str, optimizer: str, label: str, depth: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return workdir / f"{name}_runs" / f"{optimizer}_{slug}_{depth}"


def _claims(results: dict[str, Any], depths: Sequence[int], methods: Sequence[str],
            optimizers: Sequence[str]) -> list[str]:
    """The papers' claims, checked on the rows that were trained (sentences computed, not typed)."""

    def acc(optimizer: str, label: str, depth: int) -> float:
        return results[f"{optimizer}|{label}|{depth}"].get("test_accuracy", math.nan)

    lines = []
    deep, shallow = max(depths), min(depths)
    for optimizer in optimizers:
        for label in methods:
            if not label.startswith(("TAT", "EOC")):
                continue
            drop = acc(optimizer, label, shallow) - acc(optimizer, label, deep)
            lines.append(f"- {optimizer}, {label}: test accuracy {acc(optimizer, label, shallow):.4f} at depth "
                         f"{shallow}, {acc(optimizer, label, deep):.4f} at depth {deep} "
                         f"({'a drop' if drop > 0 else 'a gain'} of {abs(drop):.4f}).")
        resnet = next((m for m in methods if m.startswith("ResNet")), None)
        tat = next((m for m in methods if m.startswith("TAT")), None)
        if resnet and tat:
            gaps = ", ".join(f"{acc(optimizer, resnet, d) - acc(optimizer, tat, d):+.4f} at depth {d}"
                             for d in depths)
            lines.append(f"- {optimizer}: ResNet + BN minus {tat}: {gaps}.")
    return lines


def depth_table(dataset: str, name: str, workdir: Path, budget: Budget, *,
                depths: Sequence[int] = DEPTHS,
                methods: Sequence[tuple[str, dict[str, Any]]] = METHODS,
                optimizers: Sequence[str] = OPTIMIZERS) -> tables.TableResult:
    """Trains (or reuses) every row of a depth table and returns its markdown, figure and data.

    Args:
      dataset: Dataset name (``dks_jax.data`` registry).
      name: Table name (prefix of the run directories and the figure).
      workdir: Where the runs, the figure and the table go. Rerunning with the same ``workdir`` reuses
        every completed run, so an interrupted table resumes where it stopped.
      budget: Width and training length of every row.
      depths: Depths (nonlinear layers).
      methods: ``(label, config fields)`` per method.
      optimizers: Optimizer names.

    Returns:
      The table (rows ordered optimizer, method, depth), the accuracy-against-depth figure, and every
      run's summary under ``data["results"]``.
    """
    import matplotlib.pyplot as plt

    results: dict[str, Any] = {}
    rows = []
    total, done = len(optimizers) * len(methods) * len(depths), 0
    for optimizer in optimizers:
        for label, fields in methods:
            for depth in depths:
                config = row_config(dataset, depth, fields, optimizer, budget)
                summary = _run(config, _run_dir(workdir, name, optimizer, label, depth))
                done += 1
                results[f"{optimizer}|{label}|{depth}"] = summary
                ok = summary.get("status") == "completed"
                print(f"[{name} {done}/{total}] {optimizer} {label} depth {depth}: "
                      + (f"test accuracy {summary['test_accuracy']:.4f}, {summary['wall_seconds']:.0f} s"
                         if ok else summary.get("message", "failed")), flush=True)
                rows.append([optimizer, label, depth,
                             tables.fmt(summary["train_loss"], 4) if ok else "-",
                             tables.fmt(summary["test_accuracy"], 4) if ok else "-",
                             f"{summary['wall_seconds']:.0f}" if ok else summary.get("message", "")])

    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.5 * len(optimizers), 4), sharey=True,
                             squeeze=False)
    for ax, optimizer in zip(axes[0], optimizers):
        for label, _ in methods:
            accs = [results[f"{optimizer}|{label}|{d}"].get("test_accuracy", math.nan) for d in depths]
            ax.plot(depths, accs, "o-", label=label)
        ax.set_title(f"{dataset}, {optimizer}")
        ax.set_xlabel("depth (nonlinear layers)")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig_path = workdir / f"{name}_accuracy.png"
    tables.save_figure(fig, fig_path)
    plt.close(fig)

    setup = (f"Vanilla MLPs ({budget.describe()}), batch 128, cosine schedule with 10% warm-up and peak "
             f"learning rate {LEARNING_RATE['sgd']:g} for SGD (Nesterov momentum 0.9) and "
             f"{LEARNING_RATE['kfac']:g} for K-FAC (damping {KFAC_DAMPING:g}, curvature EMA 0.95, "
             "inverses every 5 steps, norm constraint 1e-3), weight decay 1e-5; one setting per optimizer "
             "for every row. TAT eta = 0.9 (0.8 at depth 10, where 0.9 is unreachable), TAT tau = 0.3, "
             "DKS zeta = 1.5. The ResNet row is a pre-activation residual MLP with batch norm and the "
             "same number of nonlinear layers plus one.")
    if budget.overrides:
        setup += " Overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(budget.overrides.items())) + "."
    claims = _claims(results, depths, [m for m, _ in methods], optimizers)
    body = (setup + "\n\n" + tables.markdown_table(
        ["optimizer", "method", "depth", "final train loss", "test accuracy", "seconds"], rows)
        + "\n\nThe papers' claims, on these rows (TAT should stay close to the ResNet and not degrade "
        "with depth; EOC should degrade):\n\n" + "\n".join(claims)
        + "\n\n" + tables.figure_link(fig_path, f"{dataset}: test accuracy against depth"))
    return tables.TableResult(markdown=body, figures=[fig_path], data={"results": results})


@tables.register_table("mnist_depth", group="training",
                       title="MNIST: test accuracy against depth, per method and optimizer")
def mnist_depth(workdir: Path, quick: bool) -> tables.TableResult:
    return depth_table("mnist", "mnist_depth", workdir, QUICK if quick else FULL)


@tables.register_table("fashion_mnist_depth", group="training",
                       title="Fashion-MNIST: test accuracy against depth, per method and optimizer")
def fashion_mnist_depth(workdir: Path, quick: bool) -> tables.TableResult:
    return depth_table("fashion_mnist", "fashion_mnist_depth", workdir, QUICK if quick else FULL)


# ----------------------------------------------------------------------------------------------
# Launch tables for accelerators.

_LAUNCH = {
    "cifar10_depth": ("configs/cifar10.py", (18, 34, 50, 101),
                      (("TAT", "vanilla_resnet", "leaky_relu"), ("DKS", "vanilla_resnet", "softplus"),
                       ("EOC", "vanilla_resnet", "relu"), ("TAT", "tat_resnet", "leaky_relu"),
                       ("untransformed", "resnet_bn", "relu")),
                      # Hours per 200-epoch run on one modern GPU, by depth (ResNet-50 ~ 4 h at width 1).
                      {18: 1.5, 34: 2.5, 50: 4.0, 101: 7.0}),
    "imagenet_depth": ("configs/imagenet.py", (50, 101, 152, 200),
                       (("TAT", "vanilla_resnet", "leaky_relu"), ("DKS", "vanilla_resnet", "softplus"),
                        ("EOC", "vanilla_resnet", "relu"), ("untransformed", "resnet_bn", "relu")),
                       # Hours per 90-epoch run on 8 modern accelerators, by depth (SGD; K-FAC ~1.4x).
                       {50: 12.0, 101: 20.0, 152: 28.0, 200: 36.0}),
}


def _launch_table(name: str, workdir: Path) -> tables.TableResult:
    config_file, depths, methods, hours = _LAUNCH[name]
    rows = []
    for method, arch, activation in methods:
        for depth in depths:
            for optimizer in ("sgd", "kfac"):
                arg = f"arch={arch},depth={depth},optimizer={optimizer}"
                if arch != "resnet_bn":
                    arg += f",method={method},activation={activation}"
                run = f"runs/{name}/{arch}_{method}_{depth}_{optimizer}"
                summary_path = workdir / run / "summary.json"
                acc = "-"
                if summary_path.exists():
                    acc = tables.fmt(json.loads(summary_path.read_text()).get("test_accuracy"), 4)
                expected = hours[depth] * (1.4 if optimizer == "kfac" else 1.0)
                rows.append([f"{method} {activation}" if arch != "resnet_bn" else "ResNet-V2 + BN",
                             arch, depth, optimizer, f"{expected:.1f} h", acc,
                             f"`python -m experiments.train --config={config_file}:{arg} --workdir={run}`"])
    body = ("Launch these on accelerators; rerun this table (with the same --workdir) to collect the "
            "accuracies of finished runs. Expected times are estimates for one modern GPU (CIFAR-10) or "
            "8 accelerators (ImageNet), not measurements.\n\n"
            + tables.markdown_table(["method", "arch", "depth", "optimizer", "expected time",
                                     "test accuracy", "command"], rows))
    return tables.TableResult(markdown=body, figures=[], data={"rows": rows})


@tables.register_table("cifar10_depth", group="launch",
                       title="CIFAR-10: depth table (launch on a GPU)")
def cifar10_depth(workdir: Path, quick: bool) -> tables.TableResult:
    del quick
    return _launch_table("cifar10_depth", workdir)


@tables.register_table("imagenet_depth", group="launch",
                       title="ImageNet: depth table (launch on accelerators)")
def imagenet_depth(workdir: Path, quick: bool) -> tables.TableResult:
    del quick
    return _launch_table("imagenet_depth", workdir)
