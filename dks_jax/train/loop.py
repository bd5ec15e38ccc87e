"""The training loop: one jitted step, data-parallel over every device, for every config.

``train_and_evaluate(config, workdir)`` builds the data pipeline, the model (whose activation is solved
from its own layer specification), the optimizer and the step; resumes from the newest valid checkpoint
in ``workdir``; trains with a progress bar; evaluates; and writes ``summary.json``, ``metrics.jsonl``,
TensorBoard events and ``curves.png``.

Data parallelism is ``jax.jit`` over a 1-D ``jax.make_mesh`` mesh with the batch sharded on 'data' and
everything else replicated (no ``pmap``); the same path serves SGD, Adam and K-FAC and, through
``jax.distributed`` and per-host data shards, several hosts.

Determinism: batch ``k`` depends only on ``(seed, k)``, the step's PRNG key is ``fold_in(key, k)``, and
checkpoints hold every piece of optimizer state, so stopping at step N and resuming gives bit-identical
parameters to an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dks_jax import data as data_lib
from dks_jax import nets
from dks_jax import optim
from dks_jax.optim import losses, schedules, sharding
from dks_jax.train import checkpoint as checkpoint_lib
from dks_jax.train import metrics as metrics_lib

log = logging.getLogger(__name__)


# K-FAC statistics that are NaN unless its adaptive learning rate/momentum/damping are on (not logged then).
_ADAPTIVE_KFAC_STATS = frozenset({"new_loss", "rho", "quad_model_change"})


class TrainingDivergedError(RuntimeError):
    """The loss or the parameters became NaN/Inf; the last good checkpoint was kept."""


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


def _get(config: Any, key: str, default: Any) -> Any:
    return config[key] if key in config else default


def _check_choice(config: Any, key: str, valid: list[str]) -> None:
    if config[key] not in valid:
        raise ValueError(f"config.{key}={config[key]!r} is not valid; choose one of {valid}.")


def make_schedule(config: Any, total_steps: int, steps_per_epoch: int) -> schedules.Schedule:
    """The learning-rate schedule named by ``config.schedule``."""
    _check_choice(config, "schedule", schedules.list_schedules())
    lr = float(config.learning_rate)
    if config.schedule == "constant":
        return schedules.get_schedule("constant", value=lr)
    if config.schedule == "cosine":
        warmup = int(round(float(config.warmup_epochs) * steps_per_epoch))
        return schedules.get_schedule("cosine", peak_value=lr, total_steps=total_steps,
                                      warmup_steps=min(warmup, max(total_steps - 1, 0)))
    # piecewise_constant: x0.1 at 50% and 75% of training unless the config says otherwise.
    bounds = [float(b) for b in str(_get(config, "lr_boundaries", "0.5,0.75")).split(",")]
    factors = [float(f) for f in str(_get(config, "lr_factors", "0.1,0.1")).split(",")]
    return schedules.get_schedule("piecewise_constant", init_value=lr, boundaries=bounds,
                                  factors=factors, total_steps=total_steps)


def make_optimizer(config: Any, loss_fn, schedule) -> optim.base.StepOptimizer:
    """The optimizer named by ``config.optimizer`` with the config's hyper-parameters."""
    _check_choice(config, "optimizer", optim.list_optimizers())
    kwargs: dict[str, Any] = {}
    if config.optimizer == "sgd":
        kwargs = dict(momentum=float(config.momentum), nesterov=bool(config.nesterov))
    elif config.optimizer == "kfac":
        kwargs = dict(damping=float(config.kfac_damping), momentum=float(config.momentum),
                      curvature_ema=float(config.kfac_curvature_ema),
                      inverse_update_period=int(config.kfac_inverse_update_period),
                      norm_constraint=float(config.kfac_norm_constraint) or None,
                      num_burnin_steps=int(config.kfac_burnin_steps))
    return optim.make_optimizer(config.optimizer, loss_fn, schedule,
                                l2_reg=float(config.weight_decay), **kwargs)


