"""Parameters and compute per example of the registered architectures, as a markdown table.

Usage: python -m experiments.model_summary

Counts come from the layer specifications (``dks_jax.nets.summary``): MACs are the multiply-accumulates of
dense and convolutional layers, FLOPs = 2 x MACs.
"""

from __future__ import annotations

from typing import Sequence

from experiments import cli


def main(argv: Sequence[str]) -> int:
    parser = cli.parser("python -m experiments.model_summary", __doc__.split("\n\n")[0], epilog=__doc__)
    args = cli.parse_without_config(parser, argv)
    if args is None:
        return 0
    from dks_jax.nets import summary  # pylint: disable=g-import-not-at-top  (keeps --help fast)
    print("Parameters and compute per example, counted from the layer specifications. MACs count the "
          "multiply-accumulates of dense and conv layers only; FLOPs = 2 x MACs. tat_resnet rows use "
          "shortcut weight 0.8 (projection shortcuts add parameters; the weight itself does not).\n")
    print(summary.markdown_table())
    return 0


if __name__ == "__main__":
    cli.main_wrapper(main, "experiments.model_summary")
