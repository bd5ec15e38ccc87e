"""Float64 NumPy evaluation of an activation and its derivatives, without compiling anything.

The kernel maps and the solvers need ``phi, phi', ..., phi^(k)`` of a registered activation at a few
hundred quadrature nodes, many times, in float64. Compiling a JAX program per activation costs far more
than the whole solve (a fraction of a second per family on a small CPU). Instead we trace the
derivative *tower* once, on a float64 scalar, to a jaxpr (a few milliseconds: nested forward-mode
``jax.jvp``), and run that jaxpr with NumPy/SciPy ufuncs on arrays of nodes. Because the activation is
elementwise, the scalar program broadcasts over any array.

Primitives outside the elementwise whitelist below (``sort``, reductions, ...) make the tower fall back
to ``jax.jit(jax.vmap(tower))``: slower to start, same values. Tracing also rejects functions that are
not elementwise on a scalar (they must map a scalar to a scalar).

This module imports JAX, NumPy and SciPy only (no Haiku, TFDS or kfac-jax).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special as sps
from jax.extend import core as jex_core

from dks_jax import activations

log = logging.getLogger(__name__)

TowerFn = Callable[..., tuple[np.ndarray, ...]]

_UNARY = {
    "neg": np.negative, "exp": np.exp, "exp2": np.exp2, "log": np.log, "log1p": np.log1p,
    "expm1": np.expm1, "tanh": np.tanh, "logistic": sps.expit, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh,
    "cosh": np.cosh, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x), "cbrt": np.cbrt, "abs": np.abs, "sign": np.sign,
    "floor": np.floor, "ceil": np.ceil, "erf": sps.erf, "erfc": sps.erfc, "erf_inv": sps.erfinv,
    "lgamma": sps.gammaln, "digamma": sps.digamma, "bessel_i0e": sps.i0e, "bessel_i1e": sps.i1e,
    "square": np.square, "not": np.logical_not, "is_finite": np.isfinite, "real": np.real,
    "copy": lambda x: x, "copy_p": lambda x: x, "stop_gradient": lambda x: x,
    "optimization_barrier": lambda x: x, "reduce_precision": lambda x: x,
}
_BINARY = {
    "add": np.add, "add_any": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "max": np.maximum, "min": np.minimum, "pow": np.power, "atan2": np.arctan2, "rem": np.fmod,
    "nextafter": np.nextafter, "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal, "and": np.logical_and, "or": np.logical_or,
    "xor": np.logical_xor,
}
# Shape-changing primitives are identities when traced on a scalar (the only way they appear here).
_SCALAR_SHAPE_OPS = ("broadcast_in_dim", "reshape", "squeeze", "expand_dims")
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class UnsupportedPrimitive(Exception):
    """The jaxpr uses a primitive the NumPy interpreter does not know (we then compile instead)."""


def _round(x: np.ndarray, rounding_method) -> np.ndarray:
    # lax.round: 0 rounds half away from zero, 1 rounds half to even (NumPy's default).
    if int(rounding_method) == 1:
        return np.round(x)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _eval_jaxpr(jaxpr, consts: Sequence, args: Sequence) -> list:
    """Runs a jaxpr of elementwise primitives with NumPy (float64 throughout)."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = np.asarray(val)
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [read(v) for v in eqn.invars]
        if name in _UNARY:
            out = _UNARY[name](ins[0])
        elif name in _BINARY:
            out = _BINARY[name](ins[0], ins[1])
        elif name == "integer_pow":
            out = np.power(ins[0], eqn.params["y"])
        elif name == "select_n":
            pred, cases = ins[0], ins[1:]
            out = (np.where(pred, cases[1], cases[0]) if len(cases) == 2
                   else np.choose(np.asarray(pred, np.int64), np.broadcast_arrays(*cases)))
        elif name == "clamp":
            out = np.clip(ins[1], ins[0], ins[2])
        elif name == "round":
            out = _round(ins[0], eqn.params.get("rounding_method", 0))
        elif name == "convert_element_type":
            out = np.asarray(ins[0]).astype(np.dtype(eqn.params["new_dtype"]))
        elif name in _SCALAR_SHAPE_OPS:
            if eqn.outvars[0].aval.shape != ():
                raise UnsupportedPrimitive(f"{name} to shape {eqn.outvars[0].aval.shape}")
            out = ins[0]
        else:
            sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
            if sub is None:
                raise UnsupportedPrimitive(name)
            if isinstance(sub, jex_core.ClosedJaxpr):
                out = _eval_jaxpr(sub.jaxpr, sub.consts, ins)
            else:
                out = _eval_jaxpr(sub, (), ins)
            if name.startswith("custom_vjp"):  # the primal function only takes the primal inputs
                out = out[:len(eqn.outvars)]
        if eqn.primitive.multiple_results:
            for var, val in zip(eqn.outvars, out):
                env[var] = val
        else:
            env[eqn.outvars[0]] = out
    return [read(v) for v in jaxpr.outvars]


