"""Solve times of the DKS/TAT solver, per method and activation, for three networks.

Prints a markdown table: the first call in the process for each activation (which includes JAX's
compilation of that family's residuals) and the median of repeated *uncached* solves afterwards (the
result cache is cleared before every timed call, so these are real solves, not lookups), plus the time of
a cached call. Goals: <= 0.05 s per activation for DKS and <= 0.3 s for TAT with smooth activations.

Usage: python scripts/bench_solver.py [--repeats=3] [--activations=softplus,tanh]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from dks_jax.kernels import layouts
from dks_jax.transforms import solver

NETWORKS = {
    "plain-50": layouts.plain_stack(50),
    "plain-200": layouts.plain_stack(200),
    "resnet-101 (w=0)": layouts.resnet(101, 1000),
}
SMOOTH = ("tanh", "softplus", "sigmoid", "erf", "atan", "asinh", "softsign", "bentid", "elu", "selu",
          "swish", "gelu", "gelu_exact")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--activations", default=",".join(SMOOTH + ("relu", "leaky_relu")))
    args = parser.parse_args()
    names = args.activations.split(",")
    cases = [(m, n) for n in names for m in ("DKS", "TAT") if not (m == "TAT" and n == "relu")]

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; python {platform.python_version()}")
    print("| method | activation | network | first call (s) | uncached solve, median (s) | cached (s) |")
    print("|---|---|---|---|---|---|")
    worst = {"DKS": 0.0, "TAT-smooth": 0.0, "TAT-leaky": 0.0}
    for method, name in cases:
        first = None
        for net_name, net in NETWORKS.items():
            run = lambda: solver.transform(name, method, network=net)
            t_first = _time(run) if first is None else None
            first = first or t_first
            times = []
            for _ in range(args.repeats):
                solver.clear_caches()
                times.append(_time(run))
            cached = _time(run)
            median = statistics.median(times)
            kind = method if method == "DKS" else ("TAT-leaky" if name == "leaky_relu" else "TAT-smooth")
            worst[kind] = max(worst[kind], median)
            shown_first = f"{t_first:.3f}" if t_first is not None else ""
            print(f"| {method} | {name} | {net_name} | {shown_first} | {median:.4f} | {cached:.6f} |")
    print()
    print("worst uncached median per kind (s): " + ", ".join(f"{k} {v:.4f}" for k, v in worst.items()))
    print("goals: DKS <= 0.05 s, TAT-smooth <= 0.3 s per activation (after the first call)")


if __name__ == "__main__":
    main()
