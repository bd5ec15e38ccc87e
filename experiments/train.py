r"""Train and evaluate one config.

Usage:
  python -m experiments.train --config=configs/default.py[:variant] --workdir=DIR [--config.x=y ...]

Without --workdir the run goes to ./runs/<config name>[-<variant>]. Running again with the same
workdir resumes from its last good checkpoint. Results land in WORKDIR: summary.json, metrics.jsonl,
curves.png, TensorBoard events, checkpoints/.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Where results and checkpoints go (resumes if present).")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")


def _default_workdir(config_arg: str) -> str:
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", name + (f"-{variant}" if variant else ""))


def main(argv: list[str]) -> None:
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from dks_jax.train import loop  # after flag parsing, so --help stays fast

    workdir = _WORKDIR.value or _default_workdir(flags.FLAGS["config"].serialize().split("=", 1)[-1])
    try:
        summary = loop.train_and_evaluate(_CONFIG.value, workdir, progress=not _QUIET.value)
    except (ValueError, FileNotFoundError, loop.TrainingDivergedError) as err:
        # Bad config values, missing data and divergence: one clear message, no traceback.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    try:
        app.run(main)
    except KeyboardInterrupt:
        sys.exit(130)
