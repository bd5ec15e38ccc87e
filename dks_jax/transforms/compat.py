"""Drop-in replacements for the public ``dks`` package's JAX entry points.

``from dks.jax import activation_transform`` users switch with one import::

    from dks_jax import get_transformed_activations, get_activation_params

Same argument names, defaults and meaning; the parameters come back under the same keys
(``input_scale``, ``input_shift``, ``output_shift``, ``output_scale``, ``negative_slope``), and they are
the same root the public package returns (``reference_root=True`` in the solver): where several
equivalent roots exist (a negative input scale, a mirrored shift of an odd function), the one it finds
from its starting points, not our canonical one. Differences that remain, by design:

* where the public package's fixed 100,000-node quadrature is inaccurate (ReLU and Leaky ReLU under DKS,
  whose kinks it does not split), our parameters are the exact ones; the difference is ~1e-5 for ReLU;
* activations whose slope jumps (SELU) are refused by TAT (their C''(1) is infinite; the public
  package returns parameters for a finite C''(1) that the function does not have);
* methods 'EOC' and our extra activations (sin, cos, trelu, dotted JAX names) are available here too.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax

from dks_jax.transforms import solver
from dks_jax.transforms.activation import TransformedActivation

_DKS_KEYS = {"c_slope_1_target", "local_q_slope_target"}
_TAT_KEYS = {"c_val_0_target", "c_curve_target"}


def _targets(params: Mapping[str, float] | None, allowed: set[str], kind: str) -> dict[str, float]:
    params = dict(params or {})
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"{kind} had unrecognized keys {sorted(unknown)}; valid keys: {sorted(allowed)}.")
    return params


def transformed_activations(activation_names: Sequence[str], method: str = "DKS",
                            dks_params: Mapping[str, float] | None = None,
                            tat_params: Mapping[str, float] | None = None,
                            max_slope_func: Callable[[float], float] | None = None,
                            max_curv_func: Callable[[float], float] | None = None,
                            subnet_max_func: solver.SubnetMaxFunc | None = None
                            ) -> dict[str, TransformedActivation]:
    """Like ``get_transformed_activations`` but returns the typed ``TransformedActivation`` objects."""
    if isinstance(activation_names, str) or not isinstance(activation_names, (list, tuple)):
        raise ValueError("activation_names must be a list or tuple of strings, got "
                         f"{activation_names!r}.")
    if method not in solver.METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(solver.METHODS)}.")
    dks = solver.DKSTargets(**_targets(dks_params, _DKS_KEYS, "dks_params"))
    tat = solver.TATTargets(**_targets(tat_params, _TAT_KEYS, "tat_params"))
    names = list(activation_names)
    if method == "TAT" and any(solver.is_leaky_family(n) for n in names) and len(names) > 1:
        raise ValueError("When using Leaky ReLU with TAT it must be the only activation function: its "
                         "transformation targets C(0), the smooth ones target C''(1).")
    out: dict[str, TransformedActivation] = {}
    # The network-level search is shared by every activation of one call, as in the reference.
    local: dict[str, float] = {}
    for name in names:
        if method in ("untransformed", "EOC"):
            out[name] = solver.transform(name, method)
        elif method == "DKS":
            if "s" not in local:
                if subnet_max_func is None and max_slope_func is None:
                    raise ValueError("Must supply 'subnet_max_func' if using DKS and not passing in "
                                     "'max_slope_func'.")
                local["s"] = solver.local_c_slope_target(subnet_max_func, dks.c_slope_1_target,
                                                         max_slope_func)
            out[name] = solver.dks_transform(name, local["s"], dks.local_q_slope_target,
                                             reference_root=True)
        else:
            out[name] = solver.transform(name, "TAT", subnet_max_func=subnet_max_func,
                                         max_curv_func=max_curv_func, tat=tat, reference_root=True)
    return out


def get_transformed_activations(activation_names: Sequence[str], method: str = "DKS",
                                dks_params: Mapping[str, float] | None = None,
                                tat_params: Mapping[str, float] | None = None,
                                max_slope_func: Callable[[float], float] | None = None,
                                max_curv_func: Callable[[float], float] | None = None,
                                subnet_max_func: solver.SubnetMaxFunc | None = None
                                ) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """Transformed activation functions for DKS, TAT (and the 'untransformed'/'EOC' baselines).

    Args:
      activation_names: List or tuple of registered activation names.
      method: 'DKS', 'TAT', 'untransformed' or 'EOC'.
      dks_params: Optional dict with keys among ``c_slope_1_target`` (zeta, default 1.5) and
        ``local_q_slope_target`` (default 1.0).
      tat_params: Optional dict with keys among ``c_val_0_target`` (eta, default 0.9, Leaky ReLU) and
        ``c_curve_target`` (tau, default 0.3, smooth activations).
      max_slope_func: The network's maximal C'(1) as a function of the local slope (DKS).
      max_curv_func: The network's maximal C''(1) as a function of the local curvature (TAT, smooth).
      subnet_max_func: The subnetwork-maximizing function ``M(x, r)`` (needed by TAT with Leaky ReLU;
        otherwise used to build the two functions above). ``dks_jax.kernels.subnet_max_func(spec)``
        builds it from a layer specification.

    Returns:
      Dict from name to a JAX-traceable elementwise function (a ``TransformedActivation``).
    """
    return dict(transformed_activations(activation_names, method, dks_params, tat_params,
                                        max_slope_func, max_curv_func, subnet_max_func))


def get_activation_params(activation_names: Sequence[str], method: str = "DKS",
                          dks_params: Mapping[str, float] | None = None,
                          tat_params: Mapping[str, float] | None = None,
                          max_slope_func: Callable[[float], float] | None = None,
                          max_curv_func: Callable[[float], float] | None = None,
                          subnet_max_func: solver.SubnetMaxFunc | None = None
                          ) -> dict[str, dict[str, Any]]:
    """The solved parameters per activation name, under the public package's keys.

    Arguments as ``get_transformed_activations``. For 'untransformed' the dicts are empty.
    """
    acts = transformed_activations(activation_names, method, dks_params, tat_params, max_slope_func,
                                   max_curv_func, subnet_max_func)
    return {name: act.as_dict() for name, act in acts.items()}
