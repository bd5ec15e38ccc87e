"""Training step times: the cost of the activation transformation, of batch norm and of K-FAC.

Prints, in one run, a markdown table of the median jitted step time (ms) for:
  * a TAT vanilla net against the same net with a plain ReLU (the transformation's overhead; goal <= 1.05x),
  * the same vanilla net against a ResNet-V2 with batch norm of the same depth (a residual MLP with batch
    norm for the MLP),
  * K-FAC's step against SGD's,
for an MLP and a convnet, on JAX's default platform (the GPU or TPU when one is present, else the CPU);
then a table of every variant's first two steps (compilation included: K-FAC compiles one program for
the steps that refresh its inverses, step 0 among them, and one for the others at step 1) and K-FAC's
amortized cost: its mean step time over windows of one inverse period (each window holds exactly one step
that refreshes the inverses) against SGD's mean over the same rounds, median over the windows.

Usage: python scripts/bench_train.py [--steps=20] [--periods=2] [--batch=128] [--conv_batch=32]
                                     [--cases=mlp,convnet] [--profile]
--profile runs scripts/profile_kfac.py on each case instead (where a K-FAC step's time goes).
"""

from __future__ import annotations

import os

# jaxlib's CPU LAPACK (K-FAC's factor inverses) runs on scipy's OpenBLAS, whose worker threads spin and
# stall when the cores are shared with other processes (inverses up to 30x slower under load here). One
# thread keeps timings stable; set OPENBLAS_NUM_THREADS to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import platform
import statistics
import time

import jax

from dks_jax import configlib
from dks_jax.train import loop


def _config(**fields):
    """The run config of one variant (the only place that knows the config layout)."""
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
        # K-FAC refreshes its inverses once every this many steps (1 for SGD: every step is alike).
        self.period = int(getattr(getattr(exp.optimizer, "config", None), "inverse_update_period", 1))
        with exp.train_iterator(0) as it:
            self.batch = next(iter(it))
        self.key = jax.random.PRNGKey(0)
        # Tracing and compilation included. K-FAC compiles a second program at step 1 (steps that do
        # not refresh the inverses); SGD's step 1 is a plain step.
        self.first_step_s = self.time_one()
        self.second_step_s = self.time_one()

    def time_one(self) -> float:
        """Wall time (s) of one synchronous step."""
        start = time.perf_counter()
        self.train_state, metrics = self.step_fn(self.train_state, self.key, self.batch)
        jax.block_until_ready((self.train_state.params, metrics))
        return time.perf_counter() - start


def amortized_ratio(kfac: list[float], sgd: list[float], period: int) -> tuple[float, float]:
    """(median over whole inverse periods of K-FAC's mean step time (s), median of its ratio to SGD's
    mean step time over the same rounds). Any `period` consecutive steps hold one inverse refresh."""
    windows = [(statistics.fmean(kfac[i:i + period]), statistics.fmean(sgd[i:i + period]))
               for i in range(0, len(kfac) - period + 1, period)]
    return (statistics.median(k for k, _ in windows),
            statistics.median(k / s for k, s in windows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--periods", type=int, default=2,
                        help="time at least this many whole K-FAC inverse periods (amortized figures)")
    parser.add_argument("--batch", type=int, default=128, help="MLP batch size")
    parser.add_argument("--conv_batch", type=int, default=32, help="convnet batch size")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--profile", action="store_true",
                        help="profile one K-FAC step of each case (scripts/profile_kfac.py) instead")
    args = parser.parse_args()
    unknown = [case for case in args.cases.split(",") if case not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; valid: {', '.join(CASES)}")
    if args.profile:
        import profile_kfac  # pylint: disable=import-outside-toplevel  # this script's directory
        for case in args.cases.split(","):
            batch = args.batch if case == "mlp" else args.conv_batch
            profile_kfac.main([f"--case={case}", f"--batch={batch}"])
        return
    print(f"devices: {jax.devices()}; host: {platform.node()} ({platform.processor() or platform.machine()})")
    print(f"synthetic 32x32x3 data, median of at least {args.steps} steps per variant, interleaved\n")
    print("| network | variant | step (ms) | ratio to TAT (sgd) |")
    print("|---|---|---|---|")
    summary = []
    for case in args.cases.split(","):
        fields = {**CASES[case], "batch_size": args.batch if case == "mlp" else args.conv_batch}
        name = f"{case} ({fields['depth']} layers, batch {fields['batch_size']})"
        runners = {}
        for variant, extra in VARIANTS.items():
            if extra.get("model") == "<bn baseline>":
                extra = {**extra, "model": BN_BASELINE[case]}
            runners[variant] = StepRunner(_config(**{**fields, **extra}))
        rounds = max(args.steps, args.periods * max(r.period for r in runners.values()))
        # Round robin: every variant steps once per round, so a change in the machine's load during the
        # run affects all of them alike instead of biasing whichever ran at the time.
        times: dict[str, list[float]] = {variant: [] for variant in runners}
        for _ in range(rounds):
            for variant, runner in runners.items():
                times[variant].append(runner.time_one())
        sgd_variant = next(iter(runners))
        base = statistics.median(times[sgd_variant])
        for variant, samples in times.items():
            seconds = statistics.median(samples)
            print(f"| {name} | {variant} | {seconds * 1e3:.1f} | {seconds / base:.3f} |", flush=True)
        for variant, runner in runners.items():
            row = [name, variant, f"{runner.first_step_s:.1f}", f"{runner.second_step_s:.1f}"]
            if runner.period > 1 or "kfac" in variant:
                mean_s, ratio = amortized_ratio(times[variant], times[sgd_variant], runner.period)
                row += [str(runner.period), f"{mean_s * 1e3:.1f}", f"{ratio:.2f}"]
            else:
                row += ["", "", ""]
            summary.append(row)
        del runners
    print("\n| network | variant | step 0, compile included (s) | step 1 (s) | K-FAC inverse period | "
          "amortized step (ms) | amortized ratio to TAT (sgd) |")
    print("|---|---|---|---|---|---|---|")
    for row in summary:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
