"""Language-model table: deep transformers with and without shortcuts, every row tuned on validation.

The claims of He et al. (2023), "Deep Transformers without Shortcuts": a naive vanilla transformer (no
skips, no normalization, softmax attention) degrades with depth (rank collapse), one whose attention is
shaped at initialization (E-SPA, U-SPA) with TAT in its MLP blocks does not, and it reaches the standard
(pre-LN) transformer's loss after a bounded factor more steps. ``lm_depth`` trains
``configs/lm.py``'s variants at several depths on the CPython corpus, each row's Adam rate chosen on the
corpus' own validation split (bits per character, never the test split), the chosen point rerun with a
second seed. Besides test bits per character it reports how many steps each row needs to reach the loss
the standard model of the same depth has after a fifth of the budget (so a factor up to 5 is measurable
within the budget).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

from experiments import tables
from experiments import training_tables as tt

VARIANTS = (
    tt.Method("standard (pre-LN, softmax)", {"block": "pre_ln", "attention": "softmax"}, grid="standard"),
    tt.Method("vanilla, softmax (naive)", {"block": "vanilla", "attention": "softmax"}),
    tt.Method("vanilla, E-SPA + TAT", {"block": "vanilla", "attention": "espa"}),
    tt.Method("vanilla, U-SPA + TAT", {"block": "vanilla", "attention": "uspa"}),
)
STANDARD = VARIANTS[0]
# The fraction of the budget at which the standard model's training loss becomes every row's target.
TARGET_FRACTION = 0.2


def _config_fn(width: int, seq_len: int, batch_size: int, steps: int):
    """Rows built from ``configs/lm.py``'s variants (its per-block choices), at the table's budget."""

    def make(depth: int, method: tt.Method, optimizer: str):
        from configs import lm  # pylint: disable=g-import-not-at-top
        from dks_jax.data import text  # pylint: disable=g-import-not-at-top

        c = tt.variant_config(lm, method, depth=depth, width=width, optimizer=optimizer)
        tokens = len(text.load_cpython_chars("train", c.data_dir or None))
        c.seq_len, c.batch_size, c.eval_batch_size = seq_len, batch_size, 512
        c.num_epochs = steps * batch_size * seq_len / tokens  # the cosine schedule ends with the budget
        c.schedule.warmup_epochs = 0.05 * c.num_epochs
        c.log_every_steps = max(steps // 40, 1)
        c.eval_every_steps = 10**9
        c.checkpoint_every_steps = 10**9
        return c

    return make


def quick_protocol(steps: int = 300) -> tt.Protocol:
    return tt.Protocol(
        depths=(4, 8, 16), methods=VARIANTS, optimizers=("adam",), fields={},
        # 1e-2 added after the first runs chose 3e-3, then the grid's top, for the standard and naive rows;
        # 3e-2 for the standard rows after they chose 1e-2 (every vanilla row diverges at 1e-2).
        learning_rates={("adam", "vanilla"): (3e-4, 1e-3, 3e-3, 1e-2),
                        ("adam", "standard"): (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)},
        seeds=(0, 1), metric="validation_loss",
        config_fn=_config_fn(width=64, seq_len=64, batch_size=32, steps=steps),
        description=f"quick mode: width 64, 4 heads, sequences of 64 characters, batch 32, {steps} Adam "
                    "steps (cosine schedule), 4 learning rates per row (5 for the standard model), 2 seeds")


FULL = dataclasses.replace(
    quick_protocol(3000), depths=(6, 12, 24),
    learning_rates={("adam", "vanilla"): (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                    ("adam", "standard"): (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)},
    seeds=(0, 1, 2), config_fn=_config_fn(width=256, seq_len=128, batch_size=32, steps=3000),
    description="full mode: width 256, sequences of 128 characters, batch 32, 3000 Adam steps, 5 learning "
                "rates per row, 3 seeds")


def train_curve(workdir: str) -> list[tuple[int, float]]:
    """``(step, training loss)`` of a run, from its metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    curve = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        if entry.get("kind") == "train" and "loss" in entry:
            curve.append((int(entry["step"]), float(entry["loss"])))
    return sorted(dict(curve).items())


