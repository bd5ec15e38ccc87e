"""Tests for TFDS-backed datasets via tfds.testing.mock_data (no TensorFlow, no downloads)."""

import numpy as np
import pytest

from dks_jax import data

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=24):
        yield


def test_tfds_mnist_materializes_in_memory(mock_tfds):
    train = data.get_dataset("tfds_mnist", "train")
    assert isinstance(train, data.ArrayDataset)
    assert train.images.shape == (24, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.num_classes == 10
    # mock_data is deterministic, and our reading preserves order.
    np.testing.assert_array_equal(data.get_dataset("tfds_mnist", "train").images, train.images)


def test_tfds_cifar10_and_cifar100_feed_the_pipeline(mock_tfds):
    train = data.get_dataset("tfds_cifar10", "train", validation_size=4)
    assert train.images.shape == (20, 32, 32, 3) and len(train.class_names) == 10
    batch = data.train_batch(train, 0, global_batch_size=8, seed=0,
                             augment=data.train_augmenter("tfds_cifar10"),
                             normalization=data.default_normalization("tfds_cifar10",
                                                                      pln_mode="const"))
    assert batch["image"].shape == (8, 32, 32, 4)
    assert data.get_dataset("tfds_cifar100", "test").num_classes == 100
    assert len(data.get_dataset("tfds_fashion_mnist", "test")) == 24


def test_lazy_and_in_memory_reads_agree(mock_tfds):
    eager = data.get_dataset("tfds_cifar10", "train")
    lazy = data.get_dataset("tfds_cifar10", "train", in_memory=False)
    assert isinstance(lazy, data.SourceDataset) and len(lazy) == 24
    images, labels = lazy.read(np.array([3, 0, 17]))
    np.testing.assert_array_equal(np.stack(images), eager.images[[3, 0, 17]])
    np.testing.assert_array_equal(labels, eager.labels[[3, 0, 17]])


def test_tfds_imagenet_is_lazy_and_resized_by_the_pipeline(mock_tfds):
    train = data.get_dataset("tfds_imagenet2012", "train", validation_size=8)
    val = data.get_dataset("tfds_imagenet2012", "validation", validation_size=8)
    test = data.get_dataset("tfds_imagenet2012", "test")
    assert isinstance(train, data.SourceDataset) and train.image_shape is None
    assert (len(train), len(val), len(test)) == (16, 8, 24) and train.num_classes == 1000
    assert test.source.split == "validation"  # ImageNet's labelled held-out split
    kwargs = dict(global_batch_size=8, seed=1, augment=data.train_augmenter(train.name, 32),
                  normalization=data.default_normalization(train.name))
    first = data.train_batch(train, 3, **kwargs)
    assert first["image"].shape == (8, 32, 32, 3) and first["label"].max() < 1000
    np.testing.assert_array_equal(first["image"], data.train_batch(train, 3, **kwargs)["image"])
    halves = [data.train_batch(train, 3, process_index=i, process_count=2, **kwargs)
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), first["image"])
    with data.eval_iterator(val, global_batch_size=6,
                            transform=data.eval_transform(val.name, 32)) as batches:
        evaluated = list(batches)
    assert [b["image"].shape for b in evaluated] == [(6, 32, 32, 3)] * 2
    assert sum(b["mask"].sum() for b in evaluated) == 8


def test_missing_tfds_data_raises_without_downloading(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.get_dataset("tfds_mnist", "train", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mnist") in message and "tfds build mnist" in message
    assert not any(tmp_path.rglob("*.array_record*"))  # nothing fetched or prepared
