"""Image augmentations as pure numpy functions of (images, sampled parameters).

Each augmenter splits randomness from computation: `sample(rng, n)` draws the
parameters of `n` examples as arrays with leading axis n, and `apply(images,
params)` is a pure function of its inputs. The pipeline samples parameters for
the whole global batch from a generator seeded by (seed, step) and each host
applies its slice, so augmentation is deterministic in (seed, step) and
independent of how the batch is split across hosts.

All augmenters take and return uint8 images; `apply` accepts either a uint8
NHWC array or a list of HWC arrays (variable sizes, for resizing augmenters)
and returns a uint8 NHWC array.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol, Sequence, Union

import numpy as np

Params = dict[str, np.ndarray]
ImageBatch = Union[np.ndarray, Sequence[np.ndarray]]


class Augmenter(Protocol):
    """What the pipeline needs from an augmentation."""

    def sample(self, rng: np.random.Generator, n: int) -> Params:
        """Draws parameters for n examples (arrays with leading axis n)."""

    def apply(self, images: ImageBatch, params: Params) -> np.ndarray:
        """Augments images with the given parameters; pure."""


def slice_params(params: Params, start: int, stop: int) -> Params:
    """Selects the parameters of examples [start, stop)."""
    return {k: v[start:stop] for k, v in params.items()}


def _as_batch(images: ImageBatch) -> np.ndarray:
    """Stacks a list of equal-shape images; passes arrays through."""
    if isinstance(images, np.ndarray):
        return images
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images have different shapes {sorted(shapes)[:4]}...; use a resizing "
                         "augmenter (RandomResizedCrop / ResizeCenterCrop)")
    return np.stack(images)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def _sample_flips(rng: np.random.Generator, n: int, enabled: bool) -> np.ndarray:
    # Always draw, so enabling/disabling flips leaves the other parameters unchanged.
    flips = rng.random(n) < 0.5
    return flips if enabled else np.zeros(n, dtype=bool)


def resize_box(image: np.ndarray, box: tuple[float, float, float, float],
               size: tuple[int, int]) -> np.ndarray:
    """Crops a (possibly fractional) box from an image and resizes it bilinearly.

    Args:
        image: uint8 [H, W, C] with C in {1, 3}.
        box: (left, upper, right, lower) in pixel coordinates.
        size: Output (height, width).

    Returns:
        uint8 [height, width, C].
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    grey = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if grey else image)
    # PIL's resize with `box` crops and resamples in one step, with antialiasing
    # when shrinking.
    out = np.asarray(pil.resize((size[1], size[0]), resample=Image.BILINEAR, box=box))
    return out[..., None] if grey else out


@dataclasses.dataclass(frozen=True)
class Identity:
    """No augmentation."""

    def sample(self, rng: np.random.Generator, n: int) -> Params:
        del rng, n
        return {}

    def apply(self, images: ImageBatch, params: Params) -> np.ndarray:
        del params
        return _as_batch(images)


