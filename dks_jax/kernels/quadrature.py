"""Gaussian expectations by composite Gauss-Legendre quadrature, split at kinks.

Plain Gauss-Hermite rules converge slowly for functions with kinks (ReLU-like activations, ELU's second
derivative): a 120-point rule puts a composed 49-layer Leaky ReLU C(0) at 0.9031 instead of 0.9. We
integrate ``f(z) * N(z; 0, 1)`` instead over ``[-bound, bound]`` cut into equal panels, with one extra cut
at every kink, and a Gauss-Legendre rule on each panel. On a panel without a kink the integrand is
analytic, so the error falls geometrically with the nodes per panel; a piecewise-polynomial integrand
(ReLU family) is integrated to rounding error. The Gaussian mass beyond ``bound = 10`` is below 1e-22.

Everything here is float64 NumPy: the solvers call these rules thousands of times with new kink
positions, which costs microseconds in NumPy and would cost a compilation per shape in JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@dataclasses.dataclass(frozen=True)
class QuadratureRule:
    """Settings of the composite rule.

    Attributes:
      bound: Integrate over ``[-bound, bound]`` (in standard deviations).
      num_panels: Number of equal panels before kinks add cuts.
      nodes_per_panel: Gauss-Legendre nodes on each panel.
    """

    bound: float = 10.0
    num_panels: int = 20
    nodes_per_panel: int = 20


# 1D expectations (solver, Q maps): 20 x 20 nodes give ~1e-15 on the built-in activations.
DEFAULT_RULE = QuadratureRule()
# Inner and outer rules of the 2D C map: coarser per axis, still < 1e-11 on the closed-form tests.
DEFAULT_RULE_2D = QuadratureRule(bound=10.0, num_panels=16, nodes_per_panel=16)


@functools.lru_cache(maxsize=None)
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-1, 1]: Golub-Welsch, then Newton on P_n.

    Written here rather than ``np.polynomial.legendre.leggauss`` only because importing
    ``numpy.polynomial`` costs more than a solve. Agrees with 40-digit values to ~1e-16.
    """
    k = np.arange(1, n)
    jacobi = np.diag(k / np.sqrt(4.0 * k * k - 1.0), 1)
    x = np.linalg.eigvalsh(jacobi + jacobi.T)

    def legendre(x):  # P_n(x) and P_n'(x) by their three-term recurrences (no 1 / (x^2 - 1))
        p0, p1, d0, d1 = np.ones_like(x), x.copy(), np.zeros_like(x), np.ones_like(x)
        for m in range(2, n + 1):
            p0, p1, d0, d1 = (p1, ((2 * m - 1) * x * p1 - (m - 1) * p0) / m,
                              d1, ((2 * m - 1) * (p1 + x * d1) - (m - 1) * d0) / m)
        return p1, d1

    for _ in range(2):
        p, dp = legendre(x)
        x = x - p / dp
    x = 0.5 * (x - x[::-1])  # exactly symmetric
    _, dp = legendre(x)
    w = 2.0 / ((1.0 - x * x) * dp * dp)
    return x, 0.5 * (w + w[::-1])


def _panel_edges(kinks: np.ndarray, rule: QuadratureRule) -> np.ndarray:
    """Panel edges with a cut at every kink; kinks outside the domain collapse onto its ends.

    Args:
      kinks: Array of shape ``(..., k)``.
      rule: The quadrature rule.

    Returns:
      Sorted edges of shape ``(..., num_panels + 1 + k)``.
    """
    base = _base_edges(rule)
    if kinks.shape[-1] == 0:
        return np.broadcast_to(base, kinks.shape[:-1] + base.shape)
    base = np.broadcast_to(base, kinks.shape[:-1] + base.shape)
    # A NaN/inf kink (for example from a zero input scale) must not poison the sort. (np.minimum and
    # np.maximum rather than np.clip, which costs ~10x more on small arrays.)
    safe = np.where(np.isfinite(kinks), kinks, rule.bound)
    safe = np.minimum(np.maximum(safe, -rule.bound), rule.bound)
    return np.sort(np.concatenate([base, safe], axis=-1), axis=-1)


@functools.lru_cache(maxsize=None)
def _base_edges(rule: QuadratureRule) -> np.ndarray:
    edges = np.linspace(-rule.bound, rule.bound, rule.num_panels + 1)
    edges.setflags(write=False)
    return edges


