"""Optimizer registry: `make_optimizer("sgd" | "adam" | "kfac", loss_fn, learning_rate, ...)`.

    opt = make_optimizer("kfac", loss_fn, get_schedule("cosine", peak_value=3e-4,
                         total_steps=n, warmup_steps=w), l2_reg=1e-5)
    opt_state = opt.init(params, func_state, rng, batch)
    opt_state, func_state = opt.burnin(params, opt_state, func_state, rng, batches, mesh)
    train_state = TrainState.create(params, func_state, opt_state)
    step = opt.jit_step(mesh)
    for t in range(n):
        train_state, metrics = step(train_state, rng_t, batch_t)

See `base` for the loss-function contract and the metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from dks_jax.optim import base
from dks_jax.optim import first_order
from dks_jax.optim import kfac
from dks_jax.optim import schedules

_OPTIMIZERS: dict[str, type[base.BaseOptimizer]] = {
    "sgd": first_order.SGD,
    "adam": first_order.Adam,
    "kfac": kfac.KFAC,
}


def list_optimizers() -> list[str]:
    """Returns the registered optimizer names, sorted."""
    return sorted(_OPTIMIZERS)


def register_optimizer(name: str, cls: type[base.BaseOptimizer]) -> None:
    """Registers an optimizer class under `name`.

    The class must take (loss_fn, learning_rate, *, l2_reg, exclude_biases_from_l2,
    config) and expose its config dataclass as `cls.Config`. A subclass of
    `base.BaseOptimizer` that names values in `runtime_hyperparams()` receives
    them, traced, as the `hyper` argument of `step` (see `first_order` for one).

    Args:
        name: Registry name.
        cls: The optimizer class.

    Raises:
        ValueError: If `name` is taken.
    """
    if name in _OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is already registered")
    _OPTIMIZERS[name] = cls


def optimizer_config_class(name: str) -> type:
    """The frozen config dataclass of optimizer `name`."""
    return _lookup(name).Config


def _lookup(name: str) -> type[base.BaseOptimizer]:
    try:
        return _OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; valid: {list_optimizers()}") from None


def make_optimizer(name: str, loss_fn: base.LossFn,
                   learning_rate: float | schedules.Schedule, *, l2_reg: float = 0.0,
                   exclude_biases_from_l2: bool = True, config: Optional[Any] = None,
                   **config_kwargs: Any) -> base.StepOptimizer:
    """Builds the optimizer registered under `name`.

    Args:
        name: One of `list_optimizers()`.
        loss_fn: The data loss (see `base.LossFn`); no L2 term inside.
        learning_rate: A float or a schedule of the step.
        l2_reg: L2 coefficient c; the objective is loss + c/2 * |w|^2 over
            non-bias-like parameters.
        exclude_biases_from_l2: Exempt biases / normaliser parameters from L2.
        config: A ready config dataclass of this optimizer (SGDConfig,
            AdamConfig, KFACConfig); mutually exclusive with `config_kwargs`.
        **config_kwargs: Fields of the optimizer's config dataclass.

    Returns:
        The optimizer.

    Raises:
        ValueError: On an unknown name, unknown config fields, or both
            `config` and `config_kwargs`.
    """
    cls = _lookup(name)
    config_cls = cls.Config
    if config is not None and config_kwargs:
        raise ValueError("pass either config or config keyword arguments, not both")
    if config is None:
        fields = {f.name for f in dataclasses.fields(config_cls)}
        unknown = set(config_kwargs) - fields
        if unknown:
            raise ValueError(f"unknown {name} options {sorted(unknown)}; valid: {sorted(fields)}")
        config = config_cls(**config_kwargs)
    elif not isinstance(config, config_cls):
        raise ValueError(f"{name} needs a {config_cls.__name__}, got {type(config).__name__}")
    return cls(loss_fn, learning_rate, l2_reg=l2_reg,
               exclude_biases_from_l2=exclude_biases_from_l2, config=config)
