"""What a solved transformation does to a network, as plain data (the ``dks_jax.solve`` CLI prints it).

Imports neither Haiku nor TFDS nor kfac-jax.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from dks_jax.kernels import graph as graph_lib
from dks_jax.transforms import solver
from dks_jax.transforms.activation import TransformedActivation

C_POINTS = (-0.5, 0.0, 0.3, 0.6, 0.9, 1.0)


def _layer_label(index: int, node: graph_lib.Node) -> str:
    name = getattr(node, "name", None)
    return f"{index}: {type(node).__name__}" + (f" {name}" if name else "")


def network_summary(act: TransformedActivation, network: graph_lib.Node,
                    c_points: Sequence[float] = C_POINTS, layers: bool = False) -> dict[str, Any]:
    """The activation's parameters, local maps and the network's maps, computed once.

    The network C map composes one interpolant of the local C map (``network_c_map``); the maximal
    C'(1) and C''(1) over the network and its subnetworks compose the local C'(1) and C''(1) through
    ``M`` exactly (``M(1, y -> C'(1) y)`` and ``M(0, y -> C''(1) + y)``).

    Args:
      act: The transformed activation.
      network: The layer specification it was solved for.
      c_points: Input correlations at which to report the network's C map.
      layers: Also report the C value after every top-level layer (``graph.trace``) for each point.

    Returns:
      A JSON-serializable dict.
    """
    local = act.local_moments()
    m = solver.network_subnet_max(network)
    c = np.asarray(c_points, np.float64)
    out: dict[str, Any] = {
        "activation": act.name, "method": act.method,
        "nonlinear_layers": graph_lib.count_nonlinear_layers(network),
        "params": act.as_dict(), "local_targets": dict(act.local_targets), "local_maps": local,
        # Q(1) = 1 is what makes the unit-q kernel maps below describe the real network.
        "preserves_unit_q": abs(local["q_value"] - 1.0) < 1e-6,
        "network_c_map": dict(zip(map(float, c), map(float, act.network_c_map(network, c)))),
        "network_max_c_slope_1": float(m(1.0, lambda y: local["c_slope_1"] * y)),
        "network_max_c_curv_1": (float(m(0.0, lambda y: local["c_curv_1"] + y))
                                 if math.isfinite(local["c_curv_1"]) else math.inf),
    }
    if layers:
        if not isinstance(network, graph_lib.Sequential):
            raise ValueError("network_summary: layers=True needs a Sequential network.")
        trace = act.network_trace(network, c)
        out["layers"] = [{"layer": _layer_label(i, node), "c": [float(v) for v in np.atleast_1d(t)]}
                         for i, (node, t) in enumerate(zip(network.layers, trace))]
    return out
