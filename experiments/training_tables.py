"""Training tables: test accuracy against depth per method and optimizer, every row tuned on validation.

The papers' protocol: every (method, optimizer, depth) row gets its own learning rate (and K-FAC damping),
chosen by a sweep on a validation split held out of the training set (``dks_jax.train.sweep``); the chosen
point is then trained again with more seeds, and the table gives the mean and spread of the test accuracy
and of the final training loss over the seeds. The batch-norm baseline is tuned the same way, on its own
grid. The claims lines are computed from the rows.

``mnist_depth`` / ``fashion_mnist_depth``: vanilla MLPs of depth {10, 50, 100} with TAT Leaky ReLU, TAT
softplus, DKS softplus, EOC ReLU, untransformed ReLU with standard init, and the batch-norm residual MLP.
``cifar10_quick_depth``: ResNet-18/34-shaped convnets at reduced width (vanilla TAT Leaky ReLU, DKS
softplus, EOC ReLU, TAT-ResNet, batch-norm ResNet-V2). ``--quick`` shrinks grids, widths and epochs to fit
2 CPU cores and says so in the table; every finished run is reused, so an interrupted table resumes.

``cifar10_depth`` and ``imagenet_depth`` are launch tables for the full budgets (accelerators): the exact
commands and expected run times, with the accuracy of every row whose run directory already holds a
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from configs import mnist as mnist_config
from dks_jax import data as data_lib
from experiments import tables

KFAC_DAMPING = mnist_config.KFAC_DAMPING


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of a table.

    Attributes:
      label: Row label.
      fields: Config fields that make the method (model, method, activation, init, ...).
      grid: Which learning-rate grid tunes it ('vanilla' or 'bn': batch norm tolerates larger rates).
    """

    label: str
    fields: Mapping[str, Any]
    grid: str = "vanilla"

    def __hash__(self) -> int:  # rows are keyed by method; labels are unique within a table
        return hash(self.label)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a depth table trains and tunes its rows.

    Attributes:
      depths: Depths of the rows (config.depth).
      methods: The methods.
      optimizers: Optimizer names.
      fields: Config fields every row shares (width, epochs, batch size, schedule, ...).
      learning_rates: ``{(optimizer, grid): rates}`` swept on validation.
      dampings: K-FAC dampings swept together with the rates.
      seeds: Seeds of the chosen point (the first is the tuning seed).
      parallel: Points trained at once (one XLA thread each when > 1).
      description: One line on the budget (printed above the table).
      metric: What the sweeps choose on (``validation_accuracy``, or ``validation_loss`` for text).
      config_fn: Builds a row's base config from ``(depth, method, optimizer)`` (for example from a
        config file's variants); by default it is the base schema with the dataset, the protocol's fields
        and the method's fields.
      only: ``{optimizer: (method labels, depths)}``: that optimizer's rows are restricted to these
        methods and depths (an optimizer absent here has every row); for rows that would not fit the
        budget, such as K-FAC on every convnet.
    """

    depths: tuple[int, ...]
    methods: tuple[Method, ...]
    optimizers: tuple[str, ...]
    fields: Mapping[str, Any]
    learning_rates: Mapping[tuple[str, str], tuple[float, ...]]
    dampings: tuple[float, ...] = (KFAC_DAMPING,)
    seeds: tuple[int, ...] = (0, 1)
    parallel: int = 2
    description: str = ""
    metric: str = "validation_accuracy"
    config_fn: Any = None  # (depth, method, optimizer) -> base config; None: row_config's own
    only: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        labels = {m.label for m in self.methods}
        for optimizer, (methods, depths) in self.only.items():
            unknown = [m for m in methods if m not in labels] + [str(d) for d in depths if d not in self.depths]
            if optimizer not in self.optimizers or unknown:
                raise ValueError(f"Protocol.only[{optimizer!r}] names rows the protocol does not have: "
                                 f"{[optimizer] if optimizer not in self.optimizers else unknown}; valid: "
                                 f"optimizers {list(self.optimizers)}, methods {sorted(labels)}, depths "
                                 f"{list(self.depths)}.")

    def has(self, optimizer: str, method: "Method", depth: int) -> bool:
        """Whether the table has the row (``only`` may leave some out)."""
        if optimizer not in self.only:
            return True
        methods, depths = self.only[optimizer]
        return method.label in methods and depth in depths

    def specs(self) -> list[tuple[str, "Method", int]]:
        """Every row as ``(optimizer, method, depth)``, in table order."""
        return [(o, m, d) for o in self.optimizers for m in self.methods for d in self.depths if self.has(o, m, d)]

    def axes(self, optimizer: str, method: Method) -> dict[str, list[Any]]:
        axes: dict[str, list[Any]] = {"learning_rate": list(self.learning_rates[(optimizer, method.grid)])}
        if optimizer == "kfac" and len(self.dampings) > 1:
            axes["optimizer.kfac.damping"] = list(self.dampings)
        return axes


MLP_METHODS = (
    Method("TAT leaky_relu", dict(model="mlp", method="TAT", activation="leaky_relu")),
    Method("TAT softplus", dict(model="mlp", method="TAT", activation="softplus")),
    Method("DKS softplus", dict(model="mlp", method="DKS", activation="softplus")),
    Method("EOC relu", dict(model="mlp", method="EOC", activation="relu")),
    Method("untransformed relu (standard init)", dict(model="mlp", method="untransformed", activation="relu",
                                                      init="lecun_normal")),
    Method("ResNet + BN (relu)", dict(model="residual_mlp_bn", method="untransformed", activation="relu",
                                      init="he_normal"), grid="bn"),
)
MLP_DEPTHS = (10, 50, 100)


def _mlp_fields(width: int, num_epochs: float) -> dict[str, Any]:
    return {"width": width, "num_epochs": num_epochs, "batch_size": 128, "schedule.name": "cosine",
            "schedule.warmup_epochs": 0.1 * num_epochs, "weight_decay": 1e-5,
            "optimizer.kfac.damping": KFAC_DAMPING, "validation_fraction": 0.1,
            "checkpoint_every_steps": 10**9, "eval_every_steps": 10**9, "log_every_steps": 50}


MLP_QUICK = Protocol(
    # SGD only: a row's K-FAC points now share one compiled step (the learning rate and damping are
    # inputs of the program), but their 211 steps still take ~25-175 s per point on 2 cores against
    # ~15-35 s for SGD (measured with ~75 s of compilation per point before), so 54 K-FAC tuning points
    # would take most of the 2-hour budget of both datasets. The full mode has the K-FAC rows.
    depths=MLP_DEPTHS, methods=MLP_METHODS, optimizers=("sgd",), fields=_mlp_fields(128, 0.5),
    # SGD grids reach one step below and above where the first MNIST run chose (0.003 and 0.3 at the
    # grid's edges for most rows; 0.01 diverges for the smooth-activation rows at depth 50 and 100).
    learning_rates={("sgd", "vanilla"): (0.001, 0.003, 0.01, 0.03), ("sgd", "bn"): (0.03, 0.1, 0.3, 1.0),
                    ("kfac", "vanilla"): (0.003, 0.01, 0.03), ("kfac", "bn"): (0.01, 0.03, 0.1)},
    description="quick mode: SGD only (K-FAC rows are in the full mode), width 128, half an epoch, "
                "4 learning rates per row, 2 seeds")
MLP_FULL = dataclasses.replace(
    MLP_QUICK, optimizers=("sgd", "kfac"), fields=_mlp_fields(256, 2.0), dampings=(0.1, 0.3, 1.0), seeds=(0, 1, 2),
    learning_rates={("sgd", "vanilla"): (0.001, 0.003, 0.01, 0.03, 0.1), ("sgd", "bn"): (0.01, 0.03, 0.1, 0.3, 1.0),
                    ("kfac", "vanilla"): (0.001, 0.003, 0.01, 0.03), ("kfac", "bn"): (0.003, 0.01, 0.03, 0.1)},
    description="full mode: width 256, 2 epochs, 5 learning rates (4 for K-FAC, with 3 dampings), 3 seeds")


def row_config(dataset: str, depth: int, method: Method, optimizer: str, protocol: Protocol):
    """The base config of one row (the sweep sets the learning rate, damping and seed)."""
    from dks_jax import configlib  # pylint: disable=g-import-not-at-top

    if protocol.config_fn is not None:
        return protocol.config_fn(depth, method, optimizer)
    c = configlib.base_config()
    configlib.set_fields(c, {"dataset": dataset, "depth": depth, "optimizer.name": optimizer})
    configlib.set_fields(c, dict(protocol.fields))
    configlib.set_fields(c, dict(method.fields))
    if c.method == "TAT" and c.activation == "leaky_relu" and depth < 13 and c.model in ("mlp", "convnet"):
        c.tat.c_val_0_target = 0.8  # eta = 0.9 is unreachable with fewer than 13 Leaky ReLU layers
    return c


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _run_dir(workdir: Path, name: str, optimizer: str, label: str, depth: int) -> Path:
    return workdir / f"{name}_runs" / f"{optimizer}_{_slug(label)}_{depth}"


@dataclasses.dataclass
class Row:
    """A tuned row: its sweep and its seed runs."""

    optimizer: str
    method: Method
    depth: int
    sweep: Any  # sweep.SweepResult
    seeds: list  # sweep.PointResult, the chosen point at every seed

    def key(self) -> str:
        return f"{self.optimizer}|{self.method.label}|{self.depth}"

    def stats(self, key: str) -> tuple[float, float, int]:
        values = [r.metric(key) for r in self.seeds if r.usable and math.isfinite(r.metric(key))]
        if not values:
            return math.nan, math.nan, 0
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        return mean, sd, len(values)


def tune_rows(dataset: str, name: str, workdir: Path, protocol: Protocol,
              log=print) -> list[Row]:
    """Tunes every row on validation, then trains each chosen point at every seed (two pooled phases)."""
    from dks_jax.train import sweep  # pylint: disable=g-import-not-at-top

    specs = protocol.specs()
    threads = 1 if protocol.parallel > 1 else None
    tuning, invalid = [], {}
    for opt, method, depth in specs:
        base = row_config(dataset, depth, method, opt, protocol)
        base.seed = protocol.seeds[0]
        rowdir = _run_dir(workdir, name, opt, method.label, depth) / "tune"
        for point in sweep.grid(protocol.axes(opt, method)):
            try:
                tuning.append(((opt, method, depth), point, sweep.sweep_config(base, point), rowdir /
                               sweep.point_name(point)))
            except ValueError as err:  # e.g. a method the model registry refuses: a row, not a crash
                invalid.setdefault((opt, method, depth), []).append(
                    sweep.PointResult(point, str(rowdir / sweep.point_name(point)), "failed", str(err), {}))
    done = [0]

    def progress(result) -> None:
        done[0] += 1
        value = result.summary.get(protocol.metric)
        log(f"[{name} {done[0]}/{len(tuning)} tuning] {result.workdir}: {result.status}"
            + (f", {protocol.metric.replace('_', ' ')} {value:.4f}" if value is not None and result.usable else
               f" ({result.reason[:120]})" if result.reason else ""))

    results = sweep.run_points([(p, c, w) for _, p, c, w in tuning], parallel=protocol.parallel,
                               threads_per_point=threads, on_result=progress)
    by_row: dict[tuple, list] = {spec: list(invalid.get(spec, [])) for spec in specs}
    for (spec, *_), result in zip(tuning, results):
        by_row[spec].append(result)
    rows, reruns = [], []
    for spec in specs:
        opt, method, depth = spec
        axes = protocol.axes(opt, method)
        chosen, why = sweep.select(by_row[spec], protocol.metric)
        result = sweep.SweepResult(by_row[spec], chosen, why, protocol.metric)
        rowdir = _run_dir(workdir, name, opt, method.label, depth)
        sweep.write_report(result, rowdir / "tune", row_config(dataset, depth, method, opt, protocol), axes)
        rows.append(Row(opt, method, depth, result, [result.best] if result.best else []))
        if result.best is not None:
            base = row_config(dataset, depth, method, opt, protocol)
            for seed in protocol.seeds[1:]:
                point = {**result.best.point, "seed": seed}
                reruns.append((len(rows) - 1, point, sweep.sweep_config(base, point), rowdir / f"seed={seed}"))
    done[0] = 0

    def seed_progress(result) -> None:
        done[0] += 1
        log(f"[{name} {done[0]}/{len(reruns)} seeds] {result.workdir}: {result.status}")

    seed_results = sweep.run_points([(p, c, w) for _, p, c, w in reruns], parallel=protocol.parallel,
                                    threads_per_point=threads, on_result=seed_progress)
    for (index, *_), result in zip(reruns, seed_results):
        rows[index].seeds.append(result)
    return rows


def mean_pm(stats: tuple[float, float, int], digits: int = 4) -> str:
    """``mean ± sd (n)`` of a row's ``stats`` (``"-"`` without runs)."""
    mean, sd, n = stats
    if n == 0:
        return "-"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} ({n})" if n > 1 else f"{mean:.{digits}f} (1)"


