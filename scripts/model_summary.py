#!/usr/bin/env python
"""Prints parameter counts and compute per example of the registered architectures as a markdown table.

Usage: python scripts/model_summary.py  (the same as ``python -m dks_jax.nets.summary``)

Counts come from the layer specifications (``dks_jax.nets.summary``): MACs are the multiply-accumulates of
dense and convolutional layers, FLOPs = 2 x MACs.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from dks_jax.nets import summary  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
    sys.exit(summary.main(sys.argv))
