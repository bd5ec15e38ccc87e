"""Tests for the dataset registry, data-dir resolution and the validation holdout."""

import pathlib

import numpy as np
import pytest

from dks_jax import data
from dks_jax.data import dataset as dataset_lib
from dks_jax.data import paths
from dks_jax.data import registry


def test_known_datasets_are_registered():
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "synthetic", "tfds_mnist",
            "tfds_fashion_mnist", "tfds_cifar10", "tfds_cifar100",
            "tfds_imagenet2012"} <= set(data.list_datasets())


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="known datasets: .*cifar10.*mnist"):
        data.get_dataset("imagenet_typo")


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        data.get_dataset("digits", "dev")


def test_register_dataset_decorator_and_duplicate_names():
    @data.register_dataset("_test_tiny")
    def load_tiny(split, data_dir=None, *, n=4):
        del data_dir
        return data.ArrayDataset(images=np.zeros((n, 2, 2, 1), np.uint8),
                                 labels=np.zeros(n, np.int32), num_classes=1,
                                 name="_test_tiny", split=split)
    try:
        assert len(data.get_dataset("_test_tiny", n=7)) == 7
        with pytest.raises(ValueError, match="already registered"):
            data.register_dataset("_test_tiny")(lambda split, data_dir=None: None)
    finally:
        registry._LOADERS.pop("_test_tiny")  # keep the registry clean for other tests


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    repo_root = pathlib.Path(data.__file__).resolve().parents[2]
    assert paths.resolve_data_dir() == repo_root.parent / "shared" / "data"
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "env"))
    assert paths.resolve_data_dir() == tmp_path / "env"
    assert paths.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    # Loaders follow the environment variable too.
    with pytest.raises(data.DatasetNotFoundError, match=str(tmp_path / "env" / "mnist")):
        data.get_dataset("mnist")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path))
    assert paths.resolve_cache_dir() == tmp_path
    monkeypatch.delenv(paths.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.resolve_cache_dir() == tmp_path / "xdg" / "dks_jax"


def test_validation_holdout_is_deterministic_and_disjoint():
    full = data.get_dataset("synthetic", "train", num_examples=100, image_shape=(4, 4, 1))
    train = data.get_dataset("synthetic", "train", num_examples=100, image_shape=(4, 4, 1),
                             validation_size=0.2)
    val = data.get_dataset("synthetic", "validation", num_examples=100, image_shape=(4, 4, 1),
                           validation_size=0.2)
    again = data.get_dataset("synthetic", "validation", num_examples=100, image_shape=(4, 4, 1),
                             validation_size=20)
    assert (len(train), len(val)) == (80, 20) and val.split == "validation"
    np.testing.assert_array_equal(val.images, again.images)
    # Together they are exactly the original train split.
    rows = lambda ds: sorted(r.tobytes() + bytes([l]) for r, l in zip(ds.images, ds.labels))
    assert sorted(rows(train) + rows(val)) == rows(full)


def test_validation_folds_partition_the_train_split():
    kw = dict(num_examples=103, image_shape=(4, 4, 1))
    full = data.get_dataset("synthetic", "train", **kw)
    key = lambda ds: sorted(r.tobytes() + bytes([l]) for r, l in zip(ds.images, ds.labels))
    # Fold 0 is the holdout the split has always had (the first 21 of the fixed permutation).
    np.testing.assert_array_equal(
        data.get_dataset("synthetic", "validation", validation_size=0.2, validation_fold=0, **kw).images,
        data.get_dataset("synthetic", "validation", validation_size=0.2, **kw).images)
    held = []
    for fold in range(5):
        val = data.get_dataset("synthetic", "validation", validation_size=0.2, validation_fold=fold, **kw)
        train = data.get_dataset("synthetic", "train", validation_size=0.2, validation_fold=fold, **kw)
        assert (len(train), len(val)) == (82, 21)
        assert sorted(key(train) + key(val)) == key(full)
        held += key(val)
    # 5 folds of 21 in 103 examples: every example is held out, the last fold overlaps the 4th by 2.
    assert len(set(held)) == 103 and len(held) == 105
    # A count that does not divide the split: 5 folds of 20 (the last starts at 83 of 103).
    held = [key(data.get_dataset("synthetic", "validation", validation_size=20, validation_fold=f, **kw))
            for f in range(5)]
    assert len(set().union(*held)) == 100 and len(set(held[3]) & set(held[4])) == 0
    assert [dataset_lib.num_folds(v, n) for v, n in ((20, 103), (0.2, 103), (0.2, 1438), (0.3, 100),
                                                     (0.45, 100))] == [5, 5, 5, 3, 2]
    with pytest.raises(data.ValidationFoldError, match="validation fold 5 does not exist.*folds 0..4"):
        data.get_dataset("synthetic", "validation", validation_size=0.2, validation_fold=5, **kw)


def test_validation_needs_a_holdout_size():
    with pytest.raises(ValueError, match="validation_size > 0"):
        data.get_dataset("digits", "validation")
    for bad in (-1, 1.0, 1438, True):
        with pytest.raises(ValueError):
            dataset_lib.holdout_size(bad, 1438)


def test_num_train_examples_without_loading():
    assert data.num_train_examples("cifar10") == 50000
    assert data.num_train_examples("cifar10", validation_size=5000) == 45000
    assert data.num_train_examples("mnist", validation_size=0.1) == 54000
    assert data.num_train_examples("synthetic", num_examples=77) == 77
    assert data.steps_per_epoch(50000, 128) == 390
    assert data.num_eval_batches(10000, 128) == 79
    with pytest.raises(ValueError, match="cannot fill"):
        data.steps_per_epoch(10, 128)


def test_array_dataset_validates_its_fields():
    with pytest.raises(ValueError, match="uint8 NHWC"):
        data.ArrayDataset(images=np.zeros((2, 3, 3), np.uint8), labels=np.zeros(2, np.int32),
                          num_classes=2, name="x")
    with pytest.raises(ValueError, match="labels must lie"):
        data.ArrayDataset(images=np.zeros((2, 3, 3, 1), np.uint8),
                          labels=np.array([0, 5], np.int32), num_classes=2, name="x")