def chosen_text(row: Row, protocol: Protocol) -> str:
    """The chosen point of a row (``lr 0.01 (grid edge)``), ``none`` when no point trained."""
    best = row.sweep.best
    if best is None:
        return "none"
    parts = []
    for axis, values in protocol.axes(row.optimizer, row.method).items():
        value = best.point[axis]
        edge = len(values) > 1 and value in (min(values), max(values))
        parts.append(f"{'lr' if axis == 'learning_rate' else 'damping'} {value:g}" + (" (grid edge)" if edge
                                                                                      else ""))
    return ", ".join(parts)


def claims(rows: Sequence[Row], protocol: Protocol) -> list[str]:
    """The papers' claims, checked on the rows (sentences computed from the mean test accuracies)."""
    acc = {r.key(): r.stats("test_accuracy")[0] for r in rows}
    lines = []
    for optimizer in protocol.optimizers:
        methods = [m for m in protocol.methods if any(protocol.has(optimizer, m, d) for d in protocol.depths)]
        depths = [d for d in protocol.depths if any(protocol.has(optimizer, m, d) for m in methods)]
        shallow, deep = min(depths), max(depths)

        def a(method: Method, depth: int) -> float:
            return acc.get(f"{optimizer}|{method.label}|{depth}", math.nan)

        for method in methods:
            if method.grid == "bn":
                continue
            if math.isnan(a(method, shallow)) or math.isnan(a(method, deep)):
                failed = [str(d) for d in depths if math.isnan(a(method, d))]
                lines.append(f"- {optimizer}, {method.label}: no learning rate of the grid trains it at depth "
                             f"{', '.join(failed)} (every point diverged or stayed at chance).")
                continue
            if shallow == deep:  # one depth: nothing to compare across depths
                lines.append(f"- {optimizer}, {method.label}: mean test accuracy {a(method, deep):.4f} at depth "
                             f"{deep}.")
                continue
            change = a(method, deep) - a(method, shallow)
            lines.append(f"- {optimizer}, {method.label}: mean test accuracy {a(method, shallow):.4f} at depth "
                         f"{shallow}, {a(method, deep):.4f} at depth {deep} ({'a drop' if change < 0 else 'a gain'}"
                         f" of {abs(change):.4f}).")
        bn = next((m for m in methods if m.grid == "bn"), None)
        tat = [m for m in methods if m.label.startswith("TAT") and m.grid != "bn"]
        if bn and tat:
            gaps = []
            for d in depths:
                best_tat = max(tat, key=lambda m, d=d: a(m, d))
                gaps.append(f"{a(bn, d) - a(best_tat, d):+.4f} at depth {d} ({best_tat.label})")
            lines.append(f"- {optimizer}: {bn.label} minus the best TAT row: " + ", ".join(gaps) + ".")
        eoc = next((m for m in methods if m.label.startswith("EOC")), None)
        if eoc and tat:
            best_tat = max(tat, key=lambda m: a(m, deep))
            lines.append(f"- {optimizer}, depth {deep}: {best_tat.label} minus {eoc.label}: "
                         f"{a(best_tat, deep) - a(eoc, deep):+.4f}.")
    # Optimizers compared on the rows they share (the papers: K-FAC ahead of SGD at equal steps), when one
    # has a few rows only (full tables compare every row, which the table itself shows).
    for first, other in itertools.combinations(protocol.optimizers, 2):
        shared = [(m, d) for m in protocol.methods for d in protocol.depths
                  if protocol.has(first, m, d) and protocol.has(other, m, d)]
        if shared and (first in protocol.only or other in protocol.only):
            lines.append(f"- {other} minus {first}, same rows and steps: " + ", ".join(
                f"{acc[f'{other}|{m.label}|{d}'] - acc[f'{first}|{m.label}|{d}']:+.4f} ({m.label}, depth {d})"
                for m, d in shared) + ".")
    return lines


