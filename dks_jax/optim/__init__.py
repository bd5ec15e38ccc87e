"""Optimizers (SGD, Adam, K-FAC) behind one jitted, data-parallel step; schedules; losses.

Independent of dks_jax.nets, dks_jax.data and dks_jax.train.
"""

from dks_jax.optim.base import (LossFn, StepOptimizer, TrainState, with_l2)
from dks_jax.optim.first_order import SGD, Adam, AdamConfig, FirstOrderState, SGDConfig
from dks_jax.optim.kfac import KFAC, KFACConfig
from dks_jax.optim.losses import (accuracy, classification_loss, is_bias_like, l2_mask,
                                  l2_penalty, smooth_labels, softmax_cross_entropy)
from dks_jax.optim.optimizers import (list_optimizers, make_optimizer, optimizer_config_class,
                                      register_optimizer)
from dks_jax.optim.schedules import Scaled, Schedule, as_schedule, get_schedule, list_schedules, split_scale
from dks_jax.optim.sharding import (batch_sharded, make_data_mesh, replicate, replicated,
                                    shard_batch)

__all__ = [
    "LossFn", "StepOptimizer", "TrainState", "with_l2",
    "SGD", "Adam", "AdamConfig", "FirstOrderState", "SGDConfig", "KFAC", "KFACConfig",
    "accuracy", "classification_loss", "is_bias_like", "l2_mask", "l2_penalty",
    "smooth_labels", "softmax_cross_entropy",
    "list_optimizers", "make_optimizer", "optimizer_config_class", "register_optimizer",
    "Scaled", "Schedule", "as_schedule", "get_schedule", "list_schedules", "split_scale",
    "batch_sharded", "make_data_mesh", "replicate", "replicated", "shard_batch",
]
