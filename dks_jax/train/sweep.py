"""Hyper-parameter sweeps: a grid of config fields, each point a run in its own workdir, chosen on validation.

``run_sweep(config, axes, workdir)`` trains every point of the grid ``axes`` (``{"learning_rate": [1e-3,
3e-3], "seed": [0, 1]}``) in ``workdir/<point>/`` (points that already finished are not rerun), ``parallel``
at a time in worker processes, and chooses the best point on the *validation* split held out of the
training set (``config.validation_fraction``; the sweep holds out 10% when the config holds out nothing):
the highest validation accuracy, ties broken by the lower validation loss; with a ``seed`` axis (and/or a
``validation_fold`` axis: k-fold cross-validation, for training sets so small that one held-out split
ranks settings by one or two examples), the setting with the best mean over them (among those that
trained at every seed and fold). The test split is
evaluated and reported, never used to choose. A point that fails, diverges or ends at chance is a row
with its reason.
``sweep.md`` and ``sweep.json`` in ``workdir`` list every point, the chosen one and why.

``tune_then_seeds`` is the papers' protocol for one table row: sweep on validation with one seed, then
rerun the chosen point with more seeds and report the mean and spread of test accuracy and final
training loss.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from dks_jax import configlib

DEFAULT_VALIDATION_FRACTION = 0.1
# A run is "at chance" when its validation accuracy is within this of 1 / num_classes.
_OK_STATUSES = ("completed", "stopped")


def grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the axes, in order (the last axis varies fastest)."""
    names = list(axes)
    for name in names:
        if not list(axes[name]):
            raise configlib.ConfigError(f"sweep axis {name!r} has no values.")
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def point_name(point: Mapping[str, Any]) -> str:
    """A directory name for a point: ``learning_rate=0.003,seed=1``."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, (tuple, list)):
            return "-".join(text(v) for v in value)
        return str(value)
    name = ",".join(f"{k}={text(v)}" for k, v in point.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def parse_axis(config: Any, spec: str) -> tuple[str, list[Any]]:
    """``"learning_rate=1e-3,3e-3"`` -> ``("learning_rate", [0.001, 0.003])`` in the field's type."""
    path, sep, values = spec.partition("=")
    if not sep or not values.strip():
        raise configlib.ConfigError(f"--sweep={spec!r}: expected FIELD=V1,V2,...")
    parsed = [configlib.parse_override(config, path.strip(), v.strip()) for v in values.split(",") if v.strip()]
    return path.strip(), parsed


def sweep_config(base: Any, point: Mapping[str, Any]) -> Any:
    """The config of one point: ``base`` with the point's fields, validated, with a validation split."""
    config = configlib.set_fields(_copy(base), dict(point))
    if float(config.validation_fraction) == 0.0 and not _native_validation(config):
        config.validation_fraction = DEFAULT_VALIDATION_FRACTION
    configlib.validate(config)
    return config


def _copy(config: Any) -> Any:
    import copy
    return copy.deepcopy(config)


@dataclasses.dataclass
class PointResult:
    """One point of a sweep.

    Attributes:
      point: The swept fields and their values.
      workdir: The point's run directory.
      status: 'completed' / 'stopped' (trained), 'diverged', 'at_chance' or 'failed'.
      reason: Why a point is not usable ('' for usable ones).
      summary: The run's summary.json (or what is known of a failed run).
    """

    point: dict[str, Any]
    workdir: str
    status: str
    reason: str
    summary: dict[str, Any]

    @property
    def usable(self) -> bool:
        return self.status in _OK_STATUSES

    def metric(self, name: str) -> float:
        value = self.summary.get(name)
        return math.nan if value is None else float(value)


def _classify(point: dict[str, Any], workdir: Path, summary: dict[str, Any]) -> PointResult:
    status = summary.get("status", "failed")
    reason = ""
    if status == "diverged":
        reason = str(summary.get("message", "diverged")).split(". The last good")[0]
    elif status not in _OK_STATUSES:
        status, reason = "failed", str(summary.get("message", "failed"))
    else:
        chance = summary.get("chance_accuracy")
        val = summary.get("validation_accuracy")
        if chance is not None and val is not None and val < chance + 0.05:
            status, reason = "at_chance", (f"validation accuracy {val:.4f} is at chance ({chance:.4f}): "
                                           "did not learn")
    return PointResult(point, str(workdir), status, reason, summary)


