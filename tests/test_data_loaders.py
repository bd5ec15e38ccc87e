"""Tests for dataset loaders: idx/MNIST, CIFAR-10 (binary, folder, tar), digits, synthetic."""

import gzip
import hashlib
import io
import pathlib
import struct
import tarfile

import numpy as np
import pytest

from dks_jax import data
from dks_jax.data import cifar10
from dks_jax.data import idx
from dks_jax.data import paths

SHARED = paths.resolve_data_dir()


def _require(folder: pathlib.Path) -> None:
    if not folder.exists():
        pytest.skip(f"shared data folder {folder} is absent (set DKS_JAX_DATA_DIR to run this)")


# ---------------------------------------------------------------------------
# IDX / MNIST.
# ---------------------------------------------------------------------------

def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_parse_idx_round_trip_for_several_dtypes():
    for code, dtype in [(0x08, np.uint8), (0x0B, np.int16), (0x0D, np.float32)]:
        array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
        parsed = idx.parse_idx(_idx_bytes(array, code))
        np.testing.assert_array_equal(parsed, array)
        assert parsed.dtype == np.dtype(dtype)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", "magic"),
    (b"\x00\x00\x42\x01" + struct.pack(">I", 3) + b"abc", "magic"),
    (b"\x00\x00\x08\x02" + struct.pack(">I", 3), "truncated"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "payload holds 3 bytes"),
])
def test_parse_idx_rejects_malformed_content(content, message):
    with pytest.raises(data.MalformedDatasetError, match=message):
        idx.parse_idx(content)


def test_read_idx_reports_corrupt_gzip(tmp_path):
    good = gzip.compress(_idx_bytes(np.zeros((10,), np.uint8)))
    path = tmp_path / "broken.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(data.MalformedDatasetError, match="gzip"):
        idx.read_idx(path)


def _write_mnist_tree(root: pathlib.Path, n_train=6, n_test=4, image_shape=(28, 28)):
    folder = root / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        images = rng.integers(0, 256, (n,) + image_shape, dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))  # not gzipped
    return folder


