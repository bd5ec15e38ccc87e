"""Turning uint8 images into float32 network inputs."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

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


def normalize_images(images: Any,
                     normalization: Normalization = Normalization()) -> Any:
    """Applies a Normalization to a uint8 batch, on the host or on device.

    Works on numpy arrays and on jax arrays (also inside `jit`), so a training
    step can take uint8 batches (pipeline `normalization=None`) and normalize
    them on the accelerator.

    Args:
        images: uint8 [N, H, W, C] (numpy or jax).
        normalization: The recipe.

    Returns:
        float32 [N, H, W, C'] (C' = C + 1 when PLN appends a coordinate), of the
        same array type as `images`.
    """
    xp = pln.array_module(images)
    channels = images.shape[-1]
    mean = np.zeros(channels) if normalization.mean is None else np.asarray(normalization.mean)
    std = np.ones(channels) if normalization.std is None else np.asarray(normalization.std)
    # One multiply-add per pixel: (x / 255 - mean) / std == x * scale + offset.
    scale = np.broadcast_to(1.0 / (255.0 * std), (channels,)).astype(np.float32)
    offset = np.broadcast_to(-mean / std, (channels,)).astype(np.float32)
    # Flattening (W, C) into one axis gives numpy long inner loops (~10x faster than
    # broadcasting over a trailing axis of 3); it is free for jax.
    row = images.shape[-2] * channels
    flat = images.reshape(-1, row).astype(xp.float32)
    x = (flat * xp.asarray(np.tile(scale, row // channels)) +
         xp.asarray(np.tile(offset, row // channels))).reshape(images.shape)
    if normalization.pln_mode is not None:
        x = pln.per_location_normalization(x, normalization.pln_mode,
                                           homog_scale=normalization.pln_homog_scale)
    return x if x.dtype == np.float32 else x.astype(xp.float32)
