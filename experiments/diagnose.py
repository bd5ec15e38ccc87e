r"""Signal propagation at initialization: a config's measured kernels against the kernel-map predictions.

Usage:
  python -m experiments.diagnose --config=configs/default.py[:arg] [--config.field=value ...]
      [--pairs_per_value=16] [--num_inits=16] [--seed=0] [--num_sequences=8] [--sequence_inputs=distinct]

Prints the predicted and measured q and c after every layer (kernel matrices over positions for sequence
models) and exits 0 when they agree within the tolerance it states, 1 when they do not (see
``dks_jax.diagnostics`` for what is measured and how the tolerances are set). ``python -m dks_jax.diagnose``
is the same command.
"""

from __future__ import annotations

from typing import Sequence

from experiments import cli


def main(argv: Sequence[str], prog: str = "python -m experiments.diagnose") -> int:
    parser = cli.config_parser(prog, __doc__.split("\n\n")[0].strip(), default_config=None, epilog=__doc__)
    parser.add_argument("--pairs_per_value", type=int, default=16, help="input pairs per correlation value")
    parser.add_argument("--num_inits", type=int, default=16, help="initializations averaged over")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inits and the input selection")
    parser.add_argument("--num_sequences", type=int, default=8, help="sequence models: input sequences")
    parser.add_argument("--sequence_inputs", choices=("distinct", "text"), default="distinct",
                        help="sequence models: distinct tokens or windows of real text")
    args, overrides = cli.parse(parser, argv)
    if cli.handle_info_flags(parser, args, overrides):
        return 0
    if args.pairs_per_value < 1 or args.num_inits < 1:
        raise cli.UsageError("--pairs_per_value and --num_inits must be >= 1.")
    config = cli.load(args.config, overrides)
    from dks_jax import diagnostics  # pylint: disable=g-import-not-at-top  (keeps --help fast)
    return diagnostics.run_diagnostics(config, pairs_per_value=args.pairs_per_value,
                                       num_inits=args.num_inits, seed=args.seed,
                                       num_sequences=args.num_sequences,
                                       sequence_inputs=args.sequence_inputs)


if __name__ == "__main__":
    cli.main_wrapper(main, "experiments.diagnose")
