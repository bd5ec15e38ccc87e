"""scikit-learn's 8x8 handwritten digits: a tiny real dataset that ships with sklearn."""

from __future__ import annotations

import os

import numpy as np

from dks_jax.data import dataset as dataset_lib
from dks_jax.data import registry

TEST_FRACTION = 0.2


_SPLIT_SEED = 0


def digits_test_mask(labels: np.ndarray, test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Marks the test examples: a fixed random `test_fraction` of each class.

    The file is ordered by writer, so its last images (the obvious deterministic choice) come from
    writers absent from the rest, a distribution shift that caps even an RBF SVM at 94%. A per-class
    permutation from NumPy's PCG64 generator with a fixed seed (a stream NumPy keeps stable across
    versions) gives an ordinary i.i.d. split that never changes.

    Args:
        labels: int labels of the whole dataset.
        test_fraction: Fraction of each class that goes to test.

    Returns:
        bool array, True for test examples.
    """
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.Generator(np.random.PCG64(_SPLIT_SEED))
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(test_fraction * len(members)))
        if num_test:
            mask[members[:num_test]] = True
    return mask


@registry.register_dataset("digits")
def load_digits(split: str, data_dir: str | os.PathLike | None = None) -> dataset_lib.ArrayDataset:
    """Loads sklearn's digits (1,797 images, 8x8x1, 10 classes).

    Pixel values 0..16 are rescaled to 0..255. The test split is a fixed random 20% of
    each class (359 images; `digits_test_mask`), the train split the rest (1,438 images).

    Args:
        split: 'train' or 'test'.
        data_dir: Unused (the data ships inside scikit-learn).

    Returns:
        The split as an ArrayDataset.
    """
    del data_dir
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    bunch = datasets.load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    test = digits_test_mask(labels)
    chosen = test if split == "test" else ~test
    return dataset_lib.ArrayDataset(images=images[chosen], labels=labels[chosen],
                                    num_classes=10, name="digits", split=split,
                                    class_names=tuple(str(d) for d in range(10)))
