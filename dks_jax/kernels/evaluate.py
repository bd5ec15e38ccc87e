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
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from dks_jax import activations

log = logging.getLogger(__name__)

TowerFn = Callable[..., tuple[np.ndarray, ...]]

def _logistic(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _libm_or_scipy(scalar: Callable[[float], float], scipy_name: str
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """An elementwise special function: the math module's (~1 ulp) on small arrays, SciPy's on big ones.

    ``import scipy.special`` costs 0.1 s (1 s on a loaded machine), more than a whole solve, whose
    arrays have a few hundred nodes: there a Python-level loop over libm is cheaper. Large arrays
    (2D quadrature, kink detection) are worth SciPy's vectorized version.
    """
    ufunc = np.frompyfunc(scalar, 1, 1)

    def fn(x):
        x = np.asarray(x, np.float64)
        if x.size <= 4096:
            return np.asarray(ufunc(x), np.float64)
        import scipy.special  # local: see the docstring

        return getattr(scipy.special, scipy_name)(x)

    return fn


# The rarer special functions come from scipy.special, imported when a program needs one.
_SCIPY_SPECIAL = {"erf_inv": "erfinv", "digamma": "digamma", "bessel_i0e": "i0e", "bessel_i1e": "i1e"}

_UNARY = {
    "neg": np.negative, "exp": np.exp, "exp2": np.exp2, "log": np.log, "log1p": np.log1p,
    "expm1": np.expm1, "tanh": np.tanh, "logistic": _logistic, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh,
    "cosh": np.cosh, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x), "cbrt": np.cbrt, "abs": np.abs, "sign": np.sign,
    "floor": np.floor, "ceil": np.ceil, "square": np.square, "not": np.logical_not,
    "is_finite": np.isfinite, "real": np.real, "erf": _libm_or_scipy(math.erf, "erf"),
    "erfc": _libm_or_scipy(math.erfc, "erfc"), "lgamma": _libm_or_scipy(math.lgamma, "gammaln"),
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


def _flatten(jaxpr, consts: Sequence, in_slots: list, steps: list, slots: list) -> list:
    """Appends the jaxpr's equations to ``steps`` as (function, argument slots, output slots).

    A slot is an index into the value list built when the program runs; literals and constants get
    slots filled up front. Calls (``pjit``, ``custom_jvp_call``, ...) are inlined; ``mul x 1.0`` and
    identities (scalar reshapes, ``copy``) become aliases, which removes most of what nested
    ``jvp`` adds.

    Raises:
      UnsupportedPrimitive: For a primitive that is not an elementwise operation we know.
    """
    env: dict = {}

    def slot_of(v):
        if isinstance(v, jex_core.Literal):
            slots.append(np.asarray(v.val))
            return len(slots) - 1
        return env[v]

    def const(value) -> int:
        slots.append(value)
        return len(slots) - 1

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = const(np.asarray(val))
    for var, slot in zip(jaxpr.invars, in_slots):
        env[var] = slot
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        args = [slot_of(v) for v in eqn.invars]
        literal_one = [isinstance(v, jex_core.Literal) and np.ndim(v.val) == 0 and v.val == 1
                       for v in eqn.invars]
        fn = None
        if name in _SCIPY_SPECIAL:
            import scipy.special  # local: see _SCIPY_SPECIAL

            fn = getattr(scipy.special, _SCIPY_SPECIAL[name])
        elif name in _UNARY:
            fn = _UNARY[name]
            if name in ("copy", "copy_p", "stop_gradient", "optimization_barrier",
                        "reduce_precision"):
                env[eqn.outvars[0]] = args[0]
                continue
        elif name in _BINARY:
            if name == "mul" and any(literal_one):
                env[eqn.outvars[0]] = args[1] if literal_one[0] else args[0]
                continue
            fn = _BINARY[name]
        elif name == "integer_pow":
            y = eqn.params["y"]
            fn = lambda x, y=y: np.power(x, y)
        elif name == "select_n":
            fn = (lambda p, a, b: np.where(p, b, a)) if len(args) == 3 else \
                (lambda p, *cases: np.choose(np.asarray(p, np.int64), np.broadcast_arrays(*cases)))
        elif name == "clamp":
            fn = lambda lo, x, hi: np.clip(x, lo, hi)
        elif name == "round":
            method = eqn.params.get("rounding_method", 0)
            fn = lambda x, m=method: _round(x, m)
        elif name == "convert_element_type":
            dtype = np.dtype(eqn.params["new_dtype"])
            if dtype == np.float64 and eqn.invars[0].aval.dtype == np.float64:
                env[eqn.outvars[0]] = args[0]
                continue
            fn = lambda x, d=dtype: np.asarray(x).astype(d)
        elif name in _SCALAR_SHAPE_OPS:
            if eqn.outvars[0].aval.shape != ():
                raise UnsupportedPrimitive(f"{name} to shape {eqn.outvars[0].aval.shape}")
            env[eqn.outvars[0]] = args[0]
            continue
        else:
            sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
            if sub is None:
                raise UnsupportedPrimitive(name)
            inner, inner_consts = (sub.jaxpr, sub.consts) if isinstance(sub, jex_core.ClosedJaxpr) \
                else (sub, ())
            outs = _flatten(inner, inner_consts, args[:len(inner.invars)], steps, slots)
            for var, slot in zip(eqn.outvars, outs):
                env[var] = slot
            continue
        slots.append(None)
        out = len(slots) - 1
        steps.append((fn, tuple(args), out))
        env[eqn.outvars[0]] = out
    return [slot_of(v) for v in jaxpr.outvars]


class _Program:
    """A flattened jaxpr of elementwise primitives, run with NumPy."""

    def __init__(self, closed):
        self.slots: list = [None] * len(closed.jaxpr.invars)
        self.steps: list = []
        self.outs = _flatten(closed.jaxpr, closed.consts, list(range(len(self.slots))), self.steps,
                             self.slots)

    def __call__(self, *args) -> list:
        values = list(self.slots)
        values[:len(args)] = args
        for fn, ins, out in self.steps:
            values[out] = fn(*[values[i] for i in ins])
        return [values[i] for i in self.outs]


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
        self._default_shape = tuple(np.float64(v) for v in spec.shape_params.values())
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
        try:
            self._program = _Program(closed)
        except UnsupportedPrimitive as err:
            log.info("Activation %r uses %s: evaluating its derivatives with a compiled JAX program "
                     "instead of NumPy.", spec.name, err)
            self._program = None
        self.interpreted = self._program is not None

    def __call__(self, x, shape: Sequence[float] = ()) -> tuple[np.ndarray, ...]:
        x = np.asarray(x, np.float64)
        shape = tuple(shape) if len(shape) else self._default_shape
        if self._program is None:
            return self._call_compiled(x, shape)
        with np.errstate(all="ignore"):
            outs = self._program(x, *shape)
        return tuple(o if isinstance(o, np.ndarray) and o.shape == x.shape
                     else np.broadcast_to(np.asarray(o, np.float64), x.shape) for o in outs)

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
