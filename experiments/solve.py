r"""Solve DKS/TAT for one activation and network and print the parameters and the network's C map.

Examples:
  python -m experiments.solve --method=TAT --activation=leaky_relu --depth=101
  python -m experiments.solve --method=DKS --activation=softplus --arch=resnet --depth=101 \
      --shortcut_weight=0.6 --zeta=1.2
  python -m experiments.solve --method=TAT --activation=gelu --arch=plain --depth=50 --tau=0.3 --layers
  python -m experiments.solve --method=DKS --activation=jax.nn.silu --arch=mlp --depth=30 --json

``--arch=resnet`` (default) is the ResNet-V2-shaped network of the given depth (vanilla unless
``--shortcut_weight`` > 0); ``--arch=plain`` and ``--arch=mlp`` are chains of ``depth`` nonlinear layers.
``--activation`` takes any registered name or a dotted JAX name (``jnp.sinh``, ``jax.nn.silu``);
``--register_from=FILE`` runs a Python file first (one that registers activations, see
docs/activations.md). ``--layers`` adds the C value after every top-level layer.
``python -m dks_jax.solve`` is the same command.
"""

from __future__ import annotations

import json
import math
import runpy
import time
from typing import Sequence

from dks_jax import activations
from dks_jax.kernels import graph as graph_lib
from dks_jax.kernels import layouts
from dks_jax.transforms import solver, summary
from experiments import cli


def build_network(arch: str, depth: int, shortcut_weight: float) -> graph_lib.Node:
    """The layer specification the command solves for."""
    if arch == "resnet":
        return layouts.resnet(depth, 1000, shortcut_weight=shortcut_weight)
    if arch == "plain":
        return layouts.plain_stack(depth)
    if arch == "mlp":
        return layouts.mlp(depth, 1, 10)
    raise cli.UsageError(f"--arch must be one of resnet, plain, mlp; got {arch!r}.")


def _fmt(value: float) -> str:
    return f"{value:.10g}" if math.isfinite(value) else str(value)


def main(argv: Sequence[str], prog: str = "python -m experiments.solve") -> int:
    parser = cli.parser(prog, __doc__.split("\n")[0], epilog=__doc__)
    parser.add_argument("--method", default="TAT", choices=solver.METHODS)
    parser.add_argument("--activation", default="leaky_relu",
                        help="one of: " + ", ".join(activations.list_activations())
                        + "; or a dotted JAX name such as jnp.sinh or jax.nn.silu")
    parser.add_argument("--arch", default="resnet", choices=("resnet", "plain", "mlp"))
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--shortcut_weight", type=float, default=0.0)
    parser.add_argument("--zeta", type=float, default=1.5, help="DKS c_slope_1_target")
    parser.add_argument("--q_slope", type=float, default=1.0, help="DKS local_q_slope_target")
    parser.add_argument("--eta", type=float, default=0.9, help="TAT c_val_0_target (Leaky ReLU)")
    parser.add_argument("--tau", type=float, default=0.3, help="TAT c_curve_target (smooth)")
    parser.add_argument("--layers", action="store_true",
                        help="also print the C value after every top-level layer")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--register_from", default="",
                        help="a Python file to run first, e.g. one that registers activations")
    args = cli.parse_without_config(parser, argv)
    if args is None:
        return 0
    if args.register_from:
        runpy.run_path(args.register_from)
    network = build_network(args.arch, args.depth, args.shortcut_weight)
    start = time.perf_counter()
    act = solver.transform(args.activation, args.method, network=network,
                           dks=solver.DKSTargets(args.zeta, args.q_slope),
                           tat=solver.TATTargets(args.eta, args.tau))
    seconds = time.perf_counter() - start
    result = summary.network_summary(act, network, layers=args.layers)
    result.update(arch=args.arch, depth=args.depth, shortcut_weight=args.shortcut_weight,
                  solve_seconds=seconds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.method} for {args.activation} on {args.arch}-{args.depth} "
          f"(shortcut weight {args.shortcut_weight}, {result['nonlinear_layers']} nonlinear layers), "
          f"solved in {seconds:.3f} s")
    print("parameters:")
    for key, value in result["params"].items():
        print(f"  {key:14s} {value:.12f}")
    print("local maps: " + ", ".join(f"{k}={_fmt(v)}" for k, v in result["local_maps"].items()))
    if not result["preserves_unit_q"]:
        print(f"note: Q(1) = {result['local_maps']['q_value']:.6g}, not 1: q changes from layer to layer "
              "and the maps below are those of a network whose layer inputs are rescaled to unit q.")
    print("network C map:")
    for ci, vi in result["network_c_map"].items():
        print(f"  C_net({ci:+.2f}) = {vi:.10f}")
    print(f"network max C'(1) over subnetworks = {_fmt(result['network_max_c_slope_1'])}")
    print(f"network max C''(1) over subnetworks = {_fmt(result['network_max_c_curv_1'])}")
    if args.layers:
        points = list(result["network_c_map"])
        print("C after each top-level layer, for input c = " + ", ".join(f"{c:+.2f}" for c in points))
        for row in result["layers"]:
            print(f"  {row['layer']:40s} " + " ".join(f"{v:.8f}" for v in row["c"]))
    return 0


if __name__ == "__main__":
    cli.main_wrapper(main, "experiments.solve")
