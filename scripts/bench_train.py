"""Training step times: the cost of the activation transformation, of batch norm and of K-FAC.

Prints, in one run, a markdown table of the median jitted step time (ms) for:
  * a TAT vanilla net against the same net with a plain ReLU (the transformation's overhead; goal <= 1.05x),
  * the same vanilla net against a ResNet-V2 with batch norm of the same depth (convnets),
  * K-FAC's step against SGD's,
for an MLP and a convnet, on every platform JAX sees (CPU here; the GPU too when one is present).

Usage: python scripts/bench_train.py [--steps=20] [--batch=128]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np

from dks_jax import configlib
from dks_jax.train import loop


def _config(**fields):
    c = configlib.base_config()
    c.dataset = "synthetic"
    c.num_epochs = 1.0
    c.checkpoint_every_steps = 10**9
    for key, value in fields.items():
        c[key] = value
    c.lock()
    return c


CASES = {
    "mlp": dict(model="mlp", depth=50, width=512),
    "convnet": dict(model="vanilla_resnet", depth=18, width_multiplier=0.5, stem="small"),
}
VARIANTS = {
    "TAT leaky_relu (sgd)": dict(method="TAT", activation="leaky_relu", optimizer="sgd"),
    "plain relu, same net (sgd)": dict(method="untransformed", activation="relu", optimizer="sgd",
                                       init="he_normal"),
    "TAT leaky_relu (kfac)": dict(method="TAT", activation="leaky_relu", optimizer="kfac",
                                  kfac_burnin_steps=0),
    "ResNet-V2 with batch norm, same depth (sgd)": dict(model="<bn baseline>", method="untransformed",
                                                        activation="relu", optimizer="sgd",
                                                        init="he_normal"),
}
# The batch-norm ResNet of each case: pre-activation residual blocks with batch norm and shortcuts.
BN_BASELINE = {"mlp": "residual_mlp_bn", "convnet": "resnet_bn"}


def time_steps(config, steps: int) -> float:
    """Median wall time (s) of one synchronous jitted training step, after compilation."""
    exp = loop.Experiment(config)
    state = exp.init_state()
    params, opt_state, func_state = state["params"], state["opt_state"], state["state"]
    step_fn = exp.optimizer.jit_step(exp.mesh)
    with exp.train_iterator(0) as it:
        batch = next(iter(it))
    key = jax.random.PRNGKey(0)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        params, opt_state, func_state, metrics = step_fn(params, opt_state, func_state, key, batch, i)
        jax.block_until_ready((params, metrics))
        if i >= 2:  # the first calls compile
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"devices: {jax.devices()}; host: {platform.node()} ({platform.processor() or platform.machine()})")
    print(f"batch {args.batch}, synthetic 32x32x3 data, median of {args.steps} steps\n")
    print("| network | variant | step (ms) | ratio to TAT (sgd) |")
    print("|---|---|---|---|")
    for case, fields in CASES.items():
        base = None
        for variant, extra in VARIANTS.items():
            if extra.get("model") == "<bn baseline>":
                extra = {**extra, "model": BN_BASELINE[case]}
            config = _config(batch_size=args.batch, **{**fields, **extra})
            seconds = time_steps(config, args.steps)
            base = base or seconds
            print(f"| {case} ({fields.get('depth')} layers) | {variant} | {seconds * 1e3:.1f} | "
                  f"{seconds / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