def gaussian_nodes(kinks: np.ndarray | None = None,
                   rule: QuadratureRule = DEFAULT_RULE) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with ``E[f(z)] ~= sum(w * f(z))`` for ``z ~ N(0, 1)``.

    Args:
      kinks: Points (shape ``(..., k)``) where the integrand is not smooth.
      rule: The quadrature rule.

    Returns:
      ``(z, w)``, each of shape ``(..., n)``; the Gaussian density is folded into ``w``.
    """
    kinks = np.zeros((0,)) if kinks is None else np.asarray(kinks, np.float64)
    if kinks.shape == (0,):
        return _plain_nodes(rule)
    edges = _panel_edges(kinks, rule)
    t, wt = _legendre(rule.nodes_per_panel)
    lo, hi = edges[..., :-1, None], edges[..., 1:, None]
    half = 0.5 * (hi - lo)
    z = lo + half * (t + 1.0)
    w = half * wt * np.exp(-0.5 * z * z) * _INV_SQRT_2PI
    flat = z.shape[:-2] + (z.shape[-2] * z.shape[-1],)
    return z.reshape(flat), w.reshape(flat)


@functools.lru_cache(maxsize=None)
def _plain_nodes(rule: QuadratureRule) -> tuple[np.ndarray, np.ndarray]:
    z, w = gaussian_nodes(np.zeros((1,)) + rule.bound, rule)  # a cut at the end changes nothing
    keep = w > 0
    z, w = z[keep], w[keep]
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


def gaussian_expectation(fn: Callable[[np.ndarray], np.ndarray], kinks: np.ndarray | None = None,
                         rule: QuadratureRule = DEFAULT_RULE) -> np.ndarray:
    """``E[fn(z)]`` for ``z ~ N(0, 1)``.

    Args:
      fn: Elementwise function of an array of nodes.
      kinks: Points where ``fn`` is not smooth.
      rule: The quadrature rule.

    Returns:
      A float (or an array over the leading axes of ``kinks``).
    """
    z, w = gaussian_nodes(kinks, rule)
    return np.sum(w * fn(z), axis=-1)


def correlated_expectation(f: Callable[[np.ndarray], np.ndarray],
                           g: Callable[[np.ndarray], np.ndarray], c: float,
                           kinks_f: np.ndarray | None = None, kinks_g: np.ndarray | None = None,
                           rule: QuadratureRule = DEFAULT_RULE_2D) -> float:
    """``E[f(u) g(v)]`` for standard normals ``u, v`` with correlation ``c`` in ``[-1, 1]``.

    Writes ``v = c u + s w`` with ``s = sqrt(1 - c^2)`` and ``w`` independent of ``u``, and integrates
    the inner expectation over ``w`` with a cut where ``v`` crosses a kink of ``g``. At ``|c| = 1`` the
    inner integral degenerates to ``g(c u)``, which the same formula handles through the ``s = 0`` branch.

    Args:
      f: Elementwise function of ``u``.
      g: Elementwise function of ``v``.
      c: Scalar correlation.
      kinks_f: Kinks of ``f`` (in ``u``).
      kinks_g: Kinks of ``g`` (in ``v``).
      rule: The quadrature rule used on both axes.

    Returns:
      A float.
    """
    c = float(c)
    kinks_f = np.zeros((0,)) if kinks_f is None else np.asarray(kinks_f, np.float64).reshape(-1)
    kinks_g = np.zeros((0,)) if kinks_g is None else np.asarray(kinks_g, np.float64).reshape(-1)
    s = math.sqrt(max(1.0 - c * c, 0.0))
    if s < 1e-12:
        # At |c| = 1 the integrand is f(u) g(c u): g's kinks then matter to the outer rule too.
        u, wu = gaussian_nodes(np.concatenate([kinks_f, kinks_g * math.copysign(1.0, c)]), rule)
        return float(np.sum(wu * f(u) * g(c * u)))
    # Outer cuts: f's kinks, and where g's kinks cross the inner Gaussian's centre (u = b / c). For
    # c near +-1 the inner integral is g smoothed over a width s, so it turns sharply there: panels
    # graded geometrically (width s / 2 up to 1) keep Gauss-Legendre accurate around it.
    outer_cuts = [kinks_f]
    if kinks_g.size and s < 0.5:
        grading = s * 2.0 ** np.arange(-1, max(0, math.ceil(math.log2(1.0 / s))) + 1)
        centres = kinks_g / c
        outer_cuts += [centres, (centres[:, None] + grading).ravel(), (centres[:, None] - grading).ravel()]
    u, wu = gaussian_nodes(np.concatenate(outer_cuts), rule)
    # Kinks of g in the inner variable w, one row per outer node u.
    inner_kinks = (kinks_g[None, :] - c * u[:, None]) / s
    w, ww = gaussian_nodes(inner_kinks, rule)
    if w.ndim == 1:
        w, ww = np.broadcast_to(w, (u.size, w.size)), np.broadcast_to(ww, (u.size, ww.size))
    v = c * u[:, None] + s * w
    inner = np.sum(ww * g(v), axis=-1)
    return float(np.sum(wu * f(u) * inner))


# The public ``dks`` package's rule: one Gauss-Legendre rule of 100,000 nodes on [-10, 10], not split
# at kinks. The compatibility API imitates it while searching (see ``transforms/solver.py``).
REFERENCE_ORDER = 100_000
REFERENCE_BOUND = 10.0


@functools.lru_cache(maxsize=2)
def reference_nodes(order: int = REFERENCE_ORDER, bound: float = REFERENCE_BOUND
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (Gaussian density folded in) of an unsplit Gauss-Legendre rule of ``order``.

    Golub-Welsch at this order takes minutes; Tricomi's expansion
    ``x_k = (1 - (n - 1) / (8 n^3)) cos(pi (4k - 1) / (4n + 2))`` is exact to rounding for ``n >= 5000``
    away from the ends (checked against SciPy's ``roots_legendre`` up to n = 20,000: 5e-16), and the
    leading-order weights ``pi / (n + 1/2) sqrt(1 - x^2)`` are within ~1/n^2 relative (1e-10 here: far
    below what steers a root search; the imitated errors come from kinks falling between nodes).
    Nodes whose weight is below 1e-17 of the largest are dropped (|z| > 8.6: a third of the nodes,
    contributing under 1e-16 relative to any polynomially bounded integrand).
    """
    k = np.arange(1, order + 1, dtype=np.float64)
    t = (1.0 - (order - 1) / (8.0 * order**3)) * np.cos(np.pi * (4.0 * k - 1.0) / (4.0 * order + 2.0))
    w = np.pi / (order + 0.5) * np.sqrt(1.0 - t * t)
    z = bound * t[::-1]
    w = bound * w[::-1] * np.exp(-0.5 * z * z) * _INV_SQRT_2PI
    keep = w > 1e-17 * w.max()
    z, w = np.ascontiguousarray(z[keep]), np.ascontiguousarray(w[keep])
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