def _smoothed(curve: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """Centred mean over 3 logged values (a logged loss is one interval's mean, still noisy; a centred
    window does not lag, so a curve stretched k-fold in steps reaches a level k times later)."""
    values = [v for _, v in curve]
    return [(step, sum(values[max(0, i - 1):i + 2]) / len(values[max(0, i - 1):i + 2]))
            for i, (step, _) in enumerate(curve)]


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """The first logged step whose smoothed training loss is at or below ``target`` (None: never)."""
    return next((step for step, value in _smoothed(curve) if value <= target), None)


def target_loss(standard_curve: Sequence[tuple[int, float]], budget: int) -> tuple[int, float] | None:
    """The standard model's smoothed loss at the first logged step past ``TARGET_FRACTION`` of the budget."""
    smoothed = _smoothed(standard_curve)
    return next(((s, v) for s, v in smoothed if s >= TARGET_FRACTION * budget), None)


def claims(rows: Sequence[tt.Row], depths: Sequence[int], ratios: dict) -> list[str]:
    """The paper's claims, as sentences computed from the rows."""
    bpc = {r.key(): r.stats("test_bits_per_character")[0] for r in rows}
    lines = []
    shallow, deep = min(depths), max(depths)
    for method in VARIANTS:
        a, b = bpc[f"adam|{method.label}|{shallow}"], bpc[f"adam|{method.label}|{deep}"]
        lines.append(f"- {method.label}: test bits per character {a:.3f} at {shallow} blocks, {b:.3f} at "
                     f"{deep} ({'worse' if b > a else 'better'} by {abs(b - a):.3f}).")
    naive, espa = VARIANTS[1], VARIANTS[2]
    gap = {d: bpc[f"adam|{naive.label}|{d}"] - bpc[f"adam|{espa.label}|{d}"] for d in depths}
    lines.append("- naive vanilla minus E-SPA, test bits per character: "
                 + ", ".join(f"{g:+.3f} at {d} blocks" for d, g in gap.items()) + ".")
    for method in VARIANTS[2:]:
        parts = []
        for d in depths:
            ratio = ratios.get((method.label, d))
            parts.append(f"{ratio:.1f}x at {d} blocks" if ratio is not None else
                         f"not within {1 / TARGET_FRACTION:.0f}x at {d} blocks")
        lines.append(f"- {method.label}: steps to the standard model's loss at {TARGET_FRACTION:g} of the "
                     "budget, relative to the standard model's: " + ", ".join(parts) + ".")
    return lines


def depth_table(name: str, workdir: Path, protocol: tt.Protocol, *, log=print) -> tables.TableResult:
    """Tunes and trains (or reuses) every row; returns the markdown, a figure and the data."""
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    start = time.perf_counter()
    rows = tt.tune_rows("cpython_chars", name, workdir, protocol, log=log)
    seconds = time.perf_counter() - start
    by_key = {r.key(): r for r in rows}
    budget = {}
    ratios: dict[tuple[str, int], float | None] = {}
    needed: dict[tuple[str, int], Any] = {}
    for depth in protocol.depths:
        standard = by_key[f"adam|{STANDARD.label}|{depth}"].sweep.best
        target = target_loss(train_curve(standard.workdir), int(standard.summary.get("total_steps", 0))) \
            if standard is not None else None
        budget[depth] = target
        for method in protocol.methods:
            best = by_key[f"adam|{method.label}|{depth}"].sweep.best
            if target is None or best is None:
                needed[(method.label, depth)] = None
                continue
            steps = steps_to_reach(train_curve(best.workdir), target[1])
            needed[(method.label, depth)] = steps
            ratios[(method.label, depth)] = None if steps is None else steps / target[0]

    table = []
    for r in rows:
        best = r.sweep.best
        steps = needed.get((r.method.label, r.depth))
        ratio = ratios.get((r.method.label, r.depth))
        table.append([r.method.label, r.depth,
                      tt.chosen_text(r, protocol),
                      tables.fmt(best.metric("validation_bits_per_character"), 3) if best else "-",
                      tt.mean_pm(r.stats("test_bits_per_character"), 3),
                      tt.mean_pm(r.stats("train_loss"), 3),
                      "-" if budget.get(r.depth) is None else
                      (f"{steps} ({ratio:.1f}x)" if steps is not None else "not reached"),
                      "" if best is not None else r.sweep.why])

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in protocol.methods:
        stats = [by_key[f"adam|{method.label}|{d}"].stats("test_bits_per_character") for d in protocol.depths]
        ax.errorbar(protocol.depths, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt="o-", capsize=3,
                    label=method.label)
    ax.set_xlabel("blocks")
    ax.set_ylabel("test bits per character (mean ± sd)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(protocol.depths, [str(d) for d in protocol.depths])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig_path = workdir / f"{name}_bits.png"
    tables.save_figure(fig, fig_path)
    plt.close(fig)

    targets = "; ".join(f"{d} blocks: {t[1]:.3f} (step {t[0]})" for d, t in budget.items() if t)
    body = (f"Budget: {protocol.description}. Tuning: Adam's peak rate chosen by the lowest loss on the "
            "corpus' own validation split (the test split is never used to choose), then rerun with seeds "
            f"{', '.join(map(str, protocol.seeds))}. The MLP blocks use TAT Leaky ReLU (eta 0.5 over the "
            "whole transformer) in every vanilla row; the standard row uses ReLU with standard "
            "initialization. Steps to target: the first logged step at which a row's (3-log centred mean) "
            f"training loss reaches the standard model's at {TARGET_FRACTION:g} of the budget ({targets}), "
            "and its ratio to the standard model's step count.\n\n"
            + tables.markdown_table(["variant", "blocks", "chosen (validation)", "validation bits/char",
                                     "test bits/char", "final train loss (nats)", "steps to target",
                                     "notes"], table)
            + "\n\nThe claims, on these rows:\n\n" + "\n".join(claims(rows, protocol.depths, ratios))
            + "\n\n" + tables.figure_link(fig_path, "test bits per character against depth")
            + f"\n\nRows and sweeps: `{name}_runs/`. " + tt.compute_text(rows, seconds, protocol))
    data = {"rows": [{"variant": r.method.label, "depth": r.depth,
                      "chosen": r.sweep.best.point if r.sweep.best else None, "why": r.sweep.why,
                      "test_bits_per_character": r.stats("test_bits_per_character"),
                      "train_loss": r.stats("train_loss"),
                      "steps_to_target": needed.get((r.method.label, r.depth))} for r in rows],
            "targets": {str(d): t for d, t in budget.items()}}
    return tables.TableResult(markdown=body, figures=[fig_path], data=data)


@tables.register_table("lm_depth", group="training",
                       title="Character-level transformers: bits per character against depth (tuned)")
def lm_depth(workdir: Path, quick: bool) -> tables.TableResult:
    return depth_table("lm_depth", workdir, quick_protocol() if quick else FULL)
