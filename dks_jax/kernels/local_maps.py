"""Local Q and C maps of (transformed) activation functions.

A transformed activation is ``phi_hat(x) = gamma * (phi(alpha * x + beta; shape) + delta)`` for a registered
family ``phi``. Its parameters travel as one float vector ``theta = (alpha, beta, delta, gamma, *shape)``
so the maps can be jitted once per family and differentiated with respect to the parameters.

Definitions (inputs of unit q; ``z ~ N(0, 1)``; ``u, v`` standard normals with correlation ``c``):

* ``Q(q) = E[phi(sqrt(q) z)^2]`` and ``Q'(q) = E[phi(sqrt(q) z) phi'(sqrt(q) z) z] / sqrt(q)``;
* ``C^(k)(c) = E[phi^(k)(u) phi^(k)(v)] / Q(1)``; in particular ``C(0) = E[phi]^2 / Q(1)``,
  ``C'(1) = E[phi'^2] / Q(1)`` and ``C''(1) = E[phi''^2] / Q(1)``.

Derivatives of ``phi`` come from forward-mode autodiff. Run these under ``jax.enable_x64(True)``;
the public helpers below do that for you.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dks_jax import activations
from dks_jax.kernels import quadrature

PARAM_NAMES = ("input_scale", "input_shift", "output_shift", "output_scale")


class LocalMoments(NamedTuple):
    """The local map values the solvers use (all at unit input q)."""

    q_value: jax.Array  # Q(1)
    q_slope: jax.Array  # Q'(1)
    c_value_0: jax.Array  # C(0)
    c_slope_0: jax.Array  # C'(0)
    c_slope_1: jax.Array  # C'(1)
    c_curv_1: jax.Array  # C''(1)
    mean: jax.Array  # E[phi(z)]


def make_theta(input_scale: float = 1.0, input_shift: float = 0.0, output_shift: float = 0.0,
               output_scale: float = 1.0, shape: Sequence[float] = ()) -> np.ndarray:
    """Packs transformation parameters into the ``theta`` vector used by this module."""
    return np.array([input_scale, input_shift, output_shift, output_scale, *shape], dtype=np.float64)


def transformed_fn(spec: activations.ActivationSpec, shape_names: tuple[str, ...]
                   ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Returns ``phi_hat(x, theta)`` for the family ``spec``."""

    def phi_hat(x: jax.Array, theta: jax.Array) -> jax.Array:
        shape = {n: theta[4 + i] for i, n in enumerate(shape_names)}
        return theta[3] * (spec.fn(theta[0] * x + theta[1], **shape) + theta[2])

    return phi_hat


def kinks_of(spec: activations.ActivationSpec, theta: jax.Array) -> jax.Array:
    """Where ``phi_hat`` is not smooth, in input coordinates: ``(kink - beta) / alpha``."""
    base = jnp.asarray(spec.kinks, dtype=theta.dtype)
    alpha = theta[0]
    safe_alpha = jnp.where(jnp.abs(alpha) > 1e-300, alpha, 1.0)
    return jnp.where(jnp.abs(alpha) > 1e-300, (base - theta[1]) / safe_alpha, jnp.inf)


def _with_derivatives(phi: Callable[[jax.Array], jax.Array], x: jax.Array, order: int):
    """``(phi, phi', ..., phi^(order))`` at ``x`` by nested forward-mode autodiff (order <= 2)."""
    ones = jnp.ones_like(x)
    if order == 0:
        return (phi(x),)
    first = lambda y: jax.jvp(phi, (y,), (ones,))
    if order == 1:
        return first(x)
    (f, df), (_, d2f) = jax.jvp(first, (x,), (ones,))
    return f, df, d2f


@functools.partial(jax.jit, static_argnames=("spec", "shape_names", "rule"))
def local_moments(spec: activations.ActivationSpec, shape_names: tuple[str, ...], theta: jax.Array,
                  rule: quadrature.QuadratureRule = quadrature.DEFAULT_RULE) -> LocalMoments:
    """Local map values of ``phi_hat`` at unit input q (jittable, differentiable in ``theta``)."""
    phi = functools.partial(transformed_fn(spec, shape_names), theta=theta)
    z, w = quadrature.gaussian_nodes(kinks_of(spec, theta), rule)
    f, df, d2f = _with_derivatives(phi, z, 2)
    mean = jnp.sum(w * f)
    q1 = jnp.sum(w * f * f)
    return LocalMoments(
        q_value=q1,
        q_slope=jnp.sum(w * f * df * z),
        c_value_0=mean * mean / q1,
        c_slope_0=jnp.sum(w * df) ** 2 / q1,
        c_slope_1=jnp.sum(w * df * df) / q1,
        c_curv_1=jnp.sum(w * d2f * d2f) / q1,
        mean=mean,
    )


