"""K-FAC (kfac_jax 0.0.8) behind `StepOptimizer`, jitted like SGD/Adam.

How kfac_jax 0.0.8 is driven here (all checked against its source):

* `kfac_jax.Optimizer.step` is a plain Python method; it compiles its inner
  `_step` with `jax.jit` (`multi_device=False`), staging it with `self` static.
  Called inside our own `jax.jit` that inner jit simply inlines as a nested
  call, so `BaseOptimizer.jit_step` wraps K-FAC exactly like SGD/Adam: GSPMD
  partitions the step over the 'data' axis and inserts the all-reduces of
  gradients and Kronecker-factor statistics. No pmap, `multi_device=False`.
* Under tracing `step` needs `global_step_int` (otherwise it calls
  `int(state.step_counter)`); it uses that int only for Python-level choices:
  burn-in at step 0, whether to update the curvature estimate this step
  (`step % curvature_update_period == 0`) and whether to adapt damping.
  `static_key` captures exactly those choices, so one executable is compiled
  per distinct key (one in the default configuration).
* Burn-in inside `step` needs a data iterator, so kfac_jax is always built with
  `num_burnin_steps=0` and `burnin()` runs the `num_burnin_steps` curvature-only
  passes separately, via kfac_jax's `_burnin_phase` (a private method of 0.0.8;
  the pin in setup.py keeps it stable). Burn-in does not advance the
  optimizer's step counter.
* learning rate, momentum and damping are passed as schedules (fixed values
  become constant schedules), so `step` receives none of them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
import dataclasses
import itertools
from typing import Any, Optional
import warnings

import jax
import kfac_jax
from jax.sharding import Mesh

from dks_jax.optim import base
from dks_jax.optim import schedules
from dks_jax.optim import sharding

# Constructor arguments this wrapper owns; `extra_kwargs` may not set them.
_OWNED_KWARGS = frozenset({
    "value_and_grad_func", "l2_reg", "regularized_parameters_path_exclusions",
    "value_func_has_aux", "value_func_has_state", "value_func_has_rng",
    "use_adaptive_learning_rate", "learning_rate_schedule", "use_adaptive_momentum",
    "momentum_schedule", "use_adaptive_damping", "damping_schedule", "initial_damping",
    "norm_constraint", "num_burnin_steps", "estimation_mode", "curvature_ema",
    "curvature_update_period", "inverse_update_period", "multi_device",
    "damping_adaptation_interval", "include_norms_in_stats", "use_initial_damping_calibration",
})


@dataclasses.dataclass(frozen=True)
class KFACConfig:
    """K-FAC hyper-parameters; defaults are the public ImageNet K-FAC settings.

    Attributes:
        damping: Fixed damping (initial damping if `use_adaptive_damping`).
        momentum: Fixed momentum (ignored if `use_adaptive_momentum`).
        curvature_ema: Decay of the exponential moving average of the factors.
        inverse_update_period: Steps between recomputations of the inverses.
        curvature_update_period: Steps between curvature-estimate updates.
        norm_constraint: Bound on the curvature-weighted update norm, or None.
        num_burnin_steps: Curvature-only passes run by `burnin()` before step 0.
        estimation_mode: kfac_jax estimation mode; None is its default
            ("ggn_curvature_prop").
        use_adaptive_learning_rate: kfac_jax's quadratic-model learning rate.
        use_adaptive_momentum: kfac_jax's quadratic-model momentum.
        use_adaptive_damping: Levenberg-Marquardt damping adaptation.
        damping_adaptation_interval: Steps between damping adaptations.
        include_norms_in_stats: Add param/grad/update norms to the metrics.
        extra_kwargs: Further `kfac_jax.Optimizer` arguments (not the ones set here).
    """
    damping: float = 1e-3
    momentum: float = 0.9
    curvature_ema: float = 0.99
    inverse_update_period: int = 50
    curvature_update_period: int = 1
    norm_constraint: Optional[float] = 1e-3
    num_burnin_steps: int = 5
    estimation_mode: Optional[str] = None
    use_adaptive_learning_rate: bool = False
    use_adaptive_momentum: bool = False
    use_adaptive_damping: bool = False
    damping_adaptation_interval: int = 5
    include_norms_in_stats: bool = False
    extra_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        owned = _OWNED_KWARGS.intersection(self.extra_kwargs)
        if owned:
            raise ValueError(f"extra_kwargs may not set {sorted(owned)}; use the KFACConfig fields")
        if self.num_burnin_steps < 0:
            raise ValueError(f"num_burnin_steps must be >= 0, got {self.num_burnin_steps}")
        if self.use_adaptive_learning_rate and self.norm_constraint is not None:
            raise ValueError("kfac_jax forbids norm_constraint with an adaptive learning rate")


class KFAC(base.BaseOptimizer):
    """K-FAC via `kfac_jax.Optimizer(multi_device=False)`."""

    name = "kfac"
    needs_loss_registration = True
    Config = KFACConfig

    def __init__(self, loss_fn: base.LossFn, learning_rate: float | schedules.Schedule, *,
                 l2_reg: float = 0.0, exclude_biases_from_l2: bool = True,
                 config: KFACConfig = KFACConfig()) -> None:
        super().__init__()
        self.config = config
        self.num_burnin_steps = config.num_burnin_steps
        self._objective = base.with_l2(loss_fn, l2_reg, exclude_biases_from_l2)
        adaptive_lr = config.use_adaptive_learning_rate
        adaptive_mom = config.use_adaptive_momentum
        adaptive_damp = config.use_adaptive_damping
        self._kfac = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(self._objective, has_aux=True),
            l2_reg=l2_reg,
            # kfac_jax excludes by name; our rule (losses.is_bias_like) also
            # covers nameless 1-D leaves, a difference that only matters for
            # its adaptive quadratic model.
            regularized_parameters_path_exclusions=(
                kfac_jax.HAIKU_BIASES_AND_NORMS if exclude_biases_from_l2 else ""),
            value_func_has_aux=True,
            value_func_has_state=True,
            value_func_has_rng=True,
            use_adaptive_learning_rate=adaptive_lr,
            learning_rate_schedule=None if adaptive_lr else schedules.as_schedule(learning_rate),
            use_adaptive_momentum=adaptive_mom,
            momentum_schedule=None if adaptive_mom else schedules.constant(config.momentum),
            use_adaptive_damping=adaptive_damp,
            damping_schedule=None if adaptive_damp else schedules.constant(config.damping),
            initial_damping=config.damping if adaptive_damp else None,
            damping_adaptation_interval=config.damping_adaptation_interval,
            norm_constraint=config.norm_constraint,
            num_burnin_steps=0,  # see module docstring: burn-in is `burnin()`
            estimation_mode=config.estimation_mode,
            curvature_ema=config.curvature_ema,
            curvature_update_period=config.curvature_update_period,
            inverse_update_period=config.inverse_update_period,
            include_norms_in_stats=config.include_norms_in_stats,
            multi_device=False,
            **dict(config.extra_kwargs),
        )

    @property
    def kfac_optimizer(self) -> kfac_jax.Optimizer:
        """The wrapped kfac_jax optimizer."""
        return self._kfac

    def init(self, params: base.Params, func_state: base.FuncState, rng: base.PRNGKey,
             batch: base.Batch) -> kfac_jax.Optimizer.State:
        """Traces the loss on `batch` to find the layers, returns kfac_jax's state.

        Call it eagerly (not under jit); `batch` must have the training batch shape.
        """
        return self._kfac.init(params, rng, batch, func_state)

    def static_key(self, global_step: int) -> Hashable:
        """(update curvature this step?, adapt damping this step?)."""
        cfg = self.config
        update_curvature = global_step % cfg.curvature_update_period == 0
        update_damping = (cfg.use_adaptive_damping
                          and (global_step + 1) % cfg.damping_adaptation_interval == 0)
        return (update_curvature, update_damping)

    def step(self, params: base.Params, opt_state: kfac_jax.Optimizer.State,
             func_state: base.FuncState, rng: base.PRNGKey, batch: base.Batch,
             global_step: int) -> base.StepOutput:
        """One K-FAC step; `global_step` must equal the optimizer's step counter."""
        new_params, new_state, new_func_state, stats = self._kfac.step(
            params, opt_state, rng, batch=batch, func_state=func_state,
            global_step_int=int(global_step))
        stats = dict(stats)
        metrics = dict(stats.pop("aux"))
        clash = set(metrics).intersection(stats).difference({"loss"})
        if clash:
            raise ValueError(f"loss_fn aux uses names of K-FAC stats: {sorted(clash)}")
        metrics["objective"] = stats.pop("loss")  # kfac's "loss" is the value it was given
        metrics.update((k, v) for k, v in stats.items() if v is not None)
        return new_params, new_state, new_func_state, metrics

    def burnin(self, params: base.Params, opt_state: kfac_jax.Optimizer.State,
               func_state: base.FuncState, rng: base.PRNGKey, batches: Iterable[base.Batch],
               mesh: Optional[Mesh] = None
               ) -> tuple[kfac_jax.Optimizer.State, base.FuncState]:
        """Accumulates the curvature over `num_burnin_steps` batches before step 0.

        The factors become the plain average over the burn-in batches (EMA
        weights 1/1), the inverses are recomputed at step 0 as usual, and
        func_state becomes the average of the states the burn-in passes
        produce (kfac_jax's rule). Parameters are not changed.

        Args:
            params: Current parameters (not modified, not donated).
            opt_state: State from `init`; donated.
            func_state: Function state; donated.
            rng: PRNG key.
            batches: Iterable yielding at least `num_burnin_steps` batches.
            mesh: If given, each batch is sharded over its 'data' axis and the
                returned states are replicated on it.

        Returns:
            (opt_state, func_state) after burn-in.
        """
        num = self.num_burnin_steps
        if num == 0:
            return opt_state, func_state
        # Taken up front so a short iterable fails before any compilation.
        taken = list(itertools.islice(iter(batches), num))
        if len(taken) < num:
            raise ValueError(f"burn-in needs {num} batches, got {len(taken)}")
        if mesh is not None:
            taken = [sharding.shard_batch(batch, mesh) for batch in taken]
        with warnings.catch_warnings():
            # kfac_jax's burn-in jit donates the batch, which XLA cannot reuse.
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            opt_state, func_state = self._kfac._burnin_phase(  # pylint: disable=protected-access
                num_steps=num, params=params, state=opt_state, rng=rng,
                data_iterator=iter(taken), func_state=func_state, damping=None)
        if mesh is not None:
            opt_state, func_state = sharding.replicate((opt_state, func_state), mesh)
        return opt_state, func_state