# Thread pools of the BLAS/LAPACK libraries a worker loads (K-FAC's Cholesky inverses go through
# scipy's OpenBLAS): each sizes itself to every core when it loads, and its threads spin while they wait,
# so two workers on two cores starve each other. Measured: a K-FAC MNIST step, 2 workers with one XLA
# thread each, took 0.54 s with OpenBLAS's default and 0.15 s with one BLAS thread per worker.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def worker_environment(threads: int | None) -> Iterator[None]:
    """Workers spawned inside size every thread pool to ``threads``: XLA's and BLAS's (read when they load).

    XLA's flags are appended to the user's; BLAS variables the user set are left alone. The parent's
    environment is restored on exit.
    """
    saved = {name: os.environ.get(name) for name in _BLAS_THREAD_VARIABLES + ("XLA_FLAGS",)}
    if threads:
        os.environ["XLA_FLAGS"] = (f"{saved['XLA_FLAGS'] or ''} --xla_cpu_multi_thread_eigen=false "
                                   f"intra_op_parallelism_threads={threads}").strip()
        for name in _BLAS_THREAD_VARIABLES:
            if saved[name] is None:
                os.environ[name] = str(threads)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _train_point(config_json: str, workdir: str) -> dict[str, Any]:
    """Worker: trains one point and returns its summary (errors become a summary with a message)."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    from dks_jax.train import compilation_cache, loop  # pylint: disable=g-import-not-at-top

    compilation_cache.enable()  # the points of a sweep compile the same programs

    config = configlib.base_config()
    configlib.set_fields(config, configlib.flatten(json.loads(config_json), ""))
    _restore_tuples(config)
    assert isinstance(config, ml_collections.ConfigDict)
    try:
        return loop.train_and_evaluate(config, workdir, progress=False)
    except loop.TrainingDivergedError as err:
        return {"status": "diverged", "message": str(err)}
    except (ValueError, RuntimeError, OSError) as err:
        return {"status": "failed", "message": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}


def _restore_tuples(config: Any) -> None:
    """JSON turned tuple fields into lists; the schema's types bring them back."""
    for f in configlib.schema():
        if isinstance(f.default, tuple):
            value = configlib.get_path(config, f.path)
            if isinstance(value, list):
                configlib.set_fields(config, {f.path: tuple(value)})


def _finished(workdir: Path, config: Any) -> dict[str, Any] | None:
    """The summary of a run already finished in ``workdir`` with this very config, else None."""
    from dks_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    summary = workdir_lib.read_json(workdir / workdir_lib.SUMMARY_FILE)
    stored = workdir_lib.read_json(workdir / workdir_lib.CONFIG_FILE)
    if not summary or stored is None or configlib.changed_fields(stored, config):
        return None
    if summary.get("status") in _OK_STATUSES + ("diverged",):
        return summary
    return None


@dataclasses.dataclass
class SweepResult:
    """Every point of a sweep and the chosen one.

    Attributes:
      results: One ``PointResult`` per grid point, in grid order.
      chosen: Index of the chosen point in ``results`` (None when no point is usable).
      why: One sentence on why it was chosen (or why none was).
      metric: The selection metric.
    """

    results: list[PointResult]
    chosen: int | None
    why: str
    metric: str

    @property
    def best(self) -> PointResult | None:
        return None if self.chosen is None else self.results[self.chosen]


# Axes that repeat a setting rather than change it: a setting is ranked by its mean over them.
REPLICATE_AXES = ("seed", "validation_fold")


def _settings_point(point: Mapping[str, Any]) -> dict[str, Any]:
    """A point without its seed and validation fold: the setting that they repeat."""
    return {k: v for k, v in point.items() if k not in REPLICATE_AXES}


def _settings(point: Mapping[str, Any]) -> tuple:
    """`_settings_point` as a hashable key."""
    return tuple(sorted((k, repr(v)) for k, v in _settings_point(point).items()))