def _put_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Assembles each host's shard of a global batch into arrays sharded over the mesh's 'data' axis."""
    spec = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(spec, np.asarray(v)) for k, v in batch.items()}


def _all_finite(tree: Any) -> bool:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))


class Experiment:
    """Everything a run needs, built from a config (also used by tests and benchmarks)."""

    def __init__(self, config: Any, mesh=None):
        maybe_initialize_distributed()
        self.config = config
        self.mesh = mesh if mesh is not None else sharding.make_data_mesh()
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        data_dir = config.data_dir or None
        val = float(_get(config, "validation_fraction", 0.0))
        self.train_ds = data_lib.get_dataset(config.dataset, "train", data_dir=data_dir,
                                             validation_size=val)
        eval_split = str(_get(config, "eval_split", "test"))
        self.eval_ds = data_lib.get_dataset(config.dataset, eval_split, data_dir=data_dir,
                                            validation_size=val)
        self.eval_split = eval_split
        image_size = int(_get(config, "image_size", 224))
        augment = str(config.augment)
        if augment not in ("", "none"):
            raise ValueError(f"config.augment={augment!r}; valid: '' (dataset default) or 'none'.")
        self.augment = data_lib.train_augmenter(config.dataset, image_size) if augment == "" else None
        self.eval_transform = data_lib.eval_transform(config.dataset, image_size)
        _check_choice(config, "normalize", ["meanstd", "unit"])
        # PLN, when asked for, is the model's first layer (so diagnostics see it too), not the pipeline's.
        self.normalization = data_lib.default_normalization(
            config.dataset, standardize=config.normalize == "meanstd")
        self.batch_size = int(config.batch_size)
        if self.batch_size % jax.device_count():
            raise ValueError(f"config.batch_size={self.batch_size} must be divisible by the number of "
                             f"devices ({jax.device_count()}).")
        self.steps_per_epoch = data_lib.steps_per_epoch(len(self.train_ds), self.batch_size)
        self.total_steps = int(round(float(config.num_epochs) * self.steps_per_epoch))
        max_steps = int(_get(config, "max_steps", 0))
        self.stop_step = min(self.total_steps, max_steps) if max_steps else self.total_steps
        # This host's part of batch 0: it fixes the input shape and initializes the model and optimizer.
        self._example = data_lib.train_batch(
            self.train_ds, 0, global_batch_size=self.batch_size, seed=int(config.seed),
            process_index=self.process_index, process_count=self.process_count, augment=self.augment,
            normalization=self.normalization)
        self.input_shape = tuple(self._example["image"].shape[1:])
        self.num_classes = int(self.train_ds.num_classes)
        self.model = nets.build_model(config, self.num_classes, self.input_shape)
        self.schedule = make_schedule(config, self.total_steps, self.steps_per_epoch)
        self.optimizer = make_optimizer(config, self._loss_fn, self.schedule)

    # The loss is defined on the un-jitted Haiku apply so K-FAC's graph matcher sees every layer.
    def _loss_fn(self, params, state, rng, batch):
        logits, new_state = self.model.transformed.apply(params, state, rng, batch["image"],
                                                         is_training=True)
        loss = losses.classification_loss(
            logits, batch["label"], label_smoothing=float(self.config.label_smoothing),
            num_classes=self.num_classes,
            register_for_kfac=self.config.optimizer == "kfac")
        return loss, (new_state, {"accuracy": losses.accuracy(logits, batch["label"])})

    def _stream(self, seed: int, start_step: int, num_steps: int) -> Iterator[dict[str, jax.Array]]:
        """Prefetched global batches ``start_step ..`` of the training stream with this seed."""
        return data_lib.train_iterator(
            self.train_ds, global_batch_size=self.batch_size, seed=seed, start_step=start_step,
            num_steps=num_steps, process_index=self.process_index, process_count=self.process_count,
            augment=self.augment, normalization=self.normalization,
            transfer_fn=lambda b: _put_global(b, self.mesh))

    def train_iterator(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        return self._stream(int(self.config.seed), start_step, self.stop_step - start_step)

    def burnin_batches(self) -> Iterator[dict[str, jax.Array]]:
        """K-FAC burn-in batches from a separate stream, so the training stream is not shifted."""
        return self._stream(int(self.config.seed) + 7919, 0, int(self.optimizer.num_burnin_steps))

    def init_state(self) -> dict[str, Any]:
        """Fresh ``{"params", "state", "opt_state", "step"}`` (before any burn-in)."""
        key = jax.random.PRNGKey(int(self.config.seed))
        init_key, opt_key = jax.random.split(key)
        example = _put_global(self._example, self.mesh)
        params, state = self.model.init(init_key, example["image"])
        params, state = sharding.replicate(params, self.mesh), sharding.replicate(state, self.mesh)
        opt_state = self.optimizer.init(params, state, opt_key, example)
        return {"params": params, "state": state, "opt_state": opt_state,
                "step": np.asarray(0, np.int64)}

    def evaluate(self, params, state) -> dict[str, float]:
        """Loss and accuracy over the whole evaluation split (padded batches are masked out)."""
        if not hasattr(self, "_eval_step"):
            apply, num_classes = self.model.transformed.apply, self.num_classes

            def eval_step(params, state, batch):
                logits, _ = apply(params, state, None, batch["image"], is_training=False)
                mask = batch["mask"]
                nll = losses.cross_entropy_per_example(logits, jax.nn.one_hot(batch["label"], num_classes))
                correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
                return jnp.stack([jnp.sum(nll * mask), jnp.sum(correct * mask), jnp.sum(mask)])

            self._eval_step = jax.jit(eval_step)  # compiled once per run, not once per evaluation
        eval_step = self._eval_step
        totals = np.zeros(3, np.float64)
        iterator = data_lib.eval_iterator(
            self.eval_ds, global_batch_size=self.batch_size, process_index=self.process_index,
            process_count=self.process_count, transform=self.eval_transform,
            normalization=self.normalization, transfer_fn=lambda b: _put_global(b, self.mesh))
        with iterator:
            for batch in iterator:
                totals += np.asarray(jax.device_get(eval_step(params, state, batch)), np.float64)
        return {"loss": float(totals[0] / totals[2]), "accuracy": float(totals[1] / totals[2]),
                "examples": int(totals[2])}


def _summary_path(workdir: Path) -> Path:
    return workdir / "summary.json"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)  # atomic: a crash never leaves half a summary


def train_and_evaluate(config: Any, workdir: str | os.PathLike, *, progress: bool = True,
                       mesh=None) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and returns the summary.

    Args:
      config: A locked ``ConfigDict`` (see ``configs/default.py``).
      workdir: Output directory; reused runs resume from their newest valid checkpoint.
      progress: Show a progress bar (process 0 only).
      mesh: Device mesh; default: all devices on one 'data' axis.

    Returns:
      The summary dict (also written to ``workdir/summary.json``).

    Raises:
      TrainingDivergedError: NaN/Inf loss or parameters (the last good checkpoint is kept).
    """
    start_time = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    exp = Experiment(config, mesh)
    is_main = exp.process_index == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))

    ckpt = checkpoint_lib.CheckpointManager(workdir / "checkpoints",
                                            max_to_keep=int(config.keep_checkpoints))
    train = exp.init_state()
    restored = ckpt.restore_latest(train)
    if restored is not None:
        _, train = restored
        train = {**train, "params": sharding.replicate(train["params"], exp.mesh),
                 "state": sharding.replicate(train["state"], exp.mesh),
                 "opt_state": sharding.replicate(train["opt_state"], exp.mesh)}
        log.info("Resumed from step %d.", int(train["step"]))
    elif exp.optimizer.num_burnin_steps:
        opt_state, state = exp.optimizer.burnin(
            train["params"], train["opt_state"], train["state"],
            jax.random.PRNGKey(int(config.seed) + 1), exp.burnin_batches(), mesh=exp.mesh)
        train = {**train, "opt_state": opt_state, "state": state}
    step = int(train["step"])

    writer = metrics_lib.MetricsWriter(workdir, resume_step=step, tensorboard=is_main)
    bar = metrics_lib.ProgressBar(exp.stop_step, initial=step, batch_size=exp.batch_size,
                                  enabled=progress and is_main,
                                  desc=f"{config.method} {config.activation} {config.model}")
    step_fn = exp.optimizer.jit_step(exp.mesh)
    base_key = jax.random.PRNGKey(int(config.seed) + 2)
    log_every = max(int(config.log_every_steps), 1)
    eval_every = int(config.eval_every_steps) or exp.steps_per_epoch
    ckpt_every = int(config.checkpoint_every_steps) or exp.steps_per_epoch
    params, state, opt_state = train["params"], train["state"], train["opt_state"]
    last_train: dict[str, float] = {}
    window: list[dict[str, Any]] = []

    def save(at_step: int) -> None:
        ckpt.save(at_step, {"params": params, "state": state, "opt_state": opt_state,
                            "step": np.asarray(at_step, np.int64)})

    def diverged(at_step: int, what: str) -> TrainingDivergedError:
        good = ckpt.latest_step()
        msg = (f"Training diverged at step {at_step}: {what} is NaN/Inf (learning rate "
               f"{float(exp.schedule(at_step)):.4g}). The last good checkpoint "
               f"{'is step ' + str(good) if good is not None else 'does not exist (none was saved)'} in "
               f"{workdir / 'checkpoints'}; lower config.learning_rate or raise config.warmup_epochs.")
        _write_json(_summary_path(workdir), {"status": "diverged", "message": msg, "steps": at_step})
        return TrainingDivergedError(msg)

    iterator = exp.train_iterator(step)
    try:
        with iterator:
            for batch in iterator:
                rng = jax.random.fold_in(base_key, step)
                params, opt_state, state, step_metrics = step_fn(params, opt_state, state, rng, batch,
                                                                 step)
                step += 1
                # Keep at most one step in flight: deeper async queues only add host-thread contention
                # on CPU, and one step of overlap already hides the host work on accelerators.
                if window:
                    jax.block_until_ready(window[-1])
                window.append(step_metrics)
                boundary = step % log_every == 0 or step == exp.stop_step
                if boundary or step % ckpt_every == 0 or step % eval_every == 0:
                    host = jax.device_get(window)
                    window = []
                    loss_values = [float(m["loss"]) for m in host]
                    if not all(math.isfinite(v) for v in loss_values):
                        raise diverged(step, "the training loss")
                    last_train = {k: float(np.mean([float(m[k]) for m in host])) for k in host[-1]
                                  if np.ndim(host[-1][k]) == 0 and k not in ("step", "batch_size")}
                    last_train = {k: v for k, v in last_train.items()
                                  if math.isfinite(v) or k not in _ADAPTIVE_KFAC_STATS}
                    if is_main:
                        writer.write("train", step, {**last_train, "epoch": step / exp.steps_per_epoch})
                    bar.update(step, last_train)
                if step % ckpt_every == 0 or step == exp.stop_step:
                    if not _all_finite(params):
                        raise diverged(step, "a parameter")
                    save(step)
                if step % eval_every == 0 and step != exp.stop_step:
                    ev = exp.evaluate(params, state)
                    if is_main:
                        writer.write("eval", step, ev)
    except KeyboardInterrupt:
        # Keep the progress of an interrupted run when its state is sound.
        if step > (ckpt.latest_step() or 0) and _all_finite(params):
            save(step)
        raise
    finally:
        bar.close()

    final_eval = exp.evaluate(params, state)
    if is_main:
        writer.write("eval", step, final_eval)
    summary = {
        "status": "completed" if step >= exp.total_steps else "stopped",
        "test_accuracy": final_eval["accuracy"], "test_loss": final_eval["loss"],
        "eval_split": exp.eval_split, "eval_examples": final_eval["examples"],
        "train_loss": last_train.get("loss", float("nan")),
        "train_accuracy": last_train.get("accuracy", float("nan")),
        "steps": step, "total_steps": exp.total_steps, "epochs": step / exp.steps_per_epoch,
        "wall_seconds": time.time() - start_time, "num_params": nets.Model.num_params(params),
        "activation": {"name": exp.model.activation.name, "method": exp.model.activation.method,
                       **exp.model.activation.as_dict()},
        "devices": jax.device_count(), "processes": exp.process_count,
        "model": config.model, "dataset": config.dataset, "optimizer": config.optimizer,
    }
    if is_main:
        _write_json(_summary_path(workdir), summary)
        metrics_lib.plot_curves(writer.rows(), workdir / "curves.png",
                                title=f"{config.method} {config.activation} {config.model}-{config.depth}"
                                      f" on {config.dataset} ({config.optimizer})")
    writer.close()
    ckpt.close()
    return summary
