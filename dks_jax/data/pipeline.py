"""Deterministic, resumable, host-sharded batches with background prefetch.

Training batch k is a pure function of (dataset, seed, k):
  * epoch = k // steps_per_epoch; the epoch's order is
    `np.random.default_rng([seed, 0, epoch]).permutation(N)`; batch k takes the
    slice at position k % steps_per_epoch (remainder dropped);
  * augmentation parameters for the whole global batch come from
    `np.random.default_rng([seed, 1, k])`.
So a run resumed at step k (`train_iterator(..., start_step=k)`) sees exactly
the batches an uninterrupted run sees from step k on, and each host
(`process_index` of `process_count`) gets rows
[process_index * B / P, (process_index + 1) * B / P) of every global batch;
concatenating all hosts' batches gives the global batch.

Evaluation walks the dataset once in order: ceil(N / B) global batches, the
last padded up to B with copies of example 0 that carry `mask` 0.

Batches are dicts of numpy arrays:
  train: {"image": float32 [B/P, H, W, C'], "label": int32 [B/P]}
  eval:  the same plus "mask": float32 [B/P] (1 real example, 0 padding).
With `normalization=None` "image" stays uint8 [B/P, H, W, C] (augmented), a
quarter of the bytes to transfer, and `normalize_images` can run on device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import functools
import itertools
import os
from typing import Any, Optional

import numpy as np

from dks_jax.data import augment as augment_lib
from dks_jax.data import dataset as dataset_lib
from dks_jax.data import normalize as normalize_lib
from dks_jax.data import prefetch as prefetch_lib

Batch = dict[str, np.ndarray]
NormalizationOrNone = Optional[normalize_lib.Normalization]
_DEFAULT_NORMALIZATION = normalize_lib.Normalization()

_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1

# Split sizes of the registered datasets, so schedules can be computed without
# loading data. (digits: the fixed 80/20 per-class split of 1,797 images.)
KNOWN_TRAIN_SIZES = {
    "digits": 1438, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
    "tfds_mnist": 60000, "tfds_fashion_mnist": 60000, "tfds_cifar10": 50000,
    "tfds_cifar100": 50000, "tfds_imagenet2012": 1281167,
}


def _check_sharding(global_batch_size: int, process_index: int, process_count: int) -> int:
    """Validates the host layout and returns the per-host batch size."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index} "
                         f"and {process_count}")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                         f"process_count {process_count}")
    return global_batch_size // process_count


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Training steps in one pass over the data (the remainder is dropped).

    Raises:
        ValueError: If the dataset is smaller than one global batch.
    """
    steps = num_examples // global_batch_size
    if steps < 1:
        raise ValueError(f"{num_examples} examples cannot fill one global batch of "
                         f"{global_batch_size}")
    return steps


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Evaluation batches needed to cover every example once (last one padded)."""
    return -(-num_examples // global_batch_size)


def num_train_examples(dataset: dataset_lib.Dataset | str, *,
                       validation_size: int | float = 0,
                       data_dir: str | os.PathLike | None = None,
                       **loader_kwargs: Any) -> int:
    """Number of training examples, optionally without loading anything.

    Args:
        dataset: A loaded dataset, or a registry name. For names in
            `KNOWN_TRAIN_SIZES` (without loader kwargs) the size is looked up;
            other names are loaded.
        validation_size: Holdout removed from train (as in `get_dataset`).
        data_dir: Passed to the loader when loading is needed.
        **loader_kwargs: Passed to the loader when loading is needed.

    Returns:
        The size of the 'train' split after removing the validation holdout.
    """
    if not isinstance(dataset, str):
        return len(dataset)
    if dataset in KNOWN_TRAIN_SIZES and not loader_kwargs:
        full = KNOWN_TRAIN_SIZES[dataset]
        return full - dataset_lib.holdout_size(validation_size, full)
    from dks_jax.data import registry  # pylint: disable=g-import-not-at-top
    return len(registry.get_dataset(dataset, "train", data_dir=data_dir,
                                    validation_size=validation_size, **loader_kwargs))


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    permutation = np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(num_examples)
    permutation.flags.writeable = False  # shared through the cache
    return permutation


def train_indices(step: int, *, num_examples: int, global_batch_size: int,
                  seed: int) -> np.ndarray:
    """Example indices of global training batch `step`.

    Args:
        step: Global step (>= 0).
        num_examples: Dataset size.
        global_batch_size: Examples per global batch.
        seed: Shuffling seed.

    Returns:
        int array [global_batch_size].
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    epoch, position = divmod(int(step), steps_per_epoch(num_examples, global_batch_size))
    permutation = _epoch_permutation(_check_seed(seed), epoch, num_examples)
    return permutation[position * global_batch_size:(position + 1) * global_batch_size]


def _finish(images: np.ndarray | list, labels: np.ndarray, params: augment_lib.Params,
            augment: augment_lib.Augmenter | None,
            normalization: NormalizationOrNone) -> Batch:
    augmenter = augment if augment is not None else augment_lib.Identity()
    images = augmenter.apply(images, params)
    if normalization is not None:
        images = normalize_lib.normalize_images(images, normalization)
    return {"image": images, "label": labels.astype(np.int32, copy=False)}


def train_batch(dataset: dataset_lib.Dataset, step: int, *, global_batch_size: int, seed: int,
                process_index: int = 0, process_count: int = 1,
                augment: augment_lib.Augmenter | None = None,
                normalization: NormalizationOrNone = _DEFAULT_NORMALIZATION) -> Batch:
    """Builds this host's part of global training batch `step`; pure in its arguments.

    Args:
        dataset: Training data.
        step: Global step.
        global_batch_size: Examples per global batch (all hosts together).
        seed: Seed for shuffling and augmentation.
        process_index: This host's index.
        process_count: Number of hosts.
        augment: Augmentation (None for none).
        normalization: uint8 -> float recipe; None keeps uint8 images (normalize
            on device with `normalize_images` inside the jitted step).

    Returns:
        {"image": float32 [B/P, H, W, C'], "label": int32 [B/P]}.
    """
    local = _check_sharding(global_batch_size, process_index, process_count)
    indices = train_indices(step, num_examples=len(dataset), global_batch_size=global_batch_size,
                            seed=seed)
    lo, hi = process_index * local, (process_index + 1) * local
    params = {}
    if augment is not None:
        rng = np.random.default_rng([_check_seed(seed), _AUGMENT_STREAM, int(step)])
        params = augment_lib.slice_params(augment.sample(rng, global_batch_size), lo, hi)
    images, labels = dataset.read(indices[lo:hi])
    return _finish(images, labels, params, augment, normalization)


def eval_batch(dataset: dataset_lib.Dataset, index: int, *, global_batch_size: int,
               process_index: int = 0, process_count: int = 1,
               transform: augment_lib.Augmenter | None = None,
               normalization: NormalizationOrNone = _DEFAULT_NORMALIZATION) -> Batch:
    """Builds this host's part of evaluation batch `index` (examples in order).

    Args:
        dataset: Evaluation data.
        index: Batch index in [0, num_eval_batches).
        global_batch_size: Examples per global batch.
        process_index: This host's index.
        process_count: Number of hosts.
        transform: Deterministic transform (e.g. ResizeCenterCrop) or None; its
            `sample` is called with a fixed generator, so random ones stay
            deterministic too.
        normalization: uint8 -> float recipe; None keeps uint8 images (normalize
            on device with `normalize_images` inside the jitted step).

    Returns:
        {"image", "label", "mask"}; padding rows repeat example 0 with mask 0.
    """
    local = _check_sharding(global_batch_size, process_index, process_count)
    start = index * global_batch_size + process_index * local
    positions = np.arange(start, start + local)
    mask = positions < len(dataset)
    images, labels = dataset.read(np.where(mask, positions, 0))
    params = {}
    if transform is not None:
        rng = np.random.default_rng([_AUGMENT_STREAM, int(index)])
        params = augment_lib.slice_params(transform.sample(rng, global_batch_size),
                                          process_index * local, (process_index + 1) * local)
    batch = _finish(images, labels, params, transform, normalization)
    batch["mask"] = mask.astype(np.float32)
    return batch


class BatchIterator:
    """Iterator over batches with background prefetch; close it when done.

    Attributes:
        next_step: Step (or eval batch index) of the batch the next `next()`
            returns.
    """

    def __init__(self, make_batch: Callable[[int], Batch], steps: Iterable[int],
                 first_step: int, prefetch: int = 2,
                 transfer_fn: Callable[[Batch], Any] | None = None):
        """Starts producing.

        Args:
            make_batch: step -> batch.
            steps: The steps to produce, in order, starting at `first_step`.
            first_step: The first step, for `next_step` bookkeeping.
            prefetch: Batches produced ahead in a background thread (0: none).
            transfer_fn: Applied to each batch in the background thread (e.g.
                `jax.device_put`).
        """
        self.next_step = first_step
        self._prefetcher = prefetch_lib.Prefetcher(map(make_batch, steps), prefetch, transfer_fn)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Any:
        batch = next(self._prefetcher)
        self.next_step += 1
        return batch

    def close(self) -> None:
        """Stops the background thread. Idempotent."""
        self._prefetcher.close()

    @property
    def thread_alive(self) -> bool:
        """Whether the prefetch thread is running."""
        return self._prefetcher.thread_alive

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def train_iterator(dataset: dataset_lib.Dataset, *, global_batch_size: int, seed: int,
                   start_step: int = 0, num_steps: int | None = None,
                   process_index: int = 0, process_count: int = 1,
                   augment: augment_lib.Augmenter | None = None,
                   normalization: NormalizationOrNone = _DEFAULT_NORMALIZATION,
                   prefetch: int = 2,
                   transfer_fn: Callable[[Batch], Any] | None = None) -> BatchIterator:
    """Training batches for steps start_step, start_step + 1, ... (see module doc).

    Args:
        dataset: Training data.
        global_batch_size: Examples per global batch.
        seed: Seed for shuffling and augmentation.
        start_step: First step; resuming at k reproduces an uninterrupted run.
        num_steps: Number of batches to produce; None for endless.
        process_index: This host's index (e.g. `jax.process_index()`).
        process_count: Number of hosts (e.g. `jax.process_count()`).
        augment: Augmentation or None.
        normalization: uint8 -> float recipe; None keeps uint8 images (normalize
            on device with `normalize_images` inside the jitted step).
        prefetch: Batches prepared ahead in a background thread.
        transfer_fn: Applied to each batch in the background thread.

    Returns:
        A BatchIterator (close it, or use it in a `with` block).
    """
    _check_sharding(global_batch_size, process_index, process_count)
    steps_per_epoch(len(dataset), global_batch_size)  # fail early, not in the thread
    _check_seed(seed)
    make = functools.partial(train_batch, dataset, global_batch_size=global_batch_size, seed=seed,
                             process_index=process_index, process_count=process_count,
                             augment=augment, normalization=normalization)
    steps = (itertools.count(start_step) if num_steps is None
             else range(start_step, start_step + num_steps))
    return BatchIterator(make, steps, start_step, prefetch, transfer_fn)


def eval_iterator(dataset: dataset_lib.Dataset, *, global_batch_size: int,
                  process_index: int = 0, process_count: int = 1,
                  transform: augment_lib.Augmenter | None = None,
                  normalization: NormalizationOrNone = _DEFAULT_NORMALIZATION,
                  prefetch: int = 2,
                  transfer_fn: Callable[[Batch], Any] | None = None) -> BatchIterator:
    """One ordered pass over `dataset` in padded, masked batches (see module doc).

    Args:
        dataset: Evaluation data.
        global_batch_size: Examples per global batch.
        process_index: This host's index.
        process_count: Number of hosts.
        transform: Deterministic transform for variable-size images, or None.
        normalization: uint8 -> float recipe; None keeps uint8 images (normalize
            on device with `normalize_images` inside the jitted step).
        prefetch: Batches prepared ahead in a background thread.
        transfer_fn: Applied to each batch in the background thread.

    Returns:
        A BatchIterator yielding `num_eval_batches(len(dataset), global_batch_size)`
        batches, each with a "mask" entry.
    """
    _check_sharding(global_batch_size, process_index, process_count)
    make = functools.partial(eval_batch, dataset, global_batch_size=global_batch_size,
                             process_index=process_index, process_count=process_count,
                             transform=transform, normalization=normalization)
    steps = range(num_eval_batches(len(dataset), global_batch_size))
    return BatchIterator(make, steps, 0, prefetch, transfer_fn)
