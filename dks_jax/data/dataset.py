"""In-memory and random-access dataset containers, and the validation holdout."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any, Union

import numpy as np

from dks_jax.data.errors import ValidationFoldError

# Fixed, independent of any training seed, so the validation set never changes
# between runs that use different seeds.
HOLDOUT_SEED = 20211004

Images = Union[np.ndarray, list]


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled image dataset held in memory.

    Attributes:
        images: uint8 array of shape [N, H, W, C].
        labels: int32 array of shape [N].
        num_classes: Number of classes; labels lie in [0, num_classes).
        name: Registry name of the dataset.
        split: Which split this is ('train', 'validation' or 'test').
        class_names: Optional human-readable class names, indexed by label.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    split: str = "train"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 NHWC, got {self.images.dtype} "
                             f"with shape {self.images.shape}")
        if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int32 of shape {self.images.shape[:1]}, got "
                             f"{self.labels.dtype} with shape {self.labels.shape}")
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (H, W, C) shared by every image."""
        return tuple(self.images.shape[1:])

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gathers examples.

        Args:
            indices: int array of example indices.

        Returns:
            (uint8 images [len(indices), H, W, C], int32 labels [len(indices)]).
        """
        return self.images[indices], self.labels[indices]

    def subset(self, indices: np.ndarray, split: str | None = None) -> "ArrayDataset":
        """Returns a new dataset holding copies of the chosen examples.

        Args:
            indices: int array of example indices.
            split: Split name for the result; defaults to this dataset's.

        Returns:
            An ArrayDataset with the selected images and labels.
        """
        return dataclasses.replace(self, images=self.images[indices],
                                   labels=self.labels[indices],
                                   split=self.split if split is None else split)


@dataclasses.dataclass(frozen=True, eq=False)
class SourceDataset:
    """A labelled dataset read example by example from a random-access source.

    Used where the images do not fit in memory or vary in size (ImageNet via
    `tfds.data_source`). Each `source[i]` must return a dict holding an HWC uint8
    image and an integer label.

    Attributes:
        source: Random-access sequence of example dicts.
        num_classes: Number of classes.
        name: Registry name of the dataset.
        split: Which split this is.
        class_names: Optional class names indexed by label.
        indices: Optional view: example i of this dataset is `source[indices[i]]`.
        image_key: Key of the image in each example dict.
        label_key: Key of the label in each example dict.
    """

    source: Sequence[Any]
    num_classes: int
    name: str
    split: str = "train"
    class_names: tuple[str, ...] | None = None
    indices: np.ndarray | None = None
    image_key: str = "image"
    label_key: str = "label"

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    @property
    def image_shape(self) -> None:
        """Always None: images may differ in size, so there is no common shape."""
        return None

    def read(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Reads examples from the source.

        Args:
            indices: int array of example indices (into this dataset).

        Returns:
            (list of uint8 HWC images, int32 labels [len(indices)]).
        """
        keys = np.asarray(indices, dtype=np.int64)
        if self.indices is not None:
            keys = self.indices[keys]
        records = read_records(self.source, [int(k) for k in keys])
        images = [np.asarray(r[self.image_key], dtype=np.uint8) for r in records]
        labels = np.asarray([r[self.label_key] for r in records], dtype=np.int32)
        return images, labels

    def subset(self, indices: np.ndarray, split: str | None = None) -> "SourceDataset":
        """Returns a view onto the chosen examples (nothing is read).

        Args:
            indices: int array of example indices (into this dataset).
            split: Split name for the result; defaults to this dataset's.

        Returns:
            A SourceDataset over the same source restricted to `indices`.
        """
        indices = np.asarray(indices, dtype=np.int64)
        base = indices if self.indices is None else self.indices[indices]
        return dataclasses.replace(self, indices=base,
                                   split=self.split if split is None else split)


Dataset = Union[ArrayDataset, SourceDataset]


def read_records(source: Sequence[Any], keys: list[int]) -> list[Any]:
    """Reads several records, batched where the source supports it.

    Args:
        source: Random-access source, e.g. a `tfds.data_source`.
        keys: Record indices.

    Returns:
        The records, in the order of `keys`.
    """
    if not keys:
        return []
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            records = getitems(keys)
            if len(records) == len(keys):
                return list(records)
        except TypeError:
            # TFDS's mock data source (4.9.x) installs a __getitems__ that is not
            # bound to its instance; fall back to one read per key.
            pass
    return [source[k] for k in keys]


def holdout_size(validation_size: int | float, num_examples: int) -> int:
    """Converts a validation-size setting into a number of examples.

    Args:
        validation_size: A count (int >= 0) or a fraction in [0, 1) of the train split.
        num_examples: Size of the full train split.

    Returns:
        The number of examples held out for validation.

    Raises:
        ValueError: If the setting is negative, a fraction >= 1, or leaves no
            training examples.
    """
    if isinstance(validation_size, (bool, np.bool_)):
        raise ValueError(f"validation_size must be a count or a fraction, got {validation_size!r}")
    if isinstance(validation_size, (int, np.integer)):
        size = int(validation_size)
    else:
        fraction = float(validation_size)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"a fractional validation_size must lie in [0, 1), got {fraction}")
        size = int(round(fraction * num_examples))
    if size < 0 or size >= num_examples:
        raise ValueError(f"validation_size={validation_size!r} gives {size} held-out examples "
                         f"out of {num_examples}; it must leave at least one for training")
    return size


def num_folds(validation_size: int | float, num_examples: int) -> int:
    """How many holdouts of this size the train split has (the valid folds are 0..n-1): the number of
    times the size fits, rounded to the nearest (a fraction 1/k gives k)."""
    size = holdout_size(validation_size, num_examples)
    return int(num_examples / size + 0.5) if size else 0


def split_holdout(train: Dataset, validation_size: int | float,
                  fold: int = 0) -> tuple[Dataset, Dataset | None]:
    """Carves a deterministic validation set out of a train split.

    The held-out examples are ``k`` consecutive entries of a permutation drawn with the fixed
    `HOLDOUT_SEED`, so the same examples are held out in every run and on every host: fold ``f`` starts
    at entry ``f * k`` (the last fold ends at the permutation's end instead, so where ``k`` does not
    divide the split it overlaps the fold before by less than half a fold). This is k-fold
    cross-validation: with a fraction 1/n, folds 0..n-1 hold out every example. Fold 0 is the first
    ``k`` entries. Both parts keep the original example order.

    Args:
        train: The full train split.
        validation_size: Count or fraction to hold out (see `holdout_size`).
        fold: Which of the disjoint holdouts of that size.

    Returns:
        (train minus the holdout, the holdout), or (train, None) when the holdout
        is empty.

    Raises:
        ValidationFoldError: ``fold`` outside ``[0, num_folds)``.
    """
    size = holdout_size(validation_size, len(train))
    if size == 0:
        return train, None
    folds = num_folds(validation_size, len(train))
    if not 0 <= fold < folds:
        raise ValidationFoldError(f"validation fold {fold} does not exist: holding out {size} of {len(train)} "
                         f"training examples gives folds 0..{folds - 1}")
    permutation = np.random.default_rng(HOLDOUT_SEED).permutation(len(train))
    start = min(fold * size, len(train) - size)
    held = np.sort(permutation[start:start + size])
    kept = np.sort(np.concatenate([permutation[:start], permutation[start + size:]]))
    return train.subset(kept, split="train"), train.subset(held, split="validation")
