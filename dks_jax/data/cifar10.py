"""CIFAR-10 from the binary batches, an image-folder tree, or that tree in a tar.gz.

Formats, in the order `source='auto'` tries them:
  * binary: `data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin`; each
    record is 1 label byte then 3072 bytes of pixels (1024 R, 1024 G, 1024 B,
    row-major 32x32). Lossless; the official "CIFAR-10 binary version".
  * folder: `{train,test}/<class name>/<file>.jpg|png` on disk.
  * tar: the same tree inside `cifar10_jpeg/cifar10-jpeg.tar.gz` (the copy in
    the shared data folder). Decoding its 60,000 JPEGs takes ~15 s on one core,
    so the decoded arrays are cached as an .npz keyed by the archive's md5.
"""

from __future__ import annotations

from collections.abc import Iterable
import hashlib
import io
import logging
import os
import pathlib
import tarfile
import tempfile

import numpy as np

from dks_jax.data import dataset as dataset_lib
from dks_jax.data import errors
from dks_jax.data import paths
from dks_jax.data import registry

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3
BINARY_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
TAR_NAME = "cifar10-jpeg.tar.gz"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Bump when the cached arrays' layout or the decoding changes.
_CACHE_VERSION = 1

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Binary batches.
# ---------------------------------------------------------------------------

