"""Atomic, integrity-checked, keep-last-k checkpoints on top of orbax-checkpoint.

Why orbax plus a small layer of our own:
  * orbax's CheckpointManager already writes each step into
    `<step>.orbax-checkpoint-tmp-<t>` and renames it to `<step>` only once
    everything is on disk, ignores (and on start-up deletes) unfinished
    temporary directories, and prunes to the newest k steps; saves are made
    synchronous here (`enable_async_checkpointing=False` plus
    `wait_until_finished`) so `save` returns only after the rename.
  * orbax does not notice a finished checkpoint that is damaged later (a
    truncated or overwritten file may fail to read, or read back wrong
    values). Beside every checkpoint we store a JSON record with the leaves'
    shapes, dtypes and a sha256 over their bytes; restore recomputes it, and
    `restore_latest` falls back to the newest checkpoint that verifies.
  * The pytree is saved as a flat dict of its leaves and restored into the
    structure of a caller-given target (e.g. a freshly initialised train
    state), so custom pytree nodes such as kfac_jax's optimizer state or optax
    states round-trip exactly, with the target's dtypes and shardings.

Multi-process: every process calls `save`/`restore` on the same directory
(orbax lets the primary process write the shared files). Hashing reads every
leaf on the host, so each leaf must be fully addressable by every process:
true for data-parallel training, single- or multi-process, where params and
optimizer state are replicated (tests/test_train.py runs two processes
against one directory); model-parallel (sharded) state would need per-shard
digests.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE, _INTEGRITY = "state", "integrity"
_FORMAT_VERSION = 1
_SPACE_MARGIN = 4 * 2**20

logger = logging.getLogger(__name__)


class CorruptCheckpointError(RuntimeError):
    """A checkpoint could not be read back or failed its integrity check."""


def _leaf_key(index: int) -> str:
    return f"leaf_{index:06d}"


def _host_array(leaf: Any) -> np.ndarray:
    """The leaf's value as a host numpy array (for hashing)."""
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        raise TypeError("typed PRNG key arrays are not supported; store jax.random.key_data(key)")
    # (np.ascontiguousarray would turn 0-d arrays into shape (1,).)
    return np.asarray(jax.device_get(leaf), order="C")


def _leaf_spec(leaf: Any) -> dict[str, Any]:
    """Shape and dtype of a target leaf (array, ShapeDtypeStruct or scalar)."""
    if not hasattr(leaf, "dtype"):
        leaf = np.asarray(leaf)
    return {"shape": [int(d) for d in leaf.shape], "dtype": str(np.dtype(leaf.dtype))}


def _check_target_leaf(leaf: Any) -> None:
    """Rejects target leaves orbax cannot restore into, before any read.

    Without this a bad target would surface as an orbax error and be mistaken
    for a corrupt checkpoint.
    """
    if isinstance(leaf, jax.ShapeDtypeStruct):
        if leaf.sharding is None:
            raise TypeError("a jax.ShapeDtypeStruct target leaf needs a sharding")
    elif not isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float)):
        raise TypeError(f"unsupported target leaf type {type(leaf).__name__}")


def _digest(arrays: list[np.ndarray]) -> str:
    """sha256 over index, dtype, shape and raw bytes of every leaf, in order."""
    hasher = hashlib.sha256()
    for i, arr in enumerate(arrays):
        hasher.update(f"{i}|{arr.dtype.str}|{arr.shape};".encode())
        hasher.update(arr.tobytes())
    return hasher.hexdigest()


