"""Activation transformations: the DKS and TAT solvers, the EOC baseline and the dks-compatible API.

Imports neither Haiku nor TFDS nor kfac-jax.
"""

from dks_jax.transforms.activation import TransformedActivation
from dks_jax.transforms.compat import (get_activation_params, get_transformed_activations,
                                       transformed_activations)
from dks_jax.transforms.solver import (METHODS, DKSTargets, SolverError, TATTargets, clear_caches,
                                       transform)
from dks_jax.transforms.summary import network_summary

__all__ = ["TransformedActivation", "get_activation_params", "get_transformed_activations",
           "transformed_activations", "METHODS", "DKSTargets", "SolverError", "TATTargets",
           "clear_caches", "transform", "network_summary"]