def _setup_text(dataset: str, protocol: Protocol) -> str:
    """The shared settings, read from a row's config (so the text cannot drift from what ran)."""
    c = row_config(dataset, protocol.depths[-1], protocol.methods[0], "kfac", protocol)
    k = c.optimizer.kfac
    kfac = "kfac" in protocol.optimizers
    grids = "; ".join(f"{opt} {grid}: {', '.join(f'{v:g}' for v in rates)}"
                      for (opt, grid), rates in protocol.learning_rates.items()
                      if opt in protocol.optimizers)
    return (f"Budget: {protocol.description}. Every row: batch {c.batch_size}, {c.num_epochs:g} epochs, "
            f"{c.schedule.name} schedule with {c.schedule.warmup_epochs:g} warm-up epochs, weight decay "
            f"{c.weight_decay:g}; SGD with momentum {c.optimizer.sgd.momentum:g} "
            f"({'Nesterov' if c.optimizer.sgd.nesterov else 'heavy ball'})"
            + (f"; K-FAC with curvature EMA {k.curvature_ema:g}, curvature estimated on "
               f"{k.curvature_batch_fraction:g} of the batch, inverses every {k.inverse_update_period} "
               f"steps, norm constraint {k.norm_constraint}, {k.num_burnin_steps} burn-in steps" if kfac else "")
            + f". Tuning: learning rates ({grids})"
            + (f" and K-FAC dampings ({', '.join(f'{v:g}' for v in protocol.dampings)})" if kfac else "")
            + " chosen by the highest "
            f"validation accuracy ({c.validation_fraction:g} of the training set held out; the test split "
            f"is never used to choose), then the chosen point trained with seeds "
            f"{', '.join(map(str, protocol.seeds))}: test accuracy and final training loss are mean ± "
            "standard deviation (number of seeds that trained). " + _targets_text(dataset, protocol))