def select(results: Sequence[PointResult], metric: str = "validation_accuracy") -> tuple[int | None, str]:
    """The best usable point by ``metric`` (higher is better for accuracies, lower for losses).

    When the grid repeats settings over several seeds (a ``seed`` axis), a setting is ranked by its mean
    over its seeds, and only a setting that trained at every seed is eligible: the best single seed of a
    noisy grid is the luckiest, not the best setting. The returned index is the chosen setting's first run.
    """
    if not metric.startswith("validation_"):
        raise configlib.ConfigError(f"sweeps choose on the validation split; got metric {metric!r} (use "
                                    "validation_accuracy or validation_loss).")
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault(_settings(r.point), []).append(i)
    seeded = any(len(members) > 1 for members in groups.values())
    folded = any("validation_fold" in r.point for r in results)
    every = "every seed and fold" if folded else "every seed"
    ok = lambda i: results[i].usable and math.isfinite(results[i].metric(metric))
    usable = [members for members in groups.values() if all(ok(i) for i in members)]
    if not usable:
        # The reason too when it is short enough to read in a table cell (a failed set-up says why).
        def why(r: PointResult) -> str:
            return f" ({r.reason.splitlines()[0][:160]})" if r.status == "failed" and r.reason else ""

        reasons = "; ".join(f"{point_name(r.point)}: {r.status}{why(r)}"
                            for i, r in enumerate(results) if not seeded or not ok(i))
        return None, (f"no setting trained at {every} ({reasons})." if seeded else
                      f"no point is usable ({reasons}).")
    higher = metric.endswith("accuracy")
    tie = "validation_loss" if higher else "validation_accuracy"

    def mean(members: list[int], name: str) -> float:
        values = [results[i].metric(name) for i in members]
        return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)

    def key(members: list[int]) -> tuple[float, float]:
        value, other = mean(members, metric), mean(members, tie)
        # Accuracy: highest first, then the lowest loss. Loss: lowest first, then the highest accuracy.
        # A missing tie-breaker ranks last.
        if higher:
            return (-value, math.inf if math.isnan(other) else other)
        return (value, math.inf if math.isnan(other) else -other)

    ranked = sorted(usable, key=key)
    best = ranked[0]
    name = lambda members: point_name(_settings_point(results[members[0]].point))
    label = f"{'highest' if higher else 'lowest'} {'mean ' if seeded else ''}{metric.replace('_', ' ')}"
    text = f"{label} {mean(best, metric):.4f}"
    if seeded:
        text += f" over {len(best)} {'runs (seeds x validation folds)' if folded else 'seeds'}"
    if len(ranked) > 1:
        runner = ranked[1]
        where = name(runner) if seeded else point_name(results[runner[0]].point)
        text += f" (next: {mean(runner, metric):.4f} at {where}; ties broken by {tie.replace('_', ' ')})"
    skipped = len(groups) - len(usable)
    if skipped:
        text += (f"; {skipped} of {len(groups)} settings not usable at {every} (failed, diverged or at "
                 "chance)" if seeded else
                 f"; {skipped} of {len(results)} points not usable (failed, diverged or at chance)")
    return best[0], text + "."


def run_points(configs: Sequence[tuple[dict[str, Any], Any, Path]], *, parallel: int = 1,
               threads_per_point: int | None = None,
               on_result: Callable[[PointResult], None] | None = None) -> list[PointResult]:
    """Trains ``(point, config, workdir)`` triples, ``parallel`` at a time; finished ones are read, not rerun."""
    results: list[PointResult | None] = [None] * len(configs)
    todo = []
    for index, (point, config, workdir) in enumerate(configs):
        done = _finished(Path(workdir), config)
        if done is not None:
            results[index] = _classify(point, Path(workdir), done)
            if on_result:
                on_result(results[index])
        else:
            todo.append(index)
    if todo:
        payload = {i: json.dumps(configlib.to_json_dict(configs[i][1])) for i in todo}
        context = multiprocessing.get_context("spawn")  # JAX does not survive fork
        with worker_environment(threads_per_point), concurrent.futures.ProcessPoolExecutor(
                max_workers=max(1, parallel), mp_context=context, max_tasks_per_child=1) as pool:
            futures = {pool.submit(_train_point, payload[i], str(configs[i][2])): i
                       for i in todo}
            for future in concurrent.futures.as_completed(futures):
                i = futures[future]
                point, _, workdir = configs[i]
                try:
                    summary = future.result()
                except Exception as err:  # pylint: disable=broad-except  (a crashed worker is a row)
                    summary = {"status": "failed", "message": f"worker crashed: {type(err).__name__}: {err}"}
                results[i] = _classify(point, Path(workdir), summary)
                if on_result:
                    on_result(results[i])
    return [r for r in results if r is not None]


def run_sweep(base: Any, axes: Mapping[str, Sequence[Any]], workdir: str | os.PathLike, *,
              parallel: int = 1, metric: str = "validation_accuracy", threads_per_point: int | None = None,
              on_result: Callable[[PointResult], None] | None = None, write: bool = True) -> SweepResult:
    """Trains the grid ``axes`` over ``base`` and chooses the best point on validation (module docstring)."""
    workdir = Path(workdir)
    triples, invalid = [], {}
    for index, point in enumerate(grid(axes)):
        try:
            triples.append((point, sweep_config(base, point), workdir / point_name(point)))
        except configlib.ConfigError as err:  # an invalid point is a row, not the end of the sweep
            invalid[index] = PointResult(point, str(workdir / point_name(point)), "failed", str(err), {})
            if on_result:
                on_result(invalid[index])
    trained = iter(run_points(triples, parallel=parallel, threads_per_point=threads_per_point,
                              on_result=on_result))
    results = [invalid[i] if i in invalid else next(trained) for i in range(len(triples) + len(invalid))]
    chosen, why = select(results, metric)
    result = SweepResult(results, chosen, why, metric)
    if write:
        write_report(result, workdir, base, axes)
    return result


