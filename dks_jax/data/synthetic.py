"""Random, seed-deterministic image data for benchmarks and tests."""

from __future__ import annotations

from collections.abc import Sequence
import os

import numpy as np

from dks_jax.data import dataset as dataset_lib
from dks_jax.data import registry

DEFAULT_NUM_EXAMPLES = {"train": 1024, "test": 256}
_SPLIT_IDS = {"train": 0, "test": 1}
_TEMPLATE_STREAM = 2


@registry.register_dataset("synthetic")
def load_synthetic(split: str, data_dir: str | os.PathLike | None = None, *,
                   num_examples: int | None = None,
                   image_shape: Sequence[int] = (32, 32, 3),
                   num_classes: int = 10,
                   seed: int = 0,
                   noise: float = 0.5) -> dataset_lib.ArrayDataset:
    """Generates a synthetic classification dataset.

    Each class has a random template image; an example is its class template
    mixed with uniform noise (`noise` is the noise's weight in [0, 1]), so the
    task is learnable and train/test share the templates. Everything is a
    function of (seed, split) only.

    Args:
        split: 'train' or 'test'.
        data_dir: Unused.
        num_examples: Examples in this split (default 1024 train / 256 test).
        image_shape: (H, W, C).
        num_classes: Number of classes.
        seed: Non-negative seed.
        noise: Weight of the per-example noise; 1.0 makes labels unlearnable.

    Returns:
        The split as an ArrayDataset.
    """
    del data_dir
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must lie in [0, 1], got {noise}")
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    n = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else int(num_examples)
    templates = np.random.default_rng([seed, _TEMPLATE_STREAM]).uniform(
        0.0, 255.0, size=(num_classes,) + shape)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    labels = rng.integers(0, num_classes, size=n, dtype=np.int32)
    pixels = (1.0 - noise) * templates[labels] + noise * rng.uniform(0.0, 255.0, (n,) + shape)
    return dataset_lib.ArrayDataset(images=np.round(pixels).astype(np.uint8), labels=labels,
                                    num_classes=num_classes, name="synthetic", split=split)