def _smooth_step(t: np.ndarray) -> np.ndarray:
    """A C-infinity step from 0 (t <= 0) to 1 (t >= 1)."""
    t = np.clip(t, 0.0, 1.0)
    with np.errstate(divide="ignore", over="ignore"):
        a = np.where(t > 0.0, np.exp(-1.0 / np.where(t > 0.0, t, 1.0)), 0.0)
        b = np.where(t < 1.0, np.exp(-1.0 / np.where(t < 1.0, 1.0 - t, 1.0)), 0.0)
    return a / (a + b)


def reference_rule_error_nodes(cuts: np.ndarray, half_width: float = 0.5
                               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Nodes and signed weights whose sum is the reference rule's error on a function with jumps at ``cuts``.

    For ``f`` smooth except at the cuts, ``sum(w * f(z))`` over the returned nodes equals (to ~1e-13)
    ``sum(W_k f(z_k))`` over the 100,000 reference nodes minus the exact ``E[f(z)]``. Why it is local:
    with a smooth bump ``psi`` equal to 1 near each cut and 0 beyond ``half_width``, ``f (1 - psi)`` is
    smooth, so the reference rule integrates it exactly (its transition spans ~800 nodes); the whole
    error is that of ``f psi``, whose reference sum needs the ~3,000 nodes in the windows and whose
    exact integral takes 8 Gauss-Legendre panels split at the cut. Cuts outside the reference's
    domain (or where its weights vanish) contribute nothing.

    Returns:
      ``(z, w)``, or None when two windows overlap (then use ``reference_nodes`` whole).
    """
    ref_z, ref_w = reference_nodes()
    inside = sorted(float(c) for c in np.ravel(cuts)
                    if np.isfinite(c) and ref_z[0] + half_width < c < ref_z[-1] - half_width)
    if any(b - a < 2.0 * half_width for a, b in zip(inside, inside[1:])):
        return None
    t, wt = _legendre(24)
    zs, ws = [], []
    for c in inside:
        lo, hi = np.searchsorted(ref_z, [c - half_width, c + half_width])
        z = ref_z[lo:hi]
        zs.append(z)
        ws.append(ref_w[lo:hi] * _smooth_step(2.0 - 2.0 * np.abs(z - c) / half_width))
        edges = c + half_width * np.linspace(-1.0, 1.0, 9)  # 8 panels, one edge at the cut
        for a, b in zip(edges[:-1], edges[1:]):
            z = a + 0.5 * (b - a) * (t + 1.0)
            zs.append(z)
            ws.append(-0.5 * (b - a) * wt * np.exp(-0.5 * z * z) * _INV_SQRT_2PI
                      * _smooth_step(2.0 - 2.0 * np.abs(z - c) / half_width))
    if not zs:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(zs), np.concatenate(ws)
