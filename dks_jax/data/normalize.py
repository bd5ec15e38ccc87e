"""Turning uint8 images into float32 network inputs."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

from dks_jax.data import pln

# Per-channel statistics of images scaled to [0, 1], as commonly quoted.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """How uint8 images become network inputs.

    Steps, in order: divide by 255 (to [0, 1]); if `mean`/`std` are set,
    subtract the per-channel mean and divide by the per-channel std; if
    `pln_mode` is set, apply per-location normalization with that homogeneous
    coordinate mode ('const', 'avg_q' or 'none'; see `pln`).

    Attributes:
        mean: Per-channel means (of [0, 1]-scaled pixels) or None.
        std: Per-channel standard deviations or None.
        pln_mode: None to skip PLN, else its homogeneous coordinate mode.
        pln_homog_scale: Scale of PLN's homogeneous coordinate.
    """

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    pln_mode: str | None = None
    pln_homog_scale: float = 1.0

    def output_channels(self, num_channels: int) -> int:
        """Channels of the normalized images given the raw channel count."""
        if self.pln_mode is None:
            return num_channels
        return pln.output_channels(num_channels, self.pln_mode)


def normalize_images(images: np.ndarray,
                     normalization: Normalization = Normalization()) -> np.ndarray:
    """Applies a Normalization to a uint8 batch.

    Args:
        images: uint8 [N, H, W, C].
        normalization: The recipe.

    Returns:
        float32 [N, H, W, C'] (C' = C + 1 when PLN appends a coordinate).
    """
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if normalization.mean is not None:
        x -= np.asarray(normalization.mean, dtype=np.float32)
    if normalization.std is not None:
        x /= np.asarray(normalization.std, dtype=np.float32)
    if normalization.pln_mode is not None:
        x = pln.per_location_normalization(x, normalization.pln_mode,
                                           homog_scale=normalization.pln_homog_scale)
    return x.astype(np.float32, copy=False)
