"""The DKS and TAT solvers: from a network's subnetwork-maximizing function to activation parameters.

Two stages, as in the papers:

1. *Network to local target.* A scalar search on the network's ``M`` turns the network-level target
   into a per-layer one: DKS finds the local C'(1) slope ``s`` with ``M(1, y -> s y) = zeta``; TAT for smooth
   activations the local C''(1) ``k`` with ``M(0, y -> k + y) = tau``; TAT for Leaky ReLU the negative
   slope ``a`` with ``M(0, C_a) = eta``. The search is the same bisection as the public ``dks`` package
   (same starting point, same tolerance 1e-8 on the network-level value), so published parameters are
   reproduced to all the digits they were printed with; pass ``search_tol`` for a tighter solution.
2. *Local target to parameters.* A root of the local conditions in the free parameters, found like the
   public package finds it: MINPACK's hybrid method (``scipy.optimize.root``, finite-difference
   Jacobian) from the same fixed list of starting points, then the same seeded random ones, taking the
   first root that is not rejected. Each root is then polished by a few Newton steps to rounding error.
   Output shift and scale are solved in closed form (C(0) = 0, Q(1) = 1). The residuals are Gaussian
   expectations by kink-split quadrature, with the activation and its derivatives evaluated by NumPy
   (``kernels.evaluate``): nothing is compiled, so the first solve in a process is as fast as the next.

Conventions:

* DKS: Q(1) = 1, Q'(1) = ``local_q_slope_target``, C(0) = 0, C'(1) = ``s``. ReLU has one degree of
  freedom less: its input shift is fixed to +1 (or -1 when ``s`` >= 1.46694...) and the Q-slope condition
  is dropped. Leaky ReLU (and other families with a shape parameter) solve for the shape parameter and
  the input shift, with the input scale fixed to 1. Activations that jump (``phi`` discontinuous) have an
  infinite C'(1) and are refused.
* TAT (smooth): Q(1) = 1, Q'(1) = 1, C'(1) = 1, C''(1) = ``k`` in the input scale, input shift and output
  shift. Roots with ``input_scale * output_scale >= 2`` are rejected (they have unstable Q maps).
  C(0) is left free, as in the public implementation whose published regression values we match.
  Activations whose slope jumps (ReLU family, SELU, any ``jnp.where`` kink) have an infinite C''(1)
  and are refused (TAT uses C(0) for the Leaky ReLU family instead).
* Roots. ``(alpha, beta) -> (-alpha, beta)`` maps ``phi(alpha x + beta)`` to its mirror image
  ``x -> phi(-alpha x + beta)``, whose Q and C maps are identical; for odd families (tanh, erf, sin, ...)
  ``(beta, delta) -> (-beta, -delta)`` is another such symmetry, for even ones (cos) ``beta -> -beta``,
  and a periodic family's input shift is only defined modulo its period. So a root comes in several
  equivalent copies. ``transform`` returns the *canonical* copy: positive input scale, input shift in
  ``[0, period / 2]`` for periodic families, non-negative for odd/even ones. With
  ``reference_root=True`` (what ``get_activation_params`` uses) it returns the copy the public
  package returns instead (negative input scales included; for sin and cos the shift modulo 2 pi).
  Where every root reached from the fixed starting points is rejected (sigmoid under TAT), the
  canonical solution is the first of them (its mirror image would pass the signed test); the
  reference-compatible one continues through the random starting points as the public package does.
* EOC (a baseline): the untransformed activation at the edge of chaos of a network with zero biases:
  the weight variance ``sigma_w^2`` with ``chi = sigma_w^2 E[phi'(sqrt(q*) z)^2] = 1`` at the fixed point
  ``q*`` of ``q -> sigma_w^2 E[phi(sqrt(q) z)^2]`` (Poole et al. 2016; Schoenholz et al. 2017). Written for
  unit-q inputs, ``phi_hat(x) = (sigma_w / sqrt(q*)) phi(sqrt(q*) x)``: input scale ``sqrt(q*)``, output
  scale ``sigma_w / sqrt(q*)``; then Q(1) = 1 and C'(1) = chi = 1. Positively homogeneous
  activations have every q as a fixed point: He scaling, ``sigma_w^2 = 2 / (1 + a^2)``, q* = 1. Where
  the only such point is q* -> 0 (tanh, erf, sin: the network is then linear) or there is none, EOC is
  refused with the reason.

Results are cached per (family, method, local targets), and are bit-identical across processes.
This module imports neither Haiku nor TFDS nor kfac-jax.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
from typing import Callable, Sequence

import numpy as np

from dks_jax import activations
from dks_jax.kernels import evaluate, kinks
from dks_jax.kernels import graph as graph_lib
from dks_jax.kernels import local_maps, quadrature
from dks_jax.transforms import disk_cache
from dks_jax.transforms.activation import TransformedActivation

log = logging.getLogger(__name__)

METHODS = ("DKS", "TAT", "untransformed", "EOC")
# Largest local C'(1) a ReLU reaches with a positive input shift (the public implementation's constant).
RELU_MAX_SLOPE_POSITIVE_SHIFT = 1.466942206924260361
SEARCH_TOL = 1e-8
_RANDOM_SEED = 123
_NUM_TRIES = 50
_ROOT_TOL = 1e-9  # max |residual| after polishing for a root to count
_FD_STEP = math.sqrt(np.finfo(np.float64).eps)  # MINPACK's forward-difference step (epsfcn = 0)
# Starting values tried first, in this order, then random ones from the ranges below (the public
# package's values, drawn with NumPy's legacy seeded generator in the same order, so the same points).
_START_VALUES = {"input_scale": (1.0, 0.1), "input_shift": (0.0, 1.0, -1.0),
                 "output_shift": (0.0, 1.0, -1.0), "shape": (0.0, 0.5)}
_RANDOM_RANGES = {"input_scale": (0.0, 2.0), "input_shift": (-3.0, 3.0),
                  "output_shift": (-3.0, 3.0), "shape": (0.0, 1.0)}

ScalarMap = Callable[[float], float]
SubnetMaxFunc = Callable[[float, ScalarMap], float]


class SolverError(ValueError):
    """A transformation could not be found (unreachable target or no convergence)."""


@dataclasses.dataclass(frozen=True)
class DKSTargets:
    """DKS targets.

    Attributes:
      c_slope_1_target: ``zeta``, the maximal C'(1) over the network and its subnetworks (> 1).
      local_q_slope_target: Q'(1) of every nonlinear layer (1 in the paper).
    """

    c_slope_1_target: float = 1.5
    local_q_slope_target: float = 1.0

    def __post_init__(self):
        if not self.c_slope_1_target > 1.0:
            raise ValueError(f"DKS 'c_slope_1_target' (zeta) must be a float greater than 1.0, got "
                             f"{self.c_slope_1_target}.")
        if not self.local_q_slope_target > 0.0:
            raise ValueError(f"DKS 'local_q_slope_target' must be positive, got "
                             f"{self.local_q_slope_target}.")


@dataclasses.dataclass(frozen=True)
class TATTargets:
    """TAT targets.

    Attributes:
      c_val_0_target: ``eta``, the maximal C(0) over subnetworks, used for Leaky ReLU (in (0, 1)).
      c_curve_target: ``tau``, the maximal C''(1) over subnetworks, used for smooth activations (> 0).
    """

    c_val_0_target: float = 0.9
    c_curve_target: float = 0.3

    def __post_init__(self):
        if not 0.0 < self.c_val_0_target < 1.0:
            raise ValueError(f"TAT 'c_val_0_target' (eta) must lie strictly between 0 and 1, got "
                             f"{self.c_val_0_target}.")
        if not self.c_curve_target > 0.0:
            raise ValueError(f"TAT 'c_curve_target' (tau) must be a float greater than 0.0, got "
                             f"{self.c_curve_target}.")


# ----------------------------------------------------------------------------------------------
# Stage 1: network-level target -> local target.


def solve_increasing(fn: Callable[[float], float], target: float, start: float, low: float,
                     high: float, tol: float = SEARCH_TOL, max_evals: int = 100) -> float:
    """Bisection for ``fn(x) = target`` with ``fn`` increasing on ``[low, high]`` (``high`` may be inf).

    While ``high`` is infinite the guess doubles; afterwards it moves to the midpoint of the bracket.
    Stops at the first guess with ``|fn(x) - target| < tol``.

    Raises:
      SolverError: After ``max_evals`` evaluations without reaching the tolerance.
    """
    x = start
    for _ in range(max_evals):
        value = fn(x)
        if abs(value - target) < tol:
            return x
        if value > target:
            high, x = x, 0.5 * (x + low)
        else:
            low = x
            x = 2.0 * x if math.isinf(high) else 0.5 * (x + high)
    raise SolverError(f"No solution of the network-level condition after {max_evals} evaluations "
                      f"(target {target}); the target is probably unreachable for this architecture.")


def local_c_slope_target(subnet_max: SubnetMaxFunc | None, zeta: float,
                         max_slope_func: Callable[[float], float] | None = None,
                         tol: float = SEARCH_TOL) -> float:
    """DKS: the local C'(1) ``s`` with ``max_f C_f'(1) = M(1, y -> s y) = zeta``."""
    memo = ("slope", zeta, tol)
    if max_slope_func is None and isinstance(subnet_max, _NetworkSearches) and memo in subnet_max.found:
        return subnet_max.found[memo]
    fn = max_slope_func or _linear_search(subnet_max, 1.0, "scale") or (
        lambda s: subnet_max(1.0, lambda y: s * y))
    if fn(4.0) <= fn(1.0) + 1e-12:
        raise SolverError("DKS: the network's maximal C'(1) does not grow with the local slope; it has no "
                          "nonlinear layers, so there is nothing to shape.")
    s = solve_increasing(fn, zeta, 1.1, 1.0, math.inf, tol=tol)
    if max_slope_func is None and isinstance(subnet_max, _NetworkSearches):
        subnet_max.found[memo] = s
    return s


def local_c_curv_target(subnet_max: SubnetMaxFunc | None, tau: float,
                        max_curv_func: Callable[[float], float] | None = None,
                        tol: float = SEARCH_TOL) -> float:
    """TAT (smooth): the local C''(1) ``k`` with ``max_f C_f''(1) = M(0, y -> k + y) = tau``."""
    memo = ("curv", tau, tol)
    if max_curv_func is None and isinstance(subnet_max, _NetworkSearches) and memo in subnet_max.found:
        return subnet_max.found[memo]
    fn = max_curv_func or _linear_search(subnet_max, 0.0, "shift") or (
        lambda k: subnet_max(0.0, lambda y: k + y))
    if fn(1.0) <= fn(0.0) + 1e-12:
        raise SolverError("TAT: the network's maximal C''(1) does not grow with the local curvature; it "
                          "has no nonlinear layers, so there is nothing to shape.")
    k = solve_increasing(fn, tau, 0.1, 0.0, math.inf, tol=tol)
    if max_curv_func is None and isinstance(subnet_max, _NetworkSearches):
        subnet_max.found[memo] = k
    return k


def _linear_search(subnet_max: SubnetMaxFunc | None, x: float,
                   step: str) -> Callable[[float], float] | None:
    """``M(x, y -> t y)`` or ``M(x, y -> t + y)`` in closed form when ``M`` is a network's (else None)."""
    linear = getattr(subnet_max, "linear", None)
    return linear(x, step) if linear is not None else None


