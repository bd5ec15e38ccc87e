"""Kernel maps: local Q/C maps, quadrature, kinks, kernel graphs built from layer specifications, and
kernel matrices over the positions of a sequence (attention at initialization).

Pure functions over NumPy (activations are traced once with JAX and then evaluated by NumPy);
nothing here imports Haiku, TFDS or kfac-jax.
"""

from dks_jax.kernels import attention, evaluate, graph, kinks, layouts, local_maps, quadrature, sequence
from dks_jax.kernels.graph import (KernelGraphError, count_nonlinear_layers, propagate,
                                   subnet_max_func)
from dks_jax.kernels.kinks import KinkProfile, kink_profile
from dks_jax.kernels.local_maps import leaky_relu_c_map

__all__ = ["attention", "evaluate", "graph", "kinks", "layouts", "local_maps", "quadrature", "sequence",
           "KernelGraphError", "count_nonlinear_layers", "propagate", "subnet_max_func", "KinkProfile",
           "kink_profile", "leaky_relu_c_map"]