def _tower_fn(fn: Callable, order: int, num_shape: int) -> Callable:
    """``(x, *shape) -> (phi, phi', ..., phi^(order))`` by nested forward-mode differentiation in x."""

    def level(g):
        def h(x, *shape):
            primal, tangent = jax.jvp(lambda y: g(y, *shape), (x,), (jnp.ones_like(x),))
            return primal + (tangent[-1],)
        return h

    def base(x, *shape):
        return (fn(x, *shape),)

    tower = base
    for _ in range(order):
        tower = level(tower)
    return tower


class Tower:
    """``phi`` and its first ``order`` derivatives as a float64 NumPy function of an array.

    Call as ``tower(x, shape_values)``; returns a tuple of ``order + 1`` arrays shaped like ``x``.
    """

    def __init__(self, spec: activations.ActivationSpec, order: int):
        self.spec = spec
        self.order = order
        names = tuple(spec.shape_params)
        fn = lambda x, *shape: spec.fn(x, **dict(zip(names, shape)))
        self._fn = _tower_fn(fn, order, len(names))
        self._num_shape = len(names)
        self._compiled = None
        with jax.enable_x64(True):
            # Abstract float64 scalars: a concrete jnp.float64(...) would run (and compile) a conversion.
            args = (jax.ShapeDtypeStruct((), np.float64),) * (1 + len(names))
            try:
                closed = jax.make_jaxpr(self._fn)(*args)
            except Exception as err:  # the user's function: any error means it cannot be used here
                raise activations.ActivationError(
                    f"Activation {spec.name!r} cannot be evaluated and differentiated {order} times on a "
                    f"float64 scalar with JAX ({type(err).__name__}: {err}). Activations must be "
                    "elementwise JAX functions of one array (plus keyword shape parameters).") from err
        for var in closed.jaxpr.outvars:
            if var.aval.shape != ():
                raise activations.ActivationError(
                    f"Activation {spec.name!r} is not elementwise: on a scalar input it returned shape "
                    f"{var.aval.shape}.")
        self._jaxpr = closed
        self.interpreted = True

    def __call__(self, x, shape: Sequence[float] = ()) -> tuple[np.ndarray, ...]:
        x = np.asarray(x, np.float64)
        shape = tuple(np.float64(v) for v in shape) or tuple(
            np.float64(v) for v in self.spec.shape_params.values())
        if self.interpreted:
            try:
                with np.errstate(all="ignore"):
                    outs = _eval_jaxpr(self._jaxpr.jaxpr, self._jaxpr.consts, (x,) + shape)
                return tuple(np.broadcast_to(np.asarray(o, np.float64), x.shape) for o in outs)
            except UnsupportedPrimitive as err:
                log.info("Activation %r uses %s: evaluating its derivatives with a compiled JAX "
                         "program instead of NumPy.", self.spec.name, err)
                self.interpreted = False
        return self._call_compiled(x, shape)

    def _call_compiled(self, x: np.ndarray, shape: tuple) -> tuple[np.ndarray, ...]:
        with jax.enable_x64(True):
            if self._compiled is None:
                in_axes = (0,) + (None,) * self._num_shape
                self._compiled = jax.jit(jax.vmap(self._fn, in_axes=in_axes))
            flat = x.reshape(-1)
            outs = self._compiled(flat, *shape)
            return tuple(np.asarray(o, np.float64).reshape(x.shape) for o in outs)


@functools.lru_cache(maxsize=512)
def tower(spec: activations.ActivationSpec, order: int) -> Tower:
    """The cached derivative tower of ``spec`` up to ``order`` (0 to 3).

    Args:
      spec: The registered activation (re-registering a name gives a new spec, so a new tower).
      order: Highest derivative wanted.

    Returns:
      A ``Tower``; ``tower(spec, k)(x, shape)[j]`` is the j-th derivative at ``x``.
    """
    if not 0 <= order <= 3:
        raise ValueError(f"tower: 'order' must be between 0 and 3, got {order}.")
    return Tower(spec, order)


def derivatives(spec: activations.ActivationSpec, x, order: int,
                shape: Sequence[float] = ()) -> tuple[np.ndarray, ...]:
    """``(phi, ..., phi^(order))`` of ``spec`` at ``x`` (float64 NumPy arrays)."""
    return tower(spec, order)(x, shape)