def leaky_relu_negative_slope(subnet_max: SubnetMaxFunc, eta: float, tol: float = SEARCH_TOL) -> float:
    """TAT (Leaky ReLU): the negative slope ``a`` with ``max_f C_f(0) = M(0, C_a) = eta``.

    Raises:
      SolverError: If no slope reaches ``eta``: ReLU (a = 0) gives the largest C(0) a Leaky ReLU network
        can have, and a shallow network's may be below ``eta``.
    """
    memo = ("c0", eta, tol)
    if isinstance(subnet_max, _NetworkSearches) and memo in subnet_max.found:
        return subnet_max.found[memo]
    c0 = lambda a: subnet_max(0.0, local_maps.leaky_relu_c_map_fn(a))
    reachable = c0(0.0)
    if not eta < reachable - tol:
        plain_depth = _plain_relu_depth_reaching(eta)
        raise SolverError(
            f"TAT: eta (c_val_0_target) = {eta} is unreachable for this network: its maximal C(0), "
            f"reached with ReLU (negative slope 0), is only {reachable:.6f}. Use eta < {reachable:.6f}, or "
            f"a deeper network (a plain Leaky ReLU stack needs at least {plain_depth} nonlinear layers "
            f"for eta = {eta}).")
    a = solve_increasing(lambda a: 1.0 - c0(a), 1.0 - eta, 0.5, 0.0, 1.0, tol=tol)
    if isinstance(subnet_max, _NetworkSearches):
        subnet_max.found[memo] = a
    return a