@dataclasses.dataclass(frozen=True)
class PadCropFlip:
    """CIFAR-style: zero-pad by `pad` pixels, take a random crop of the original
    size, then flip horizontally with probability 1/2.

    Attributes:
        pad: Padding on each side, in pixels.
        flip: Whether to flip.
    """

    pad: int = 4
    flip: bool = True

    def sample(self, rng: np.random.Generator, n: int) -> Params:
        offsets = rng.integers(0, 2 * self.pad + 1, size=(2, n))
        return {"dy": offsets[0], "dx": offsets[1], "flip": _sample_flips(rng, n, self.flip)}

    def apply(self, images: ImageBatch, params: Params) -> np.ndarray:
        images = _as_batch(images)
        n, height, width, _ = images.shape
        p = self.pad
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        rows = params["dy"][:, None] + np.arange(height)
        columns = np.where(params["flip"][:, None], np.arange(width)[::-1], np.arange(width))
        columns = columns + params["dx"][:, None]
        # One gather does crop and flip for the whole batch.
        return padded[np.arange(n)[:, None, None], rows[:, :, None], columns[:, None, :]]


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
    """ImageNet-style: crop a random box of random area fraction and aspect
    ratio, resize it to `size`, then flip with probability 1/2.

    Boxes follow the usual recipe: up to `attempts` (area, ratio) draws, the
    first that fits the image wins; if none fits, the largest centered box with
    an in-range aspect ratio. All draws are made in `sample`, relative to the
    image size, so `apply` stays pure and works on images of any size.

    Attributes:
        size: Output size, int or (height, width).
        scale: Range of the box's area as a fraction of the image's.
        ratio: Range of the box's aspect ratio (width / height).
        flip: Whether to flip.
        attempts: Number of (area, ratio) draws per example.
    """

    size: int | tuple[int, int] = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    attempts: int = 10

    def sample(self, rng: np.random.Generator, n: int) -> Params:
        area = rng.uniform(self.scale[0], self.scale[1], size=(n, self.attempts))
        log_ratio = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                size=(n, self.attempts))
        position = rng.random((n, 2))
        return {"area": area, "log_ratio": log_ratio, "position": position,
                "flip": _sample_flips(rng, n, self.flip)}

    def crop_box(self, height: int, width: int, area: np.ndarray, log_ratio: np.ndarray,
                 position: np.ndarray) -> tuple[int, int, int, int]:
        """Computes one example's crop box from its parameters.

        Args:
            height: Image height.
            width: Image width.
            area: [attempts] area fractions.
            log_ratio: [attempts] log aspect ratios.
            position: [2] uniforms in [0, 1) placing the box (y, x).

        Returns:
            (top, left, box height, box width) in whole pixels.
        """
        target = area * height * width
        ratio = np.exp(log_ratio)
        box_w = np.round(np.sqrt(target * ratio)).astype(int)
        box_h = np.round(np.sqrt(target / ratio)).astype(int)
        fits = (box_w >= 1) & (box_w <= width) & (box_h >= 1) & (box_h <= height)
        if fits.any():
            first = int(np.argmax(fits))
            h, w = int(box_h[first]), int(box_w[first])
            top = int(position[0] * (height - h + 1))
            left = int(position[1] * (width - w + 1))
            return top, left, h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, max(1, int(round(width / self.ratio[0])))
        elif aspect > self.ratio[1]:
            h, w = height, max(1, int(round(height * self.ratio[1])))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, images: ImageBatch, params: Params) -> np.ndarray:
        size = _pair(self.size)
        out = []
        for i, image in enumerate(images):
            top, left, h, w = self.crop_box(image.shape[0], image.shape[1], params["area"][i],
                                            params["log_ratio"][i], params["position"][i])
            crop = resize_box(image, (left, top, left + w, top + h), size)
            out.append(crop[:, ::-1] if params["flip"][i] else crop)
        return np.stack(out)


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop:
    """ImageNet-style evaluation: take the central square covering
    `crop_fraction` of the shorter side and resize it to `size` (equivalent to
    resizing the shorter side to size / crop_fraction and center-cropping).

    Attributes:
        size: Output size, int or (height, width).
        crop_fraction: Side of the central square relative to the shorter side.
    """

    size: int | tuple[int, int] = 224
    crop_fraction: float = 0.875

    def sample(self, rng: np.random.Generator, n: int) -> Params:
        del rng, n
        return {}

    def apply(self, images: ImageBatch, params: Params) -> np.ndarray:
        del params
        size = _pair(self.size)
        out = []
        for image in images:
            height, width = image.shape[:2]
            side = self.crop_fraction * min(height, width)
            top, left = (height - side) / 2.0, (width - side) / 2.0
            out.append(resize_box(image, (left, top, left + side, top + side), size))
        return np.stack(out)
