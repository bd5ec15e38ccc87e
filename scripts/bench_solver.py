"""Solve times of the DKS/TAT solver per method and activation: cold, warm, cached, and the reference's.

* cold: the first solve in a fresh Python process, after ``import dks_jax`` (each case in its own
  subprocess, so nothing is traced, loaded or cached yet), median over ``--repeats`` processes;
  wall time and the process's CPU time (which is what the wall time would be on an idle machine:
  with other jobs on the cores the wall time grows, the CPU time hardly does);
* warm: the same solve again in that process with the result caches cleared (a real solve; what is
  kept is the activation's traced derivative program and the network's compiled ``M``, which hold no
  solved value: the reference gets ``M`` as a ready Python function too), median over ``--repeats``;
* cached: a repeated call (a dictionary lookup);
* reference (optional): the public ``dks`` package's solve for the same network, measured in this run
  in a subprocess of ``--reference_python`` (a virtualenv with ``dks`` installed), first call and a
  second call in the same process (it has no cache, so both are full solves).

The network is the vanilla ResNet-101 shape (100 nonlinear layers, the reference gets the same
subnetwork-maximizing function). Also reported: ``import dks_jax`` time and, with ``--cli``, the wall
time of ``python -m dks_jax.solve`` end to end. Goals: cold <= 0.1 s per activation for DKS and <= 0.3 s
for TAT with smooth activations; warm >= 100x faster than the reference, per method over the whole
set of activations (the issue's measure: "15 activations DKS ... 79x"), printed per activation too.

Usage: python scripts/bench_solver.py [--repeats=3] [--activations=softplus,tanh] [--methods=DKS,TAT]
       [--reference_python=/tmp/dksref/bin/python] [--cli]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOOTH = ("tanh", "softplus", "sigmoid", "erf", "atan", "asinh", "softsign", "bentid", "elu", "swish",
          "gelu", "gelu_exact", "sin", "cos")
DEFAULT = SMOOTH + ("selu", "relu", "leaky_relu")

# Runs in a fresh process: cold solve, then warm (caches cleared) and cached solves.
_OURS = r"""
import json, sys, time
t0 = time.perf_counter()
import dks_jax
from dks_jax.kernels import layouts
from dks_jax.transforms import solver
t1 = time.perf_counter()
net = layouts.resnet(101, 1000)
name, method, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
def timed():
    t, c = time.perf_counter(), time.process_time()
    dks_jax.transform(name, method, network=net)
    return time.perf_counter() - t, time.process_time() - c
cold = timed()
warm = []
for _ in range(repeats):
    solver.clear_caches()
    warm.append(timed())
cached = timed()[0]
print(json.dumps({"import": t1 - t0, "cold": cold, "warm": warm, "cached": cached}))
"""

# Runs in the reference's virtualenv: the same network (100 nonlinear layers in a chain).
_REFERENCE = r"""
import json, logging, sys, time
logging.disable(logging.WARNING)
from dks.base import activation_transform as at
def m(x, r):
    for _ in range(100):
        x = r(x)
    return x
name, method = sys.argv[1], sys.argv[2]
times = []
for _ in range(2):
    t = time.perf_counter()
    at._get_activations_params([name], method, subnet_max_func=m)
    times.append(time.perf_counter() - t)
print(json.dumps({"first": times[0], "second": times[1]}))
"""


def _run(cmd: list[str], timeout: float) -> dict | None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               DKS_JAX_CACHE="off")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        print(f"  ({' '.join(cmd[-2:])} failed: {out.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes (cold) and warm solves")
    parser.add_argument("--activations", default=",".join(DEFAULT))
    parser.add_argument("--methods", default="DKS,TAT")
    parser.add_argument("--reference_python", default="",
                        help="python of a virtualenv with the public dks package, to time it too")
    parser.add_argument("--reference_timeout", type=float, default=600.0)
    parser.add_argument("--cli", action="store_true", help="also time python -m dks_jax.solve")
    args = parser.parse_args()
    names = args.activations.split(",")
    methods = args.methods.split(",")
    cases = [(m, n) for m in methods for n in names
             if not (m == "TAT" and n in ("relu", "selu"))]  # TAT refuses both (infinite C''(1))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("network: vanilla ResNet-101 shape (100 nonlinear layers); times in seconds, medians over "
          f"{args.repeats} fresh processes (cold) / {args.repeats} solves (warm)\n")
    print("| method | activation | cold | cold CPU | warm | warm CPU | cached | reference 1st | "
          "reference 2nd | reference 2nd / warm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = {}
    totals: dict[str, list[float]] = {}  # kind -> [our warm total, reference total] over cases with both
    imports = []
    for method, name in cases:
        runs = [_run([sys.executable, "-c", _OURS, name, method, str(args.repeats)], 600.0)
                for _ in range(args.repeats)]
        runs = [r for r in runs if r]
        if not runs:
            print(f"| {method} | {name} | failed | | | | | | | |")
            continue
        imports += [r["import"] for r in runs]
        cold = statistics.median(r["cold"][0] for r in runs)
        cold_cpu = statistics.median(r["cold"][1] for r in runs)
        warm = statistics.median(w for r in runs for w, _ in r["warm"])
        warm_cpu = statistics.median(c for r in runs for _, c in r["warm"])
        cached = statistics.median(r["cached"] for r in runs)
        ref = None
        if args.reference_python:
            ref = _run([args.reference_python, "-c", _REFERENCE, name, method], args.reference_timeout)
        kind = method if method == "DKS" else ("TAT-leaky" if name == "leaky_relu" else "TAT-smooth")
        previous = worst.get(kind, (0.0, 0.0, 0.0))
        worst[kind] = (max(previous[0], cold), max(previous[1], cold_cpu), max(previous[2], warm))
        ratio = f"{ref['second'] / warm:.0f}x" if ref else "—"
        if ref:
            total = totals.setdefault(kind, [0.0, 0.0])
            total[0] += warm
            total[1] += ref["second"]
        print(f"| {method} | {name} | {cold:.3f} | {cold_cpu:.3f} | {warm:.4f} | {warm_cpu:.4f} | "
              f"{cached:.6f} | "
              f"{_fmt(ref and ref['first'], 2)} | {_fmt(ref and ref['second'], 2)} | {ratio} |",
              flush=True)
    print()
    print(f"import dks_jax: median {statistics.median(imports):.2f} s over {len(imports)} processes")
    for kind, (cold, cold_cpu, warm) in worst.items():
        print(f"worst {kind}: cold {cold:.3f} s (CPU {cold_cpu:.3f} s), warm {warm:.4f} s")
    for kind, (ours, reference) in totals.items():
        # The issue's own measure: one process solving the whole set, against the reference doing the same.
        print(f"{kind}, all activations above: warm {ours:.4f} s in total against the reference's "
              f"{reference:.2f} s: {reference / ours:.0f}x")
    print("goals: cold DKS <= 0.1 s, cold TAT-smooth <= 0.3 s per activation; warm >= 100x the reference")
    if args.cli:
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dks_jax.solve", "--method=TAT", "--activation=softplus",
                            "--depth=101"], capture_output=True, check=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=ROOT, DKS_JAX_CACHE="off"))
            walls.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare = time.perf_counter() - start
        print(f"python -m dks_jax.solve --method=TAT --activation=softplus --depth=101: median "
              f"{statistics.median(walls):.2f} s wall (bare interpreter start {bare:.2f} s)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
