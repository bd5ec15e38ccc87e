"""Where training metrics go: a progress bar, a JSONL log, TensorBoard, and a PNG of the curves."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _to_python(value: Any) -> Any:
    """JSON-friendly scalars (JAX/NumPy scalars and 0-d arrays become floats/ints)."""
    if isinstance(value, (str, bool, type(None))):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        item = arr.item()
        return item if isinstance(item, (int, str, bool)) else float(item)
    return arr.tolist()


class MetricsWriter:
    """Writes train/eval metrics to ``metrics.jsonl`` and TensorBoard under a work directory.

    Rows are appended, so a resumed run continues the same files; on resume, rows of steps beyond
    the restored checkpoint (written after it, then lost to an interruption) are dropped so the log
    stays a function of the step.

    Args:
      workdir: The run's directory.
      resume_step: The step the run resumes from (0 for a fresh run).
      tensorboard: Also write TensorBoard event files (under ``workdir/tensorboard``).
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional dependency at run time
                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is in install_requires
                self._tb = None

    def write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one row ``{"kind": kind, "step": step, **metrics}``."""
        # The row's own keys win: K-FAC reports a "step" statistic of its own.
        row = {**{k: _to_python(v) for k, v in metrics.items()},
               "kind": kind, "step": int(step), "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key in ("kind", "step", "time") or not isinstance(value, (int, float)):
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                self._tb.add_scalar(f"{kind}/{key}", value, int(step))

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All rows written so far (optionally only those of one kind)."""
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["kind"] == kind]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def plot_curves(rows: list[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Saves a PNG with the training loss and the train/eval accuracy against steps.

    Args:
      rows: Rows from ``MetricsWriter.rows()``.
      path: Output PNG path.
      title: Figure title.

    Returns:
      The path written.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    if train:
        ax_loss.plot([r["step"] for r in train], [r.get("loss", np.nan) for r in train], label="train loss")
    if evals and "loss" in evals[0]:
        ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    if train and "accuracy" in train[0]:
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train accuracy")
    if evals:
        ax_acc.plot([r["step"] for r in evals], [r.get("accuracy", np.nan) for r in evals], "o-",
                    label="eval accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0.0, 1.0)
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


class ProgressBar:
    """A tqdm bar showing loss, accuracy and throughput (steps/s and examples/s).

    Disabled (a no-op) when ``enabled`` is False, e.g. on non-zero hosts or in quiet test runs.
    """

    def __init__(self, total: int, initial: int = 0, batch_size: int = 0, enabled: bool = True,
                 desc: str = "train"):
        self._bar = None
        self._batch = batch_size
        self._last_time = time.perf_counter()
        self._last_step = initial
        if enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                             mininterval=0.5)

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Moves the bar to ``step`` and shows the given metrics with the throughput since last time."""
        if self._bar is None:
            return
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        shown = {k: f"{float(v):.4g}" for k, v in metrics.items() if k in ("loss", "accuracy")}
        shown["steps/s"] = f"{rate:.2f}"
        if self._batch:
            shown["ex/s"] = f"{rate * self._batch:.0f}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
