r"""Solve DKS/TAT for one activation and network and print the parameters and the network's C map.

Examples:
  python -m dks_jax.solve --method=TAT --activation=leaky_relu --depth=101
  python -m dks_jax.solve --method=DKS --activation=softplus --arch=resnet --depth=101 \
      --shortcut_weight=0.6 --zeta=1.2
  python -m dks_jax.solve --method=TAT --activation=gelu --arch=plain --depth=50 --tau=0.3

``--arch=resnet`` (default) is the ResNet-V2-shaped network of the given depth (vanilla unless
``--shortcut_weight`` > 0); ``--arch=plain`` and ``--arch=mlp`` are chains of ``depth`` nonlinear layers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from dks_jax import activations
from dks_jax.kernels import graph as graph_lib
from dks_jax.kernels import layouts
from dks_jax.transforms import solver

C_POINTS = (-0.5, 0.0, 0.3, 0.6, 0.9, 1.0)


def build_network(arch: str, depth: int, shortcut_weight: float) -> graph_lib.Node:
    """The layer specification the command solves for."""
    if arch == "resnet":
        return layouts.resnet(depth, 1000, shortcut_weight=shortcut_weight)
    if arch == "plain":
        return layouts.plain_stack(depth)
    if arch == "mlp":
        return layouts.mlp(depth, 1, 10)
    raise ValueError(f"--arch must be one of resnet, plain, mlp; got {arch!r}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="TAT", choices=solver.METHODS)
    parser.add_argument("--activation", default="leaky_relu",
                        help="one of: " + ", ".join(activations.list_activations()))
    parser.add_argument("--arch", default="resnet", choices=("resnet", "plain", "mlp"))
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--shortcut_weight", type=float, default=0.0)
    parser.add_argument("--zeta", type=float, default=1.5, help="DKS c_slope_1_target")
    parser.add_argument("--q_slope", type=float, default=1.0, help="DKS local_q_slope_target")
    parser.add_argument("--eta", type=float, default=0.9, help="TAT c_val_0_target (Leaky ReLU)")
    parser.add_argument("--tau", type=float, default=0.3, help="TAT c_curve_target (smooth)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    try:
        network = build_network(args.arch, args.depth, args.shortcut_weight)
        start = time.perf_counter()
        act = solver.transform(args.activation, args.method, network=network,
                               dks=solver.DKSTargets(args.zeta, args.q_slope),
                               tat=solver.TATTargets(args.eta, args.tau))
        seconds = time.perf_counter() - start
    except ValueError as err:  # bad input and unreachable targets: one clear line, non-zero exit
        print(f"error: {err}", file=sys.stderr)
        return 2

    c = np.asarray(C_POINTS)
    net_c = act.network_c_map(network, c)
    net_c_slope = graph_lib.subnet_max_func(network)(1.0, lambda y: float(act.c_map(1.0, 1)) * y)
    result = {
        "activation": args.activation, "method": args.method, "arch": args.arch, "depth": args.depth,
        "shortcut_weight": args.shortcut_weight,
        "nonlinear_layers": graph_lib.count_nonlinear_layers(network),
        "params": act.as_dict(), "local_targets": dict(act.local_targets),
        "local_maps": act.local_moments(), "network_c_map": dict(zip(map(float, c), map(float, net_c))),
        "network_max_c_slope_1": float(net_c_slope), "solve_seconds": seconds,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.method} for {args.activation} on {args.arch}-{args.depth} "
          f"(shortcut weight {args.shortcut_weight}, {result['nonlinear_layers']} nonlinear layers), "
          f"solved in {seconds:.3f} s")
    print("parameters:")
    for key, value in result["params"].items():
        print(f"  {key:14s} {value:.12f}")
    print("local maps: " + ", ".join(f"{k}={v:.10g}" for k, v in result["local_maps"].items()))
    print("network C map:")
    for ci, vi in result["network_c_map"].items():
        print(f"  C_net({ci:+.2f}) = {vi:.10f}")
    print(f"network max C'(1) over subnetworks = {net_c_slope:.10f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
