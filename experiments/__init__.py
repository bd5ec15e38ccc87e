"""The command-line entry points and the reproduction tables."""

import os

# Before JAX loads: XLA:CPU logs two false "machine type doesn't match" errors for every program it loads
# from the persistent compilation cache on AVX-512 hosts (it compares LLVM tuning flags such as
# +prefer-no-gather with CPU features; jax-ml/jax#38445), walls of text that bury the one-line errors and
# the progress bar. The cache still works. Set TF_CPP_MIN_LOG_LEVEL=0 to see XLA's own logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