def _targets_text(dataset: str, protocol: Protocol) -> str:
    """Each transformed row's targets (TAT eta or tau, DKS zeta), read from its configs at every depth."""
    parts = []
    for method in protocol.methods:
        depths_of: dict[str, list[int]] = {}
        for depth in protocol.depths:
            c = row_config(dataset, depth, method, protocol.optimizers[0], protocol)
            if c.method == "TAT":
                target = (f"eta {c.tat.c_val_0_target:g}" if c.activation == "leaky_relu"
                          else f"tau {c.tat.c_curve_target:g}")
            elif c.method == "DKS":
                target = f"zeta {c.dks.c_slope_1_target:g}"
            else:
                continue
            depths_of.setdefault(target, []).append(depth)
        if depths_of:
            parts.append(f"{method.label}: " + ", ".join(
                target + ("" if len(depths_of) == 1 else f" at depth {', '.join(map(str, ds))}")
                for target, ds in depths_of.items()))
    return f"Targets: {'; '.join(parts)}." if parts else ""


def compute_text(rows: Sequence[Row], seconds: float, protocol: Protocol) -> str:
    """What the table cost: every run's own wall time summed, and this invocation's."""
    runs = [r for row in rows for r in row.sweep.results] + [r for row in rows for r in row.seeds[1:]]
    total = sum(float(r.summary.get("wall_seconds") or 0.0) for r in runs)
    return (f"Compute: {len(runs)} training runs, {total / 60:.0f} min of run time in all ({protocol.parallel} "
            f"at a time: ~{total / 60 / max(protocol.parallel, 1):.0f} min of wall time, plus start-up); this "
            f"invocation took {seconds / 60:.1f} min (finished runs are reused).")


