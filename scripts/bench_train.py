"""Training step times: the cost of the activation transformation, of batch norm and of K-FAC.

Prints, in one run, a markdown table of the median jitted step time (ms) for:
  * a TAT vanilla net against the same net with a plain ReLU (the transformation's overhead; goal <= 1.05x),
  * the same vanilla net against a ResNet-V2 with batch norm of the same depth (a residual MLP with batch
    norm for the MLP),
  * K-FAC's step against SGD's,
for an MLP and a convnet, on JAX's default platform (the GPU or TPU when one is present, else the CPU).

Usage: python scripts/bench_train.py [--steps=20] [--batch=128] [--conv_batch=32] [--cases=mlp,convnet]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax

from dks_jax import configlib
from dks_jax.train import loop


def _config(**fields):
    c = configlib.base_config()
    configlib.set_fields(c, {"dataset": "synthetic", "num_epochs": 1.0, "checkpoint_every_steps": 10**9})
    return configlib.set_fields(c, fields)


# The convnet is kept small enough for CPU (a K-FAC step of the width-0.5 version at batch 128 takes
# minutes to compile and seconds per step there); on accelerators raise --conv_batch.
CASES = {
    "mlp": dict(model="mlp", depth=50, width=512),
    "convnet": dict(model="vanilla_resnet", depth=18, width_multiplier=0.25, stem="small"),
}
VARIANTS = {
    "TAT leaky_relu (sgd)": {"method": "TAT", "activation": "leaky_relu", "optimizer.name": "sgd"},
    "plain relu, same net (sgd)": {"method": "untransformed", "activation": "relu",
                                   "optimizer.name": "sgd", "init": "he_normal"},
    "TAT leaky_relu (kfac)": {"method": "TAT", "activation": "leaky_relu", "optimizer.name": "kfac",
                              "optimizer.kfac.num_burnin_steps": 0},
    "ResNet-V2 with batch norm, same depth (sgd)": {"model": "<bn baseline>", "method": "untransformed",
                                                    "activation": "relu", "optimizer.name": "sgd",
                                                    "init": "he_normal"},
}
# The batch-norm ResNet of each case: pre-activation residual blocks with batch norm and shortcuts.
BN_BASELINE = {"mlp": "residual_mlp_bn", "convnet": "resnet_bn"}


class StepRunner:
    """One variant's compiled training step and its state, ready to be timed one step at a time."""

    def __init__(self, config):
        exp = loop.Experiment(config)
        self.train_state = exp.init_state()
        self.step_fn = exp.optimizer.jit_step(exp.mesh)
        with exp.train_iterator(0) as it:
            self.batch = next(iter(it))
        self.key = jax.random.PRNGKey(0)
        for _ in range(2):  # the first calls compile
            self.time_one()

    def time_one(self) -> float:
        """Wall time (s) of one synchronous step."""
        start = time.perf_counter()
        self.train_state, metrics = self.step_fn(self.train_state, self.key, self.batch)
        jax.block_until_ready((self.train_state.params, metrics))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128, help="MLP batch size")
    parser.add_argument("--conv_batch", type=int, default=32, help="convnet batch size")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    args = parser.parse_args()
    unknown = [case for case in args.cases.split(",") if case not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; valid: {', '.join(CASES)}")
    print(f"devices: {jax.devices()}; host: {platform.node()} ({platform.processor() or platform.machine()})")
    print(f"synthetic 32x32x3 data, median of {args.steps} steps per variant, interleaved\n")
    print("| network | variant | step (ms) | ratio to TAT (sgd) |")
    print("|---|---|---|---|")
    for case in args.cases.split(","):
        fields = {**CASES[case], "batch_size": args.batch if case == "mlp" else args.conv_batch}
        runners = {}
        for variant, extra in VARIANTS.items():
            if extra.get("model") == "<bn baseline>":
                extra = {**extra, "model": BN_BASELINE[case]}
            runners[variant] = StepRunner(_config(**{**fields, **extra}))
        # Round robin: every variant steps once per round, so a change in the machine's load during the
        # run affects all of them alike instead of biasing whichever ran at the time.
        times: dict[str, list[float]] = {variant: [] for variant in runners}
        for _ in range(args.steps):
            for variant, runner in runners.items():
                times[variant].append(runner.time_one())
        base = statistics.median(times[next(iter(runners))])
        for variant, samples in times.items():
            seconds = statistics.median(samples)
            print(f"| {case} ({fields['depth']} layers, batch {fields['batch_size']}) | {variant} | {seconds * 1e3:.1f} | "
                  f"{seconds / base:.3f} |", flush=True)
        del runners


if __name__ == "__main__":
    main()
