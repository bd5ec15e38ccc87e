"""The training loop: one train state, one jitted step, data-parallel over every device, for every config.

``train_and_evaluate(config, workdir)`` validates the config, locks the workdir, checks it against the
config the workdir's run was started with, builds the data pipeline, the model (whose activation is solved
from its own layer specification) and the optimizer, resumes from the newest valid checkpoint, trains
with a progress bar, evaluates, and writes ``summary.json`` (strict JSON), ``metrics.jsonl``, TensorBoard
events and ``curves.png``.

The state is one pytree, ``optim.TrainState(params, state, opt_state, step)``: what the step maps to the
next, what is checkpointed and what is restored. Data parallelism is ``jax.jit`` over a 1-D mesh with the
batch sharded on 'data' (no ``pmap``); the same path serves SGD, Adam and K-FAC and, through
``jax.distributed`` and per-host data shards, several hosts.

Determinism: batch ``k`` depends only on ``(seed, k)``, the step's PRNG key is ``fold_in(key, k)``, and
checkpoints hold every piece of state, so stopping at step N (Ctrl-C, ``kill -9``) and rerunning gives
parameters bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dks_jax import configlib
from dks_jax import nets
from dks_jax import optim
from dks_jax.optim import schedules, sharding
from dks_jax.train import checkpoint as checkpoint_lib
from dks_jax.train import metrics as metrics_lib
from dks_jax.train import tasks
from dks_jax.train import workdir as workdir_lib

log = logging.getLogger(__name__)

# K-FAC statistics that are NaN unless its adaptive learning rate/momentum/damping are on (not logged then).
_ADAPTIVE_KFAC_STATS = frozenset({"new_loss", "rho", "quad_model_change"})
# Steps whose loss sets the reference of the blow-up test (at most; see LossMonitor).
_REFERENCE_STEPS = 10


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/Inf or blew up; the last good checkpoint was kept (the message names it)."""