def depth_table(dataset: str, name: str, workdir: Path, protocol: Protocol, *,
                log=print) -> tables.TableResult:
    """Tunes and trains (or reuses) every row of a depth table; returns its markdown, figure and data."""
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    start = time.perf_counter()
    rows = tune_rows(dataset, name, workdir, protocol, log=log)
    seconds = time.perf_counter() - start
    table = []
    for r in rows:
        best = r.sweep.best
        notes = "" if best is not None else r.sweep.why
        failed = [s for s in r.seeds if not s.usable]
        if failed:
            notes += "; ".join(f"seed {s.point.get('seed')}: {s.status}" for s in failed)
        table.append([r.optimizer, r.method.label, r.depth, chosen_text(r, protocol),
                      tables.fmt(best.metric("validation_accuracy"), 4) if best else "-",
                      mean_pm(r.stats("test_accuracy")), mean_pm(r.stats("train_loss")), notes or "-"])

    fig, axes = plt.subplots(1, len(protocol.optimizers), figsize=(5.5 * len(protocol.optimizers), 4),
                             sharex=True, sharey=True, squeeze=False)
    by_key = {r.key(): r for r in rows}
    for ax, optimizer in zip(axes[0], protocol.optimizers):
        for index, method in enumerate(protocol.methods):  # one color per method in every panel
            depths = [d for d in protocol.depths if protocol.has(optimizer, method, d)]
            stats = [by_key[f"{optimizer}|{method.label}|{d}"].stats("test_accuracy") for d in depths]
            if depths:
                ax.errorbar(depths, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt="o-",
                            capsize=3, label=method.label, color=f"C{index}")
        ax.set_xticks(protocol.depths)
        ax.set_title(f"{dataset}, {optimizer} (tuned per row)")
        ax.set_xlabel("depth")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean ± sd over seeds)")
    axes[0][0].legend(fontsize=7, loc="best")  # the first optimizer has every method
    fig_path = workdir / f"{name}_accuracy.png"
    tables.save_figure(fig, fig_path)
    plt.close(fig)

    body = (_setup_text(dataset, protocol) + "\n\n" + tables.markdown_table(
        ["optimizer", "method", "depth", "chosen (validation)", "validation acc.", "test accuracy",
         "final train loss", "notes"], table)
        + f"\n\nRows, sweeps and seed runs: `{name}_runs/<optimizer>_<method>_<depth>/` (each row's "
        "`tune/sweep.md` lists every point). The papers' claims, on these rows (TAT should stay close to "
        "the ResNet and not degrade with depth; EOC should degrade):\n\n" + "\n".join(claims(rows, protocol))
        + "\n\n" + tables.figure_link(fig_path, f"{dataset}: test accuracy against depth")
        + "\n\n" + compute_text(rows, seconds, protocol))
    data = {"rows": [{"optimizer": r.optimizer, "method": r.method.label, "depth": r.depth,
                      "chosen": r.sweep.best.point if r.sweep.best else None, "why": r.sweep.why,
                      "test_accuracy": r.stats("test_accuracy"), "train_loss": r.stats("train_loss"),
                      "seeds": [s.summary for s in r.seeds]} for r in rows]}
    return tables.TableResult(markdown=body, figures=[fig_path], data=data)


