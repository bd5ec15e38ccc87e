r"""Sweep config fields, each point in its own workdir, and choose the best point on validation.

Usage:
  python -m experiments.sweep --config=configs/default.py --workdir=sweeps/lr \
      --sweep=learning_rate=0.003,0.01,0.03 --sweep=depth=20,50 [--parallel=2] [--config.field=value ...]

Every combination of the --sweep axes is trained in WORKDIR/<field=value,...>/ (finished points are read,
not rerun; rerun the command to resume a sweep), --parallel points at a time. The config holds out
config.validation_fraction of the training set (10% when it holds out nothing) and the point with the best
validation accuracy (ties: lower validation loss; with a seed axis, the best mean over the seeds) is
chosen; test accuracy is reported, never used to choose. Failed, diverged and at-chance points are rows
with their reason. WORKDIR/sweep.md and sweep.json list every point, the chosen one and why. A config
file may define ``get_sweep(arg)`` returning the axes (``{"learning_rate": [...], ...}``); --sweep flags
replace them.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from experiments import cli


def _file_axes(spec: str) -> dict[str, list[Any]]:
    """The axes a config file defines with ``get_sweep(arg)`` (empty when it defines none)."""
    import importlib.util  # pylint: disable=g-import-not-at-top
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_dks_jax_sweep_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_sweep = getattr(module, "get_sweep", None)
    return {k: list(v) for k, v in get_sweep(arg).items()} if get_sweep else {}


def main(argv: Sequence[str]) -> int:
    parser = cli.config_parser("python -m experiments.sweep", __doc__.split("\n\n")[0].strip(),
                               epilog=__doc__)
    parser.add_argument("--workdir", required=False, default="", help="the sweep's directory")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="a config field and its values (repeat for a grid)")
    parser.add_argument("--parallel", type=int, default=1, help="points trained at once")
    parser.add_argument("--threads_per_point", type=int, default=0,
                        help="XLA CPU threads per point (0: XLA's default); with --parallel on a CPU, "
                             "cores / parallel avoids oversubscription")
    parser.add_argument("--metric", default="validation_accuracy",
                        help="validation_accuracy (highest wins) or validation_loss (lowest wins)")
    args, overrides = cli.parse(parser, argv)
    if cli.handle_info_flags(parser, args, overrides):
        return 0
    if not args.workdir:
        raise cli.UsageError("--workdir is required (the sweep's directory).")
    if args.parallel < 1:
        raise cli.UsageError(f"--parallel={args.parallel} must be >= 1.")
    config = cli.load(args.config, overrides)
    from dks_jax.train import sweep  # pylint: disable=g-import-not-at-top
    axes = dict(sweep.parse_axis(config, spec) for spec in args.sweep) or _file_axes(args.config)
    if not axes:
        raise cli.UsageError("nothing to sweep: give --sweep=FIELD=V1,V2,... (or define get_sweep in the "
                             "config file).")
    points = sweep.grid(axes)
    print(f"{len(points)} points, {args.parallel} at a time, in {args.workdir}", file=sys.stderr)

    def report(result: "sweep.PointResult") -> None:
        metric = result.summary.get("validation_accuracy")
        shown = f"validation accuracy {metric:.4f}" if result.usable and metric is not None else result.reason
        print(f"  {sweep.point_name(result.point)}: {result.status} ({shown})", file=sys.stderr, flush=True)

    result = sweep.run_sweep(config, axes, args.workdir, parallel=args.parallel, metric=args.metric,
                             threads_per_point=args.threads_per_point or None, on_result=report)
    print(sweep.markdown(result, list(axes)))
    return 0 if result.best is not None else 1


if __name__ == "__main__":
    cli.main_wrapper(main, "experiments.sweep")
