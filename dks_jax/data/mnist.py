"""MNIST and Fashion-MNIST from the four standard IDX files."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dks_jax.data import dataset as dataset_lib
from dks_jax.data import errors
from dks_jax.data import idx
from dks_jax.data import paths
from dks_jax.data import registry

_FILE_PREFIX = {"train": "train", "test": "t10k"}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _find_file(name: str, folders: list[pathlib.Path], filename: str) -> pathlib.Path:
    """Returns the first existing `filename` or `filename.gz` among `folders`."""
    tried = []
    for folder in folders:
        for candidate in (folder / f"{filename}.gz", folder / filename):
            tried.append(candidate)
            if candidate.is_file():
                return candidate
    raise errors.DatasetNotFoundError(
        name, tried, hint=f"Expected the standard IDX files (e.g. {filename}.gz) in a "
                          f"'{name}/' folder under the data dir.")


def load_idx_split(name: str, folders: list[pathlib.Path], split: str,
                   num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of an MNIST-style dataset and checks it is consistent.

    Args:
        name: Dataset name for error messages.
        folders: Folders to search, in order.
        split: 'train' or 'test'.
        num_classes: Labels must lie in [0, num_classes).

    Returns:
        (uint8 images [N, 28, 28, 1], int32 labels [N]).

    Raises:
        DatasetNotFoundError: A file is missing from every folder.
        MalformedDatasetError: Wrong dimensionality, dtype, counts or label range.
    """
    prefix = _FILE_PREFIX[split]
    images_path = _find_file(name, folders, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(name, folders, f"{prefix}-labels-idx1-ubyte")
    images = idx.read_idx(images_path)
    labels = idx.read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise errors.MalformedDatasetError(
            f"{images_path}: expected 3-D uint8 images, got {images.ndim}-D {images.dtype}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise errors.MalformedDatasetError(
            f"{labels_path}: expected 1-D uint8 labels, got {labels.ndim}-D {labels.dtype}")
    if len(images) != len(labels):
        raise errors.MalformedDatasetError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels")
    if len(labels) and labels.max() >= num_classes:
        raise errors.MalformedDatasetError(f"{labels_path}: label {labels.max()} >= {num_classes}")
    return images[..., None], labels.astype(np.int32)


def _load(name: str, split: str, data_dir: str | os.PathLike | None,
          class_names: tuple[str, ...] | None) -> dataset_lib.ArrayDataset:
    root = paths.resolve_data_dir(data_dir)
    images, labels = load_idx_split(name, [root / name], split)
    return dataset_lib.ArrayDataset(images=images, labels=labels, num_classes=10, name=name,
                                    split=split, class_names=class_names)


@registry.register_dataset("mnist")
def load_mnist(split: str, data_dir: str | os.PathLike | None = None) -> dataset_lib.ArrayDataset:
    """Loads MNIST (60,000 train / 10,000 test, 28x28x1).

    Args:
        split: 'train' or 'test'.
        data_dir: Data folder (see `paths.resolve_data_dir`); the files are read
            from `<data_dir>/mnist/`.

    Returns:
        The split as an ArrayDataset.
    """
    return _load("mnist", split, data_dir, tuple(str(d) for d in range(10)))


@registry.register_dataset("fashion_mnist")
def load_fashion_mnist(split: str,
                       data_dir: str | os.PathLike | None = None) -> dataset_lib.ArrayDataset:
    """Loads Fashion-MNIST (60,000 train / 10,000 test, 28x28x1).

    Args:
        split: 'train' or 'test'.
        data_dir: Data folder; the files are read from `<data_dir>/fashion_mnist/`.

    Returns:
        The split as an ArrayDataset.
    """
    return _load("fashion_mnist", split, data_dir, FASHION_MNIST_CLASSES)