def maybe_initialize_distributed() -> None:
    """Joins a multi-process run when the environment asks for one (once per process).

    * ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``:
      an explicit launch, e.g. several processes on one machine or hosts without a cluster manager.
      (On CPU the processes talk through gloo.)
    * ``JAX_COORDINATOR_ADDRESS`` alone, or ``DKS_JAX_DISTRIBUTED=1``: JAX's own cluster detection
      (TPU pods, SLURM, ...) fills in the rest.

    Raises:
      ValueError: When only some of the explicit variables are set.
    """
    if getattr(maybe_initialize_distributed, "done", False):
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    if (count is None) != (index is None) or (count is not None and not address):
        raise ValueError("multi-process launch: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                         f"JAX_PROCESS_ID together (got {address!r}, {count!r}, {index!r}).")
    if count is not None:
        jax.distributed.initialize(coordinator_address=address, num_processes=int(count),
                                   process_id=int(index))
    elif address or os.environ.get("DKS_JAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    else:
        return
    maybe_initialize_distributed.done = True


def itstime(step: int, every: int, stop_step: int, *, last: bool = True) -> bool:
    """Whether something done every ``every`` steps happens after ``step`` (and at the last step)."""
    return (every > 0 and step % every == 0) or (last and step == stop_step)


def _put_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Assembles each host's shard of a global batch into arrays sharded over the mesh's 'data' axis."""
    spec = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(spec, np.asarray(v)) for k, v in batch.items()}


def _all_finite(tree: Any) -> bool:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))


class LossMonitor:
    """Tells a finite blow-up of the training loss from ordinary noise (NaN/Inf is checked separately).

    The reference is the mean loss of the run's first ``min(10, window_steps)`` steps; the run has
    diverged when the mean over the last ``window_steps`` steps exceeds ``loss_factor`` times it. A resumed
    run rebuilds its history from the logged rows (each row's mean loss standing for the steps since the
    previous row).

    Args:
      loss_factor: How far above the reference counts as a blow-up (> 1).
      window_steps: Steps averaged.
      rows: Logged training rows of the run so far (``{"step", "loss"}``), oldest first.
    """

    def __init__(self, loss_factor: float, window_steps: int, rows: Sequence[dict[str, Any]] = ()):
        self.factor, self.window = float(loss_factor), int(window_steps)
        self.reference_steps = min(_REFERENCE_STEPS, self.window)
        self.reference: float | None = None
        self._first: list[float] = []
        self._recent: list[float] = []
        previous = 0
        for row in rows:
            if row.get("loss") is not None:
                self.add([float(row["loss"])] * max(int(row["step"]) - previous, 1))
            previous = int(row["step"])

    def add(self, step_losses: Sequence[float]) -> None:
        """Appends per-step losses (finite)."""
        for loss in step_losses:
            if self.reference is None:
                self._first.append(loss)
                if len(self._first) == self.reference_steps:
                    self.reference = float(np.mean(self._first))
            self._recent.append(loss)
        del self._recent[:-self.window]

    def threshold(self) -> float | None:
        if self.reference is None:
            return None
        return self.factor * self.reference if self.reference > 0 else None

    def blown_up(self) -> str | None:
        """A description of the blow-up when the last ``window_steps`` steps are all in, else None."""
        limit = self.threshold()
        if limit is None or len(self._recent) < self.window:
            return None
        mean = float(np.mean(self._recent))
        if mean <= limit:
            return None
        return (f"the training loss blew up (mean {mean:.4g} over the last {self.window} steps against "
                f"{self.reference:.4g} over the first {self.reference_steps}; config.divergence.loss_factor = "
                f"{self.factor:g})")

    def recent_above(self, losses_: Sequence[float]) -> bool:
        """Whether these latest losses average above the blow-up threshold (do not checkpoint them)."""
        limit = self.threshold()
        return limit is not None and bool(losses_) and float(np.mean(losses_)) > limit


class Experiment:
    """Everything a run needs, built from a config (also used by tests and benchmarks)."""

    def __init__(self, config: Any, mesh=None):
        configlib.validate(config)
        maybe_initialize_distributed()
        self.config = config
        self.mesh = mesh if mesh is not None else sharding.make_data_mesh()
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.task = tasks.make_task(config, self.process_index, self.process_count)
        self.datasets = self.task.datasets
        self.eval_splits = [split for split in ("validation", "test") if split in self.datasets]
        self.batch_size = int(config.batch_size)
        for field in ("batch_size", "eval_batch_size"):
            if int(config[field]) % jax.device_count():
                raise configlib.ConfigError(f"config.{field}={int(config[field])} must be divisible by the "
                                            f"number of devices ({jax.device_count()}).")
        self.steps_per_epoch = self.task.steps_per_epoch(self.batch_size)
        self.total_steps = max(int(round(float(config.num_epochs) * self.steps_per_epoch)), 1)
        max_steps = int(config.max_steps)
        self.stop_step = min(self.total_steps, max_steps) if max_steps else self.total_steps
        # This host's part of batch 0: it fixes the input shape and initializes the model and optimizer.
        self._example = self.task.example(self.batch_size)
        self.input_key = self.task.input_key
        self.input_shape = tuple(self._example[self.input_key].shape[1:])
        self.num_classes = self.task.num_classes
        self.model = nets.build_model(config, self.num_classes, self.input_shape)
        warmup = int(round(float(config.schedule.warmup_epochs) * self.steps_per_epoch))
        self.schedule = schedules.get_schedule(
            config.schedule.name, peak_value=float(config.learning_rate), total_steps=self.total_steps,
            warmup_steps=min(warmup, self.total_steps), **configlib.section(config.schedule,
                                                                            config.schedule.name))
        name = config.optimizer.name
        self.optimizer = optim.make_optimizer(name, self._loss_fn, self.schedule,
                                              l2_reg=float(config.weight_decay),
                                              **configlib.section(config.optimizer, name),
                                              **self.task.optimizer_kwargs(name))

    # The loss is defined on the un-jitted Haiku apply so K-FAC's graph matcher sees every layer.
    def _loss_fn(self, params, state, rng, batch):
        logits, new_state = self.model.transformed.apply(params, state, rng, batch[self.input_key],
                                                         is_training=True)
        loss, metrics = self.task.loss(logits, batch, self.optimizer_needs_registration)
        return loss, (new_state, metrics)

    @property
    def optimizer_needs_registration(self) -> bool:
        return self.config.optimizer.name == "kfac"

    def _stream(self, seed: int, start_step: int, num_steps: int) -> Iterator[dict[str, jax.Array]]:
        """Prefetched global batches ``start_step ..`` of the training stream with this seed."""
        return self.task.stream(self.batch_size, seed, start_step, num_steps,
                                lambda b: _put_global(b, self.mesh))

    def train_iterator(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        return self._stream(int(self.config.seed), start_step, self.stop_step - start_step)

    def burnin_batches(self) -> Iterator[dict[str, jax.Array]]:
        """K-FAC burn-in batches from a separate stream, so the training stream is not shifted."""
        return self._stream(int(self.config.seed) + 7919, 0, int(self.optimizer.num_burnin_steps))

    def init_state(self) -> optim.TrainState:
        """A fresh train state at step 0 (before any burn-in), replicated over the mesh."""
        key = jax.random.PRNGKey(int(self.config.seed))
        init_key, opt_key = jax.random.split(key)
        example = _put_global(self._example, self.mesh)
        params, state = self.model.init(init_key, example[self.input_key])
        params, state = sharding.replicate(params, self.mesh), sharding.replicate(state, self.mesh)
        # Placed like the step's outputs, so that the first step does not trace a second program.
        opt_state = sharding.replicate(self.optimizer.init(params, state, opt_key, example), self.mesh)
        return optim.TrainState.create(params, state, opt_state)

    def burnin(self, train_state: optim.TrainState) -> optim.TrainState:
        """The optimizer's burn-in (K-FAC's curvature passes) on a fresh train state."""
        if not self.optimizer.num_burnin_steps:
            return train_state
        opt_state, state = self.optimizer.burnin(
            train_state.params, train_state.opt_state, train_state.state,
            jax.random.PRNGKey(int(self.config.seed) + 1), self.burnin_batches(), mesh=self.mesh)
        return train_state._replace(opt_state=opt_state, state=state)

    def evaluate(self, params, state, split: str = "test") -> dict[str, float]:
        """Loss and accuracy (and bits per character for text) over a whole split (padding masked out)."""
        if not hasattr(self, "_eval_step"):
            apply, task, key = self.model.transformed.apply, self.task, self.input_key

            def eval_step(params, state, batch):
                logits, _ = apply(params, state, None, batch[key], is_training=False)
                return task.eval_sums(logits, batch)

            self._eval_step = jax.jit(eval_step)  # compiled once per run, not once per evaluation
        totals = np.zeros(3, np.float64)
        batch_size = int(self.config.eval_batch_size) or self.batch_size
        with self.task.eval_iterator(split, batch_size, lambda b: _put_global(b, self.mesh)) as it:
            for batch in it:
                totals += np.asarray(jax.device_get(self._eval_step(params, state, batch)), np.float64)
        return self.task.eval_metrics(totals)


def train_and_evaluate(config: Any, workdir: str | os.PathLike, *, progress: bool = True,
                       mesh=None) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and returns the summary.

    A rerun of a finished run changes nothing and returns its summary with ``"already_complete": True``.

    Args:
      config: A locked ``ConfigDict`` (``configlib.base_config()`` plus a config file's changes).
      workdir: Output directory; reused runs resume from their newest valid checkpoint.
      progress: Show a progress bar (process 0 only).
      mesh: Device mesh; default: all devices on one 'data' axis.

    Returns:
      The summary dict (also written to ``workdir/summary.json``).

    Raises:
      configlib.ConfigError: An invalid field.
      workdir_lib.WorkdirBusyError: Another run holds the workdir.
      workdir_lib.ConfigMismatchError: The workdir's run was started with a config whose trained state
        this one does not match.
      TrainingDivergedError: NaN/Inf or a blow-up of the loss (the last good checkpoint is kept).
      OSError: The workdir cannot be written (read-only, disk full).
    """
    configlib.validate(config)
    maybe_initialize_distributed()
    workdir = Path(workdir)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    lock = workdir_lib.WorkdirLock(workdir, jax.process_index())
    try:
        lock.acquire()
    except BaseException:
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        try:
            changes = workdir_lib.check_config(workdir, config)
            exp = Experiment(config, mesh)
        except BaseException:
            if created:  # a run that fails in set-up leaves nothing behind
                lock.release()
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        return _Run(exp, workdir, changes, progress).run()
    finally:
        lock.release()


class _Run:
    """One invocation of ``train_and_evaluate`` on a built experiment (holds the workdir lock)."""

    def __init__(self, exp: Experiment, workdir: Path, changes: dict, progress: bool):
        self.exp, self.workdir, self.changes, self.progress = exp, workdir, changes, progress
        self.config = exp.config
        self.is_main = exp.process_index == 0
        self.start_time = time.time()

    def _open_checkpoints(self) -> checkpoint_lib.CheckpointManager:
        return checkpoint_lib.CheckpointManager(self.workdir / "checkpoints",
                                                max_to_keep=int(self.config.keep_checkpoints))

    def run(self) -> dict[str, Any]:
        exp, workdir, config = self.exp, self.workdir, self.config
        ckpt = self._open_checkpoints()
        train_state = exp.init_state()
        restored = ckpt.restore_latest(train_state)
        if restored is not None:
            train_state = sharding.replicate(restored[1], exp.mesh)._replace(step=restored[1].step)
            log.info("Resumed from step %d.", int(train_state.step))
        else:
            stale_checkpoints = bool(ckpt.all_steps())
            if stale_checkpoints or (self.is_main and workdir_lib.has_results(workdir)):
                ckpt.close()
                extra = ("checkpoints",) if stale_checkpoints else ()
                moved = workdir_lib.move_aside(workdir, extra) if self.is_main else None
                log.warning("%s holds results of an earlier run but no valid checkpoint to continue it "
                            "from; moved them to %s and starting from step 0.", workdir, moved)
                ckpt = self._open_checkpoints()
            train_state = exp.burnin(train_state)
        step = int(train_state.step)
        stored = workdir_lib.read_json(workdir / workdir_lib.SUMMARY_FILE) or {}
        try:
            if step >= exp.stop_step and stored.get("steps") == step and stored.get("status") in (
                    "completed", "stopped"):
                log.warning("%s is already complete at step %d; nothing to do.", workdir, step)
                return {**stored, "already_complete": True}
            if stored.get("status") == "diverged" and not self.changes:
                raise TrainingDivergedError(
                    f"{workdir} holds a run that already diverged; rerunning the same config would "
                    f"diverge again. {stored.get('message', '')}")
            if self.is_main:
                workdir_lib.record_config(workdir, config, self.changes, step)
            return self._train(ckpt, train_state)
        finally:
            ckpt.close()

    def _train(self, ckpt: checkpoint_lib.CheckpointManager,
               train_state: optim.TrainState) -> dict[str, Any]:
        exp, workdir, config = self.exp, self.workdir, self.config
        step = int(train_state.step)
        writer = metrics_lib.MetricsWriter(workdir, resume_step=step, enabled=self.is_main)
        monitor = LossMonitor(config.divergence.loss_factor, config.divergence.window_steps,
                              writer.rows("train") if self.is_main else ())
        bar = metrics_lib.ProgressBar(exp.stop_step, initial=step, batch_size=exp.batch_size,
                                      enabled=self.progress and self.is_main,
                                      desc=f"{config.method} {config.activation} {config.model}")
        step_fn = exp.optimizer.jit_step(exp.mesh)
        base_key = jax.random.PRNGKey(int(config.seed) + 2)
        log_every = int(config.log_every_steps)
        eval_every = int(config.eval_every_steps) or exp.steps_per_epoch
        ckpt_every = int(config.checkpoint_every_steps) or exp.steps_per_epoch
        last_train: dict[str, float] = {}
        pending: list[dict[str, Any]] = []  # metrics of the steps since the last fetch
        unsaved_losses: list[float] = []  # losses of the steps since the last checkpoint

        def diverged(at_step: int, what: str) -> TrainingDivergedError:
            good = ckpt.latest_step()
            msg = (f"Training diverged at step {at_step}: {what} (learning rate "
                   f"{float(exp.schedule(at_step)):.4g}). The last good checkpoint "
                   f"{'is step ' + str(good) if good is not None else 'does not exist (none was saved)'} in "
                   f"{workdir / 'checkpoints'}. Rerun in a new --workdir with a lower config.learning_rate "
                   "or a longer config.schedule.warmup_epochs.")
            if self.is_main:
                writer.close()
                workdir_lib.write_json(workdir / workdir_lib.SUMMARY_FILE, {
                    "status": "diverged", "message": msg, "steps": at_step,
                    "last_good_checkpoint": good})
            return TrainingDivergedError(msg)

        iterator = exp.train_iterator(step)
        try:
            with iterator:
                for batch in iterator:
                    rng = jax.random.fold_in(base_key, step)
                    train_state, step_metrics = step_fn(train_state, rng, batch)
                    step += 1
                    # Keep at most one step in flight: deeper async queues only add host-thread contention
                    # on CPU, and one step of overlap already hides the host work on accelerators.
                    if pending:
                        jax.block_until_ready(pending[-1])
                    pending.append(step_metrics)
                    save_now = itstime(step, ckpt_every, exp.stop_step)
                    if itstime(step, log_every, exp.stop_step) or save_now or itstime(step, eval_every, 0):
                        host = jax.device_get(pending)
                        pending = []
                        step_losses = [float(m["loss"]) for m in host]
                        if not all(math.isfinite(v) for v in step_losses):
                            raise diverged(step, "the training loss is NaN/Inf")
                        monitor.add(step_losses)
                        unsaved_losses += step_losses
                        last_train = {k: float(np.mean([float(m[k]) for m in host])) for k in host[-1]
                                      if np.ndim(host[-1][k]) == 0 and k not in ("step", "batch_size")}
                        last_train = {k: v for k, v in last_train.items()
                                      if math.isfinite(v) or k not in _ADAPTIVE_KFAC_STATS}
                        writer.write("train", step, {**last_train, "epoch": step / exp.steps_per_epoch})
                        bar.update(step, last_train)
                        blow_up = monitor.blown_up()
                        if blow_up:
                            raise diverged(step, blow_up)
                    if save_now:
                        if not _all_finite(train_state.params):
                            raise diverged(step, "a parameter is NaN/Inf")
                        if monitor.recent_above(unsaved_losses):
                            log.warning("Step %d: not checkpointed, its loss is above the blow-up "
                                        "threshold.", step)
                        else:
                            ckpt.save(step, train_state)
                        unsaved_losses = []
                    if itstime(step, eval_every, exp.stop_step, last=False) and step != exp.stop_step:
                        split = exp.eval_splits[0]
                        writer.write("eval", step, {**exp.evaluate(train_state.params, train_state.state,
                                                                   split), "split": split})
        except KeyboardInterrupt:
            # Keep the progress of an interrupted run when its state is sound.
            if step > (ckpt.latest_step() or 0) and _all_finite(train_state.params):
                ckpt.save(step, train_state)
            raise
        finally:
            bar.close()
        return self._finish(writer, train_state, last_train)

    def _finish(self, writer: metrics_lib.MetricsWriter, train_state: optim.TrainState,
                last_train: dict[str, float]) -> dict[str, Any]:
        exp, config, workdir = self.exp, self.config, self.workdir
        step = int(train_state.step)
        final = {}
        for split in exp.eval_splits:
            final[split] = exp.evaluate(train_state.params, train_state.state, split)
            writer.write("eval", step, {**final[split], "split": split})
        if not last_train and self.is_main:  # nothing trained in this invocation: the log has it
            rows = writer.rows("train")
            last_train = rows[-1] if rows else {}
        chance = 1.0 / exp.num_classes
        test_accuracy = final["test"]["accuracy"]
        summary = {
            "status": "completed" if step >= exp.total_steps else "stopped",
            **{f"{split}_{k}": v for split, ev in final.items() for k, v in ev.items()},
            "train_loss": last_train.get("loss"), "train_accuracy": last_train.get("accuracy"),
            # A run that ends within 5 points of chance did not learn, whatever its status says.
            "at_chance": bool(test_accuracy < chance + 0.05), "chance_accuracy": chance,
            "steps": step, "total_steps": exp.total_steps, "epochs": step / exp.steps_per_epoch,
            "wall_seconds": time.time() - self.start_time,
            "num_params": nets.Model.num_params(train_state.params),
            "activation": {"name": exp.model.activation.name, "method": exp.model.activation.method,
                           **exp.model.activation.as_dict()},
            "devices": jax.device_count(), "processes": exp.process_count,
            "model": config.model, "dataset": config.dataset, "optimizer": config.optimizer.name,
        }
        if self.is_main:
            workdir_lib.write_json(workdir / workdir_lib.SUMMARY_FILE, summary)
            metrics_lib.plot_curves(writer.rows(), workdir / "curves.png",
                                    title=f"{config.method} {config.activation} {config.model}-"
                                          f"{config.depth} on {config.dataset} ({config.optimizer.name})")
        writer.close()
        return summary
