"""Tests for the numpy augmentations."""

import numpy as np
import pytest

from dks_jax import data


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(1, 256, (6, 8, 10, 3), dtype=np.uint8)


def test_pad_crop_flip_with_explicit_parameters(images):
    aug = data.PadCropFlip(pad=4)
    n = len(images)
    centered = {"dy": np.full(n, 4), "dx": np.full(n, 4), "flip": np.zeros(n, bool)}
    np.testing.assert_array_equal(aug.apply(images, centered), images)
    flipped = {**centered, "flip": np.ones(n, bool)}
    np.testing.assert_array_equal(aug.apply(images, flipped), images[:, :, ::-1])
    # Offset (0, 0): the original shifted down/right by 4, with zero padding above/left.
    corner = aug.apply(images, {**centered, "dy": np.zeros(n, int), "dx": np.zeros(n, int)})
    np.testing.assert_array_equal(corner[:, 4:, 4:], images[:, :-4, :-4])
    assert not corner[:, :4].any() and not corner[:, :, :4].any()


def test_pad_crop_flip_is_deterministic_and_keeps_shape(images):
    aug = data.PadCropFlip()
    params = aug.sample(np.random.default_rng([1, 2]), len(images))
    again = aug.sample(np.random.default_rng([1, 2]), len(images))
    out = aug.apply(images, params)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, aug.apply(images, again))
    assert params["dy"].min() >= 0 and params["dy"].max() <= 8
    # Per-example: applying to a slice equals slicing the result.
    np.testing.assert_array_equal(
        aug.apply(images[2:4], data.augment.slice_params(params, 2, 4)), out[2:4])


def test_random_resized_crop_on_variable_size_images():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in [(40, 60, 3), (90, 30, 3), (17, 17, 3)]]
    aug = data.RandomResizedCrop(size=(12, 16))
    params = aug.sample(np.random.default_rng(5), 3)
    out = aug.apply(images, params)
    assert out.shape == (3, 12, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, aug.apply(images, aug.sample(np.random.default_rng(5), 3)))
    for image, i in zip(images, range(3)):
        top, left, h, w = aug.crop_box(image.shape[0], image.shape[1], params["area"][i],
                                       params["log_ratio"][i], params["position"][i])
        assert 0 <= top and top + h <= image.shape[0] and 0 <= left and left + w <= image.shape[1]


def test_random_resized_crop_falls_back_to_a_center_crop():
    aug = data.RandomResizedCrop(size=4)
    # No attempt fits (areas > 1), so the box is the whole image when its aspect is in range...
    too_big = dict(area=np.full(10, 5.0), log_ratio=np.zeros(10), position=np.zeros(2))
    assert aug.crop_box(30, 30, **too_big) == (0, 0, 30, 30)
    # ...and the largest centered box with aspect 4/3 for a very wide image.
    assert aug.crop_box(30, 300, **too_big) == (0, 130, 30, 40)


def test_resize_center_crop_and_grey_images():
    grey = np.tile(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), (1, 1, 1))
    out = data.ResizeCenterCrop(size=4, crop_fraction=1.0).apply([grey], {})
    assert out.shape == (1, 4, 4, 1)
    # A constant image stays constant under crop + bilinear resize.
    flat = np.full((10, 14, 3), 77, np.uint8)
    np.testing.assert_array_equal(data.ResizeCenterCrop(size=5).apply([flat], {}), 77)


def test_identity_stacks_equal_shapes(images):
    np.testing.assert_array_equal(data.Identity().apply(list(images), {}), images)
