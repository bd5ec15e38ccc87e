"""Datasets read through `tfds.data_source` (random access; needs no TensorFlow).

Registered names and the TFDS splits they read:

  tfds_mnist, tfds_fashion_mnist, tfds_cifar10, tfds_cifar100:
      'train' -> 'train', 'test' -> 'test'
  tfds_imagenet2012:
      'train' -> 'train', 'test' -> 'validation' (ImageNet's labelled held-out set)

The data must already be prepared in ArrayRecord format under TFDS's data_dir
(`data_dir=` here, else $TFDS_DATA_DIR, else ~/tensorflow_datasets), e.g. with
`tfds build mnist --file_format=array_record`. Nothing is ever downloaded:
loaders call `tfds.data_source(..., download=False)`. TFDS is imported only when
one of these loaders runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dks_jax.data import dataset as dataset_lib
from dks_jax.data import errors
from dks_jax.data import registry

# Registry name -> (TFDS name, {our split: TFDS split}).
TFDS_DATASETS = {
    "tfds_mnist": ("mnist", {"train": "train", "test": "test"}),
    "tfds_fashion_mnist": ("fashion_mnist", {"train": "train", "test": "test"}),
    "tfds_cifar10": ("cifar10", {"train": "train", "test": "test"}),
    "tfds_cifar100": ("cifar100", {"train": "train", "test": "test"}),
    "tfds_imagenet2012": ("imagenet2012", {"train": "train", "test": "validation"}),
}
_READ_CHUNK = 4096


def open_tfds_source(tfds_name: str, tfds_split: str,
                     data_dir: str | os.PathLike | None = None) -> Any:
    """Opens a prepared TFDS dataset split for random access, never downloading.

    Args:
        tfds_name: TFDS dataset name, e.g. 'cifar10'.
        tfds_split: TFDS split name, e.g. 'train' or 'validation'.
        data_dir: TFDS data_dir; None uses TFDS's default.

    Returns:
        The `tfds.data_source` object (supports len() and indexing).

    Raises:
        DatasetNotFoundError: TFDS could not open the split; the message carries
            TFDS's reason.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
        return tfds.data_source(tfds_name, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises many unrelated types for "not prepared"
        where = data_dir if data_dir is not None else tfds.core.constants.DATA_DIR
        raise errors.DatasetNotFoundError(
            f"tfds:{tfds_name}", [os.path.join(str(where), tfds_name)],
            hint=(f"TFDS could not open split '{tfds_split}' ({type(e).__name__}: {e}). "
                  f"Prepare it offline in ArrayRecord format, e.g. `tfds build {tfds_name} "
                  "--file_format=array_record --data_dir DIR`, then pass data_dir=DIR or "
                  "set TFDS_DATA_DIR.")) from e


def _label_info(source: Any) -> tuple[int, tuple[str, ...] | None]:
    """Reads the number of classes and class names from a source's metadata."""
    label = source.dataset_info.features["label"]
    names = tuple(label.names) if getattr(label, "names", None) else None
    return int(label.num_classes), names


def materialize(source: Any, name: str, split: str, num_classes: int,
                class_names: tuple[str, ...] | None) -> dataset_lib.ArrayDataset:
    """Reads every example of a fixed-shape source into an ArrayDataset.

    Args:
        source: Random-access source of {'image', 'label'} dicts.
        name: Registry name.
        split: Our split name.
        num_classes: Number of classes.
        class_names: Class names, if known.

    Returns:
        The whole split in memory.
    """
    images, labels = [], []
    for start in range(0, len(source), _READ_CHUNK):
        keys = list(range(start, min(start + _READ_CHUNK, len(source))))
        for record in dataset_lib.read_records(source, keys):
            images.append(np.asarray(record["image"], dtype=np.uint8))
            labels.append(int(record["label"]))
    return dataset_lib.ArrayDataset(images=np.stack(images), labels=np.asarray(labels, np.int32),
                                    num_classes=num_classes, name=name, split=split,
                                    class_names=class_names)


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
              in_memory: bool | None = None) -> dataset_lib.Dataset:
    """Loads a registered TFDS-backed dataset.

    Args:
        name: Registry name, a key of `TFDS_DATASETS`.
        split: 'train' or 'test' (mapped to TFDS split names).
        data_dir: TFDS data_dir; None uses TFDS's default.
        in_memory: Read everything into an ArrayDataset (True) or return a lazy
            SourceDataset (False). None: in memory when images have a fixed shape
            (MNIST, CIFAR), lazy otherwise (ImageNet).

    Returns:
        An ArrayDataset or SourceDataset.
    """
    tfds_name, split_map = TFDS_DATASETS[name]
    source = open_tfds_source(tfds_name, split_map[split], data_dir)
    num_classes, class_names = _label_info(source)
    if in_memory is None:
        shape = source.dataset_info.features["image"].shape
        in_memory = all(d is not None for d in shape)
    if in_memory:
        return materialize(source, name, split, num_classes, class_names)
    return dataset_lib.SourceDataset(source=source, num_classes=num_classes, name=name,
                                     split=split, class_names=class_names)


def _make_loader(name: str):
    def loader(split: str, data_dir: str | os.PathLike | None = None, *,
               in_memory: bool | None = None) -> dataset_lib.Dataset:
        return load_tfds(name, split, data_dir, in_memory=in_memory)

    tfds_name, split_map = TFDS_DATASETS[name]
    loader.__name__ = f"load_{name}"
    loader.__doc__ = (f"Loads TFDS '{tfds_name}' (splits {split_map}) via tfds.data_source; "
                      "see `load_tfds` for the arguments.")
    return loader


for _name in TFDS_DATASETS:
    registry.register_dataset(_name)(_make_loader(_name))
