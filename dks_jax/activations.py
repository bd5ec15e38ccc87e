"""The one registry of activation functions known to dks_jax.

Every activation is a JAX-traceable elementwise function; its derivatives (which the kernel maps need
up to second order) come from autodiff, so registering a new family is a single call::

    dks_jax.register_activation("my_act", lambda x: x * jnp.tanh(x))

and DKS/TAT can then be solved for ``"my_act"`` by name. Any elementwise function of ``jax.numpy``,
``jax.nn`` or ``jax.scipy.special`` is also available by its dotted name without registering it:
``"jnp.sinh"`` (or ``"jax.numpy.sinh"``), ``"jax.nn.silu"``, ``"jax.scipy.special.erf"``.

Metadata tells the quadrature where the function is not smooth (``kinks``) and how badly
(``kink_order``: which derivative jumps there), and tells the solver about structure it can exploit
(positive homogeneity, a shape parameter such as Leaky ReLU's negative slope, a period). Kinks that are
not declared are found numerically the first time they are needed (``dks_jax.kernels.kink_profile``).

This module imports only JAX and NumPy: it is safe for the kernel and solver layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp_special
import numpy as np

ActivationFn = Callable[..., jax.Array]

# How activations not in the registry can be named: prefix -> module.
JAX_NAMESPACES = {"jnp.": jnp, "jax.numpy.": jnp, "jax.nn.": jax.nn,
                  "jax.scipy.special.": jsp_special}


class ActivationError(ValueError):
    """An activation cannot be used: unknown name, not elementwise, not differentiable, NaN values."""


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """A registered activation function and what the kernel/solver layers need to know about it.

    Attributes:
      name: Registry name.
      fn: Elementwise JAX function ``fn(x, **shape_params)``.
      kinks: Points where ``fn`` or one of its first two derivatives jumps (0.0 for ReLU, ELU, SELU,
        softsign). Quadrature splits its integration domain there. ``None``: not declared, found
        numerically when first needed (``dks_jax.kernels.kink_profile``). ``()``: smooth.
      kink_order: The lowest derivative order that jumps at a kink: 0 when ``fn`` itself jumps, 1 when
        ``fn'`` does (ReLU, SELU: C''(1) is then infinite), 2 when only ``fn''`` does (ELU, softsign).
        ``None`` with declared kinks: measured at those kinks.
      shape_params: Names and default values of the family's shape parameters (for example
        ``{"negative_slope": 0.01}`` for Leaky ReLU). The solver may choose them (DKS, TAT). Kinks must
        not move with them.
      positive_homogeneous: True when ``fn(s * x) = s * fn(x)`` for ``s > 0`` (ReLU family). Then an input
        scale is redundant with the output scale, which removes one degree of freedom.
      piecewise_linear: True when ``fn`` is piecewise linear with a single kink at 0 and slopes
        (negative_slope, 1): its unshifted C map has a closed form.
      period: The period of a periodic ``fn`` (sin, cos): input shifts are reduced modulo it.
      description: One line for listings.
    """

    name: str
    fn: ActivationFn
    kinks: tuple[float, ...] | None = None
    kink_order: int | None = None
    shape_params: Mapping[str, float] = dataclasses.field(default_factory=dict)
    positive_homogeneous: bool = False
    piecewise_linear: bool = False
    period: float | None = None
    description: str = ""

    def __call__(self, x: jax.Array, **shape_params: float) -> jax.Array:
        return self.fn(x, **shape_params)

    def __hash__(self) -> int:  # Mapping fields are not hashable; names are unique in the registry.
        return hash(self.name)


_REGISTRY: dict[str, ActivationSpec] = {}


def register_activation(name: str, fn: ActivationFn, *, kinks: Sequence[float] | None = None,
                        kink_order: int | None = None,
                        shape_params: Mapping[str, float] | None = None,
                        positive_homogeneous: bool = False, piecewise_linear: bool = False,
                        period: float | None = None, description: str = "",
                        overwrite: bool = False) -> ActivationSpec:
    """Registers an activation function so every part of dks_jax can use it by name.

    Args:
      name: The name to register under (not starting with one of the ``JAX_NAMESPACES`` prefixes,
        which name JAX's own functions).
      fn: A JAX-traceable elementwise function ``fn(x, **shape_params)``. It must be differentiable
        twice by ``jax.jvp`` almost everywhere.
      kinks: Points where ``fn`` (or its first/second derivative) jumps; ``()`` declares ``fn`` smooth;
        ``None`` (default) lets dks_jax find them numerically on first use.
      kink_order: Which derivative jumps at the kinks (0, 1 or 2; see ``ActivationSpec``); measured
        when not given.
      shape_params: Default values of the family's shape parameters, if any.
      positive_homogeneous: Whether ``fn(s x) = s fn(x)`` for ``s > 0``.
      piecewise_linear: Whether ``fn`` is the Leaky-ReLU-shaped piecewise-linear family.
      period: The period of a periodic ``fn``, if any.
      description: A one-line description.
      overwrite: Allow replacing an existing entry (otherwise that is an error).

    Returns:
      The registered ``ActivationSpec``.

    Raises:
      ActivationError: If ``name`` is taken and ``overwrite`` is False, ``fn`` is not callable, or an
        argument is out of range.
    """
    if not isinstance(name, str) or not name:
        raise ActivationError(f"register_activation: 'name' must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise ActivationError(f"register_activation: 'fn' for {name!r} must be callable, got {fn!r}.")
    if name.startswith(tuple(JAX_NAMESPACES)) and fn is not _resolve_jax_name(name, check=False):
        raise ActivationError(f"register_activation: names starting with {', '.join(JAX_NAMESPACES)} "
                              f"are reserved for JAX's own functions; choose another name than {name!r}.")
    if name in _REGISTRY and not overwrite:
        raise ActivationError(f"register_activation: an activation named {name!r} is already "
                              "registered; pass overwrite=True to replace it.")
    if kink_order is not None and kink_order not in (0, 1, 2):
        raise ActivationError(f"register_activation: 'kink_order' for {name!r} must be 0, 1, 2 or None, "
                              f"got {kink_order!r}.")
    if kinks is not None and not kinks and kink_order is not None:
        raise ActivationError(f"register_activation: {name!r} declares no kinks (kinks=()) but "
                              f"kink_order={kink_order}; give the kinks' positions too.")
    if period is not None and not period > 0:
        raise ActivationError(f"register_activation: 'period' for {name!r} must be positive, got "
                              f"{period!r}.")
    spec = ActivationSpec(name=name, fn=fn,
                          kinks=None if kinks is None else tuple(float(k) for k in kinks),
                          kink_order=kink_order, shape_params=dict(shape_params or {}),
                          positive_homogeneous=positive_homogeneous,
                          piecewise_linear=piecewise_linear,
                          period=None if period is None else float(period), description=description)
    _REGISTRY[name] = spec
    return spec


def unregister_activation(name: str) -> None:
    """Removes ``name`` from the registry (mainly for tests that register temporary families)."""
    _REGISTRY.pop(name, None)


def get_activation(name: str) -> ActivationSpec:
    """Returns the registered ``ActivationSpec`` called ``name``.

    Names of elementwise JAX functions (``"jnp.sinh"``, ``"jax.numpy.sinh"``, ``"jax.nn.silu"``,
    ``"jax.scipy.special.erf"``) are registered on first use.

    Raises:
      ActivationError: If no such activation is registered (the message lists the known names), or a
        dotted JAX name does not name an elementwise function of one array.
    """
    if not isinstance(name, str):
        raise ActivationError(f"Activation names are strings, got {name!r}.")
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if name.startswith(tuple(JAX_NAMESPACES)):
        fn = _resolve_jax_name(name)
        return register_activation(name, fn, description=f"JAX's {name}")
    raise ActivationError(f"Unknown activation {name!r}. Known activations: "
                          f"{', '.join(sorted(_REGISTRY))}; or any elementwise JAX function by its "
                          "dotted name, e.g. 'jnp.sinh', 'jax.nn.silu'. Register new ones with "
                          "dks_jax.register_activation(name, fn).")


def _resolve_jax_name(name: str, check: bool = True) -> ActivationFn | None:
    """The JAX function a dotted name like ``"jax.nn.silu"`` names, checked to be elementwise."""
    prefix = next(p for p in JAX_NAMESPACES if name.startswith(p))
    attr = name[len(prefix):]
    module = JAX_NAMESPACES[prefix]
    fn = getattr(module, attr, None) if attr.isidentifier() else None
    if not check:
        return fn
    spelled = f"{prefix}{attr}"
    if fn is None:
        raise ActivationError(f"Unknown activation {name!r}: {prefix.rstrip('.')} has no function "
                              f"{attr!r}. Dotted names must name an elementwise function of "
                              f"{', '.join(p.rstrip('.') for p in JAX_NAMESPACES)}.")
    if not callable(fn) or isinstance(fn, type):
        raise ActivationError(f"{spelled!r} is not a function (it is a {type(fn).__name__}).")
    probe = np.linspace(-2.5, 3.0, 7)
    with jax.enable_x64(True):
        try:
            whole = np.asarray(fn(jnp.asarray(probe)))
        except Exception as err:  # JAX raises many kinds here (missing arguments, shape errors, ...)
            raise ActivationError(f"{spelled!r} cannot be used as an activation: calling it on one "
                                  f"array failed ({type(err).__name__}: {err}).") from err
        try:
            each = np.asarray(jax.vmap(fn)(jnp.asarray(probe)))  # fn applied to each scalar
        except Exception as err:
            raise ActivationError(f"{spelled!r} is not an elementwise function: it cannot be applied "
                                  f"to a single number ({type(err).__name__}: {err}).") from err
    if whole.shape != probe.shape or not np.allclose(whole, each, rtol=1e-12, atol=1e-12,
                                                     equal_nan=True):
        raise ActivationError(f"{spelled!r} is not an elementwise function: on a vector of "
                              f"{probe.size} values it returned shape {whole.shape} "
                              "(or values that depend on the other entries).")
    return fn


def list_activations() -> list[str]:
    """Names of every registered activation, sorted."""
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------------------------
# Built-in families.


def _leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    return jnp.where(x >= 0, x, negative_slope * x)


def _trelu(x: jax.Array, negative_slope: float = 0.0) -> jax.Array:
    # The TAT paper's "Tailored ReLU": the Leaky ReLU scaled so that its Q map is the identity.
    return jnp.sqrt(2.0 / (1.0 + negative_slope**2)) * _leaky_relu(x, negative_slope)


def _elu(x: jax.Array) -> jax.Array:
    # expm1 on the clipped input avoids overflow in the branch jnp.where discards (and NaN gradients).
    return jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0.0)))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

register_activation("relu", lambda x: jnp.maximum(x, 0.0), kinks=(0.0,), kink_order=1,
                    positive_homogeneous=True, piecewise_linear=True, description="max(x, 0)")
register_activation("leaky_relu", _leaky_relu, kinks=(0.0,), kink_order=1,
                    shape_params={"negative_slope": 0.01}, positive_homogeneous=True,
                    piecewise_linear=True, description="x for x >= 0, negative_slope * x otherwise")
register_activation("trelu", _trelu, kinks=(0.0,), kink_order=1, shape_params={"negative_slope": 0.0},
                    positive_homogeneous=True, piecewise_linear=True,
                    description="TReLU: sqrt(2 / (1 + a^2)) * leaky_relu(x, a), whose Q map is q")
register_activation("tanh", jnp.tanh, kinks=(), description="hyperbolic tangent")
register_activation("softplus", jax.nn.softplus, kinks=(), description="log(1 + exp(x))")
register_activation("sigmoid", jax.nn.sigmoid, kinks=(),
                    description="logistic sigmoid 1 / (1 + exp(-x))")
register_activation("erf", jsp_special.erf, kinks=(), description="Gauss error function")
register_activation("atan", jnp.arctan, kinks=(), description="arctangent")
register_activation("asinh", jnp.arcsinh, kinks=(), description="inverse hyperbolic sine")
register_activation("softsign", lambda x: x / (1.0 + jnp.abs(x)), kinks=(0.0,), kink_order=2,
                    description="x / (1 + |x|) (its second derivative jumps at 0)")
register_activation("bentid", lambda x: (jnp.sqrt(x**2 + 1.0) - 1.0) / 2.0 + x, kinks=(),
                    description="bent identity (sqrt(x^2 + 1) - 1) / 2 + x")
register_activation("elu", _elu, kinks=(0.0,), kink_order=2,
                    description="x for x > 0, exp(x) - 1 otherwise (its second derivative jumps at 0)")
register_activation("selu", lambda x: _SELU_SCALE * jnp.where(x > 0, x, _SELU_ALPHA * jnp.expm1(
    jnp.minimum(x, 0.0))), kinks=(0.0,), kink_order=1,
    description="scaled ELU (Klambauer et al.); its slope jumps at 0 (1.7581 to 1.0507)")
register_activation("swish", lambda x: x * jax.nn.sigmoid(x), kinks=(), description="x * sigmoid(x)")
register_activation("gelu", lambda x: jax.nn.gelu(x, approximate=True), kinks=(),
                    description="GELU, tanh approximation (jax.nn.gelu's default)")
register_activation("gelu_exact", lambda x: jax.nn.gelu(x, approximate=False), kinks=(),
                    description="GELU with the exact erf form")
register_activation("sin", jnp.sin, kinks=(), period=2.0 * math.pi, description="sine")
register_activation("cos", jnp.cos, kinks=(), period=2.0 * math.pi, description="cosine")
register_activation("square", jnp.square, kinks=(), description="x^2")
register_activation("linear", lambda x: x, kinks=(),
                    description="identity (useful as a reference: C(c) = c)")

# Kept for documentation and the README: the activations the public `dks` package supports.
# (sin and cos are in its source repository, not in its PyPI release 0.1.2.)
DKS_COMPATIBLE_NAMES = ("relu", "leaky_relu", "tanh", "softplus", "sigmoid", "erf", "atan", "asinh",
                        "softsign", "bentid", "elu", "selu", "swish", "gelu", "gelu_exact", "square",
                        "sin", "cos")

assert math.isclose(_SELU_ALPHA * _SELU_SCALE, 1.7580993408473766)
