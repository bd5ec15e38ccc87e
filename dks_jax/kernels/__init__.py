"""Kernel maps: local Q/C maps, quadrature, kernel graphs built from layer specifications, and kernel
matrices over the positions of a sequence (attention at initialization).

Pure functions over JAX and NumPy; nothing here imports Haiku, TFDS or kfac-jax.
"""

from dks_jax.kernels import attention, graph, layouts, local_maps, quadrature, sequence
from dks_jax.kernels.graph import (KernelGraphError, count_nonlinear_layers, propagate,
                                   subnet_max_func)
from dks_jax.kernels.local_maps import leaky_relu_c_map

__all__ = ["attention", "graph", "layouts", "local_maps", "quadrature", "sequence", "KernelGraphError",
           "count_nonlinear_layers", "propagate", "subnet_max_func", "leaky_relu_c_map"]