def parse_binary_batch(data: bytes, source: str = "<bytes>",
                       num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Parses the content of one CIFAR-10 binary batch file.

    Args:
        data: File content.
        source: Name used in error messages.
        num_classes: Labels must lie in [0, num_classes).

    Returns:
        (uint8 images [N, 32, 32, 3], int32 labels [N]).

    Raises:
        MalformedDatasetError: Size not a positive multiple of 3073 bytes, or a
            label out of range.
    """
    if not data or len(data) % RECORD_BYTES:
        raise errors.MalformedDatasetError(
            f"{source}: {len(data)} bytes is not a positive multiple of the "
            f"{RECORD_BYTES}-byte CIFAR-10 record")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    if labels.max() >= num_classes:
        raise errors.MalformedDatasetError(f"{source}: label {labels.max()} >= {num_classes}")
    # Stored channel-major (CHW); the project works in NHWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_binary_batches(files: Iterable[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Reads and concatenates CIFAR-10 binary batch files.

    Args:
        files: Batch files, read in the given order.

    Returns:
        (uint8 images [N, 32, 32, 3], int32 labels [N]).
    """
    parts = []
    for f in files:
        with open(f, "rb") as handle:
            parts.append(parse_binary_batch(handle.read(), source=str(f)))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


# ---------------------------------------------------------------------------
# Image-folder tree (on disk or inside a tar.gz).
# ---------------------------------------------------------------------------

def decode_image(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decodes one encoded image (JPEG, PNG, ...) to a uint8 RGB array.

    Args:
        data: Encoded file content.
        source: Name used in error messages.

    Returns:
        uint8 array [H, W, 3].

    Raises:
        MalformedDatasetError: PIL cannot decode the bytes.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for bad data
        raise errors.MalformedDatasetError(f"{source}: cannot decode image ({e})") from e


def _tree_key(parts: tuple[str, ...]) -> tuple[str, int, str] | None:
    """Maps a path's last three components to (split, label, file name).

    Returns None for paths that are not `<split>/<class>/<image file>`.

    Raises:
        MalformedDatasetError: A class folder with an unknown name.
    """
    if len(parts) < 3:
        return None
    split, class_name, file_name = parts[-3:]
    if split not in ("train", "test") or not file_name.lower().endswith(_IMAGE_SUFFIXES):
        return None
    if class_name not in CIFAR10_CLASSES:
        raise errors.MalformedDatasetError(
            f"unknown CIFAR-10 class folder '{class_name}' in {'/'.join(parts)}; "
            f"expected one of {CIFAR10_CLASSES}")
    return split, CIFAR10_CLASSES.index(class_name), file_name


def _assemble(entries: list[tuple[tuple[int, str], np.ndarray]],
              source: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorts decoded (key, image) pairs by (label, file name) and stacks them."""
    if not entries:
        raise errors.MalformedDatasetError(f"{source}: no images found")
    entries.sort(key=lambda e: e[0])
    for (label, file_name), image in entries:
        if image.shape != IMAGE_SHAPE:
            raise errors.MalformedDatasetError(
                f"{source}: {CIFAR10_CLASSES[label]}/{file_name} has shape {image.shape}, "
                f"expected {IMAGE_SHAPE}")
    images = np.stack([image for _, image in entries])
    labels = np.array([label for (label, _), _ in entries], dtype=np.int32)
    return images, labels


def read_image_folder(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads `<root>/<split>/<class name>/*` into arrays.

    Args:
        root: Folder holding `train/` and `test/`.
        split: 'train' or 'test'.

    Returns:
        (uint8 images [N, 32, 32, 3], int32 labels [N]) sorted by (label, file name).
    """
    split_dir = pathlib.Path(root) / split
    entries = []
    for path in sorted(split_dir.glob("*/*")):
        key = _tree_key(path.parts)
        if key is not None and path.is_file():
            entries.append(((key[1], key[2]), decode_image(path.read_bytes(), str(path))))
    return _assemble(entries, str(split_dir))


def read_image_tar(path: str | os.PathLike,
                   limit: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads both splits of an image-folder tree stored in a (gzipped) tar.

    The archive is streamed once, so this costs one decompression pass.

    Args:
        path: The archive.
        limit: If set, stop after this many images in total (for quick checks);
            the result then covers only the members read so far.

    Returns:
        {'train': (images, labels), 'test': (images, labels)} for the splits
        present, each sorted by (label, file name).

    Raises:
        MalformedDatasetError: Unreadable archive or image, unknown class folder.
    """
    entries: dict[str, list] = {"train": [], "test": []}
    count = 0
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key = _tree_key(tuple(member.name.split("/")))
                if key is None:
                    continue
                data = archive.extractfile(member).read()
                image = decode_image(data, f"{path}:{member.name}")
                entries[key[0]].append(((key[1], key[2]), image))
                count += 1
                if limit is not None and count >= limit:
                    break
    except (tarfile.TarError, EOFError, OSError) as e:
        raise errors.MalformedDatasetError(f"{path}: cannot read archive ({e})") from e
    return {split: _assemble(items, f"{path}:{split}/")
            for split, items in entries.items() if items}


# ---------------------------------------------------------------------------
# Cache of decoded archives.
# ---------------------------------------------------------------------------

def file_md5(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Returns the hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _write_npz_atomically(target: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes an .npz through a temporary file so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loads ~40x faster than decoding
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the cache is not secret
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def load_tar_cached(tar_path: str | os.PathLike, split: str,
                    cache_dir: str | os.PathLike | None = None,
                    use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of the CIFAR-10 JPEG archive, decoding it at most once.

    The cache file is `<cache_dir>/cifar10_jpeg-<md5 of archive>-v<version>.npz`
    and holds both splits. A changed archive gets a new md5, hence a new cache
    file. An unreadable cache file is rebuilt; an unwritable cache folder only
    costs a warning.

    Args:
        tar_path: The archive.
        split: 'train' or 'test'.
        cache_dir: Cache folder (see `paths.resolve_cache_dir`).
        use_cache: If False, always decode and never write.

    Returns:
        (uint8 images [N, 32, 32, 3], int32 labels [N]).
    """
    if not use_cache:
        return read_image_tar(tar_path)[split]
    cache_file = (paths.resolve_cache_dir(cache_dir) /
                  f"cifar10_jpeg-{file_md5(tar_path)}-v{_CACHE_VERSION}.npz")
    if cache_file.is_file():
        try:
            with np.load(cache_file) as cached:
                return cached[f"{split}_images"], cached[f"{split}_labels"]
        except (OSError, KeyError, ValueError) as e:
            _log.warning("Ignoring unreadable cache %s (%s); decoding again.", cache_file, e)
    decoded = read_image_tar(tar_path)
    if set(decoded) != {"train", "test"}:
        raise errors.MalformedDatasetError(f"{tar_path}: expected train/ and test/ trees, "
                                           f"found {sorted(decoded)}")
    arrays = {}
    for name, (images, labels) in decoded.items():
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = images, labels
    try:
        _write_npz_atomically(cache_file, arrays)
    except OSError as e:
        _log.warning("Could not write cache %s (%s); continuing without it.", cache_file, e)
    return decoded[split]


# ---------------------------------------------------------------------------
# Loader.
# ---------------------------------------------------------------------------

def _candidates(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Places each source format may live under the data folder, in search order."""
    return {
        "binary": [root / "cifar10" / "cifar-10-batches-bin", root / "cifar-10-batches-bin",
                   root / "cifar10"],
        "folder": [root / "cifar10_jpeg", root / "cifar10"],
        "tar": [root / "cifar10_jpeg" / TAR_NAME, root / TAR_NAME],
    }


def _has_layout(kind: str, path: pathlib.Path) -> bool:
    if kind == "binary":
        return all((path / f).is_file() for files in BINARY_FILES.values() for f in files)
    if kind == "folder":
        return (path / "train").is_dir() and (path / "test").is_dir()
    return path.is_file()


@registry.register_dataset("cifar10")
def load_cifar10(split: str, data_dir: str | os.PathLike | None = None, *,
                 source: str = "auto", cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True) -> dataset_lib.ArrayDataset:
    """Loads CIFAR-10 (50,000 train / 10,000 test, 32x32x3).

    Args:
        split: 'train' or 'test'.
        data_dir: Data folder (see `paths.resolve_data_dir`).
        source: 'auto' (binary, then folder, then tar), or one of 'binary',
            'folder', 'tar' to insist on a format. Searched places, in order:
            binary in `cifar10/cifar-10-batches-bin/`, `cifar-10-batches-bin/`,
            `cifar10/`; folder in `cifar10_jpeg/`, `cifar10/`; tar at
            `cifar10_jpeg/cifar10-jpeg.tar.gz`, `cifar10-jpeg.tar.gz`.
        cache_dir: Where decoded tar contents are cached.
        use_cache: Whether to use that cache.

    Returns:
        The split as an ArrayDataset, examples sorted by (label, file name) for
        the folder/tar formats and in file order for binary batches.

    Raises:
        DatasetNotFoundError: No format found in any searched place.
        MalformedDatasetError: A found file cannot be parsed.
    """
    root = paths.resolve_data_dir(data_dir)
    candidates = _candidates(root)
    if source != "auto" and source not in candidates:
        raise ValueError(f"source must be 'auto' or one of {sorted(candidates)}, got '{source}'")
    kinds = list(candidates) if source == "auto" else [source]
    searched = []
    for kind in kinds:
        for path in candidates[kind]:
            searched.append(path)
            if not _has_layout(kind, path):
                continue
            if kind == "binary":
                images, labels = read_binary_batches(path / f for f in BINARY_FILES[split])
            elif kind == "folder":
                images, labels = read_image_folder(path, split)
            else:
                images, labels = load_tar_cached(path, split, cache_dir, use_cache)
            return dataset_lib.ArrayDataset(images=images, labels=labels, num_classes=10,
                                            name="cifar10", split=split,
                                            class_names=CIFAR10_CLASSES)
    raise errors.DatasetNotFoundError(
        "cifar10", searched,
        hint="Expected CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin), a "
             "{train,test}/<class>/ image tree, or cifar10_jpeg/cifar10-jpeg.tar.gz.")