@tables.register_table("mnist_depth", group="training",
                       title="MNIST: test accuracy against depth, per method and optimizer (tuned)")
def mnist_depth(workdir: Path, quick: bool) -> tables.TableResult:
    return depth_table("mnist", "mnist_depth", workdir, MLP_QUICK if quick else MLP_FULL)


@tables.register_table("fashion_mnist_depth", group="training",
                       title="Fashion-MNIST: test accuracy against depth, per method and optimizer (tuned)")
def fashion_mnist_depth(workdir: Path, quick: bool) -> tables.TableResult:
    return depth_table("fashion_mnist", "fashion_mnist_depth", workdir, MLP_QUICK if quick else MLP_FULL)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 on 2 CPU cores: ResNet-shaped convnets at reduced width, every row tuned.

# Method fields are configs/cifar10.py's own options (arch, method, activation): its per-architecture
# choices (PLN for the transformed vanilla nets, shortcut weight 0.8 for the TAT-ResNet, batch norm with
# ReLU for the baseline) hold here too.
CIFAR_METHODS = (
    Method("TAT leaky_relu", dict(arch="vanilla_resnet", method="TAT", activation="leaky_relu")),
    Method("DKS softplus", dict(arch="vanilla_resnet", method="DKS", activation="softplus")),
    Method("EOC relu", dict(arch="vanilla_resnet", method="EOC", activation="relu")),
    Method("ResNet, TAT leaky_relu (shortcut weight 0.8)", dict(arch="tat_resnet", method="TAT",
                                                                activation="leaky_relu")),
    Method("ResNet-V2 + BN (relu)", dict(arch="resnet_bn"), grid="bn"),
)


def variant_config(config_module: Any, method: Method, **fields: Any):
    """``config_module.get_config`` of the variant named by ``method.fields`` plus ``fields``.

    Rows built this way inherit the config file's per-variant choices (what ``--config=file.py:arg`` gives).
    """
    return config_module.get_config(",".join(f"{k}={v}" for k, v in {**method.fields, **fields}.items()))


def _cifar_config_fn(width: float, num_epochs: float, batch_size: int):
    """Rows built from ``configs/cifar10.py``'s variants, at the table's budget."""

    def make(depth: int, method: Method, optimizer: str):
        from configs import cifar10  # pylint: disable=g-import-not-at-top

        c = variant_config(cifar10, method, depth=depth, width=width, optimizer=optimizer)
        c.num_epochs, c.batch_size = num_epochs, batch_size
        c.schedule.warmup_epochs = 0.1 * num_epochs
        c.validation_fraction = 0.1
        c.log_every_steps = 20
        c.eval_every_steps = c.checkpoint_every_steps = 10**9
        return c

    return make


