"""Tests for per-location normalization on numpy and jax arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax import data
from dks_jax.data import pln


def _images(seed=0, shape=(3, 5, 6, 3)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("mode, channels", [("const", 4), ("avg_q", 4), ("none", 3),
                                            ("one", 4), ("off", 3)])
def test_every_location_has_mean_square_one(mode, channels):
    out = data.per_location_normalization(_images(), mode)
    assert out.shape == (3, 5, 6, channels) and out.dtype == np.float32
    np.testing.assert_allclose(np.mean(out ** 2, axis=-1), 1.0, rtol=1e-5)
    assert pln.output_channels(3, mode) == channels


def test_const_mode_keeps_direction_and_records_scale():
    x = _images()
    out = data.per_location_normalization(x, "const", homog_scale=2.0)
    # The appended coordinate is 2 / (norm of [x, 2]) * sqrt(C + 1); the first C channels
    # are x scaled by the same positive factor.
    factor = np.sqrt(4.0 / (np.sum(x ** 2, -1, keepdims=True) + 4.0))
    np.testing.assert_allclose(out[..., :3], x * factor, rtol=1e-5)
    np.testing.assert_allclose(out[..., 3:], 2.0 * factor, rtol=1e-5)


def test_avg_q_coordinate_is_the_examples_rms():
    x = _images()
    out = data.per_location_normalization(x, "avg_q")
    rms = np.sqrt(np.mean(x ** 2, axis=(1, 2, 3)))  # one value per example
    factor = np.sqrt(4.0 / (np.sum(x ** 2, -1) + rms[:, None, None] ** 2))
    np.testing.assert_allclose(out[..., 3], rms[:, None, None] * factor, rtol=1e-5)
    # Without a batch dim the whole array is one example.
    single = data.per_location_normalization(x[0], "avg_q", has_batch_dim=False)
    np.testing.assert_allclose(single, out[0], rtol=1e-5)


def test_zero_pixels_stay_zero_without_nans():
    x = _images()
    x[0, 1, 2] = 0.0
    out = data.per_location_normalization(x, "none")
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, 1, 2], 0.0)
    const = data.per_location_normalization(x, "const")
    np.testing.assert_allclose(const[0, 1, 2], [0, 0, 0, 2.0], rtol=1e-6)  # sqrt(4) at homog
    blank = data.per_location_normalization(np.zeros((1, 2, 2, 3), np.float32), "avg_q")
    np.testing.assert_array_equal(blank, 0.0)


def test_works_on_jax_arrays_and_under_jit():
    x = _images()
    expected = data.per_location_normalization(x, "avg_q")
    jitted = jax.jit(lambda a: data.per_location_normalization(a, "avg_q"))(jnp.asarray(x))
    assert isinstance(jitted, jax.Array)
    np.testing.assert_allclose(np.asarray(jitted), expected, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda a: data.per_location_normalization(a, "none").sum())(
        jnp.zeros((1, 2, 2, 3)))
    assert np.isfinite(np.asarray(grads)).all()


def test_integer_input_and_bad_mode():
    out = data.per_location_normalization(np.ones((1, 2, 2, 1), np.uint8), "const")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0)
    with pytest.raises(ValueError, match="unknown homog_mode"):
        data.per_location_normalization(_images(), "mean")


def test_pipeline_normalization_order():
    images = np.full((2, 2, 2, 3), 255, np.uint8)
    plain = data.normalize_images(images, data.Normalization())
    np.testing.assert_array_equal(plain, 1.0)
    standardized = data.normalize_images(images, data.Normalization(mean=(0.5,) * 3,
                                                                    std=(0.25,) * 3))
    np.testing.assert_allclose(standardized, 2.0)
    with_pln = data.normalize_images(images, data.Normalization(pln_mode="none"))
    np.testing.assert_allclose(with_pln, 1.0)


def test_on_device_normalization_matches_the_host_pipeline():
    dataset = data.get_dataset("synthetic", "train", num_examples=32, image_shape=(6, 5, 3))
    norm = data.default_normalization("cifar10", pln_mode="avg_q")
    host = data.train_batch(dataset, 2, global_batch_size=8, seed=0, augment=data.PadCropFlip(),
                            normalization=norm)
    raw = data.train_batch(dataset, 2, global_batch_size=8, seed=0, augment=data.PadCropFlip(),
                           normalization=None)
    assert raw["image"].dtype == np.uint8 and raw["image"].shape == (8, 6, 5, 3)
    on_device = jax.jit(lambda im: data.normalize_images(im, norm))(jnp.asarray(raw["image"]))
    assert on_device.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(on_device), host["image"], rtol=1e-5, atol=1e-5)
