"""Local Q and C maps of (transformed) activation functions, in float64 NumPy.

A transformed activation is ``phi_hat(x) = gamma * (phi(alpha * x + beta; shape) + delta)`` for a registered
family ``phi``. Its parameters travel as one float vector ``theta = (alpha, beta, delta, gamma, *shape)``.

Definitions (inputs of unit q; ``z ~ N(0, 1)``; ``u, v`` standard normals with correlation ``c``):

* ``Q(q) = E[phi(sqrt(q) z)^2]`` and ``Q'(q) = E[phi(sqrt(q) z) phi'(sqrt(q) z) z] / sqrt(q)``;
* ``C^(k)(c) = E[phi^(k)(u) phi^(k)(v)] / Q(1)``; in particular ``C(0) = E[phi]^2 / Q(1)``,
  ``C'(1) = E[phi'^2] / Q(1)`` and ``C''(1) = E[phi''^2] / Q(1)``.

Derivatives of ``phi`` come from forward-mode autodiff, evaluated with NumPy (``evaluate``). Where
``phi^(k-1)`` jumps by ``J`` at a kink ``t`` (``kinks``), ``phi^(k)`` holds a Dirac delta ``J delta(x - t)``
besides its regular part; the maps include it exactly: ``E[phi^(k)] `` gains ``J pdf(t)``,
``E[phi^(k)(u) phi^(k)(v)]`` gains ``2 J pdf(t) E[R(c t + sqrt(1 - c^2) w)]`` (``R`` the regular part) and
``J J' p_c(t, t')``, the bivariate density. So ``C''(1)`` is infinite when ``phi'`` jumps (ReLU, SELU),
while ``C''(c)`` for ``|c| < 1`` is finite, e.g. for a shifted Leaky ReLU.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

from dks_jax import activations
from dks_jax.kernels import evaluate, kinks, quadrature

PARAM_NAMES = ("input_scale", "input_shift", "output_shift", "output_scale")
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Up to this |c| the bivariate density's ridge is resolved by the 1D rule's tensor grid (~1e-15 against
# the closed forms and the 2D rule up to |c| = 0.99); beyond it the 2D rule with graded panels is used.
TENSOR_MAX_C = 0.98


class LocalMoments(NamedTuple):
    """The local map values the solvers use (all at unit input q)."""

    q_value: float  # Q(1)
    q_slope: float  # Q'(1)
    c_value_0: float  # C(0)
    c_slope_0: float  # C'(0)
    c_slope_1: float  # C'(1)
    c_curv_1: float  # C''(1)
    mean: float  # E[phi(z)]


def make_theta(input_scale: float = 1.0, input_shift: float = 0.0, output_shift: float = 0.0,
               output_scale: float = 1.0, shape: Sequence[float] = ()) -> np.ndarray:
    """Packs transformation parameters into the ``theta`` vector used by this module."""
    return np.array([input_scale, input_shift, output_shift, output_scale, *shape], dtype=np.float64)


def kinks_of(spec: activations.ActivationSpec, theta: np.ndarray) -> np.ndarray:
    """Where ``phi_hat`` is not smooth, in its input coordinate: ``(kink - beta) / alpha``."""
    base = np.asarray(kinks.kink_profile(spec).kinks, np.float64)
    alpha = float(theta[0])
    if base.size == 0 or abs(alpha) < 1e-300:
        return np.zeros((0,))
    return (base - theta[1]) / alpha


def hat_derivatives(spec: activations.ActivationSpec, theta: np.ndarray, z: np.ndarray,
                    order: int) -> tuple[np.ndarray, ...]:
    """``phi_hat, phi_hat', ..., phi_hat^(order)`` at ``z`` (regular parts at kinks)."""
    alpha, beta, delta, gamma = (float(v) for v in theta[:4])
    d = evaluate.derivatives(spec, alpha * np.asarray(z, np.float64) + beta, order, theta[4:])
    return tuple(gamma * (d[k] + delta if k == 0 else alpha**k * d[k]) for k in range(order + 1))


