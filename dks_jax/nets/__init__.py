"""Haiku networks built from layer specifications: initializers, the spec interpreter, the model registry.

Typical use:

    from dks_jax import nets
    model = nets.build_model(config, num_classes=10, input_shape=(32, 32, 3))
    params, state = model.init(jax.random.PRNGKey(0), images)
    logits, state = model.apply(params, state, rng, images, is_training=True)

``model.spec`` is the layer specification the activation ``model.activation`` was solved for.
"""

from dks_jax.nets.builder import apply_spec, child_names, make_forward
from dks_jax.nets.initializers import (INIT_NAMES, ScaledUniformOrthogonal, get_initializer,
                                       haar_orthogonal, weight_gain)
from dks_jax.nets.models import (Model, build_model, list_models, model_inputs, model_spec,
                                 register_model, resolve_init, solve_activation)

__all__ = ["apply_spec", "child_names", "make_forward", "INIT_NAMES", "ScaledUniformOrthogonal",
           "get_initializer", "haar_orthogonal", "weight_gain", "Model", "build_model", "list_models",
           "model_inputs", "model_spec", "register_model", "resolve_init", "solve_activation"]

# Parameter/MAC arithmetic lives in dks_jax.nets.summary (imported where it is needed).