def test_mnist_loader_on_small_tree(tmp_path):
    _write_mnist_tree(tmp_path)
    train = data.get_dataset("mnist", "train", data_dir=tmp_path)
    assert train.images.shape == (6, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.num_classes == 10
    assert len(data.get_dataset("mnist", "test", data_dir=tmp_path)) == 4


def test_mnist_loader_rejects_mismatched_counts(tmp_path):
    folder = _write_mnist_tree(tmp_path)
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(data.MalformedDatasetError, match="6 images but .* 5 labels"):
        data.get_dataset("mnist", "train", data_dir=tmp_path)


def test_missing_dataset_error_names_the_paths_and_the_remedy(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.get_dataset("fashion_mnist", "train", data_dir=missing)
    message = str(info.value)
    assert str(missing / "fashion_mnist" / "train-images-idx3-ubyte.gz") in message
    assert "DKS_JAX_DATA_DIR" in message and "data_dir" in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(data.DatasetNotFoundError, match="cifar10-jpeg.tar.gz"):
        data.get_dataset("cifar10", "train", data_dir=missing)


def test_real_mnist_matches_the_published_files():
    _require(SHARED / "mnist")
    with gzip.open(SHARED / "mnist" / "train-images-idx3-ubyte.gz", "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    train = data.get_dataset("mnist", "train")
    test = data.get_dataset("mnist", "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    # Published per-class counts of the MNIST training set.
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    assert np.bincount(test.labels).sum() == 10000
    assert 0.12 < train.images.mean() / 255 < 0.14  # MNIST's well-known mean, ~0.1307


def test_real_fashion_mnist_is_balanced():
    _require(SHARED / "fashion_mnist")
    train = data.get_dataset("fashion_mnist", "train")
    assert train.images.shape == (60000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
    assert train.class_names[9] == "Ankle boot"


# ---------------------------------------------------------------------------
# CIFAR-10.
# ---------------------------------------------------------------------------

def _binary_records(images_nhwc: np.ndarray, labels: np.ndarray) -> bytes:
    chw = images_nhwc.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), chw], axis=1).tobytes()


def test_binary_batch_reader_on_a_file_written_here(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(_binary_records(images, labels))
    got_images, got_labels = cifar10.read_binary_batches([path])
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    # The channel-major layout: byte 1 of a record is R at (0, 0), byte 1025 is G at (0, 0).
    raw = path.read_bytes()
    assert raw[1] == images[0, 0, 0, 0] and raw[1025] == images[0, 0, 0, 1]
    with pytest.raises(data.MalformedDatasetError, match="multiple"):
        cifar10.parse_binary_batch(raw[:-1])
    bad = bytearray(raw)
    bad[0] = 10
    with pytest.raises(data.MalformedDatasetError, match="label 10"):
        cifar10.parse_binary_batch(bytes(bad))


def test_cifar10_loader_prefers_binary_batches(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    expected = []
    for name in cifar10.BINARY_FILES["train"] + cifar10.BINARY_FILES["test"]:
        images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).astype(np.uint8)
        (folder / name).write_bytes(_binary_records(images, labels))
        expected.append(images)
    train = data.get_dataset("cifar10", "train", data_dir=tmp_path)
    test = data.get_dataset("cifar10", "test", data_dir=tmp_path)
    assert len(train) == 15 and len(test) == 3
    np.testing.assert_array_equal(train.images, np.concatenate(expected[:5]))
    np.testing.assert_array_equal(test.images, expected[5])
    assert train.class_names == data.CIFAR10_CLASSES


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # lossless, so exact comparisons work
    return buffer.getvalue()


def _tiny_tree(rng):
    """{(split, class, file): image} with 2 train / 1 test image for 3 classes."""
    tree = {}
    for class_name in ("truck", "airplane", "cat"):
        for split, count in (("train", 2), ("test", 1)):
            for i in range(count):
                tree[(split, class_name, f"{i:04d}.png")] = rng.integers(
                    0, 256, (32, 32, 3), dtype=np.uint8)
    return tree


def _write_tar(path, tree, prefix=""):
    with tarfile.open(path, "w:gz") as archive:
        for (split, class_name, file_name), image in tree.items():
            payload = _png_bytes(image)
            info = tarfile.TarInfo(f"{prefix}{split}/{class_name}/{file_name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def test_tar_reader_sorts_by_label_then_file_and_caches(tmp_path, monkeypatch):
    tree = _tiny_tree(np.random.default_rng(3))
    tar_path = tmp_path / "data" / "cifar10_jpeg" / cifar10.TAR_NAME
    tar_path.parent.mkdir(parents=True)
    _write_tar(tar_path, tree, prefix="./")
    cache = tmp_path / "cache"
    train = data.get_dataset("cifar10", "train", data_dir=tmp_path / "data", cache_dir=cache)
    # airplane (0) < cat (3) < truck (9); within a class by file name.
    np.testing.assert_array_equal(train.labels, [0, 0, 3, 3, 9, 9])
    np.testing.assert_array_equal(train.images[0], tree[("train", "airplane", "0000.png")])
    np.testing.assert_array_equal(train.images[5], tree[("train", "truck", "0001.png")])
    assert len(list(cache.glob("cifar10_jpeg-*.npz"))) == 1

    # A second load must come from the cache, without touching the archive's images.
    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(cifar10, "read_image_tar", fail)
    test = data.get_dataset("cifar10", "test", data_dir=tmp_path / "data", cache_dir=cache)
    np.testing.assert_array_equal(test.labels, [0, 3, 9])
    np.testing.assert_array_equal(test.images[2], tree[("test", "truck", "0000.png")])


def test_tar_reader_rejects_unknown_class_and_bad_images(tmp_path):
    tree = {("train", "unicorn", "0000.png"): np.zeros((32, 32, 3), np.uint8)}
    _write_tar(tmp_path / "a.tar.gz", tree)
    with pytest.raises(data.MalformedDatasetError, match="unicorn"):
        cifar10.read_image_tar(tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("train/cat/0000.jpg")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"nojpg"))
    with pytest.raises(data.MalformedDatasetError, match="cannot decode"):
        cifar10.read_image_tar(tmp_path / "b.tar.gz")
    (tmp_path / "c.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(data.MalformedDatasetError, match="cannot read archive"):
        cifar10.read_image_tar(tmp_path / "c.tar.gz")


def test_image_folder_tree_on_disk(tmp_path):
    tree = _tiny_tree(np.random.default_rng(4))
    for (split, class_name, file_name), image in tree.items():
        target = tmp_path / "cifar10_jpeg" / split / class_name / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_png_bytes(image))
    train = data.get_dataset("cifar10", "train", data_dir=tmp_path, source="folder")
    np.testing.assert_array_equal(train.labels, [0, 0, 3, 3, 9, 9])
    np.testing.assert_array_equal(train.images[2], tree[("train", "cat", "0000.png")])


@pytest.fixture(scope="session")
def real_cifar_cache(request, tmp_path_factory):
    # Decoding the 60,000 JPEGs takes ~15-20 s; pytest's cache folder keeps the
    # .npz between runs, so only the first run on a checkout pays for it. The
    # cache key is the archive's md5, so a stale file can never be used.
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None:
        return tmp_path_factory.mktemp("dks_jax_cifar10")
    return cache.mkdir("dks_jax_cifar10")


def test_real_cifar10_full_load(real_cifar_cache):
    _require(SHARED / "cifar10_jpeg")
    train = data.get_dataset("cifar10", "train", cache_dir=real_cifar_cache)
    test = data.get_dataset("cifar10", "test", cache_dir=real_cifar_cache)
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    # The published statistics, up to the JPEG compression of this copy.
    scaled = train.images[::10].astype(np.float64) / 255
    np.testing.assert_allclose(scaled.mean(axis=(0, 1, 2)), data.normalize.CIFAR10_MEAN,
                               atol=0.01)
    # The first images in the archive are train/airplane/0000.jpg...; decoding
    # them directly must give the first rows of the loaded (sorted) train split.
    first = cifar10.read_image_tar(SHARED / "cifar10_jpeg" / cifar10.TAR_NAME, limit=20)
    np.testing.assert_array_equal(first["train"][0], train.images[:20])
    np.testing.assert_array_equal(first["train"][1], np.zeros(20))


# ---------------------------------------------------------------------------
# digits and synthetic.
# ---------------------------------------------------------------------------

def test_digits_split_is_fixed_disjoint_and_stratified():
    train = data.get_dataset("digits", "train")
    test = data.get_dataset("digits", "test")
    assert train.images.shape == (1438, 8, 8, 1) and test.images.shape == (359, 8, 8, 1)
    assert train.images.max() == 255 and train.images.dtype == np.uint8
    assert data.num_train_examples("digits") == len(train)
    counts = np.bincount(test.labels) / np.bincount(np.concatenate([train.labels, test.labels]))
    np.testing.assert_allclose(counts, 0.2, atol=0.01)
    # No test image appears in train (the digits set has no exact duplicates across the split).
    train_rows = {row.tobytes() for row in train.images}
    assert not any(row.tobytes() in train_rows for row in test.images)


def test_synthetic_is_deterministic_in_seed():
    a = data.get_dataset("synthetic", "train", num_examples=50, image_shape=(8, 8, 2), seed=3)
    b = data.get_dataset("synthetic", "train", num_examples=50, image_shape=(8, 8, 2), seed=3)
    c = data.get_dataset("synthetic", "train", num_examples=50, image_shape=(8, 8, 2), seed=4)
    t = data.get_dataset("synthetic", "test", num_examples=50, image_shape=(8, 8, 2), seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.images, t.images)
    assert a.images.shape == (50, 8, 8, 2) and a.labels.max() < 10