@functools.partial(jax.jit, static_argnames=("spec", "shape_names", "derivative", "rule"))
def q_map(spec: activations.ActivationSpec, shape_names: tuple[str, ...], theta: jax.Array,
          q: jax.Array, derivative: int = 0,
          rule: quadrature.QuadratureRule = quadrature.DEFAULT_RULE) -> jax.Array:
    """The local Q map (``derivative=0``) or its slope (``derivative=1``) at the points ``q > 0``."""
    phi = functools.partial(transformed_fn(spec, shape_names), theta=theta)
    kinks = kinks_of(spec, theta)

    def one(qi):
        root = jnp.sqrt(qi)
        z, w = quadrature.gaussian_nodes(kinks / root, rule)
        if derivative == 0:
            return jnp.sum(w * phi(root * z) ** 2)
        f, df = _with_derivatives(phi, root * z, 1)
        return jnp.sum(w * f * df * z) / root

    q = jnp.asarray(q, dtype=theta.dtype)
    return jax.vmap(one)(q.reshape(-1)).reshape(q.shape)


@functools.partial(jax.jit, static_argnames=("spec", "shape_names", "derivative", "rule"))
def c_map(spec: activations.ActivationSpec, shape_names: tuple[str, ...], theta: jax.Array,
          c: jax.Array, derivative: int = 0,
          rule: quadrature.QuadratureRule = quadrature.DEFAULT_RULE_2D) -> jax.Array:
    """The local C map or its first/second derivative at the points ``c`` in ``[-1, 1]``.

    Uses ``C^(k)(c) = E[phi^(k)(u) phi^(k)(v)] / Q(1)`` (the derivative identity for Gaussian kernels),
    so the derivatives are integrals too, never finite differences.
    """
    phi = functools.partial(transformed_fn(spec, shape_names), theta=theta)
    kinks = kinks_of(spec, theta)
    fk = lambda x: _with_derivatives(phi, x, derivative)[derivative]
    q1 = quadrature.gaussian_expectation(lambda x: phi(x) ** 2, kinks)
    c = jnp.asarray(c, dtype=theta.dtype)
    one = lambda ci: quadrature.correlated_expectation(fk, fk, ci, kinks, kinks, rule)
    return (jax.vmap(one)(c.reshape(-1)) / q1).reshape(c.shape)


# ----------------------------------------------------------------------------------------------
# Closed forms for the unshifted piecewise-linear family x -> x (x >= 0), a x (x < 0).


def leaky_relu_c_map(c, negative_slope, derivative: int = 0):
    """Closed-form local C map of Leaky ReLU (any output scale, no input/output shift).

    ``C(c) = [(1 - a)^2 (sqrt(1 - c^2) + (pi - arccos c) c) / pi + 2 a c] / (1 + a^2)``; ReLU is
    ``a = 0``. Works on NumPy or JAX arrays (and plain floats).

    Args:
      c: Input correlation(s) in ``[-1, 1]``.
      negative_slope: The slope ``a`` for negative inputs.
      derivative: 0, 1 or 2 (the second derivative is infinite at ``c = 1`` unless ``a = 1``).

    Returns:
      The map (or derivative) at ``c``.
    """
    xp = jnp if isinstance(c, jax.Array) or isinstance(negative_slope, jax.Array) else np
    a = negative_slope
    k = (1.0 - a) ** 2 / np.pi
    if derivative == 0:
        val = k * (xp.sqrt(1.0 - c * c) + (np.pi - xp.arccos(c)) * c) + 2.0 * a * c
    elif derivative == 1:
        val = k * (np.pi - xp.arccos(c)) + 2.0 * a
    elif derivative == 2:
        with np.errstate(divide="ignore"):
            val = k / xp.sqrt(1.0 - c * c)
    else:
        raise ValueError(f"leaky_relu_c_map: 'derivative' must be 0, 1 or 2, got {derivative}.")
    return val / (1.0 + a * a)


def leaky_relu_q_value(negative_slope: float) -> float:
    """``Q(1) = E[LReLU_a(z)^2] = (1 + a^2) / 2`` (and ``Q(q) = q (1 + a^2) / 2``)."""
    return (1.0 + negative_slope**2) / 2.0
