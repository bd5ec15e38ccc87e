"""The DKS and TAT solvers: from a network's subnetwork-maximizing function to activation parameters.

Two stages, as in the papers:

1. *Network to local target.* A scalar search on the network's ``M`` turns the network-level target
   into a per-layer one: DKS finds the local C'(1) slope ``s`` with ``M(1, y -> s y) = zeta``; TAT for smooth
   activations the local C''(1) ``k`` with ``M(0, y -> k + y) = tau``; TAT for Leaky ReLU the negative
   slope ``a`` with ``M(0, C_a) = eta``. The search is the same bisection as the public ``dks`` package
   (same starting point, same tolerance 1e-8 on the network-level value), so published parameters are
   reproduced to all the digits they were printed with; pass ``search_tol`` for a tighter solution.
2. *Local target to parameters.* A root of the local conditions in the free parameters, with MINPACK's
   hybrid method (``scipy.optimize.root``) fed exact Jacobians by autodiff through the quadrature, then
   polished by Newton steps, from a fixed list of starting points (then seeded random ones). Output
   shift and scale are solved in closed form (C(0) = 0, Q(1) = 1).

Conventions:

* DKS: Q(1) = 1, Q'(1) = ``local_q_slope_target``, C(0) = 0, C'(1) = ``s``. ReLU has one degree of
  freedom less: its input shift is fixed to +1 (or -1 when ``s`` >= 1.46694...) and the Q-slope condition
  is dropped. Leaky ReLU (and other families with a shape parameter) solve for the shape parameter and
  the input shift, with the input scale fixed to 1.
* TAT (smooth): Q(1) = 1, Q'(1) = 1, C'(1) = 1, C''(1) = ``k`` in the input scale, input shift and output
  shift. Solutions with ``|input_scale| * output_scale >= 2`` are rejected (they have unstable Q maps).
  C(0) is left free, as in the public implementation whose published regression values we match.
* Canonical solutions: ``(alpha, beta) -> (-alpha, beta)`` maps ``phi(alpha x + beta)`` to its mirror image
  ``x -> phi(-alpha x + beta)``, whose Q and C maps are identical, so solvers may land on either. We always
  return the one with a positive input scale. For odd families (tanh, erf, atan, asinh, softsign, ...)
  ``(beta, delta) -> (-beta, -delta)`` is another such symmetry, and for even ones ``beta -> -beta``: there
  we also return the solution with a non-negative input shift.
* EOC (our baseline): the untransformed activation with the output scale ``1 / sqrt(E[phi'(z)^2])``, i.e.
  the weight variance that puts the network at the edge of chaos for unit q (He init for ReLU).

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

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from dks_jax import activations
from dks_jax.kernels import graph as graph_lib
from dks_jax.kernels import local_maps
from dks_jax.transforms.activation import TransformedActivation

log = logging.getLogger(__name__)

METHODS = ("DKS", "TAT", "untransformed", "EOC")
# Largest local C'(1) a ReLU reaches with a positive input shift (the public implementation's constant).
RELU_MAX_SLOPE_POSITIVE_SHIFT = 1.466942206924260361
SEARCH_TOL = 1e-8
_RANDOM_SEED = 123
_NUM_TRIES = 50
_ROOT_TOL = 1e-11
# Starting values tried first, in this order, then random ones from the ranges below.
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
    fn = max_slope_func or (lambda s: subnet_max(1.0, lambda y: s * y))
    if fn(4.0) <= fn(1.0) + 1e-12:
        raise SolverError("DKS: the network's maximal C'(1) does not grow with the local slope; it has no "
                          "nonlinear layers, so there is nothing to shape.")
    return solve_increasing(fn, zeta, 1.1, 1.0, math.inf, tol=tol)


def local_c_curv_target(subnet_max: SubnetMaxFunc | None, tau: float,
                        max_curv_func: Callable[[float], float] | None = None,
                        tol: float = SEARCH_TOL) -> float:
    """TAT (smooth): the local C''(1) ``k`` with ``max_f C_f''(1) = M(0, y -> k + y) = tau``."""
    fn = max_curv_func or (lambda k: subnet_max(0.0, lambda y: k + y))
    if fn(1.0) <= fn(0.0) + 1e-12:
        raise SolverError("TAT: the network's maximal C''(1) does not grow with the local curvature; it "
                          "has no nonlinear layers, so there is nothing to shape.")
    return solve_increasing(fn, tau, 0.1, 0.0, math.inf, tol=tol)


def leaky_relu_negative_slope(subnet_max: SubnetMaxFunc, eta: float, tol: float = SEARCH_TOL) -> float:
    """TAT (Leaky ReLU): the negative slope ``a`` with ``max_f C_f(0) = M(0, C_a) = eta``.

    Raises:
      SolverError: If no slope reaches ``eta``: ReLU (a = 0) gives the largest C(0) a Leaky ReLU network
        can have, and a shallow network's may be below ``eta``.
    """
    c0 = lambda a: subnet_max(0.0, lambda c: local_maps.leaky_relu_c_map(c, a))
    reachable = c0(0.0)
    if not eta < reachable - tol:
        plain_depth = _plain_relu_depth_reaching(eta)
        raise SolverError(
            f"TAT: eta (c_val_0_target) = {eta} is unreachable for this network: its maximal C(0), "
            f"reached with ReLU (negative slope 0), is only {reachable:.6f}. Use eta < {reachable:.6f}, or "
            f"a deeper network (a plain Leaky ReLU stack needs at least {plain_depth} nonlinear layers "
            f"for eta = {eta}).")
    return solve_increasing(lambda a: 1.0 - c0(a), 1.0 - eta, 0.5, 0.0, 1.0, tol=tol)


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
    """A local root-finding problem (hashable: it keys the jit and result caches)."""

    spec: activations.ActivationSpec
    shape_names: tuple[str, ...]
    free: tuple[str, ...]  # names among input_scale, input_shift, output_shift, shape
    fixed_theta: tuple[float, ...]  # theta values of the parameters that are not free
    zero_mean: bool  # whether output_shift is solved by C(0) = 0 (else free or fixed)
    conditions: tuple[str, ...]  # LocalMoments fields
    targets: tuple[float, ...]
    reject_large_scale: bool = False


_THETA_INDEX = {"input_scale": 0, "input_shift": 1, "output_shift": 2, "shape": 4}


def _full_theta(problem: _Problem, p: jax.Array) -> jax.Array:
    """Theta with the free values, the closed-form output shift and output scale filled in."""
    theta = jnp.asarray(problem.fixed_theta, dtype=p.dtype)
    for i, name in enumerate(problem.free):
        theta = theta.at[_THETA_INDEX[name]].set(p[i])
    theta = theta.at[3].set(1.0)
    if problem.zero_mean:
        theta = theta.at[2].set(0.0)
    raw = local_maps.local_moments(problem.spec, problem.shape_names, theta)
    shift = -raw.mean if problem.zero_mean else theta[2]
    # E[(h + shift)^2] for the unscaled h = phi(alpha x + beta) (+ the fixed/free output shift).
    second = raw.q_value + (2.0 * raw.mean * shift + shift * shift if problem.zero_mean else 0.0)
    theta = theta.at[2].set(shift)
    return theta.at[3].set(1.0 / jnp.sqrt(second))


@functools.lru_cache(maxsize=None)
def _compiled(problem_key: _Problem):
    """Jitted residual, Jacobian and theta for one problem *structure* (targets are traced)."""

    residual = functools.partial(_residual_with_targets, problem_key)
    fun = jax.jit(residual)
    jac = jax.jit(jax.jacfwd(residual))
    theta = jax.jit(lambda p: _full_theta(problem_key, p))
    return fun, jac, theta


def _residual_with_targets(problem: _Problem, p: jax.Array, targets: jax.Array) -> jax.Array:
    theta = _full_theta(problem, p)
    m = local_maps.local_moments(problem.spec, problem.shape_names, theta)
    return jnp.stack([getattr(m, name) for name in problem.conditions]) - targets


def _starting_points(free: Sequence[str]) -> list[tuple[float, ...]]:
    points = list(itertools.product(*(_START_VALUES[name] for name in free)))
    rng = np.random.default_rng(_RANDOM_SEED)
    while len(points) < _NUM_TRIES:
        points.append(tuple(rng.uniform(*_RANDOM_RANGES[name]) for name in free))
    return points


@functools.lru_cache(maxsize=4096)
def _solve_local(problem: _Problem) -> tuple[float, ...]:
    """Solves one local problem; returns the full theta as a tuple of floats."""
    structure = dataclasses.replace(problem, targets=())
    with jax.enable_x64(True):
        fun, jac, theta_fn = _compiled(structure)
        # NumPy in, NumPy out: converting with jnp.asarray first costs ~20x the jitted call itself.
        targets = np.asarray(problem.targets, dtype=np.float64)
        f = lambda p: np.asarray(fun(np.asarray(p, np.float64), targets))
        j = lambda p: np.asarray(jac(np.asarray(p, np.float64), targets))
        failures = []
        rejected = None
        num_fixed = math.prod(len(_START_VALUES[name]) for name in problem.free)
        for index, start in enumerate(_starting_points(problem.free)):
            if index == num_fixed and rejected is not None:
                # Every root the fixed starting points reached has |alpha| gamma >= 2. Mirroring
                # (alpha -> -alpha) keeps a root's kernel maps but would pass the public implementation's
                # signed test, which is how it accepts sigmoid (whose every root has |alpha| gamma ~ 5.2);
                # we return the first such root instead of hunting random starts for a mirrored one.
                log.info("All roots found for %r have |input_scale| * output_scale >= 2; using the "
                         "first one.", problem.spec.name)
                return rejected
            sol = scipy.optimize.root(f, np.asarray(start, np.float64), jac=j, method="hybr")
            p = sol.x
            # Newton polish: hybr stops at xtol ~1.5e-8; a few exact-Jacobian steps reach rounding error.
            for _ in range(8):
                r = f(p)
                if not np.all(np.isfinite(r)) or np.max(np.abs(r)) < 1e-14:
                    break
                try:
                    p = p - np.linalg.solve(j(p), r)
                except np.linalg.LinAlgError:
                    break
            r = f(p)
            if not (np.all(np.isfinite(r)) and np.max(np.abs(r)) < _ROOT_TOL):
                failures.append(start)
                continue
            theta = np.array(theta_fn(np.asarray(p, np.float64)))
            # The rejection applies to the root as found, before it is canonicalized, as in the public
            # implementation (so its published solutions are the ones we return).
            reject = problem.reject_large_scale and theta[0] * theta[3] >= 2.0
            theta[0] = abs(theta[0])  # canonical mirror image (see module docstring)
            symmetry = _symmetry(problem.spec, tuple(theta[4:].tolist()))
            if symmetry and theta[1] < 0:
                # Odd phi: (beta, delta) -> (-beta, -delta) gives x -> -phi_hat(-x); even phi:
                # beta -> -beta gives x -> phi_hat(-x). Same kernel maps either way: keep beta >= 0.
                theta[1] = -theta[1]
                theta[2] = theta[2] * symmetry
            if reject:
                log.debug("Rejected solution %s (input_scale * output_scale >= 2).", theta)
                rejected = rejected or tuple(float(v) for v in theta)
                failures.append(start)
                continue
            return tuple(float(v) for v in theta)
        if rejected is not None:
            return rejected
    raise SolverError(
        f"The solver did not converge for activation {problem.spec.name!r} (conditions "
        f"{dict(zip(problem.conditions, problem.targets))}) from any of {len(failures)} starting points. "
        "The targets may be unachievable for this activation (the conditions can even be inconsistent: "
        "'square' has Q'(1) = C'(1) whenever C(0) = 0); try a different zeta/tau, or another activation.")


@functools.lru_cache(maxsize=None)
def _symmetry(spec: activations.ActivationSpec, shape: tuple[float, ...]) -> int:
    """-1 if the family (at these shape parameters) is odd, +1 if even, 0 otherwise (checked numerically)."""
    x = np.linspace(0.05, 6.0, 120)
    with jax.enable_x64(True):
        kw = dict(zip(spec.shape_params, shape))
        plus, minus = np.asarray(spec.fn(x, **kw)), np.asarray(spec.fn(-x, **kw))
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


def dks_transform(name: str, local_c_slope_1: float, local_q_slope: float = 1.0
                  ) -> TransformedActivation:
    """Solves the DKS conditions for one activation, given the local C'(1) target.

    Args:
      name: Registered activation family.
      local_c_slope_1: Target C'(1) of every nonlinear layer (``s`` from ``local_c_slope_target``).
      local_q_slope: Target Q'(1) of every nonlinear layer.

    Returns:
      The transformed activation.
    """
    spec = activations.get_activation(name)
    names = _shape_names(spec)
    fixed = list(_default_theta(spec))
    if spec.positive_homogeneous and not names:
        # ReLU: alpha and the output scale are redundant, so fix the input shift and drop Q'(1).
        fixed[1] = 1.0 if local_c_slope_1 < RELU_MAX_SLOPE_POSITIVE_SHIFT else -1.0
        problem = _Problem(spec, names, ("input_scale",), tuple(fixed), True, ("c_slope_1",),
                           (local_c_slope_1,))
        keys = ("input_shift", "input_scale", "output_shift", "output_scale")
    elif names:
        if len(names) != 1:
            raise SolverError(f"DKS supports families with at most one shape parameter; {name!r} has "
                              f"{names}.")
        problem = _Problem(spec, names, ("shape", "input_shift"), tuple(fixed), True,
                           ("q_slope", "c_slope_1"), (local_q_slope, local_c_slope_1))
        keys = (names[0], "input_shift", "output_shift", "output_scale")
    else:
        problem = _Problem(spec, names, ("input_scale", "input_shift"), tuple(fixed), True,
                           ("q_slope", "c_slope_1"), (local_q_slope, local_c_slope_1))
        keys = ("input_scale", "input_shift", "output_shift", "output_scale")
    theta = _solve_local(problem)
    return _make(spec, "DKS", theta, keys, {"c_slope_1": local_c_slope_1, "q_slope": local_q_slope})


def tat_smooth_transform(name: str, local_c_curv_1: float) -> TransformedActivation:
    """Solves the TAT conditions for a smooth activation, given the local C''(1) target."""
    spec = activations.get_activation(name)
    if spec.piecewise_linear:
        raise SolverError(f"TAT for smooth activations does not apply to {name!r} (its C''(1) is "
                          "infinite); use 'leaky_relu' with TAT, which targets C(0) instead.")
    problem = _Problem(spec, _shape_names(spec), ("input_scale", "input_shift", "output_shift"),
                       _default_theta(spec), False, ("q_slope", "c_slope_1", "c_curv_1"),
                       (1.0, 1.0, local_c_curv_1), reject_large_scale=True)
    theta = _solve_local(problem)
    return _make(spec, "TAT", theta, ("input_scale", "input_shift", "output_shift", "output_scale"),
                 {"c_curv_1": local_c_curv_1})


def tat_leaky_relu_transform(name: str, negative_slope: float) -> TransformedActivation:
    """TReLU: the Leaky ReLU with the given slope scaled to have Q(q) = q."""
    spec = activations.get_activation(name)
    if not (spec.piecewise_linear and "negative_slope" in spec.shape_params):
        raise SolverError(f"TAT's C(0) rule needs the Leaky ReLU family; {name!r} is not in it.")
    # trelu carries the sqrt(2 / (1 + a^2)) factor itself.
    scale = 1.0 if name == "trelu" else math.sqrt(2.0 / (1.0 + negative_slope**2))
    keys = ("negative_slope",) if name == "trelu" else ("output_scale", "negative_slope")
    theta = local_maps.make_theta(output_scale=scale, shape=[negative_slope])
    return _make(spec, "TAT", theta, keys, {"c_value_0_slope": negative_slope})


def eoc_transform(name: str) -> TransformedActivation:
    """The edge-of-chaos baseline: output scale ``1 / sqrt(E[phi'(z)^2])`` (He init for ReLU)."""
    base = TransformedActivation.untransformed(name)
    scale = 1.0 / math.sqrt(base.local_moments()["c_slope_1"] * base.local_moments()["q_value"])
    return dataclasses.replace(base, method="EOC", output_scale=scale, param_keys=("output_scale",))


def is_leaky_family(name: str) -> bool:
    spec = activations.get_activation(name)
    return spec.piecewise_linear and "negative_slope" in spec.shape_params


def transform(name: str, method: str = "DKS", *, network: graph_lib.Node | None = None,
              subnet_max_func: SubnetMaxFunc | None = None,
              max_slope_func: Callable[[float], float] | None = None,
              max_curv_func: Callable[[float], float] | None = None,
              dks: DKSTargets = DKSTargets(), tat: TATTargets = TATTargets(),
              search_tol: float = SEARCH_TOL) -> TransformedActivation:
    """Transforms one activation for a network: the native entry point of the solver.

    Args:
      name: Registered activation family (``dks_jax.list_activations()``).
      method: 'DKS', 'TAT', 'EOC' or 'untransformed'.
      network: The network's layer specification; its ``M`` is derived from it. Alternatively pass
        ``subnet_max_func`` (and/or ``max_slope_func``/``max_curv_func``) directly.
      subnet_max_func: ``M(x, r)``, when no ``network`` is given.
      max_slope_func: DKS only: the maximal C'(1) as a function of the local slope.
      max_curv_func: TAT (smooth) only: the maximal C''(1) as a function of the local curvature.
      dks: DKS targets.
      tat: TAT targets.
      search_tol: Tolerance of the network-level search (1e-8 reproduces the public implementation).

    Returns:
      The ``TransformedActivation``.

    Raises:
      ValueError: Unknown method or activation, invalid targets, missing network description.
      SolverError: Unreachable targets or no convergence.
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
    if method == "DKS":
        if spec.name == "relu":
            log.warning("The use of ReLUs with DKS is highly discouraged; use Leaky ReLU instead.")
        if subnet_max_func is None and max_slope_func is None:
            raise ValueError("DKS needs the network: pass 'network', 'subnet_max_func' or "
                             "'max_slope_func'.")
        s = local_c_slope_target(subnet_max_func, dks.c_slope_1_target, max_slope_func, search_tol)
        return dks_transform(name, s, dks.local_q_slope_target)
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
    k = local_c_curv_target(subnet_max_func, tat.c_curve_target, max_curv_func, search_tol)
    return tat_smooth_transform(name, k)


@functools.lru_cache(maxsize=256)
def network_subnet_max(network: graph_lib.Node) -> SubnetMaxFunc:
    """``M`` of a layer specification, cached (layer specifications are hashable)."""
    return graph_lib.subnet_max_func(network)


def clear_caches() -> None:
    """Forgets solved parameters (the next call re-solves; used by the benchmark)."""
    _solve_local.cache_clear()
    network_subnet_max.cache_clear()
