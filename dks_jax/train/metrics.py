"""Where training metrics go: a progress bar, a JSONL log, TensorBoard, and a PNG of the curves."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)


def _to_python(value: Any) -> Any:
    """JSON-friendly scalars (JAX/NumPy scalars and 0-d arrays become floats/ints)."""
    if isinstance(value, (str, bool, type(None))):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        item = arr.item()
        return item if isinstance(item, (int, str, bool)) else float(item)
    return arr.tolist()


class MetricsFileError(RuntimeError):
    """``metrics.jsonl`` is damaged somewhere other than its last line."""


def read_rows(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file (``[]`` when it does not exist).

    A torn last line (a crash while appending) is dropped with a warning, and with ``repair`` the file
    is rewritten without it. Damage anywhere else is an error: the history cannot be trusted.

    Raises:
      MetricsFileError: A line other than the last is not a JSON object (names the file and line).
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows, torn = [], None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    for position, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if position == len(numbered) - 1:
                torn = number
                break
            raise MetricsFileError(
                f"{path} line {number} is not a valid metrics row ({err}); the file is damaged before its "
                "end, so the run's history cannot be trusted: repair that line or move the file aside."
            ) from None
        rows.append(row)
    if torn is not None:
        log.warning("%s: dropped its torn last line %d (a crash while writing it).", path, torn)
        if repair:
            _rewrite(path, rows)
    return rows


def _rewrite(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


class MetricsWriter:
    """Writes train/eval metrics to ``metrics.jsonl`` and TensorBoard under a work directory.

    Only process 0 of a multi-process run writes (every process may call ``write``). Rows are appended,
    so a resumed run continues the same files. On resume, rows of steps beyond the restored checkpoint
    (written after it, then lost to an interruption; training recomputes them exactly) leave the log so
    that it stays a function of the step; they are kept in ``metrics_superseded.jsonl``, never dropped.

    Args:
      workdir: The run's directory.
      resume_step: The step the run resumes from (0 for a fresh run).
      tensorboard: Also write TensorBoard event files (under ``workdir/tensorboard``).
      enabled: Whether this process writes; default: ``jax.process_index() == 0``.
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True,
                 enabled: bool | None = None):
        if enabled is None:
            import jax
            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        rows = read_rows(self.path, repair=True)
        later = [r for r in rows if r.get("step", 0) > resume_step]
        if later:
            superseded = self.workdir / "metrics_superseded.jsonl"
            with superseded.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in later))
            log.warning("%d metrics rows after step %d (the restored checkpoint) will be recomputed; "
                        "the old ones moved to %s.", len(later), resume_step, superseded)
            _rewrite(self.path, [r for r in rows if r.get("step", 0) <= resume_step])
        if tensorboard:
            from tensorboardX import SummaryWriter  # a dependency; imported lazily (slow import)
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one row ``{"kind": kind, "step": step, **metrics}`` (non-finite values as null)."""
        if not self.enabled:
            return
        # The row's own keys win: K-FAC reports a "step" statistic of its own.
        row = {**{k: _to_python(v) for k, v in metrics.items()},
               "kind": kind, "step": int(step), "time": time.time()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(strict_json(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key in ("kind", "step", "time") or not isinstance(value, (int, float)):
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                self._tb.add_scalar(f"{kind}/{key}", value, int(step))

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All rows written so far (optionally only those of one kind)."""
        return [r for r in read_rows(self.path) if kind is None or r["kind"] == kind]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON with non-finite floats written as null (``json.dumps`` would write NaN, which is not JSON)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), allow_nan=False, **kwargs)


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

    def values(rs: list[Mapping[str, Any]], key: str) -> list[float]:
        return [np.nan if r.get(key) is None else float(r[key]) for r in rs]

    train = [r for r in rows if r["kind"] == "train"]
    evals: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "eval":
            evals.setdefault(r.get("split", "eval"), []).append(r)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    if train:
        ax_loss.plot([r["step"] for r in train], values(train, "loss"), label="train loss")
        if "accuracy" in train[0]:
            ax_acc.plot([r["step"] for r in train], values(train, "accuracy"), label="train accuracy")
    for split, rs in evals.items():
        ax_loss.plot([r["step"] for r in rs], values(rs, "loss"), "o-", label=f"{split} loss")
        ax_acc.plot([r["step"] for r in rs], values(rs, "accuracy"), "o-", label=f"{split} accuracy")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
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
