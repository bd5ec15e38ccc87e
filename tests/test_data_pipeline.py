"""Tests for the input pipeline: determinism, resume, host sharding, eval padding, prefetch."""

import threading
import time

import numpy as np
import pytest

from dks_jax import data
from dks_jax.data import prefetch

AUG = data.PadCropFlip(pad=4)
NORM = data.Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), pln_mode="const")


@pytest.fixture(scope="module")
def dataset():
    return data.get_dataset("synthetic", "train", num_examples=100, image_shape=(8, 8, 3))


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_batch_format(dataset):
    batch = data.train_batch(dataset, 0, global_batch_size=16, seed=0, augment=AUG,
                             normalization=NORM)
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (16, 8, 8, 4) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32


def test_same_seed_and_step_give_identical_batches(dataset):
    kwargs = dict(global_batch_size=16, seed=7, augment=AUG, normalization=NORM)
    _assert_batches_equal(data.train_batch(dataset, 13, **kwargs),
                          data.train_batch(dataset, 13, **kwargs))
    other_seed = data.train_batch(dataset, 13, **{**kwargs, "seed": 8})
    assert not np.array_equal(other_seed["image"], data.train_batch(dataset, 13, **kwargs)["image"])


def test_resume_from_step_k_matches_uninterrupted_run(dataset):
    kwargs = dict(global_batch_size=16, seed=3, augment=AUG, normalization=NORM)
    with data.train_iterator(dataset, num_steps=20, **kwargs) as full_run:
        uninterrupted = list(full_run)
    assert len(uninterrupted) == 20
    with data.train_iterator(dataset, start_step=11, **kwargs) as resumed:
        assert resumed.next_step == 11
        for k in range(11, 20):
            _assert_batches_equal(next(resumed), uninterrupted[k])
        assert resumed.next_step == 20


def test_each_epoch_is_a_permutation_without_the_remainder(dataset):
    per_epoch = data.steps_per_epoch(len(dataset), 16)  # 6 steps, 4 examples dropped
    assert per_epoch == 6
    epochs = []
    for epoch in range(2):
        seen = np.concatenate([
            data.train_indices(epoch * per_epoch + s, num_examples=100, global_batch_size=16,
                               seed=0) for s in range(per_epoch)])
        assert len(set(seen.tolist())) == 96
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled per epoch


def test_host_shards_concatenate_to_the_global_batch(dataset):
    kwargs = dict(global_batch_size=16, seed=5, augment=AUG, normalization=NORM)
    for step in (0, 9):
        whole = data.train_batch(dataset, step, **kwargs)
        shards = [data.train_batch(dataset, step, process_index=i, process_count=2, **kwargs)
                  for i in range(2)]
        assert shards[0]["image"].shape[0] == 8
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), whole[key])


def test_sharding_arguments_are_checked(dataset):
    with pytest.raises(ValueError, match="not divisible"):
        data.train_batch(dataset, 0, global_batch_size=15, seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        data.train_batch(dataset, 0, global_batch_size=16, seed=0, process_index=2,
                         process_count=2)
    with pytest.raises(ValueError, match="seed"):
        data.train_batch(dataset, 0, global_batch_size=16, seed=-1)


def test_eval_pass_covers_every_example_once_with_mask(dataset):
    norm = data.Normalization()
    batches = list(data.eval_iterator(dataset, global_batch_size=32, normalization=norm))
    assert len(batches) == 4  # ceil(100 / 32)
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.dtype == np.float32 and masks.sum() == 100 and masks[100:].sum() == 0
    images = np.concatenate([b["image"] for b in batches])[:100]
    np.testing.assert_allclose(images, dataset.images / np.float32(255), rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:100],
                                  dataset.labels)


def test_eval_shards_concatenate_and_agree_on_batch_count(dataset):
    runs = [list(data.eval_iterator(dataset, global_batch_size=32, process_index=i,
                                    process_count=4, prefetch=0)) for i in range(4)]
    assert {len(r) for r in runs} == {4}
    whole = list(data.eval_iterator(dataset, global_batch_size=32))
    for b in range(4):
        for key in whole[b]:
            np.testing.assert_array_equal(np.concatenate([r[b][key] for r in runs]),
                                          whole[b][key])
    # On the last batch host 3 holds only padding (examples 120..127).
    assert runs[3][3]["mask"].sum() == 0


