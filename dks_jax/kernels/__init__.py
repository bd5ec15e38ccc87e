"""Kernel maps: local Q/C maps, quadrature, and kernel graphs built from layer specifications.

Pure functions over JAX and NumPy; nothing here imports Haiku, TFDS or kfac-jax.
"""

from dks_jax.kernels import graph, layouts, local_maps, quadrature
from dks_jax.kernels.graph import (KernelGraphError, count_nonlinear_layers, propagate,
                                   subnet_max_func)
from dks_jax.kernels.local_maps import leaky_relu_c_map

__all__ = ["graph", "layouts", "local_maps", "quadrature", "KernelGraphError", "count_nonlinear_layers",
           "propagate", "subnet_max_func", "leaky_relu_c_map"]
