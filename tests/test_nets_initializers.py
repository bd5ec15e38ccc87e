"""Initializers: SUO orthogonality and scale, Haar distribution (sign fix), Delta structure, He/LeCun."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax.nets import initializers


def _draw(init, shape, seed=0, dtype=jnp.float32):
    return np.asarray(hk.transform(lambda: init(shape, dtype)).apply({}, jax.random.PRNGKey(seed)))


@pytest.mark.parametrize("fan_in,fan_out", [(64, 64), (96, 32), (32, 96)])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_suo_dense_is_scaled_orthogonal(fan_in, fan_out, scale):
    w = _draw(initializers.ScaledUniformOrthogonal(scale), (fan_in, fan_out)).astype(np.float64)
    if fan_in >= fan_out:
        # Contracting (or square): orthonormal columns times scale.
        np.testing.assert_allclose(w.T @ w, scale**2 * np.eye(fan_out), atol=1e-5)
    else:
        # Expanding: orthonormal rows, scaled by sqrt(fan_out / fan_in) so the mean square is preserved.
        np.testing.assert_allclose(w @ w.T, scale**2 * fan_out / fan_in * np.eye(fan_in), atol=1e-5)


def test_suo_preserves_q_of_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 32))
    for fan_out in (32, 128):
        w = _draw(initializers.ScaledUniformOrthogonal(), (32, fan_out), seed=3).astype(np.float64)
        # Expanding and square maps preserve q exactly, example by example.
        np.testing.assert_allclose(np.mean((x @ w) ** 2, 1), np.mean(x**2, 1), rtol=1e-5)
    w = _draw(initializers.ScaledUniformOrthogonal(), (128, 32), seed=4).astype(np.float64)
    x = rng.standard_normal((4096, 128))
    # Contracting maps preserve q in expectation.
    assert np.mean((x @ w) ** 2) == pytest.approx(np.mean(x**2), rel=0.03)


def test_haar_moments_and_sign_fix():
    # For a Haar-distributed orthogonal matrix, E[tr Q] = 0 and E[(tr Q)^2] = 1, and every entry (in
    # particular the diagonal) is symmetric about 0. Plain QR without the sign fix fails this: with
    # Householder QR the first column's leading entry always has the same sign.
    rng = np.random.default_rng(1)
    qs = np.stack([initializers.haar_orthogonal_numpy(rng, 3, 3) for _ in range(4000)])
    traces = np.trace(qs, axis1=1, axis2=2)
    assert abs(traces.mean()) < 0.06
    assert np.mean(traces**2) == pytest.approx(1.0, abs=0.08)
    assert abs(np.mean(qs[:, 0, 0] > 0) - 0.5) < 0.03
    assert np.abs(qs.mean(0)).max() < 0.05

    raw = np.stack([np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(500)])
    assert abs(np.mean(raw[:, 0, 0] > 0) - 0.5) > 0.4  # the bias the sign fix removes


def test_haar_jax_matches_numpy_and_is_deterministic():
    key = jax.random.PRNGKey(7)
    a = np.asarray(initializers.haar_orthogonal(key, 12, 5))
    b = np.asarray(jax.jit(initializers.haar_orthogonal, static_argnums=(1, 2))(key, 12, 5))
    np.testing.assert_array_equal(a, b)
    words = np.asarray(key).ravel()
    ref = initializers.haar_orthogonal_numpy(np.random.default_rng([int(w) for w in words]), 12, 5)
    np.testing.assert_allclose(a, ref, atol=1e-6)
    assert not np.allclose(a, np.asarray(initializers.haar_orthogonal(jax.random.PRNGKey(8), 12, 5)))
    # New-style typed keys work too.
    np.testing.assert_array_equal(a, np.asarray(initializers.haar_orthogonal(jax.random.wrap_key_data(key),
                                                                             12, 5)))


def test_delta_conv_structure():
    w = _draw(initializers.ScaledUniformOrthogonal(), (3, 5, 8, 16)).astype(np.float64)
    centre = w[1, 2]
    mask = np.ones((3, 5), bool)
    mask[1, 2] = False
    assert np.all(w[mask] == 0.0)
    np.testing.assert_allclose(centre @ centre.T, 2.0 * np.eye(8), atol=1e-5)  # 16 / 8 expansion


def test_delta_needs_odd_kernels_and_non_delta_is_orthogonal():
    with pytest.raises(ValueError, match="odd kernel sizes"):
        _draw(initializers.ScaledUniformOrthogonal(), (2, 3, 4, 4))
    with pytest.raises(ValueError, match="rank >= 2"):
        _draw(initializers.ScaledUniformOrthogonal(), (4,))
    w = _draw(initializers.ScaledUniformOrthogonal(delta=False), (2, 2, 8, 16)).astype(np.float64)
    flat = w.reshape(32, 16)
    np.testing.assert_allclose(flat.T @ flat, np.eye(16), atol=1e-5)


@pytest.mark.parametrize("name,variance_times_fan_in", [("he_normal", 2.0), ("lecun_normal", 1.0)])
def test_truncated_normal_fan_in(name, variance_times_fan_in):
    shape = (3, 3, 32, 64)
    fan_in = 3 * 3 * 32
    w = _draw(initializers.get_initializer(name), shape).astype(np.float64)
    assert w.shape == shape
    assert np.var(w) * fan_in == pytest.approx(variance_times_fan_in, rel=0.03)
    assert abs(np.mean(w)) < 0.01 * np.std(w) * 10
    # Truncated at two standard deviations of the underlying normal.
    underlying_std = np.sqrt(variance_times_fan_in / fan_in) / 0.87962566103423978
    assert np.max(np.abs(w)) <= 2.0 * underlying_std + 1e-6


def test_dtypes_and_names():
    w = _draw(initializers.get_initializer("orthogonal"), (8, 8), dtype=jnp.bfloat16)
    assert w.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="valid names: orthogonal, he_normal, lecun_normal"):
        initializers.get_initializer("glorot")
    assert initializers.weight_gain("he_normal") == 2.0
    assert initializers.weight_gain("orthogonal") == 1.0
