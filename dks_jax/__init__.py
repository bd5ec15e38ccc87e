"""dks_jax: Deep Kernel Shaping and Tailored Activation Transformations for deep vanilla networks.

The top level holds the solver API (no Haiku import): ``transform`` (typed), the drop-in
``get_transformed_activations`` / ``get_activation_params`` of the public ``dks`` package, and the
activation registry. Networks, data, optimizers and training live in the subpackages.
"""

from dks_jax.activations import (ActivationError, get_activation, list_activations,
                                 register_activation, unregister_activation)
from dks_jax.transforms import (METHODS, DKSTargets, SolverError, TATTargets, TransformedActivation,
                                get_activation_params, get_transformed_activations, transform)

__version__ = "0.1.0"

__all__ = ["ActivationError", "get_activation", "list_activations", "register_activation", "unregister_activation",
           "METHODS", "DKSTargets", "SolverError", "TATTargets", "TransformedActivation",
           "get_activation_params", "get_transformed_activations", "transform", "__version__"]