class CheckpointManager:
    """Keeps the newest `max_to_keep` verified checkpoints of a pytree in `directory`.

    Saving a step first deletes any checkpoints at that step or later: they
    belong to an abandoned trajectory (e.g. after restoring an older step
    because the newest was corrupt or the loss went NaN), and orbax only
    writes steps beyond the newest one.
    """

    def __init__(self, directory: str | os.PathLike[str], max_to_keep: int = 3) -> None:
        """Opens (creating if needed) a checkpoint directory.

        Args:
            directory: Root directory; one sub-directory per step.
            max_to_keep: Number of newest checkpoints kept (>= 1).
        """
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,  # leftovers of a crash mid-write
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=(_STATE, _INTEGRITY),
                                              options=options)

    def all_steps(self) -> list[int]:
        """Steps with a finished checkpoint on disk, ascending (not yet verified)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        """The newest finished step on disk (not verified), or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, pytree: Any) -> None:
        """Writes `pytree` as checkpoint `step`; returns once it is final on disk.

        Args:
            step: Non-negative step number.
            pytree: Pytree whose leaves are jax/numpy arrays or numeric scalars.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        leaves = jax.tree_util.tree_leaves(pytree)
        if not leaves:
            raise ValueError("nothing to save: the pytree has no leaves")
        host = [_host_array(leaf) for leaf in leaves]
        self._check_free_space(sum(arr.nbytes for arr in host))
        # orbax keeps jax arrays as they are (with their sharding); anything
        # else is written as a numpy array.
        flat = {_leaf_key(i): leaf if isinstance(leaf, jax.Array) else arr
                for i, (leaf, arr) in enumerate(zip(leaves, host))}
        record = {
            "format": _FORMAT_VERSION,
            "step": step,
            "leaves": [{"shape": list(arr.shape), "dtype": str(arr.dtype)} for arr in host],
            "sha256": _digest(host),
        }
        for stale in [s for s in self.all_steps() if s >= step]:
            logger.warning("checkpoint: deleting step %d (>= step %d being saved) in %s",
                           stale, step, self.directory)
            self._manager.delete(stale)
        self._manager.save(step, args=ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(flat), _INTEGRITY: ocp.args.JsonSave(record)}),
            force=True)
        self._manager.wait_until_finished()

    def _check_free_space(self, nbytes: int) -> None:
        """Refuses a save the disk cannot hold, before orbax starts writing it.

        orbax reports a full disk from its writer threads as a cascade of logged tracebacks and leaves a
        temporary directory behind; this check turns the common case into one ``OSError(ENOSPC)``.
        """
        needed = 2 * nbytes + _SPACE_MARGIN  # the data, orbax's metadata, and room for the rest of the run
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise OSError(errno.ENOSPC, f"No space left on device: a checkpoint needs about "
                          f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free", self.directory)

    def restore(self, step: int, target: Any) -> Any:
        """Restores checkpoint `step` into the structure of `target`, verified.

        Args:
            step: A step from `all_steps()`.
            target: Pytree with the saved structure (e.g. freshly initialised),
                whose leaves give the dtypes and placement: jax arrays or
                `jax.ShapeDtypeStruct`s with a sharding restore as jax arrays
                on that sharding, numpy arrays as numpy, Python scalars as
                Python scalars.

        Returns:
            The restored pytree, bit-identical to what was saved.

        Raises:
            CorruptCheckpointError: If the checkpoint is unreadable or fails
                its sha256 check.
            ValueError: If `target` does not match the saved leaves (count,
                shapes, dtypes): a caller error, not corruption.
            TypeError: On a target leaf that cannot be restored into.
        """
        step = int(step)
        target_leaves, treedef = jax.tree_util.tree_flatten(target)
        for leaf in target_leaves:
            _check_target_leaf(leaf)
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(
                **{_INTEGRITY: ocp.args.JsonRestore()}))[_INTEGRITY]
            saved_specs = [{"shape": list(s["shape"]), "dtype": str(s["dtype"])}
                           for s in record["leaves"]]
            expected_digest = str(record["sha256"])
        except Exception as err:  # orbax/JSON errors on damaged files vary
            raise CorruptCheckpointError(
                f"step {step}: unreadable integrity record ({err!r})") from err
        target_specs = [_leaf_spec(leaf) for leaf in target_leaves]
        if target_specs != saved_specs:
            raise ValueError(f"step {step}: target leaves {target_specs} do not match the saved "
                             f"leaves {saved_specs}")
        flat_target = {_leaf_key(i): leaf if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct))
                       else np.asarray(leaf) for i, leaf in enumerate(target_leaves)}
        try:
            flat = self._manager.restore(step, args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(flat_target)}))[_STATE]
            restored = [flat[_leaf_key(i)] for i in range(len(target_leaves))]
            host = [_host_array(leaf) for leaf in restored]
        except Exception as err:  # truncated / garbled array files
            raise CorruptCheckpointError(f"step {step}: unreadable arrays ({err!r})") from err
        if [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in host] != saved_specs:
            raise CorruptCheckpointError(f"step {step}: restored shapes/dtypes differ from record")
        if _digest(host) != expected_digest:
            raise CorruptCheckpointError(f"step {step}: sha256 mismatch, data is corrupt")
        leaves = [_like_target(value, leaf) for value, leaf in zip(restored, target_leaves)]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def restore_latest(self, target: Any) -> Optional[tuple[int, Any]]:
        """Restores the newest checkpoint that verifies, skipping damaged ones.

        Args:
            target: As in `restore`.

        Returns:
            (step, pytree) of the newest valid checkpoint, or None if there is
            no valid checkpoint.
        """
        skipped = 0
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(step, target)
            except CorruptCheckpointError as err:
                logger.warning("checkpoint: skipping corrupt step %d in %s: %s", step,
                               self.directory, err)
                skipped += 1
        if skipped:
            logger.error("checkpoint: none of the %d checkpoints in %s is valid", skipped,
                         self.directory)
        return None

    def close(self) -> None:
        """Waits for pending work and releases orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _like_target(value: Any, target_leaf: Any) -> Any:
    """Gives a restored leaf the container type of its target leaf."""
    if isinstance(target_leaf, (jax.Array, jax.ShapeDtypeStruct)):
        return value
    if isinstance(target_leaf, np.ndarray):
        return np.asarray(value)
    if isinstance(target_leaf, np.generic):
        return np.asarray(value)[()]
    return type(target_leaf)(np.asarray(value).item())  # Python scalar
