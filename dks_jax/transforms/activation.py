"""``TransformedActivation``: a solved activation that knows its parameters and its kernel maps."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import numpy as np

from dks_jax import activations
from dks_jax.kernels import graph as graph_lib
from dks_jax.kernels import local_maps
from dks_jax.kernels import sequence as sequence_lib

PARAM_KEYS = ("input_scale", "input_shift", "output_shift", "output_scale")


@dataclasses.dataclass(frozen=True)
class TransformedActivation:
    """``phi_hat(x) = output_scale * (phi(input_scale * x + input_shift; shape) + output_shift)``.

    Frozen and hashable, so it can be a static argument of ``jax.jit`` and a Haiku module field.

    Attributes:
      name: Registered activation family ``phi``.
      method: How the parameters were chosen: 'DKS', 'TAT', 'EOC' or 'untransformed'.
      input_scale: ``alpha``.
      input_shift: ``beta``.
      output_shift: ``delta``.
      output_scale: ``gamma``.
      shape_params: The family's shape parameters as ``((name, value), ...)``, e.g. the negative slope.
      local_targets: What the solver aimed for, e.g. ``(("c_slope_1", 1.0083...),)``; for reporting.
      param_keys: Keys of the parameter dict the public ``dks`` package would return for this method
        (only these appear in ``as_dict()``).
    """

    name: str
    method: str = "untransformed"
    input_scale: float = 1.0
    input_shift: float = 0.0
    output_shift: float = 0.0
    output_scale: float = 1.0
    shape_params: tuple[tuple[str, float], ...] = ()
    local_targets: tuple[tuple[str, float], ...] = ()
    param_keys: tuple[str, ...] = ()

    @classmethod
    def untransformed(cls, name: str) -> "TransformedActivation":
        """The family's own function with its default shape parameters."""
        spec = activations.get_activation(name)
        return cls(name=name, shape_params=tuple((k, float(v)) for k, v in spec.shape_params.items()))

    @property
    def spec(self) -> activations.ActivationSpec:
        return activations.get_activation(self.name)

    @property
    def shape_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.shape_params)

    @property
    def theta(self) -> np.ndarray:
        """Parameters as the vector ``(alpha, beta, delta, gamma, *shape)`` of ``local_maps``."""
        return local_maps.make_theta(self.input_scale, self.input_shift, self.output_shift,
                                     self.output_scale, [v for _, v in self.shape_params])

    def __call__(self, x: jax.Array) -> jax.Array:
        # Python floats are weakly typed in JAX, so bfloat16/float32 inputs keep their dtype. Identity
        # parameters emit no op: XLA may not drop `x + 0.0` (it changes -0.0), and TReLU has three of them.
        if self.input_scale != 1.0:
            x = self.input_scale * x
        if self.input_shift != 0.0:
            x = x + self.input_shift
        y = self.spec.fn(x, **dict(self.shape_params))
        if self.output_shift != 0.0:
            y = y + self.output_shift
        if self.output_scale != 1.0:
            y = self.output_scale * y
        return y

    def as_dict(self) -> dict[str, float]:
        """The parameters under the keys of the public ``dks`` package (``get_activation_params``)."""
        values = {**dict(zip(PARAM_KEYS, self.theta[:4].tolist())), **dict(self.shape_params)}
        return {key: float(values[key]) for key in self.param_keys}

    # ------------------------------------------------------------------------------------------
    # Kernel maps (float64).

    def _closed_form_slope(self) -> float | None:
        """Negative slope when the C map has the Leaky ReLU closed form (no shifts), else None."""
        spec = self.spec
        if not spec.piecewise_linear or self.input_shift != 0.0 or self.output_shift != 0.0:
            return None
        return float(dict(self.shape_params).get("negative_slope", 0.0))

    def local_moments(self) -> dict[str, float]:
        """Q(1), Q'(1), C(0), C'(0), C'(1), C''(1) and E[phi] at unit input q, as floats.

        C''(1) is ``inf`` when ``phi'`` jumps (ReLU family, SELU), C'(1) too when ``phi`` jumps.
        """
        m = local_maps.local_moments(self.spec, self.shape_names, self.theta)
        return {k: float(v) for k, v in m._asdict().items()}

    def q_map(self, q: Any, derivative: int = 0) -> np.ndarray:
        """The local Q map (or its slope) at ``q``."""
        return np.asarray(local_maps.q_map(self.spec, self.shape_names, self.theta,
                                           np.asarray(q, np.float64), derivative=derivative))

    def c_map(self, c: Any, derivative: int = 0) -> np.ndarray:
        """The local C map (or its first/second derivative) at ``c``; closed form when one exists."""
        c = np.asarray(c, np.float64)
        slope = self._closed_form_slope()
        if slope is not None:
            return np.asarray(local_maps.leaky_relu_c_map(c, slope, derivative))
        return np.asarray(local_maps.c_map(self.spec, self.shape_names, self.theta, c,
                                           derivative=derivative))

    def network_c_map(self, network: graph_lib.Node, c: Any) -> np.ndarray:
        """The whole network's C map at ``c``: the local map composed through the kernel graph.

        The local map is computed once on a grid of angles (``c = cos(theta)``) and interpolated there
        (``local_maps.CMapInterpolant``), so deep networks cost a few dozen 2D quadratures in all.
        """
        c = np.asarray(c, np.float64)
        return np.asarray(graph_lib.propagate(network, c, self.interpolated_c_map()))

    def network_trace(self, network: graph_lib.Sequential, c: Any) -> list[np.ndarray]:
        """The C value after each top-level layer of ``network`` (``graph.trace``), for the inputs ``c``."""
        return graph_lib.trace(network, np.asarray(c, np.float64), self.interpolated_c_map())

    def interpolated_c_map(self):
        """The local C map as a fast vectorized function on [-1, 1] (closed form or interpolant)."""
        slope = self._closed_form_slope()
        if slope is not None:
            return lambda x: local_maps.leaky_relu_c_map(np.clip(x, -1.0, 1.0), slope)
        return _interpolant(self)

    def network_kernel_matrix(self, network: graph_lib.Node, kernel: Any) -> np.ndarray:
        """Kernel matrices over sequence positions ``[..., T, T]`` after ``network`` (a sequence model).

        See ``dks_jax.kernels.sequence``: the diagonals (per-position q) go through the local Q map, the
        correlations through the local C map, attention layers through their matrices at initialization.
        """
        return sequence_lib.propagate(network, np.asarray(kernel, np.float64), self._fast_q_map(),
                                      self.interpolated_c_map())

    def sequence_maps(self):
        """``(q_map, c_map)`` as fast vectorized NumPy functions, for ``dks_jax.kernels.sequence``."""
        return self._fast_q_map(), self.interpolated_c_map()

    def _fast_q_map(self):
        if self._closed_form_slope() is not None:
            # Positively homogeneous without shifts: Q(q) = q Q(1) exactly.
            q1 = float(self.q_map(1.0))
            return lambda q: q1 * np.asarray(q, np.float64)
        return lambda q: self.q_map(q)


    def describe(self) -> Mapping[str, Any]:
        """Everything worth printing about this activation (parameters and local map values)."""
        return {"name": self.name, "method": self.method, **self.as_dict(),
                **{f"target_{k}": v for k, v in self.local_targets}, **self.local_moments()}


@functools.lru_cache(maxsize=64)
def _interpolant(act: TransformedActivation) -> local_maps.CMapInterpolant:
    return local_maps.CMapInterpolant.build(act.spec, act.theta)
