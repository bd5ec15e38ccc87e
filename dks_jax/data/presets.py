"""Standard augmentation and normalization choices per dataset."""

from __future__ import annotations

from dks_jax.data import augment as augment_lib
from dks_jax.data import normalize as normalize_lib

_STATS = {
    "mnist": (normalize_lib.MNIST_MEAN, normalize_lib.MNIST_STD),
    "fashion_mnist": (normalize_lib.FASHION_MNIST_MEAN, normalize_lib.FASHION_MNIST_STD),
    "cifar10": (normalize_lib.CIFAR10_MEAN, normalize_lib.CIFAR10_STD),
    "cifar100": (normalize_lib.CIFAR100_MEAN, normalize_lib.CIFAR100_STD),
    "imagenet2012": (normalize_lib.IMAGENET_MEAN, normalize_lib.IMAGENET_STD),
    # scikit-learn digits, measured on our train split (pixels scaled to [0, 1]); centring matters for
    # deep kernel-shaped nets, whose output correlations grow with the inputs'.
    "digits": ((0.3054,), (0.3753,)),
}


def _family(name: str) -> str:
    """Maps a registry name to its dataset family ('tfds_cifar10' -> 'cifar10')."""
    return name[len("tfds_"):] if name.startswith("tfds_") else name


def train_augmenter(name: str, image_size: int = 224) -> augment_lib.Augmenter | None:
    """Training augmentation: pad-4 crop + flip for CIFAR, random resized crop +
    flip for ImageNet, 1-pixel shifts for digits, none otherwise (MNIST, synthetic).

    Args:
        name: Registry name.
        image_size: Output size for ImageNet.

    Returns:
        An augmenter, or None.
    """
    family = _family(name)
    if family in ("cifar10", "cifar100"):
        return augment_lib.PadCropFlip(pad=4)
    if family == "imagenet2012":
        return augment_lib.RandomResizedCrop(size=image_size)
    if family == "digits":
        # 1-pixel shifts (no flips: digits are not mirror-symmetric). With 1,438 training images a deep
        # net otherwise memorizes them within a few epochs.
        return augment_lib.PadCropFlip(pad=1, flip=False)
    return None


def eval_transform(name: str, image_size: int = 224) -> augment_lib.Augmenter | None:
    """Evaluation transform: resize + center crop for ImageNet, None otherwise."""
    if _family(name) == "imagenet2012":
        return augment_lib.ResizeCenterCrop(size=image_size)
    return None


def default_normalization(name: str, *, standardize: bool = True,
                          pln_mode: str | None = None) -> normalize_lib.Normalization:
    """The usual normalization for a dataset.

    Args:
        name: Registry name.
        standardize: Subtract/divide the dataset's per-channel mean/std where
            known (digits and synthetic have none and are only scaled to [0, 1]).
        pln_mode: PLN homogeneous-coordinate mode, or None for no PLN.

    Returns:
        A Normalization.
    """
    mean, std = _STATS.get(_family(name), (None, None)) if standardize else (None, None)
    return normalize_lib.Normalization(mean=mean, std=std, pln_mode=pln_mode)