def _deltas(spec: activations.ActivationSpec, theta: np.ndarray, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in z) and weights of the Dirac deltas in ``phi_hat^(k)`` (where ``phi_hat^(k-1)`` jumps)."""
    profile = kinks.kink_profile(spec)
    if k == 0 or not profile.kinks:
        return np.zeros((0,)), np.zeros((0,))
    lower = [t for t, o in zip(profile.kinks, profile.orders) if o <= k - 1]
    if not lower:
        return np.zeros((0,)), np.zeros((0,))
    if k >= 2:
        steps = [t for t, o in zip(profile.kinks, profile.orders) if o == 0]
        if steps and np.any(np.abs(kinks.one_sided_jumps(spec, steps, 0, theta[4:])[0]) > 1e-12):
            raise activations.ActivationError(
                f"{profile.describe(spec.name)}: derivatives of order {k} of its kernel maps hold "
                "derivatives of Dirac deltas, which dks_jax does not integrate.")
    alpha, gamma = float(theta[0]), float(theta[3])
    jumps = kinks.one_sided_jumps(spec, lower, k - 1, theta[4:])[k - 1]
    # phi_hat^(k-1)(z) = gamma alpha^(k-1) phi^(k-1)(alpha z + beta): as z increases through the kink
    # the jump is seen with the sign of alpha; delta(alpha z + beta - t) = delta(z - t_z) / |alpha|.
    weights = gamma * alpha ** (k - 1) * jumps * math.copysign(1.0, alpha)
    positions = (np.asarray(lower) - float(theta[1])) / alpha
    keep = np.abs(weights) > 1e-13 * max(1.0, abs(gamma * alpha ** (k - 1)))
    return positions[keep], weights[keep]


def _pdf(x):
    return np.exp(-0.5 * np.square(x)) * _INV_SQRT_2PI


def local_moments(spec: activations.ActivationSpec, shape_names: tuple[str, ...], theta: np.ndarray,
                  rule: quadrature.QuadratureRule = quadrature.DEFAULT_RULE) -> LocalMoments:
    """Local map values of ``phi_hat`` at unit input q (floats; ``inf`` where a map is infinite)."""
    del shape_names  # the shape values are theta[4:], in the family's declared order
    theta = np.asarray(theta, np.float64)
    z, w = quadrature.gaussian_nodes(kinks_of(spec, theta), rule)
    f, df, d2f = hat_derivatives(spec, theta, z, 2)
    mean = float(np.sum(w * f))
    q1 = float(np.sum(w * f * f))
    pos1, wt1 = _deltas(spec, theta, 1)
    slope_mean = float(np.sum(w * df) + np.sum(wt1 * _pdf(pos1)))
    c_slope_1 = math.inf if wt1.size else float(np.sum(w * df * df)) / q1
    # A jump of phi makes phi'' hold a delta' too: C''(1) is infinite as soon as C'(1) is.
    c_curv_1 = math.inf if wt1.size or _deltas(spec, theta, 2)[0].size else \
        float(np.sum(w * d2f * d2f)) / q1
    return LocalMoments(q_value=q1, q_slope=float(np.sum(w * f * df * z)), c_value_0=mean * mean / q1,
                        c_slope_0=slope_mean**2 / q1, c_slope_1=c_slope_1, c_curv_1=c_curv_1,
                        mean=mean)


def q_map(spec: activations.ActivationSpec, shape_names: tuple[str, ...], theta: np.ndarray,
          q, derivative: int = 0,
          rule: quadrature.QuadratureRule = quadrature.DEFAULT_RULE) -> np.ndarray:
    """The local Q map (``derivative=0``) or its slope (``derivative=1``) at the points ``q > 0``."""
    del shape_names
    if derivative not in (0, 1):
        raise ValueError(f"q_map: 'derivative' must be 0 or 1, got {derivative}.")
    theta = np.asarray(theta, np.float64)
    q = np.asarray(q, np.float64)
    base = kinks_of(spec, theta)
    out = np.empty(q.size)
    for i, qi in enumerate(q.reshape(-1)):
        root = math.sqrt(qi)
        z, w = quadrature.gaussian_nodes(base / root, rule)
        vals = hat_derivatives(spec, theta, root * z, derivative)
        out[i] = (np.sum(w * vals[0] ** 2) if derivative == 0
                  else np.sum(w * vals[0] * vals[1] * z) / root)
    return out.reshape(q.shape)


def _bivariate_pdf(a: np.ndarray, b: np.ndarray, c: float) -> np.ndarray:
    s2 = 1.0 - c * c
    return np.exp(-(a * a - 2.0 * c * a * b + b * b) / (2.0 * s2)) / (2.0 * math.pi * math.sqrt(s2))


def c_map(spec: activations.ActivationSpec, shape_names: tuple[str, ...], theta: np.ndarray,
          c, derivative: int = 0,
          rule: quadrature.QuadratureRule = quadrature.DEFAULT_RULE_2D) -> np.ndarray:
    """The local C map or its first/second derivative at the points ``c`` in ``[-1, 1]``.

    Uses ``C^(k)(c) = E[phi^(k)(u) phi^(k)(v)] / Q(1)`` (the derivative identity for Gaussian kernels),
    so the derivatives are integrals too, never finite differences; Dirac deltas of ``phi^(k)`` at
    kinks of ``phi^(k-1)`` are included in closed form (see the module docstring). ``c = 0`` and
    ``|c| = 1`` reduce to 1D integrals; for ``|c| <= TENSOR_MAX_C`` the 2D integral is the 1D rule's
    tensor product with the bivariate density (``phi`` evaluated once), beyond it ``rule``'s 2D
    quadrature (``quadrature.correlated_expectation``).
    """
    del shape_names
    if derivative not in (0, 1, 2):
        raise ValueError(f"c_map: 'derivative' must be 0, 1 or 2, got {derivative}.")
    theta = np.asarray(theta, np.float64)
    c = np.asarray(c, np.float64)
    if np.any(np.abs(c) > 1.0):
        raise ValueError("c_map: correlations must lie in [-1, 1].")
    kz = kinks_of(spec, theta)
    z, w = quadrature.gaussian_nodes(kz, quadrature.DEFAULT_RULE)
    at_nodes = hat_derivatives(spec, theta, z, derivative)
    q1 = float(np.sum(w * at_nodes[0] ** 2))
    pos, wts = _deltas(spec, theta, derivative)
    fk = lambda x: hat_derivatives(spec, theta, x, derivative)[derivative]
    # For |c| <= TENSOR_MAX_C, E[f(u) f(v)] = sum_ij a_i f(z_i) p_c(z_i, z_j) a_j f(z_j) on the 1D nodes
    # (cut at the kinks, which are lines u = t and v = t): f is evaluated once for every such c.
    weighted = (w / _pdf(z)) * at_nodes[derivative]
    out = np.empty(c.size)
    for i, ci in enumerate(c.reshape(-1)):
        ci = float(ci)
        if ci == 1.0 and derivative == 0:
            out[i] = q1  # C(1) = 1 by definition (divided by q1 below)
            continue
        if ci == 0.0:
            m = float(np.sum(w * at_nodes[derivative])) + float(np.sum(wts * _pdf(pos)))
            out[i] = m * m
            continue
        if abs(ci) <= TENSOR_MAX_C:
            value = float(weighted @ _bivariate_pdf(z[:, None], z[None, :], ci) @ weighted)
        else:
            value = quadrature.correlated_expectation(fk, fk, ci, kz, kz, rule)
        if wts.size:
            s = math.sqrt(max(1.0 - ci * ci, 0.0))
            if s < 1e-12:
                # u = c v: the cross terms are pdf(t) R(c t); the delta-delta term is infinite when
                # two kinks meet (t' = c t) and zero otherwise.
                value += 2.0 * float(np.sum(wts * _pdf(pos) * fk(ci * pos)))
                meet = np.abs(pos[:, None] - ci * pos[None, :]) < 1e-12
                value = math.inf if np.any(meet & (wts[:, None] * wts[None, :] != 0)) else value
            else:
                for t, j in zip(pos, wts):
                    inner = quadrature.gaussian_expectation(
                        lambda x, t=t: fk(ci * t + s * x), (kz - ci * t) / s, quadrature.DEFAULT_RULE)
                    value += 2.0 * j * float(_pdf(t)) * float(inner)
                value += float(np.sum(wts[:, None] * wts[None, :]
                                      * _bivariate_pdf(pos[:, None], pos[None, :], ci)))
        out[i] = value
    return (out / q1).reshape(c.shape)


class CMapInterpolant:
    """A local C map on [-1, 1], interpolated in the angle so that kinked activations converge fast.

    ``C(cos(theta))`` is an analytic function of the angle ``theta`` on ``[0, pi]`` even when ``phi`` has
    kinks (the ``sqrt(1 - c^2)`` and ``arccos(c)`` of the ReLU closed form are ``sin(theta)`` and
    ``theta``), so a Chebyshev interpolant in ``x = 2 arcsin(c) / pi`` converges geometrically: 33 to 65
    nodes give ~1e-14. The node count doubles (reusing the previous nodes) until the interpolant's
    Chebyshev coefficients have decayed below ``tol``.
    """

    def __init__(self, x_nodes: np.ndarray, values: np.ndarray):
        self.x_nodes = np.asarray(x_nodes, np.float64)
        self.values = np.asarray(values, np.float64)
        n = self.x_nodes.size
        self._weights = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        self._weights[[0, -1]] *= 0.5

    @staticmethod
    def nodes(n: int) -> np.ndarray:
        """Chebyshev-Lobatto nodes in x (descending from 1 to -1), n - 1 a power of two."""
        return np.cos(np.pi * np.arange(n) / (n - 1))

    @classmethod
    def build(cls, spec: activations.ActivationSpec, theta: np.ndarray, tol: float = 1e-13,
              max_nodes: int = 257) -> "CMapInterpolant":
        """Samples ``c_map`` at 17, 33, 65, ... nodes until the coefficients' tail is below ``tol``."""
        n = 17
        values = c_map(spec, (), theta, np.sin(0.5 * np.pi * cls.nodes(n)))
        while n < max_nodes:
            coeffs = cls.coefficients(values)
            if np.max(np.abs(coeffs[(3 * n) // 4:])) <= tol * max(1.0, np.max(np.abs(coeffs))):
                break
            n = 2 * n - 1
            fresh = c_map(spec, (), theta, np.sin(0.5 * np.pi * cls.nodes(n)[1::2]))
            merged = np.empty(n)
            merged[0::2], merged[1::2] = values, fresh
            values = merged
        return cls(cls.nodes(n), values)

    @staticmethod
    def coefficients(values: np.ndarray) -> np.ndarray:
        """Chebyshev coefficients of the interpolant through values at ``nodes(len(values))``."""
        n = values.size - 1
        # DCT-I through the FFT of the even extension: sum'' f_j cos(pi j k / n), doubled.
        coeffs = np.fft.rfft(np.concatenate([values, values[-2:0:-1]])).real / n
        coeffs[[0, -1]] *= 0.5
        return coeffs

    def __call__(self, c) -> np.ndarray:
        c = np.clip(np.asarray(c, np.float64), -1.0, 1.0)
        x = (2.0 / np.pi) * np.arcsin(c.reshape(-1))
        diff = x[:, None] - self.x_nodes[None, :]
        exact = diff == 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = self._weights / diff
            out = (terms @ self.values) / terms.sum(axis=1)
        rows, cols = np.nonzero(exact)
        out[rows] = self.values[cols]
        return out.reshape(c.shape)


# ----------------------------------------------------------------------------------------------
# Closed forms for the unshifted piecewise-linear family x -> x (x >= 0), a x (x < 0).


def leaky_relu_c_map(c, negative_slope, derivative: int = 0):
    """Closed-form local C map of Leaky ReLU (any output scale, no input/output shift).

    ``C(c) = [(1 - a)^2 (sqrt(1 - c^2) + (pi - arccos c) c) / pi + 2 a c] / (1 + a^2)``; ReLU is
    ``a = 0``. Works on NumPy arrays and plain floats.

    Args:
      c: Input correlation(s) in ``[-1, 1]``.
      negative_slope: The slope ``a`` for negative inputs.
      derivative: 0, 1 or 2 (the second derivative is infinite at ``c = +-1`` unless ``a = 1``).

    Returns:
      The map (or derivative) at ``c``.
    """
    a = negative_slope
    # Plain floats go through `math`: the network-level searches call this ~100 times per evaluation,
    # where NumPy's per-call overhead costs 5x the arithmetic. (NumPy keeps c = +-1 of the 2nd derivative.)
    xp = math if isinstance(c, float) and -1.0 <= c <= 1.0 and derivative < 2 else np
    if xp is np:
        c = np.asarray(c, np.float64) if not isinstance(c, float) else c
    k = (1.0 - a) ** 2 / math.pi
    if derivative == 0:
        val = k * (xp.sqrt(1.0 - c * c) + (math.pi - xp.acos(c)) * c) + 2.0 * a * c
    elif derivative == 1:
        val = k * (math.pi - xp.acos(c)) + 2.0 * a
    elif derivative == 2:
        with np.errstate(divide="ignore"):
            val = k / np.sqrt(1.0 - c * c) if k else 0.0 * c
    else:
        raise ValueError(f"leaky_relu_c_map: 'derivative' must be 0, 1 or 2, got {derivative}.")
    return val / (1.0 + a * a)


def leaky_relu_c_map_fn(negative_slope: float) -> Callable[[float], float]:
    """``c -> leaky_relu_c_map(c, negative_slope)`` for plain floats, as one closure.

    The TAT network-level search runs it through every layer of the network ~27 times per solve; with the
    constants hoisted and no dispatch it costs a third of the general function, with the same arithmetic
    (bit-identical values). Inputs are clamped to ``[-1, 1]`` (rounding can push a deep composition a
    few ulps past 1).
    """
    a = float(negative_slope)
    k, two_a, norm = (1.0 - a) ** 2 / math.pi, 2.0 * a, 1.0 + a * a
    sqrt, acos, pi = math.sqrt, math.acos, math.pi

    def c_map(c: float) -> float:
        c = -1.0 if c < -1.0 else (1.0 if c > 1.0 else c)
        return (k * (sqrt(1.0 - c * c) + (pi - acos(c)) * c) + two_a * c) / norm

    return c_map


def leaky_relu_q_value(negative_slope: float) -> float:
    """``Q(1) = E[LReLU_a(z)^2] = (1 + a^2) / 2`` (and ``Q(q) = q (1 + a^2) / 2``)."""
    return (1.0 + negative_slope**2) / 2.0