def test_prefetch_thread_stops_on_close_and_on_exhaustion(dataset):
    before = threading.active_count()
    iterator = data.train_iterator(dataset, global_batch_size=16, seed=0, prefetch=3)
    next(iterator)
    assert iterator.thread_alive
    iterator.close()
    assert not iterator.thread_alive
    with pytest.raises(StopIteration):
        next(iterator)
    finite = data.train_iterator(dataset, global_batch_size=16, seed=0, num_steps=3)
    assert len(list(finite)) == 3 and not finite.thread_alive
    assert threading.active_count() == before


def test_dropped_iterator_stops_its_thread(dataset):
    iterator = data.train_iterator(dataset, global_batch_size=16, seed=0, prefetch=2)
    next(iterator)
    thread = iterator._prefetcher._thread
    del iterator  # refcount drops to zero; __del__ asks the thread to stop
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_prefetcher_propagates_errors_and_applies_transfer_fn():
    def source():
        yield 1
        yield 2
        raise RuntimeError("boom")
    with prefetch.Prefetcher(source(), depth=2, transfer_fn=lambda x: x * 10) as it:
        assert [next(it), next(it)] == [10, 20]
        with pytest.raises(RuntimeError, match="boom"):
            next(it)
    synchronous = prefetch.Prefetcher(iter([1, 2]), depth=0)
    assert list(synchronous) == [1, 2] and not synchronous.thread_alive


def test_prefetch_runs_ahead_of_the_consumer():
    produced = []

    def source():
        for i in range(10):
            produced.append(i)
            yield i
    with prefetch.Prefetcher(source(), depth=3) as it:
        next(it)
        deadline = time.monotonic() + 5
        while len(produced) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        # 1 consumed + 3 queued; the 5th is produced but blocked on the full queue.
        assert 4 <= len(produced) <= 5


def test_variable_size_source_needs_a_resizing_transform():
    images = [np.zeros((5, 6, 3), np.uint8), np.zeros((7, 4, 3), np.uint8)] * 4
    source = [{"image": im, "label": i % 3} for i, im in enumerate(images)]
    dataset = data.SourceDataset(source=source, num_classes=3, name="ragged")
    with pytest.raises(ValueError, match="resizing augmenter"):
        data.train_batch(dataset, 0, global_batch_size=4, seed=0)
    batch = data.train_batch(dataset, 0, global_batch_size=4, seed=0,
                             augment=data.RandomResizedCrop(size=4))
    assert batch["image"].shape == (4, 4, 4, 3)
    evaluated = data.eval_batch(dataset, 1, global_batch_size=6,
                                transform=data.ResizeCenterCrop(size=(3, 5)))
    assert evaluated["image"].shape == (6, 3, 5, 3)
    np.testing.assert_array_equal(evaluated["mask"], [1, 1, 0, 0, 0, 0])


def test_presets():
    assert isinstance(data.train_augmenter("cifar10"), data.PadCropFlip)
    assert isinstance(data.train_augmenter("tfds_imagenet2012"), data.RandomResizedCrop)
    assert data.train_augmenter("mnist") is None and data.eval_transform("cifar10") is None
    norm = data.default_normalization("tfds_cifar10", pln_mode="avg_q")
    assert norm.mean == data.normalize.CIFAR10_MEAN and norm.output_channels(3) == 4
    assert data.default_normalization("synthetic").mean is None
    # digits: centred with its measured statistics, and shifted by at most one pixel, never flipped.
    digits = data.get_dataset("digits", "train")
    pixels = digits.images.astype(np.float64) / 255.0
    norm = data.default_normalization("digits")
    assert abs(norm.mean[0] - pixels.mean()) < 1e-3 and abs(norm.std[0] - pixels.std()) < 1e-3
    shift = data.train_augmenter("digits")
    assert isinstance(shift, data.PadCropFlip) and shift.pad == 1 and not shift.flip
