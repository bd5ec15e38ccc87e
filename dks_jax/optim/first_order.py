"""SGD (optional heavy-ball / Nesterov momentum) and Adam behind `StepOptimizer`.

optax supplies the update direction (momentum trace, Adam moments); the
learning rate is applied here from our own step counter so that the
`learning_rate` metric is exactly the value used for the step. Its scale is a
runtime input of the compiled step (`runtime_hyperparams`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dks_jax.optim import base
from dks_jax.optim import schedules


class FirstOrderState(NamedTuple):
    """Optimizer state of SGD/Adam.

    Attributes:
        count: int32 number of steps taken (the learning-rate schedule's input).
        inner: The optax state of the direction transformation.
    """
    count: jax.Array
    inner: optax.OptState


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """SGD hyper-parameters.

    Attributes:
        momentum: Momentum coefficient; 0 gives plain SGD.
        nesterov: Nesterov momentum if True, heavy-ball otherwise.
    """
    momentum: float = 0.9
    nesterov: bool = True


@dataclasses.dataclass(frozen=True)
class AdamConfig:
    """Adam hyper-parameters (L2 is added to the gradient: coupled, not AdamW).

    Attributes:
        b1: First-moment decay.
        b2: Second-moment decay.
        eps: Denominator epsilon.
    """
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


class _FirstOrder(base.BaseOptimizer):
    """Gradient step params -= lr(count) * direction(grads)."""

    def __init__(self, loss_fn: base.LossFn, learning_rate: float | schedules.Schedule,
                 l2_reg: float, exclude_biases_from_l2: bool,
                 direction: optax.GradientTransformation, momentum: float) -> None:
        super().__init__()
        self._objective = base.with_l2(loss_fn, l2_reg, exclude_biases_from_l2)
        self._lr_shape, self._lr_scale = schedules.split_scale(learning_rate)
        self._direction = direction
        self._momentum = float(momentum)

    def init(self, params: base.Params, func_state: base.FuncState, rng: base.PRNGKey,
             batch: base.Batch) -> FirstOrderState:
        """Zero momentum/moments; func_state, rng and batch are unused."""
        del func_state, rng, batch
        return FirstOrderState(count=jnp.zeros([], jnp.int32), inner=self._direction.init(params))

    def runtime_hyperparams(self) -> dict[str, float]:
        """The learning rate's scale (its peak for the registered schedules)."""
        return {"learning_rate": self._lr_scale}

    def step(self, params: base.Params, opt_state: FirstOrderState, func_state: base.FuncState,
             rng: base.PRNGKey, batch: base.Batch, global_step: int,
             hyper: base.Hyper | None = None) -> base.StepOutput:
        """One step; `global_step` is unused (the schedule reads `opt_state.count`)."""
        del global_step
        hyper = self._hyper(hyper)
        grad_fn = jax.value_and_grad(self._objective, has_aux=True)
        (objective, (new_func_state, aux)), grads = grad_fn(params, func_state, rng, batch)
        lr = schedules.Scaled(self._lr_shape, hyper["learning_rate"])(opt_state.count)
        direction, inner = self._direction.update(grads, opt_state.inner, params)
        new_params = jax.tree_util.tree_map(
            lambda p, d: (p - lr.astype(p.dtype) * d).astype(p.dtype), params, direction)
        metrics = dict(aux, objective=objective, learning_rate=lr,
                       momentum=jnp.asarray(self._momentum, jnp.float32),
                       grad_norm=optax.global_norm(grads))
        return (new_params, FirstOrderState(count=opt_state.count + 1, inner=inner),
                new_func_state, metrics)


class SGD(_FirstOrder):
    """SGD with optional heavy-ball or Nesterov momentum (no dampening).

    Heavy-ball: v <- m v + g, w <- w - lr v.  Nesterov: w <- w - lr (g + m v).
    """

    name = "sgd"
    Config = SGDConfig

    def __init__(self, loss_fn: base.LossFn, learning_rate: float | schedules.Schedule, *,
                 l2_reg: float = 0.0, exclude_biases_from_l2: bool = True,
                 config: SGDConfig = SGDConfig()) -> None:
        if config.momentum:
            direction = optax.trace(decay=config.momentum, nesterov=config.nesterov)
        else:
            direction = optax.identity()
        super().__init__(loss_fn, learning_rate, l2_reg, exclude_biases_from_l2, direction,
                         config.momentum)
        self.config = config


class Adam(_FirstOrder):
    """Adam; the reported `momentum` metric is b1."""

    name = "adam"
    Config = AdamConfig

    def __init__(self, loss_fn: base.LossFn, learning_rate: float | schedules.Schedule, *,
                 l2_reg: float = 0.0, exclude_biases_from_l2: bool = True,
                 config: AdamConfig = AdamConfig()) -> None:
        direction = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
        super().__init__(loss_fn, learning_rate, l2_reg, exclude_biases_from_l2, direction,
                         config.b1)
        self.config = config