CIFAR_QUICK = Protocol(
    depths=(18, 34), methods=CIFAR_METHODS, optimizers=("sgd", "kfac"), fields={},
    # A probe of the ResNet-18 rows at this budget chose 0.01 for TAT and EOC (0.03 diverged for TAT) and
    # 0.3, then the top, for batch norm (0.03 / 0.1 / 0.3: 44 / 50 / 53% validation accuracy).
    learning_rates={("sgd", "vanilla"): (0.003, 0.01, 0.03), ("sgd", "bn"): (0.1, 0.3, 1.0),
                    ("kfac", "vanilla"): (0.01, 0.1)},
    # K-FAC: 2 rates x 2 dampings (4 points, as many runs as SGD's 3 rates cost in time); a probe of the
    # TAT row over the same grid spread by 3 points of validation accuracy only (33-36%).
    dampings=(0.1, 1.0),
    # K-FAC rows for the three vanilla methods (the papers' comparison: does the depth cost EOC more than
    # TAT and DKS under K-FAC too?): a K-FAC step costs 1.4 s at the ResNet-18 shape against SGD's 0.6 s
    # (2 runs at a time, one thread each), so 5 runs per row take ~30 min of run time at depth 18 and
    # ~55 min at 34; the TAT-ResNet and batch-norm rows under K-FAC would add ~3 hours.
    only={"kfac": (("TAT leaky_relu", "DKS softplus", "EOC relu"), (18, 34))},
    # 0.6 epoch (211 steps): measured on 2 cores at width 0.25, batch 128, a ResNet-18-shaped step takes
    # 0.42 s (0.5 s with batch norm) and a ResNet-34-shaped one 0.72 s, plus ~25 s of compilation and
    # evaluation per run; 40 runs then fit the 2-hour budget (a whole epoch would take ~2.6 hours).
    config_fn=_cifar_config_fn(width=0.25, num_epochs=0.6, batch_size=128),
    description="quick mode: width 0.25 (16-128 channels), 0.6 epoch (211 steps of 128 images), 2 seeds; "
                "SGD at every row (3 learning rates), K-FAC (2 rates x 2 dampings) at the vanilla TAT, DKS "
                "and EOC rows only (its step costs ~2.4x SGD's here)")


@tables.register_table("cifar10_quick_depth", group="training",
                       title="CIFAR-10: ResNet-shaped convnets at reduced width, tuned per row (2 CPU cores)")
def cifar10_quick_depth(workdir: Path, quick: bool) -> tables.TableResult:
    del quick  # the quick budget is this table's only one; the full budgets are `cifar10_depth`'s commands
    return depth_table("cifar10", "cifar10_quick_depth", workdir, CIFAR_QUICK)


# K-FAC against SGD over the first epochs of the vanilla TAT ResNet-18 shape (issue: K-FAC's per-epoch
# progress). Each optimizer at the setting the quick table chose for this row on validation (SGD: rate
# 0.01 of 0.003 / 0.01 / 0.03; K-FAC: rate 0.01 and damping 0.1 of 0.01 / 0.1 x 0.1 / 1).
PROGRESS_SETTINGS = {"sgd": {"learning_rate": 0.01},
                     "kfac": {"learning_rate": 0.01, "optimizer.kfac.damping": 0.1}}


