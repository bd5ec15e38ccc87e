"""The one registry of activation functions known to dks_jax.

Every activation is a JAX-traceable elementwise function; its derivatives (which the kernel maps need
up to second order) come from autodiff, so registering a new family is a single call::

    dks_jax.register_activation("my_act", lambda x: x * jnp.tanh(x))

and DKS/TAT can then be solved for ``"my_act"`` by name. Metadata tells the quadrature where the
function is not smooth (``kinks``) so integrals are split there, and tells the solver about structure it
can exploit (positive homogeneity, a shape parameter such as Leaky ReLU's negative slope).

This module imports only JAX: it is safe for the kernel and solver layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp_special

ActivationFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """A registered activation function and what the kernel/solver layers need to know about it.

    Attributes:
      name: Registry name.
      fn: Elementwise JAX function ``fn(x, **shape_params)``.
      kinks: Points where ``fn`` or one of its first two derivatives is not smooth (for example 0.0 for
        ReLU and ELU). Quadrature splits its integration domain at these points.
      shape_params: Names and default values of the family's shape parameters (for example
        ``{"negative_slope": 0.01}`` for Leaky ReLU). The solver may choose them (DKS, TAT).
      positive_homogeneous: True when ``fn(s * x) = s * fn(x)`` for ``s > 0`` (ReLU family). Then an input
        scale is redundant with the output scale, which removes one degree of freedom.
      piecewise_linear: True when ``fn`` is piecewise linear with a single kink at 0 and slopes
        (negative_slope, 1): its unshifted C map has a closed form.
      description: One line for listings.
    """

    name: str
    fn: ActivationFn
    kinks: tuple[float, ...] = ()
    shape_params: Mapping[str, float] = dataclasses.field(default_factory=dict)
    positive_homogeneous: bool = False
    piecewise_linear: bool = False
    description: str = ""

    def __call__(self, x: jax.Array, **shape_params: float) -> jax.Array:
        return self.fn(x, **shape_params)

    def __hash__(self) -> int:  # Mapping fields are not hashable; names are unique in the registry.
        return hash(self.name)


_REGISTRY: dict[str, ActivationSpec] = {}


def register_activation(name: str, fn: ActivationFn, *, kinks: tuple[float, ...] = (),
                        shape_params: Mapping[str, float] | None = None,
                        positive_homogeneous: bool = False, piecewise_linear: bool = False,
                        description: str = "", overwrite: bool = False) -> ActivationSpec:
    """Registers an activation function so every part of dks_jax can use it by name.

    Args:
      name: The name to register under.
      fn: A JAX-traceable elementwise function ``fn(x, **shape_params)``. It must be differentiable
        twice by ``jax.grad`` almost everywhere.
      kinks: Points where ``fn`` (or its first/second derivative) is not smooth.
      shape_params: Default values of the family's shape parameters, if any.
      positive_homogeneous: Whether ``fn(s x) = s fn(x)`` for ``s > 0``.
      piecewise_linear: Whether ``fn`` is the Leaky-ReLU-shaped piecewise-linear family.
      description: A one-line description.
      overwrite: Allow replacing an existing entry (otherwise that is an error).

    Returns:
      The registered ``ActivationSpec``.

    Raises:
      ValueError: If ``name`` is taken and ``overwrite`` is False, or ``fn`` is not callable.
    """
    if not callable(fn):
        raise ValueError(f"register_activation: 'fn' for {name!r} must be callable, got {fn!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"register_activation: an activation named {name!r} is already registered; "
                         "pass overwrite=True to replace it.")
    spec = ActivationSpec(name=name, fn=fn, kinks=tuple(float(k) for k in kinks),
                          shape_params=dict(shape_params or {}),
                          positive_homogeneous=positive_homogeneous,
                          piecewise_linear=piecewise_linear, description=description)
    _REGISTRY[name] = spec
    return spec


def unregister_activation(name: str) -> None:
    """Removes ``name`` from the registry (mainly for tests that register temporary families)."""
    _REGISTRY.pop(name, None)


def get_activation(name: str) -> ActivationSpec:
    """Returns the registered ``ActivationSpec`` called ``name``.

    Raises:
      ValueError: If no such activation is registered; the message lists the known names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}. Known activations: "
                         f"{', '.join(sorted(_REGISTRY))}. Register new ones with "
                         "dks_jax.register_activation(name, fn).") from None


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

register_activation("relu", lambda x: jnp.maximum(x, 0.0), kinks=(0.0,), positive_homogeneous=True,
                    piecewise_linear=True, description="max(x, 0)")
register_activation("leaky_relu", _leaky_relu, kinks=(0.0,), shape_params={"negative_slope": 0.01},
                    positive_homogeneous=True, piecewise_linear=True,
                    description="x for x >= 0, negative_slope * x otherwise")
register_activation("trelu", _trelu, kinks=(0.0,), shape_params={"negative_slope": 0.0},
                    positive_homogeneous=True, piecewise_linear=True,
                    description="TReLU: sqrt(2 / (1 + a^2)) * leaky_relu(x, a), whose Q map is q")
register_activation("tanh", jnp.tanh, description="hyperbolic tangent")
register_activation("softplus", jax.nn.softplus, description="log(1 + exp(x))")
register_activation("sigmoid", jax.nn.sigmoid, description="logistic sigmoid 1 / (1 + exp(-x))")
register_activation("erf", jsp_special.erf, description="Gauss error function")
register_activation("atan", jnp.arctan, description="arctangent")
register_activation("asinh", jnp.arcsinh, description="inverse hyperbolic sine")
register_activation("softsign", lambda x: x / (1.0 + jnp.abs(x)), kinks=(0.0,),
                    description="x / (1 + |x|)")
register_activation("bentid", lambda x: (jnp.sqrt(x**2 + 1.0) - 1.0) / 2.0 + x,
                    description="bent identity (sqrt(x^2 + 1) - 1) / 2 + x")
register_activation("elu", _elu, kinks=(0.0,), description="x for x > 0, exp(x) - 1 otherwise")
register_activation("selu", lambda x: _SELU_SCALE * jnp.where(x > 0, x, _SELU_ALPHA * jnp.expm1(
    jnp.minimum(x, 0.0))), kinks=(0.0,), description="scaled ELU (Klambauer et al.)")
register_activation("swish", lambda x: x * jax.nn.sigmoid(x), description="x * sigmoid(x)")
register_activation("gelu", lambda x: jax.nn.gelu(x, approximate=True),
                    description="GELU, tanh approximation (jax.nn.gelu's default)")
register_activation("gelu_exact", lambda x: jax.nn.gelu(x, approximate=False),
                    description="GELU with the exact erf form")
register_activation("square", jnp.square, description="x^2")
register_activation("linear", lambda x: x, description="identity (useful as a reference: C(c) = c)")

# Kept for documentation and the README: the activations the public `dks` package supports.
DKS_COMPATIBLE_NAMES = ("relu", "leaky_relu", "tanh", "softplus", "sigmoid", "erf", "atan", "asinh",
                        "softsign", "bentid", "elu", "selu", "swish", "gelu", "gelu_exact", "square")

assert math.isclose(_SELU_ALPHA * _SELU_SCALE, 1.7580993408473766)
