r"""Train and evaluate one config.

Usage:
  python -m experiments.train --config=configs/default.py[:arg] [--workdir=DIR] [--config.field=value ...]
  python -m experiments.train --config=configs/mnist.py --describe     # every field, value and range
  python -m experiments.train --list                                   # configs, models, datasets, ...

Without --workdir the run goes to ./runs/<config name>[-<arg>]. Running again with the same workdir
resumes from its last good checkpoint (a finished run is left as it is); only fields that extend or
observe the run (num_epochs, max_steps, eval/log/checkpoint cadence, ...) may change on resume. Results
land in WORKDIR: summary.json, metrics.jsonl, curves.png, TensorBoard events, checkpoints/.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from experiments import cli


def main(argv: Sequence[str]) -> int:
    parser = cli.config_parser("python -m experiments.train", __doc__.split("\n\n")[0].strip(), epilog=__doc__)
    parser.add_argument("--workdir", default="", help="where results and checkpoints go (resumes if "
                                                      "present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args, overrides = cli.parse(parser, argv)
    if cli.handle_info_flags(parser, args, overrides):
        return 0
    config = cli.load(args.config, overrides)
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from dks_jax.train import loop  # pylint: disable=g-import-not-at-top  (keeps --help fast)

    workdir = args.workdir or cli.default_workdir(args.config)
    summary = loop.train_and_evaluate(config, workdir, progress=not args.quiet)
    if summary.get("already_complete"):
        print(f"{workdir} is already complete at step {summary['steps']}; nothing to do.", file=sys.stderr)
    elif summary.get("at_chance"):
        print(f"warning: test accuracy {summary['test_accuracy']:.4f} is at chance level "
              f"({summary['chance_accuracy']:.4f}): the run did not learn.", file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k != "already_complete"}, indent=2))
    return 0


if __name__ == "__main__":
    cli.main_wrapper(main, "experiments.train")