def progress_config(optimizer: str, num_epochs: float, width: float = 0.25, batch_size: int = 128):
    """The vanilla TAT ResNet-18 run of ``optimizer``, evaluated on validation every half epoch."""
    from dks_jax import configlib  # pylint: disable=g-import-not-at-top

    c = _cifar_config_fn(width=width, num_epochs=num_epochs, batch_size=batch_size)(18, CIFAR_METHODS[0], optimizer)
    configlib.set_fields(c, PROGRESS_SETTINGS[optimizer])
    steps_per_epoch = data_lib.steps_per_epoch(
        data_lib.num_train_examples(c.dataset, validation_size=c.validation_fraction), batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = -(-steps_per_epoch // 2)  # ceil: the last is the end
    return c


def _progress_curves(workdir: Path, summary: Mapping[str, Any]) -> dict[str, list[float]]:
    """Validation accuracy, mean training loss since the previous evaluation and wall time, per evaluation."""
    steps_per_epoch = summary["steps"] / summary["epochs"]
    train, curves = [], {"epoch": [], "validation_accuracy": [], "train_loss": [], "seconds": []}
    start, last_step = None, None
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            start = record["time"] if start is None else start
            if record.get("kind") == "train":
                train.append(record["loss"])
            elif record.get("split") == "validation" and record["step"] != last_step:  # the end may repeat
                last_step = record["step"]
                curves["epoch"].append(record["step"] / steps_per_epoch)
                curves["validation_accuracy"].append(record["accuracy"])
                curves["train_loss"].append(sum(train) / len(train) if train else math.nan)
                curves["seconds"].append(record["time"] - start)
                train = []
    return curves


def kfac_progress(workdir: Path, name: str, num_epochs: float, *, config_fn=progress_config,
                  log=print) -> tables.TableResult:
    """Trains (or reuses) one SGD and one K-FAC run and compares them evaluation by evaluation."""
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    from dks_jax.train import sweep  # pylint: disable=g-import-not-at-top

    optimizers = tuple(PROGRESS_SETTINGS)
    runs = [({"optimizer": o}, config_fn(o, num_epochs), workdir / f"{name}_runs" / f"{o}_{num_epochs:g}_epochs")
            for o in optimizers]
    # One run at a time with every core: the step times below are then the optimizers' own, not shares of
    # cores two runs compete for.
    results = sweep.run_points(runs, parallel=1, on_result=lambda r: log(f"[{name}] {r.workdir}: {r.status}"))
    # A run at chance still has a curve worth showing (one optimizer may learn where the other does not).
    trained = ("completed", "stopped", "at_chance")
    curves = {o: _progress_curves(Path(r.workdir), r.summary) for o, r in zip(optimizers, results)
              if r.status in trained}
    failed = [f"{o}: {r.status} ({r.reason})" for o, r in zip(optimizers, results) if r.status not in trained]
    at_chance = [f"{o} ended at chance ({r.reason})" for o, r in zip(optimizers, results) if r.status == "at_chance"]
    if failed:
        return tables.TableResult(markdown="No comparison: " + "; ".join(failed) + ".", figures=[],
                                  data={"failed": failed})
    sgd, kfac = curves["sgd"], curves["kfac"]
    rows = [[f"{e:.2f}", f"{sa:.4f}", f"{ka:.4f}", f"{ka - sa:+.4f}", f"{sl:.3f}", f"{kl:.3f}"]
            for e, sa, ka, sl, kl in zip(sgd["epoch"], sgd["validation_accuracy"], kfac["validation_accuracy"],
                                         sgd["train_loss"], kfac["train_loss"])]
    behind = [f"{e:.2f}" for e, sa, ka in zip(sgd["epoch"], sgd["validation_accuracy"], kfac["validation_accuracy"])
              if ka < sa]
    summaries = dict(zip(optimizers, (r.summary for r in results)))
    step = {o: summaries[o]["wall_seconds"] / summaries[o]["steps"] for o in optimizers}

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for o in optimizers:
        axes[0].plot(curves[o]["epoch"], curves[o]["validation_accuracy"], "o-", label=o)
        axes[1].plot([t / 60 for t in curves[o]["seconds"]], curves[o]["validation_accuracy"], "o-", label=o)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("wall time (min, evaluations included)")
    axes[0].set_ylabel("validation accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig_path = workdir / f"{name}_accuracy.png"
    tables.save_figure(fig, fig_path)
    plt.close(fig)

    c = runs[optimizers.index("kfac")][1]
    body = (f"Vanilla TAT Leaky ReLU ResNet-18 shape, width {c.width_multiplier:g}, batch {c.batch_size}, "
            f"{num_epochs:g} epochs ({c.schedule.name} schedule, {c.schedule.warmup_epochs:g} warm-up epochs), "
            f"{c.validation_fraction:g} of the training set held out and evaluated every {c.eval_every_steps} "
            f"steps ({kfac['epoch'][0]:.2g} epoch); one seed; "
            "each optimizer at the setting the quick depth table chose for this row on validation ("
            + "; ".join(f"{o}: " + ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in PROGRESS_SETTINGS[o].items())
                        for o in optimizers)
            + "). One run at a time on all cores.\n\n"
            + tables.markdown_table(["epoch", "SGD val. acc.", "K-FAC val. acc.", "K-FAC - SGD",
                                     "SGD train loss", "K-FAC train loss"], rows)
            + "\n\n(train loss: mean over the logged steps since the previous evaluation)\n\n"
            + f"- K-FAC's validation accuracy is at least SGD's at {len(rows) - len(behind)} of {len(rows)} "
              "evaluations" + (f" (behind at epoch {', '.join(behind)})" if behind else "") + ".\n"
            + "".join(f"- {line}.\n" for line in at_chance)
            + f"- Test accuracy at the end: SGD {summaries['sgd']['test_accuracy']:.4f}, K-FAC "
              f"{summaries['kfac']['test_accuracy']:.4f}.\n"
            + f"- Time per step, evaluations and compilation included: SGD {step['sgd']:.3f} s, K-FAC "
              f"{step['kfac']:.3f} s ({step['kfac'] / step['sgd']:.2f}x).\n\n"
            + tables.figure_link(fig_path, "validation accuracy against epochs and wall time"))
    data = {o: {"settings": PROGRESS_SETTINGS[o], "curves": curves[o], "summary": summaries[o]}
            for o in optimizers}
    return tables.TableResult(markdown=body, figures=[fig_path], data=data)


@tables.register_table("cifar10_kfac_progress", group="training",
                       title="CIFAR-10: K-FAC against SGD over the first epochs (vanilla TAT ResNet-18 shape, "
                             "2 CPU cores)")
def cifar10_kfac_progress(workdir: Path, quick: bool) -> tables.TableResult:
    return kfac_progress(workdir, "cifar10_kfac_progress", 1.0 if quick else 2.0)


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
