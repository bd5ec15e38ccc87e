"""Side by side with the public ``dks`` package: does the drop-in API return the same functions?

For every (method, activation, network, targets) case, the public package's
``_get_activations_params`` runs in a subprocess of ``--reference_python`` (a virtualenv with ``dks``
installed; ``dks_jax.kernels`` is put on its path only to build the same networks' ``M`` functions), and
``dks_jax.get_activation_params`` runs here with the same ``M``. Each case prints the largest parameter
difference and the largest difference of the two transformed functions on ``x`` in ``[-3, 3]``: the
drop-in promise is the same function, so the second column is the one that must be small (the
reference's own quadrature error is ~1e-6 for kinked activations, so ``--tol`` defaults to 1e-5).

Usage: python scripts/compare_reference.py --reference_python=/tmp/dksref/bin/python
       [--activations=elu,tanh] [--methods=DKS,TAT] [--networks=plain49,resnet50_w06] [--tol=1e-5]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ACTIVATIONS = ("tanh", "softplus", "sigmoid", "erf", "atan", "asinh", "elu", "selu", "swish", "gelu",
               "sin", "cos", "relu", "leaky_relu")
# name -> Python expression of a dks_jax layer specification (evaluated on both sides).
NETWORKS = {
    "plain49": "layouts.plain_stack(49)",
    "plain199": "layouts.plain_stack(199)",
    "resnet50_w06": "layouts.resnet(50, 1000, shortcut_weight=0.6)",
    "resnet101": "layouts.resnet(101, 1000)",
}
# name -> keyword arguments of both APIs.
TARGETS = {"default": {}, "zeta10_tau4.5": {"dks_params": {"c_slope_1_target": 10.0},
                                             "tat_params": {"c_curve_target": 4.5}}}

_REFERENCE = r"""
import json, logging, sys
logging.disable(logging.WARNING)
sys.path.insert(0, sys.argv[1])
from dks.base import activation_transform as at
from dks_jax.kernels import graph, layouts
network, method, names, kwargs = eval(sys.argv[2]), sys.argv[3], sys.argv[4].split(","), json.loads(sys.argv[5])
m = graph.subnet_max_func(network)
out = {}
for name in names:
    try:
        params = at._get_activations_params([name], method, subnet_max_func=m, **kwargs)[name]
        out[name] = {k: float(v) for k, v in params.items()}
    except Exception as err:  # a failure is a row, not a crash
        out[name] = {"error": f"{type(err).__name__}: {err}"[:200]}
print(json.dumps(out))
"""


def _function(name: str, params: dict[str, float]):
    """The transformed activation as the public package defines it, from its parameters (NumPy)."""
    from dks_jax import activations  # pylint: disable=g-import-not-at-top
    from dks_jax.kernels import evaluate  # pylint: disable=g-import-not-at-top

    spec = activations.get_activation(name)
    if name == "leaky_relu":
        a = params.get("negative_slope", 0.0)
        base = lambda x: np.where(x >= 0, x, a * x)
    else:
        tower = evaluate.tower(spec, 0)
        base = lambda x: tower(x)[0]
    return lambda x: params.get("output_scale", 1.0) * (
        base(params.get("input_scale", 1.0) * x + params.get("input_shift", 0.0))
        + params.get("output_shift", 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_python", required=True)
    parser.add_argument("--activations", default=",".join(ACTIVATIONS))
    parser.add_argument("--methods", default="DKS,TAT")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    os.environ.setdefault("DKS_JAX_CACHE", "off")
    logging.disable(logging.WARNING)
    import dks_jax  # pylint: disable=g-import-not-at-top
    from dks_jax.kernels import graph, layouts  # pylint: disable=g-import-not-at-top,unused-import

    x = np.linspace(-3.0, 3.0, 601)
    rows, bad = 0, []
    print("| method | network | targets | activation | max param diff | max function diff | ref s | ours s |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        names = [n for n in args.activations.split(",")
                 if not (method == "TAT" and n in ("relu", "selu"))]  # TAT refuses both
        for net_name in args.networks.split(","):
            network = eval(NETWORKS[net_name])  # pylint: disable=eval-used
            m = graph.subnet_max_func(network)
            for target_name in args.targets.split(","):
                kwargs = TARGETS[target_name]
                start = time.perf_counter()
                out = subprocess.run([args.reference_python, "-c", _REFERENCE, ROOT, NETWORKS[net_name],
                                      method, ",".join(names), json.dumps(kwargs)],
                                     capture_output=True, text=True, cwd=ROOT)
                ref_seconds = (time.perf_counter() - start) / max(len(names), 1)
                if out.returncode != 0:
                    print(f"reference failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                reference = json.loads(out.stdout.strip().splitlines()[-1])
                for name in names:
                    ref = reference[name]
                    start = time.perf_counter()
                    try:
                        ours = dks_jax.get_activation_params([name], method, subnet_max_func=m,
                                                             **kwargs)[name]
                    except Exception as err:  # pylint: disable=broad-except
                        ours = {"error": f"{type(err).__name__}: {err}"[:200]}
                    seconds = time.perf_counter() - start
                    if "Unrecognized activation" in ref.get("error", ""):
                        print(f"| {method} | {net_name} | {target_name} | {name} | not in the reference | | | |")
                        continue
                    rows += 1
                    if "error" in ref or "error" in ours:
                        same = "error" in ref and "error" in ours
                        print(f"| {method} | {net_name} | {target_name} | {name} | "
                              f"{'both refuse' if same else 'ref: ' + ref.get('error', 'ok')} | "
                              f"{'' if same else 'ours: ' + ours.get('error', 'ok')} | | |")
                        if not same:
                            bad.append((method, net_name, target_name, name))
                        continue
                    pdiff = max(abs(ours[k] - ref[k]) for k in ref)
                    fdiff = float(np.max(np.abs(_function(name, ours)(x) - _function(name, ref)(x))))
                    if not (fdiff <= args.tol) or math.isnan(fdiff):
                        bad.append((method, net_name, target_name, name))
                    print(f"| {method} | {net_name} | {target_name} | {name} | {pdiff:.2e} | {fdiff:.2e} | "
                          f"{ref_seconds:.2f} | {seconds:.2f} |", flush=True)
    print(f"\n{rows - len(bad)} of {rows} cases give the same function within {args.tol:g}"
          + (": differ: " + "; ".join(" ".join(b) for b in bad) if bad else "."))


if __name__ == "__main__":
    main()