# Columns of the sweep table: (heading, summary key, format).
_COLUMNS = (("validation acc.", "validation_accuracy", "{:.4f}"), ("validation loss", "validation_loss",
            "{:.4f}"), ("test acc.", "test_accuracy", "{:.4f}"), ("final train loss", "train_loss", "{:.4f}"),
            ("steps", "steps", "{:d}"), ("seconds", "wall_seconds", "{:.0f}"))


def markdown(result: SweepResult, axes: Sequence[str]) -> str:
    """The sweep table: one row per point, the chosen one marked, and why."""
    head = list(axes) + [c[0] for c in _COLUMNS] + ["status"]
    # Every seed of the chosen setting is marked (selection ranks settings by their mean over seeds).
    chosen_runs = set() if result.best is None else {
        i for i, r in enumerate(result.results) if _settings(r.point) == _settings(result.best.point)}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(result.results):
        cells = [_fmt(r.point.get(a)) for a in axes]
        for _, key, fmt in _COLUMNS:
            value = r.summary.get(key)
            cells.append("-" if value is None else fmt.format(value))
        status = r.status + (f": {r.reason}" if r.reason else "")
        cells.append(("**chosen** " if i in chosen_runs else "") + status.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    shown = result.best and (result.best.point if len(chosen_runs) == 1 else _settings_point(result.best.point))
    chosen = (f"Chosen: {point_name(shown)}, {result.why}" if result.best is not None
              else f"Chosen: none; {result.why}")
    return "\n".join(lines) + f"\n\n{chosen}\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(result: SweepResult, workdir: Path, base: Any, axes: Mapping[str, Sequence[Any]]) -> None:
    """Writes ``sweep.md`` and ``sweep.json`` in ``workdir``."""
    from dks_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    workdir.mkdir(parents=True, exist_ok=True)
    held_out = ("the dataset's own validation split" if _native_validation(base) else
                f"the validation split ({_validation_fraction(base):g} of the training set, held out)")
    text = (f"# Sweep over {', '.join(axes)}\n\nSelection: the {result.metric.replace('_', ' ')} on "
            f"{held_out}; the test split is reported, never used to choose.\n\n"
            + markdown(result, list(axes)))
    (workdir / "sweep.md").write_text(text, encoding="utf-8")
    workdir_lib.write_json(workdir / "sweep.json", {
        "axes": {k: list(v) for k, v in axes.items()}, "metric": result.metric,
        "chosen": None if result.best is None else result.best.point, "why": result.why,
        "points": [dataclasses.asdict(r) for r in result.results], "time": time.time()})


def _native_validation(config: Any) -> bool:
    """Whether the config's dataset ships its own validation split (a text corpus)."""
    from dks_jax.train import tasks  # pylint: disable=g-import-not-at-top
    try:
        return tasks.has_native_validation(config.dataset)
    except KeyError:  # an unknown dataset: validation names it
        return False


def _validation_fraction(base: Any) -> float:
    return float(base.validation_fraction) or DEFAULT_VALIDATION_FRACTION


@dataclasses.dataclass
class TunedRow:
    """A table row tuned by ``tune_then_seeds``.

    Attributes:
      sweep: The tuning sweep (seed of ``base``).
      seeds: The chosen point's runs, one per seed (the sweep's own run is the first).
    """

    sweep: SweepResult
    seeds: list[PointResult]

    def stats(self, key: str) -> tuple[float, float, int]:
        """(mean, standard deviation, count) of a summary value over the usable seed runs."""
        values = [r.metric(key) for r in self.seeds if r.usable and math.isfinite(r.metric(key))]
        if not values:
            return math.nan, math.nan, 0
        return float(np.mean(values)), float(np.std(values, ddof=1) if len(values) > 1 else 0.0), len(values)


def tune_then_seeds(base: Any, axes: Mapping[str, Sequence[Any]], workdir: str | os.PathLike,
                    seeds: Sequence[int], *, parallel: int = 1, threads_per_point: int | None = None,
                    on_result: Callable[[PointResult], None] | None = None) -> TunedRow:
    """Sweeps ``axes`` at ``base.seed`` on validation, then reruns the chosen point at every seed."""
    workdir = Path(workdir)
    tuned = run_sweep(base, axes, workdir / "tune", parallel=parallel, threads_per_point=threads_per_point,
                      on_result=on_result)
    if tuned.best is None:
        return TunedRow(tuned, [])
    chosen = dict(tuned.best.point)
    extra = [s for s in seeds if s != int(base.seed)]
    triples = [({**chosen, "seed": s}, sweep_config(base, {**chosen, "seed": s}),
                workdir / f"seed={s}") for s in extra]
    reruns = run_points(triples, parallel=parallel, threads_per_point=threads_per_point,
                        on_result=on_result)
    return TunedRow(tuned, [tuned.best] + reruns)