def _plain_relu_depth_reaching(eta: float, limit: int = 100000) -> int:
    c = 0.0
    for depth in range(1, limit + 1):
        c = float(local_maps.leaky_relu_c_map(c, 0.0))
        if c > eta:
            return depth
    return limit


# ----------------------------------------------------------------------------------------------
# Stage 2: local targets -> parameters.


@dataclasses.dataclass(frozen=True)
class _Problem:
    """A local root-finding problem (hashable: it keys the result cache)."""

    spec: activations.ActivationSpec
    free: tuple[str, ...]  # names among input_scale, input_shift, output_shift, shape
    fixed_theta: tuple[float, ...]  # theta values of the parameters that are not free
    zero_mean: bool  # whether output_shift is solved by C(0) = 0 (else free or fixed)
    conditions: tuple[str, ...]  # among q_slope, c_slope_1, c_curv_1
    targets: tuple[float, ...]
    reject_large_scale: bool = False


_THETA_INDEX = {"input_scale": 0, "input_shift": 1, "output_shift": 2, "shape": 4}


class _Residual:
    """The local conditions minus their targets as a NumPy function of the free parameters.

    One evaluation: quadrature nodes cut at the kinks, the derivative tower of ``phi`` at
    ``alpha z + beta``, and a handful of weighted sums. Output shift (C(0) = 0) and output scale
    (Q(1) = 1) are filled in from the same sums.
    """

    def __init__(self, problem: _Problem, reference_rule: bool = False):
        self.problem = problem
        self.reference_rule = reference_rule
        self.order = 2 if "c_curv_1" in problem.conditions else 1
        self.tower = evaluate.tower(problem.spec, self.order)
        self.kinks = np.asarray(kinks.kink_profile(problem.spec).kinks, np.float64)
        self.targets = np.asarray(problem.targets, np.float64)
        self.evaluations = 0

    def theta(self, p: np.ndarray) -> np.ndarray:
        """Full theta ``(alpha, beta, delta, gamma, *shape)`` at the free values ``p``."""
        theta = np.array(self.problem.fixed_theta, np.float64)
        for value, name in zip(p, self.problem.free):
            theta[_THETA_INDEX[name]] = value
        sums = self._sums(theta)
        theta[2] = -sums["mean"] if self.problem.zero_mean else theta[2]
        theta[3] = 1.0 / math.sqrt(sums["second"]) if sums["second"] > 0 else math.nan
        return theta

    def _cuts(self, theta: np.ndarray) -> np.ndarray | None:
        alpha, beta = theta[0], theta[1]
        return (self.kinks - beta) / alpha if self.kinks.size and alpha != 0.0 else None

    def _sums(self, theta: np.ndarray, cuts: np.ndarray | None = None) -> dict[str, float]:
        if self.reference_rule:
            return self._reference_sums(theta)
        alpha, beta = theta[0], theta[1]
        z, w = quadrature.gaussian_nodes(self._cuts(theta) if cuts is None else cuts)
        d = self.tower(alpha * z + beta, theta[4:])
        h = d[0] if self.problem.zero_mean else d[0] + theta[2]
        mean = float(np.dot(w, h))
        if self.problem.zero_mean:
            h = h - mean
        h1 = alpha * d[1]
        out = {"mean": mean, "second": float(np.dot(w, h * h)),
               "q_slope": float(np.dot(w, h * h1 * z)), "c_slope_1": float(np.dot(w, h1 * h1))}
        if self.order == 2:
            h2 = alpha * alpha * d[2]
            out["c_curv_1"] = float(np.dot(w, h2 * h2))
        return out

    def _moments(self, theta: np.ndarray, z: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The raw moments every sum is made of, on nodes ``z`` with weights ``w``."""
        alpha, beta = theta[0], theta[1]
        d = self.tower(alpha * z + beta, theta[4:])
        h1 = alpha * d[1]
        h2 = alpha * alpha * d[2] if self.order == 2 else np.zeros_like(z)
        return np.array([w.sum(), w @ d[0], w @ (d[0] * d[0]), w @ (d[0] * h1 * z), w @ (h1 * z),
                         w @ (h1 * h1), w @ (h2 * h2)])

    def _reference_sums(self, theta: np.ndarray) -> dict[str, float]:
        """``_sums`` as the public package's unsplit 100,000-node rule computes them.

        The exact moments plus that rule's error, which only the neighbourhoods of the kinks make
        (``quadrature.reference_rule_error_nodes``; the whole rule when two kinks are close).
        """
        cuts = self._cuts(theta)
        error = quadrature.reference_rule_error_nodes(cuts) if cuts is not None else None
        if cuts is not None and error is None:
            one, m0, m00, m01z, m1z, m11, m22 = self._moments(theta, *quadrature.reference_nodes())
        else:
            moments = self._moments(theta, *quadrature.gaussian_nodes(cuts))
            if error is not None and error[0].size:
                moments = moments + self._moments(theta, *error)
            one, m0, m00, m01z, m1z, m11, m22 = moments
        # h = phi - mean (C(0) = 0) or phi + output_shift, expanded over the raw moments.
        shift = -m0 if self.problem.zero_mean else theta[2]
        mean = m0 + shift * one
        out = {"mean": -shift if self.problem.zero_mean else mean,
               "second": m00 + 2.0 * shift * m0 + shift * shift * one,
               "q_slope": m01z + shift * m1z, "c_slope_1": m11}
        if self.order == 2:
            out["c_curv_1"] = m22
        return out

    def __call__(self, p: np.ndarray, cuts: np.ndarray | None = None) -> np.ndarray:
        self.evaluations += 1
        theta = np.array(self.problem.fixed_theta, np.float64)
        for value, name in zip(p, self.problem.free):
            theta[_THETA_INDEX[name]] = value
        sums = self._sums(theta, cuts)
        second = sums["second"]
        if not second > 0.0 or not math.isfinite(second):
            return np.full(len(self.targets), np.nan)
        # With gamma = 1 / sqrt(second), Q(1) = 1 and each moment is its sum over `second`.
        values = np.array([sums[name] for name in self.problem.conditions]) / second
        return values - self.targets

    def jacobian(self, p: np.ndarray) -> np.ndarray:
        """The Jacobian MINPACK's ``hybrd`` would estimate for the public package's residual.

        Forward differences with MINPACK's step ``sqrt(eps) |p_j|``, with the quadrature's cuts held
        where the kinks are at ``p``. The public package integrates on fixed nodes, so a step of
        1e-8 never moves a kink across a node: its difference quotients omit the term from the kink's
        motion (where ``phi'`` jumps, C'(1) has one). Holding our cuts does the same, so hybr takes the
        steps it takes there and lands on the same root (for smooth activations this is exactly the
        ordinary finite-difference Jacobian).
        """
        p = np.asarray(p, np.float64)
        theta = np.array(self.problem.fixed_theta, np.float64)
        for value, name in zip(p, self.problem.free):
            theta[_THETA_INDEX[name]] = value
        cuts = None if self.reference_rule else self._cuts(theta)
        base = self(p, cuts)
        jac = np.empty((base.size, p.size))
        for j in range(p.size):
            step = _FD_STEP * abs(p[j]) or _FD_STEP
            q = p.copy()
            q[j] += step
            jac[:, j] = (self(q, cuts) - base) / step
        return jac


@dataclasses.dataclass
class _Attempt:
    """One starting point's outcome: the root (theta) if hybr succeeded, and its verdict.

    Rejected roots are polished only when one of them is returned (``_Search.finish``).
    """

    start: tuple[float, ...]
    theta: tuple[float, ...] | None
    rejected: bool = False
    x: np.ndarray | None = None  # hybr's unpolished solution, for rejected roots


@functools.lru_cache(maxsize=None)
def _starting_points(free: tuple[str, ...]) -> tuple[tuple[float, ...], ...]:
    points = list(itertools.product(*(_START_VALUES[name] for name in free)))
    rng = np.random.RandomState(_RANDOM_SEED)  # the legacy stream of np.random.seed(123)
    while len(points) < _NUM_TRIES:
        points.append(tuple(float(rng.uniform(*_RANDOM_RANGES[name])) for name in free))
    return tuple(points)


def _fd_jacobian(fun: Callable[[np.ndarray], np.ndarray], p: np.ndarray, r: np.ndarray) -> np.ndarray:
    jac = np.empty((r.size, p.size))
    for i in range(p.size):
        step = 1e-7 * max(1.0, abs(p[i]))
        q = p.copy()
        q[i] += step
        jac[:, i] = (fun(q) - r) / step
    return jac


def _polish(fun: Callable[[np.ndarray], np.ndarray], p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps with a finite-difference Jacobian: hybr stops at xtol ~1.5e-8, this at rounding."""
    r = fun(p)
    for _ in range(3):
        if not np.all(np.isfinite(r)) or np.max(np.abs(r)) < 1e-15:
            break
        try:
            q = p - np.linalg.solve(_fd_jacobian(fun, p, r), r)
        except np.linalg.LinAlgError:
            break
        rq = fun(q)
        if not np.all(np.isfinite(rq)) or np.max(np.abs(rq)) >= np.max(np.abs(r)):
            break
        p, r = q, rq
    return p, r


@functools.lru_cache(maxsize=1)
def _minpack_hybrj() -> Callable | None:
    """MINPACK's ``hybrj`` from SciPy's extension module, loaded without importing ``scipy.optimize``.

    ``import scipy.optimize`` takes 0.3 s (over 1 s on a loaded 2-core machine): longer than a whole
    solve. The compiled MINPACK wrapper it uses loads in a millisecond by itself. This relies on the
    private ``_hybrj(fun, jac, x0, args, full_output, col_deriv, xtol, maxfev, factor, diag)`` entry
    point (stable since SciPy 1.0); if it is missing or different, ``scipy.optimize.root`` is used.
    """
    import importlib.machinery
    import importlib.util
    import os
    import sys

    module = sys.modules.get("scipy.optimize._minpack")
    try:
        if module is None:
            spec = importlib.util.find_spec("scipy")
            folder = os.path.join(os.path.dirname(spec.origin), "optimize")
            path = next(os.path.join(folder, "_minpack" + suffix)
                        for suffix in importlib.machinery.EXTENSION_SUFFIXES
                        if os.path.exists(os.path.join(folder, "_minpack" + suffix)))
            ext = importlib.util.spec_from_file_location("scipy.optimize._minpack", path)
            module = importlib.util.module_from_spec(ext)
            ext.loader.exec_module(module)
        hybrj = module._hybrj
        x, _, status = hybrj(lambda p: p - 1.0, lambda p: np.eye(1), np.zeros(1), (), 1, 0,
                             1.49012e-08, 200, 100.0, None)
        if status != 1 or abs(x[0] - 1.0) > 1e-12:
            return None
        return hybrj
    except Exception:  # any surprise: fall back to the public API
        log.debug("MINPACK extension not usable directly; using scipy.optimize.root.", exc_info=True)
        return None


def _hybr(fun: Callable[[np.ndarray], np.ndarray], jac: Callable[[np.ndarray], np.ndarray],
          x0: np.ndarray, maxfev: int, stalled_ok: bool = False) -> tuple[np.ndarray, bool]:
    """Powell's hybrid method (MINPACK ``hybrj``, as ``scipy.optimize.root(method='hybr')``).

    ``stalled_ok`` also accepts MINPACK's "no progress" endings (status 4 and 5): walking a residual
    with quadrature noise, hybr can stall within rounding of a root it would call converged with the
    public package's exact bits; the caller then polishes and checks the root on exact integrals.
    """
    hybrj = _minpack_hybrj()
    if hybrj is not None:
        x, _, status = hybrj(fun, jac, np.asarray(x0, np.float64), (), 1, 0, 1.49012e-08, maxfev,
                             100.0, None)
        return np.asarray(x, np.float64), status == 1 or (stalled_ok and status in (4, 5))
    import scipy.optimize

    sol = scipy.optimize.root(fun, x0, method="hybr", jac=jac, options={"maxfev": maxfev})
    return sol.x, bool(sol.success) or (stalled_ok and sol.status in (4, 5))


class _Search:
    """The starting points tried so far for one problem, extended on demand and cached.

    With ``imitate_reference``, hybr walks the residual as the public package computes it (its unsplit
    100,000-node rule, whose errors at kinks steer hybr's steps: for ELU under TAT they decide which of
    two roots it reaches), and the root it lands near is then polished on the exact residual. The
    result is the public package's root, to rounding error instead of its quadrature error.
    """

    def __init__(self, problem: _Problem, imitate_reference: bool = False):
        self.problem = problem
        self.residual = _Residual(problem)
        self.walk = _Residual(problem, reference_rule=True) if imitate_reference else self.residual
        self.starts = _starting_points(problem.free)
        self.num_fixed = math.prod(len(_START_VALUES[name]) for name in problem.free)
        self.attempts: list[_Attempt] = []

    def attempt(self, index: int) -> _Attempt:
        while len(self.attempts) <= index:
            self.attempts.append(self._try(self.starts[len(self.attempts)]))
        return self.attempts[index]

    def _try(self, start: tuple[float, ...]) -> _Attempt:
        with np.errstate(all="ignore"):
            # hybrd's own defaults (maxfev 200 (n + 1)), with its finite-difference Jacobian supplied.
            x, success = _hybr(self.walk, self.walk.jacobian, np.asarray(start, np.float64),
                               maxfev=200 * (len(start) + 1), stalled_ok=self.walk is not self.residual)
            if not success:
                return _Attempt(start, None)
            if self.problem.reject_large_scale:
                # The public package's test is signed, on the root as found (before canonicalization);
                # hybr's solution is within 1e-8 of the root, plenty for a threshold of 2.
                theta = self.walk.theta(x)
                if np.all(np.isfinite(theta)) and theta[0] * theta[3] >= 2.0:
                    return _Attempt(start, None, rejected=True, x=x)
            return self._polished(start, x)

    def _polished(self, start: tuple[float, ...], x: np.ndarray, rejected: bool = False) -> _Attempt:
        with np.errstate(all="ignore"):
            p, r = _polish(self.residual, x)
            if not (np.all(np.isfinite(r)) and np.max(np.abs(r)) < _ROOT_TOL):
                return _Attempt(start, None)
            theta = self.residual.theta(p)
        if not np.all(np.isfinite(theta)):
            return _Attempt(start, None)
        return _Attempt(start, tuple(float(v) for v in theta), rejected)

    def finish(self, attempt: _Attempt) -> tuple[float, ...] | None:
        """The polished theta of an attempt (rejected ones are polished on first use)."""
        if attempt.theta is None and attempt.x is not None:
            attempt.theta = self._polished(attempt.start, attempt.x, attempt.rejected).theta
            attempt.x = None
        return attempt.theta

    def failure(self) -> SolverError:
        problem = self.problem
        tried = len(self.attempts)
        rejected = sum(a.rejected for a in self.attempts)
        hint = ""
        if "input_scale" in problem.free and _is_homogeneous(problem.spec):
            hint = (f" {problem.spec.name!r} is positively homogeneous (phi(2 x) = 2 phi(x)): its input "
                    "scale is redundant with the output scale, so Q'(1) and C'(1) cannot both be set. "
                    "Register it with positive_homogeneous=True to solve for C'(1) alone, as for ReLU.")
        return SolverError(
            f"The solver did not converge for activation {problem.spec.name!r} (conditions "
            f"{dict(zip(problem.conditions, problem.targets))}) from any of {tried} starting points"
            + (f" ({rejected} roots found had input_scale * output_scale >= 2 and were rejected)"
               if rejected else "")
            + ". The targets may be unachievable for this activation (the conditions can even be "
            "inconsistent: 'square' has Q'(1) = C'(1) whenever C(0) = 0); try a different zeta/tau, "
            "or another activation." + hint)


def _is_homogeneous(spec: activations.ActivationSpec) -> bool:
    x = np.linspace(-5.0, 5.0, 101)
    tower = evaluate.tower(spec, 0)
    one, two = tower(x)[0], tower(2.0 * x)[0]
    return bool(np.max(np.abs(two - 2.0 * one)) <= 1e-12 * (1.0 + np.max(np.abs(two))))


@functools.lru_cache(maxsize=4096)
def _search(problem: _Problem, imitate_reference: bool = False) -> _Search:
    return _Search(problem, imitate_reference)


def _solve_local(problem: _Problem, reference_root: bool = False) -> tuple[float, ...]:
    """Solves one local problem; returns the full theta (canonical, or as the public package finds it)."""
    # Only a jump in an integrand (a kink of phi, or of a derivative the conditions use) makes the public
    # package's quadrature error large enough to steer its search; elsewhere its rule is exact to ~1e-12
    # and the exact residual takes the same walk.
    order = 2 if "c_curv_1" in problem.conditions else 1
    imitate = reference_root and any(k <= order for k in kinks.kink_profile(problem.spec).orders)
    search = _search(problem, imitate)
    first_rejected = None
    for index in range(_NUM_TRIES):
        if index == search.num_fixed and first_rejected is not None and not reference_root:
            theta = search.finish(first_rejected)
            if theta is not None:
                log.info("All roots found for %r have input_scale * output_scale >= 2; using the "
                         "first (canonical) one.", problem.spec.name)
                return _canonical(problem.spec, theta)
        att = search.attempt(index)
        if att.rejected:
            first_rejected = first_rejected or att
        elif att.theta is not None:
            return att.theta if reference_root else _canonical(problem.spec, att.theta)
    last = search.attempts[-1]
    if reference_root:
        # The public package returns the last root when the last start converged, rejected or not.
        if search.finish(last) is not None:
            return last.theta
        raise search.failure()
    if first_rejected is not None and search.finish(first_rejected) is not None:
        return _canonical(problem.spec, first_rejected.theta)
    raise search.failure()


def _canonical(spec: activations.ActivationSpec, theta: Sequence[float]) -> tuple[float, ...]:
    """The canonical copy of a root among its equivalent ones (module docstring)."""
    theta = list(theta)
    theta[0] = abs(theta[0])  # the mirror image x -> phi(-alpha x + beta) has the same kernel maps
    symmetry = _symmetry(spec, tuple(theta[4:]))
    if spec.period is not None:
        theta[1] = theta[1] % spec.period
        if symmetry and theta[1] > 0.5 * spec.period:
            theta[1] = spec.period - theta[1]
            theta[2] *= symmetry
    elif symmetry and theta[1] < 0:
        # Odd phi: (beta, delta) -> (-beta, -delta) gives x -> -phi_hat(-x); even phi: beta -> -beta
        # gives x -> phi_hat(-x). Same kernel maps either way: keep beta >= 0.
        theta[1] = -theta[1]
        theta[2] *= symmetry
    return tuple(float(v) for v in theta)


def _reference_copy(spec: activations.ActivationSpec, theta: Sequence[float]) -> tuple[float, ...]:
    """The public package's presentation of a root: as found, with sin/cos shifts modulo 2 pi."""
    theta = list(theta)
    if spec.period is not None:
        theta[1] = theta[1] - spec.period * math.floor(theta[1] / spec.period)
    return tuple(float(v) for v in theta)


@functools.lru_cache(maxsize=None)
def _symmetry(spec: activations.ActivationSpec, shape: tuple[float, ...]) -> int:
    """-1 if the family (at these shape parameters) is odd, +1 if even, 0 otherwise (checked numerically)."""
    x = np.linspace(0.05, 6.0, 120)
    tower = evaluate.tower(spec, 0)
    plus, minus = tower(x, shape)[0], tower(-x, shape)[0]
    scale = max(np.max(np.abs(plus)), 1e-300)
    if np.max(np.abs(plus + minus)) <= 1e-12 * scale:
        return -1
    if np.max(np.abs(plus - minus)) <= 1e-12 * scale:
        return 1
    return 0


def _shape_names(spec: activations.ActivationSpec) -> tuple[str, ...]:
    return tuple(spec.shape_params)


def _default_theta(spec: activations.ActivationSpec) -> tuple[float, ...]:
    return tuple(local_maps.make_theta(shape=list(spec.shape_params.values())).tolist())


def _make(spec: activations.ActivationSpec, method: str, theta: Sequence[float],
          keys: tuple[str, ...], local_targets: dict[str, float]) -> TransformedActivation:
    names = _shape_names(spec)
    theta = [float(v) for v in theta]  # Python floats stay weakly typed: bf16 inputs keep their dtype
    return TransformedActivation(
        name=spec.name, method=method, input_scale=theta[0], input_shift=theta[1],
        output_shift=theta[2], output_scale=theta[3],
        shape_params=tuple((n, float(theta[4 + i])) for i, n in enumerate(names)),
        local_targets=tuple(local_targets.items()), param_keys=keys)


def _check_usable(spec: activations.ActivationSpec, method: str, values: bool = True
                  ) -> kinks.KinkProfile:
    """Refuses activations the method cannot shape (``values``: also NaN/constant); returns the kinks."""
    if values:
        kinks.check_values(spec, tuple(spec.shape_params.values()), order=2 if method == "TAT" else 1)
    profile = kinks.kink_profile(spec)
    if profile.order == 0:
        raise SolverError(f"{method} cannot shape {spec.name!r}: {profile.describe(spec.name)}, so "
                          "phi' holds a Dirac delta and C'(1) = E[phi'(z)^2] / Q(1) is infinite. Use a "
                          "continuous activation.")
    if method == "TAT" and profile.order == 1 and not is_leaky_family(spec.name):
        raise SolverError(
            f"TAT for smooth activations cannot shape {spec.name!r}: {profile.describe(spec.name)}, "
            "so phi'' holds a Dirac delta and C''(1) = E[phi''(z)^2] / Q(1) is infinite: no input "
            "scale or shift makes it finite. Use DKS, TAT with 'leaky_relu' (which targets C(0) "
            "instead), or an activation whose slope is continuous (e.g. 'elu', 'softplus').")
    return profile


@functools.lru_cache(maxsize=256)
def _fingerprint(spec: activations.ActivationSpec) -> str:
    return disk_cache.definition_fingerprint(spec)


def _solve(problem: _Problem, method: str, reference_root: bool) -> tuple[float, ...]:
    """``_solve_local`` behind the usability checks and the optional on-disk cache."""
    spec = problem.spec
    entry = None
    if disk_cache.enabled():
        entry = disk_cache.key(_fingerprint(spec), [
            method, problem.free, problem.fixed_theta, problem.zero_mean, problem.conditions,
            problem.targets, problem.reject_large_scale, reference_root])
        hit = disk_cache.load(entry)
        if hit is not None:
            return hit
    _check_usable(spec, method)
    theta = _solve_local(problem, reference_root)
    if entry is not None:
        targets = dict(zip(problem.conditions, problem.targets))
        disk_cache.store(entry, theta, note=f"{spec.name} {method} {targets}")
    return theta


def dks_transform(name: str, local_c_slope_1: float, local_q_slope: float = 1.0, *,
                  reference_root: bool = False) -> TransformedActivation:
    """Solves the DKS conditions for one activation, given the local C'(1) target.

    Args:
      name: Registered activation family.
      local_c_slope_1: Target C'(1) of every nonlinear layer (``s`` from ``local_c_slope_target``).
      local_q_slope: Target Q'(1) of every nonlinear layer.
      reference_root: Return the root as the public ``dks`` package returns it instead of the
        canonical one (see the module docstring).

    Returns:
      The transformed activation.
    """
    spec = activations.get_activation(name)
    _check_usable(spec, "DKS", values=False)
    names = _shape_names(spec)
    fixed = list(_default_theta(spec))
    if spec.positive_homogeneous and not names:
        # ReLU: alpha and the output scale are redundant, so fix the input shift and drop Q'(1).
        fixed[1] = 1.0 if local_c_slope_1 < RELU_MAX_SLOPE_POSITIVE_SHIFT else -1.0
        problem = _Problem(spec, ("input_scale",), tuple(fixed), True, ("c_slope_1",),
                           (local_c_slope_1,))
        keys = ("input_shift", "input_scale", "output_shift", "output_scale")
    elif names:
        if len(names) != 1:
            raise SolverError(f"DKS supports families with at most one shape parameter; {name!r} has "
                              f"{names}.")
        problem = _Problem(spec, ("shape", "input_shift"), tuple(fixed), True,
                           ("q_slope", "c_slope_1"), (local_q_slope, local_c_slope_1))
        keys = (names[0], "input_shift", "output_shift", "output_scale")
    else:
        problem = _Problem(spec, ("input_scale", "input_shift"), tuple(fixed), True,
                           ("q_slope", "c_slope_1"), (local_q_slope, local_c_slope_1))
        keys = ("input_scale", "input_shift", "output_shift", "output_scale")
    theta = _solve(problem, "DKS", reference_root)
    if reference_root:
        theta = _reference_copy(spec, theta)
    return _make(spec, "DKS", theta, keys, {"c_slope_1": local_c_slope_1, "q_slope": local_q_slope})


def tat_smooth_transform(name: str, local_c_curv_1: float, *,
                         reference_root: bool = False) -> TransformedActivation:
    """Solves the TAT conditions for an activation with a continuous slope, given the local C''(1)."""
    spec = activations.get_activation(name)
    if is_leaky_family(name):
        raise SolverError(f"TAT for smooth activations does not apply to {name!r} (its C''(1) is "
                          "infinite); use 'leaky_relu' with TAT, which targets C(0) instead.")
    _check_usable(spec, "TAT", values=False)
    problem = _Problem(spec, ("input_scale", "input_shift", "output_shift"), _default_theta(spec),
                       False, ("q_slope", "c_slope_1", "c_curv_1"), (1.0, 1.0, local_c_curv_1),
                       reject_large_scale=True)
    theta = _solve(problem, "TAT", reference_root)
    if reference_root:
        theta = _reference_copy(spec, theta)
    return _make(spec, "TAT", theta, ("input_scale", "input_shift", "output_shift", "output_scale"),
                 {"c_curv_1": local_c_curv_1})


def tat_leaky_relu_transform(name: str, negative_slope: float) -> TransformedActivation:
    """TReLU: the Leaky ReLU with the given slope scaled to have Q(q) = q."""
    spec = activations.get_activation(name)
    if not is_leaky_family(name):
        raise SolverError(f"TAT's C(0) rule needs the Leaky ReLU family; {name!r} is not in it.")
    # trelu carries the sqrt(2 / (1 + a^2)) factor itself.
    scale = 1.0 if name == "trelu" else math.sqrt(2.0 / (1.0 + negative_slope**2))
    keys = ("negative_slope",) if name == "trelu" else ("output_scale", "negative_slope")
    theta = local_maps.make_theta(output_scale=scale, shape=[negative_slope])
    return _make(spec, "TAT", theta, keys, {"c_value_0_slope": negative_slope})


# ----------------------------------------------------------------------------------------------
# Edge of chaos.


def _eoc_gap(tower: evaluate.Tower, shape: tuple[float, ...], knots: np.ndarray,
             scales: np.ndarray) -> np.ndarray:
    """``E[phi(a z)^2] / (a^2 E[phi'(a z)^2]) - 1`` for each input scale ``a`` (zero at an EOC point)."""
    out = np.empty(scales.size)
    for i, a in enumerate(scales):
        z, w = quadrature.gaussian_nodes(knots / a if knots.size else None)
        f, df = tower(a * z, shape)
        out[i] = np.dot(w, f * f) / (a * a * np.dot(w, df * df)) - 1.0
    return out


@functools.lru_cache(maxsize=256)
def _eoc_input_scale(spec: activations.ActivationSpec) -> float:
    """``sqrt(q*)`` of the EOC fixed point with zero biases (see the module docstring)."""
    shape = tuple(spec.shape_params.values())
    tower = evaluate.tower(spec, 1)
    knots = np.asarray(kinks.kink_profile(spec).kinks, np.float64)
    gap = lambda scales: _eoc_gap(tower, shape, knots, np.asarray(scales, np.float64))
    # Scan q* = a^2 over [1e-6, 1e4] for the first sign change of the gap (chi = 1 in between).
    scales = np.logspace(-3.0, 2.0, 101)
    with np.errstate(all="ignore"):
        values = gap(scales)
    finite = np.isfinite(values)
    if np.all(finite) and np.max(np.abs(values)) < 1e-10:
        return 1.0  # chi = 1 at every fixed point (a linear function): any q works, take q* = 1
    change = [i for i in range(scales.size - 1) if finite[i] and finite[i + 1]
              and values[i] * values[i + 1] <= 0.0 and values[i] != 0.0]
    if not change:
        if finite[0] and abs(values[0]) < 1e-4:
            reason = ("chi = sigma_w^2 E[phi'(sqrt(q*) z)^2] > 1 at every fixed point q* > 0 and tends "
                      "to 1 only as q* -> 0 (sigma_w = 1 / |phi'(0)|), where the network is linear")
        elif np.all(values[finite] > 0):
            reason = "chi < 1 at every fixed point q* in [1e-6, 1e4] (the network is always ordered)"
        else:
            reason = "chi > 1 at every fixed point q* in [1e-6, 1e4] (the network is always chaotic)"
        raise SolverError(
            f"EOC does not apply to {spec.name!r} in a network with zero biases: {reason}. Use DKS "
            "or TAT, or 'untransformed'.")
    lo, hi = scales[change[0]], scales[change[0] + 1]
    g_lo = values[change[0]]
    for _ in range(200):  # bisection to rounding error (no scipy.optimize import for this)
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        g_mid = gap([mid])[0]
        if (g_mid > 0) == (g_lo > 0):
            lo, g_lo = mid, g_mid
        else:
            hi = mid
    return float(0.5 * (lo + hi))


def eoc_transform(name: str) -> TransformedActivation:
    """The edge-of-chaos baseline for zero biases, written for unit-q inputs (module docstring).

    Raises:
      SolverError: When the activation has no nontrivial EOC fixed point (for example tanh).
    """
    spec = activations.get_activation(name)
    base = TransformedActivation.untransformed(name)
    if spec.positive_homogeneous:
        # Every q is a fixed point at sigma_w^2 = 1 / E[phi'(z)^2] = 1 / Q(1): He init for ReLU.
        scale = 1.0 / math.sqrt(base.local_moments()["q_value"])
        return dataclasses.replace(base, method="EOC", output_scale=scale, param_keys=("output_scale",))
    _check_usable(spec, "EOC")
    a = _eoc_input_scale(spec)
    act = dataclasses.replace(base, method="EOC", input_scale=a, param_keys=("input_scale",
                                                                              "output_scale"))
    # gamma = sigma_w / sqrt(q*) with Q(1) = 1: gamma^2 E[phi(a z)^2] = 1.
    q1 = act.local_moments()["q_value"]
    return dataclasses.replace(act, output_scale=1.0 / math.sqrt(q1),
                               local_targets=(("q_star", a * a), ("sigma_w", math.sqrt(a * a / q1))))


def is_leaky_family(name: str) -> bool:
    """Whether ``name`` is a Leaky-ReLU-shaped piecewise-linear family with a negative slope."""
    spec = activations.get_activation(name)
    return spec.piecewise_linear and "negative_slope" in spec.shape_params


def transform(name: str, method: str = "DKS", *, network: graph_lib.Node | None = None,
              subnet_max_func: SubnetMaxFunc | None = None,
              max_slope_func: Callable[[float], float] | None = None,
              max_curv_func: Callable[[float], float] | None = None,
              dks: DKSTargets = DKSTargets(), tat: TATTargets = TATTargets(),
              search_tol: float = SEARCH_TOL, reference_root: bool = False) -> TransformedActivation:
    """Transforms one activation for a network: the native entry point of the solver.

    Args:
      name: Registered activation family (``dks_jax.list_activations()``), or a dotted JAX name such
        as ``"jnp.sinh"`` or ``"jax.nn.silu"``.
      method: 'DKS', 'TAT', 'EOC' or 'untransformed'.
      network: The network's layer specification; its ``M`` is derived from it. Alternatively pass
        ``subnet_max_func`` (and/or ``max_slope_func``/``max_curv_func``) directly.
      subnet_max_func: ``M(x, r)``, when no ``network`` is given.
      max_slope_func: DKS only: the maximal C'(1) as a function of the local slope.
      max_curv_func: TAT (smooth) only: the maximal C''(1) as a function of the local curvature.
      dks: DKS targets.
      tat: TAT targets.
      search_tol: Tolerance of the network-level search (1e-8 reproduces the public implementation).
      reference_root: Return the root the public ``dks`` package returns rather than the canonical
        one (same kernel maps; see the module docstring).

    Returns:
      The ``TransformedActivation``.

    Raises:
      ValueError: Unknown method or activation, invalid targets, missing network description.
      SolverError: Unreachable targets, an activation the method cannot shape, or no convergence.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(METHODS)}.")
    spec = activations.get_activation(name)
    if method == "untransformed":
        return TransformedActivation.untransformed(name)
    if method == "EOC":
        return eoc_transform(name)
    if network is not None:
        if subnet_max_func is not None:
            raise ValueError("Pass either 'network' or 'subnet_max_func', not both.")
        subnet_max_func = network_subnet_max(network)
        if max_slope_func is None and max_curv_func is None:
            # The network-level search is a pure function of the network and the targets: reuse it.
            subnet_max_func = _memo_targets(network)
    if method == "DKS":
        if spec.name == "relu":
            log.warning("The use of ReLUs with DKS is highly discouraged; use Leaky ReLU instead.")
        if subnet_max_func is None and max_slope_func is None:
            raise ValueError("DKS needs the network: pass 'network', 'subnet_max_func' or "
                             "'max_slope_func'.")
        s = local_c_slope_target(subnet_max_func, dks.c_slope_1_target, max_slope_func, search_tol)
        return dks_transform(name, s, dks.local_q_slope_target, reference_root=reference_root)
    # TAT.
    if spec.name == "relu":
        raise ValueError("Standard ReLU is not supported with TAT; use 'leaky_relu' (TReLU) instead.")
    if is_leaky_family(name):
        if subnet_max_func is None:
            raise ValueError("TAT with Leaky ReLU needs the network: pass 'network' or "
                             "'subnet_max_func'.")
        a = leaky_relu_negative_slope(subnet_max_func, tat.c_val_0_target, search_tol)
        return tat_leaky_relu_transform(name, a)
    if subnet_max_func is None and max_curv_func is None:
        raise ValueError("TAT with smooth activations needs the network: pass 'network', "
                         "'subnet_max_func' or 'max_curv_func'.")
    _check_usable(spec, "TAT", values=False)  # before the network-level search: refusals need no network
    k = local_c_curv_target(subnet_max_func, tat.c_curve_target, max_curv_func, search_tol)
    return tat_smooth_transform(name, k, reference_root=reference_root)


class _NetworkSearches:
    """``M`` of one network, remembering which local targets its searches found (a cache by value)."""

    def __init__(self, m: SubnetMaxFunc):
        self._m = m
        self.found: dict[tuple, float] = {}

    def __call__(self, x: float, r: ScalarMap) -> float:
        return self._m(x, r)

    def linear(self, x: float, step: str) -> Callable[[float], float]:
        return self._m.linear(x, step)


@functools.lru_cache(maxsize=256)
def _memo_targets(network: graph_lib.Node) -> _NetworkSearches:
    return _NetworkSearches(network_subnet_max(network))


@functools.lru_cache(maxsize=256)
def network_subnet_max(network: graph_lib.Node) -> SubnetMaxFunc:
    """``M`` of a layer specification, cached (layer specifications are hashable)."""
    return graph_lib.subnet_max_func(network)


def clear_caches(networks: bool = False) -> None:
    """Forgets solved parameters: the next call re-solves (used by the benchmark and tests).

    Args:
      networks: Also forget the networks' compiled ``M`` functions. They hold no solved value (only
        the layer dispatch of a layer specification, done once per network), so a new activation solved
        for a network already seen reuses them; the default keeps them.
    """
    _search.cache_clear()
    _memo_targets.cache_clear()
    _eoc_input_scale.cache_clear()
    if networks:
        network_subnet_max.cache_clear()
