"""K-FAC (kfac_jax 0.0.8) behind `StepOptimizer`, jitted like SGD/Adam.

How kfac_jax 0.0.8 is driven here (all checked against its source):

* `kfac_jax.Optimizer.step` is a plain Python method; it would compile its
  inner `_step` with its own `jax.jit` (`multi_device=False`). `KFAC.step`
  calls it inside kfac_jax's staging context, where kfac_jax's staged methods
  run inline, so `BaseOptimizer.jit_step` traces and compiles K-FAC exactly
  like SGD/Adam: GSPMD partitions the step over the 'data' axis and inserts
  the all-reduces of gradients and Kronecker-factor statistics. No pmap,
  `multi_device=False`.
* Under tracing `step` needs `global_step_int` (otherwise it calls
  `int(state.step_counter)`); it uses that int only for Python-level choices:
  burn-in at step 0, whether to update the curvature estimate this step
  (`step % curvature_update_period == 0`) and whether to adapt damping. We add
  one: whether this step refreshes the inverses (`_Optimizer`). `static_key`
  captures exactly those choices, so one executable is compiled per distinct
  key (two in the default configuration: refresh steps and the others).
* Burn-in inside `step` needs a data iterator, so kfac_jax is always built with
  `num_burnin_steps=0` and `burnin()` runs the `num_burnin_steps` curvature-only
  passes separately, via kfac_jax's `_burnin_phase` (a private method of 0.0.8;
  the pin in setup.py keeps it stable). Burn-in does not advance the
  optimizer's step counter.
* learning rate, momentum and damping are passed to kfac_jax's `step` as
  values (its schedules are None; adaptive values live in its state): the learning
  rate is our schedule's shape at kfac_jax's step counter times its scale, and
  the scale, momentum and damping are inputs of the compiled step
  (`runtime_hyperparams`), so a learning-rate x damping grid compiles once.

What a step costs, and the settings that make it cheap (`scripts/profile_kfac.py`
measures each piece):

* The curvature estimate needs a second forward pass and a backward pass of
  sampled vectors (kfac_jax's estimator does not share the loss's pass), then
  per-layer factor statistics. `curvature_batch_fraction` runs all of that on
  a strided sub-batch (`_Optimizer`): the factors are averages over
  examples, so a sub-batch gives an unbiased, noisier estimate, and the moving
  average over steps (`curvature_ema`) smooths the noise.
* A conv layer's input factor is the second moment of its (kh*kw*C_in)-long
  input patches. kfac_jax 0.0.8 computes it with a loop of 4-D convolutions
  that avoids materialising the patches; XLA's CPU backend runs those 30-100x
  slower than extracting the patches and doing one matrix product, which
  `conv_factor_stats="patches"` (`PatchesConv2DKroneckerFactored`) does. It
  gives the same matrix (tested), at the memory cost of the patches.
* Inverses are recomputed every `inverse_update_period` steps, by a program of
  their own (see `_Optimizer` for why not a `lax.cond`), so their cost is
  amortised over the period. `inverse_method="cholesky"` compiles faster than
  kfac_jax's LU inverses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
import contextlib
import dataclasses
import functools
import itertools
from typing import Any, Optional
import warnings

import jax
import jax.numpy as jnp
import kfac_jax
from jax import lax
from jax.sharding import Mesh

from dks_jax.optim import base
from dks_jax.optim import schedules
from dks_jax.optim import sharding


class _FirstSeenOrderSet(set):
    """A set that iterates in the order its elements were first added."""

    def __init__(self, iterable: Iterable[Any] = ()) -> None:
        items = list(dict.fromkeys(iterable))
        super().__init__(items)
        self._order = items

    def add(self, item: Any) -> None:
        if item not in self:
            self._order.append(item)
        super().add(item)

    def update(self, *iterables: Iterable[Any]) -> None:
        for iterable in iterables:
            for item in iterable:
                self.add(item)

    def __iter__(self):
        return iter([item for item in self._order if item in self])


def _make_kfac_tracing_deterministic() -> None:
    """Makes kfac_jax 0.0.8 emit the same program for the same model in every process.

    Its tracer (`_layer_tag_vjp`) lists the layer tags' input variables through a plain ``set``, whose
    order follows the variables' memory addresses, and creates one zero perturbation per variable in
    that order: the lowered K-FAC step then differs from process to process (and between two
    optimizers in one process) in the order of those constants, so the persistent compilation cache
    missed almost every K-FAC program. Giving the tracer module a ``set`` that iterates in first-seen
    (program) order fixes the order; the sets it builds are otherwise used only for membership and set
    arithmetic, which this one keeps. Tested by `tests/test_optim_optimizers.py`.
    """
    from kfac_jax._src import tracer  # pylint: disable=g-import-not-at-top

    tracer.set = _FirstSeenOrderSet


_make_kfac_tracing_deterministic()

# Constructor arguments this wrapper owns; `extra_kwargs` may not set them.
_OWNED_KWARGS = frozenset({
    "value_and_grad_func", "l2_reg", "regularized_parameters_path_exclusions",
    "value_func_has_aux", "value_func_has_state", "value_func_has_rng",
    "use_adaptive_learning_rate", "learning_rate_schedule", "use_adaptive_momentum",
    "momentum_schedule", "use_adaptive_damping", "damping_schedule", "initial_damping",
    "norm_constraint", "num_burnin_steps", "estimation_mode", "curvature_ema",
    "curvature_update_period", "inverse_update_period", "multi_device",
    "damping_adaptation_interval", "include_norms_in_stats", "use_initial_damping_calibration",
    "layer_tag_to_block_ctor", "use_exact_inverses",
})

BLOCK_TYPES = ("kron", "diag")
CONV_FACTOR_STATS = ("patches", "kfac_jax")
INVERSE_METHODS = ("cholesky", "lu")


class _FactorInverseMixin:
    """Kronecker-factored blocks that invert their damped factors by Cholesky or LU.

    kfac_jax 0.0.8 inverts the pi-adjusted damped factors with `jnp.linalg.inv`
    (LU) unless the process-wide flag `kfac_jax.utils.set_use_cholesky_inversion`
    is set, and reads that flag while tracing. These blocks set it only around
    their own inverse computations, so the choice is per optimizer. Cholesky
    (for the factors, which are positive definite once damped) compiles ~2.5x
    faster per factor size than LU on CPU and runs no slower.
    """

    def __init__(self, layer_tag_eq: Any, *, inverse_method: str = "cholesky", **kwargs: Any):
        if inverse_method not in INVERSE_METHODS:
            raise ValueError(f"inverse_method={inverse_method!r} is invalid; valid: "
                             f"{', '.join(INVERSE_METHODS)}")
        self.inverse_method = inverse_method
        super().__init__(layer_tag_eq, **kwargs)

    def _with_inverse_method(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        previous = kfac_jax.utils.get_use_cholesky_inversion()
        kfac_jax.utils.set_use_cholesky_inversion(self.inverse_method == "cholesky")
        try:
            return method(*args, **kwargs)
        finally:
            kfac_jax.utils.set_use_cholesky_inversion(previous)

    def _update_cache(self, *args: Any, **kwargs: Any) -> Any:
        return self._with_inverse_method(super()._update_cache, *args, **kwargs)

    def _multiply_matpower_unscaled(self, *args: Any, **kwargs: Any) -> Any:
        # Inverts in place when nothing is cached (inverse_update_period=1).
        return self._with_inverse_method(super()._multiply_matpower_unscaled, *args, **kwargs)


class DenseKroneckerFactored(_FactorInverseMixin, kfac_jax.DenseTwoKroneckerFactored):
    """kfac_jax's Kronecker-factored dense block with a choice of inverse method."""


class Conv2DKroneckerFactored(_FactorInverseMixin, kfac_jax.Conv2DTwoKroneckerFactored):
    """kfac_jax's Kronecker-factored conv2d block (its patch statistics), with a choice of
    inverse method."""


class PatchesConv2DKroneckerFactored(Conv2DKroneckerFactored):
    """Kronecker-factored conv2d block whose input factor comes from explicit patches.

    kfac_jax 0.0.8 computes the input factor (the second moment of the
    kh*kw*C_in input patches, plus their mean when the layer has a bias) with a
    `lax.while_loop` over kernel offsets, each a 4-D convolution; this block
    extracts the patches of every output location with
    `lax.conv_general_dilated_patches` (same strides, padding and dilation as
    the layer, so strided convolutions and the stem are handled alike) and
    forms the moments with one matrix product. Same matrix, same layout
    (rows/columns ordered (kh, kw, C_in), the bias coordinate last), same
    normalisation (batch * output locations); it uses the memory of the patches
    (kh*kw times the layer's input). Falls back to kfac_jax's computation for
    what it does not cover (a weighting array, grouped convolutions, a kernel
    layout other than HWIO).
    """

    def compute_inputs_stats(self, inputs: jax.Array,
                             weighting_array: Optional[jax.Array] = None) -> jax.Array:
        params = self._layer_tag_eq.params
        dims = params["dimension_numbers"]
        if (weighting_array is not None or params.get("feature_group_count", 1) != 1
                or params.get("batch_group_count", 1) != 1 or tuple(dims.rhs_spec) != (3, 2, 0, 1)):
            return super().compute_inputs_stats(inputs, weighting_array)
        patches = lax.conv_general_dilated_patches(
            inputs, filter_shape=self.weights_spatial_shape,
            window_strides=params["window_strides"], padding=params["padding"],
            lhs_dilation=params.get("lhs_dilation"), rhs_dilation=params.get("rhs_dilation"),
            dimension_numbers=dims, precision=params.get("precision"))
        # Patch features come channel-major, (C_in, kh, kw); the weight is
        # flattened (kh, kw, C_in), so reorder before the product.
        channels, taps = inputs.shape[dims.lhs_spec[1]], self.weights_spatial_size
        patches = jnp.moveaxis(patches, dims.out_spec[1], -1).reshape(-1, channels, taps)
        patches = jnp.swapaxes(patches, 1, 2).reshape(-1, taps * channels)
        normalizer = patches.shape[0]  # batch size * output locations
        second = jnp.matmul(patches.T, patches, precision=params.get("precision")) / normalizer
        if self.number_of_parameters == 1:
            return second
        mean = jnp.sum(patches, axis=0) / normalizer
        top = jnp.concatenate([second, mean[:, None]], axis=1)
        bottom = jnp.concatenate([mean, jnp.ones([1], second.dtype)])[None]
        return jnp.concatenate([top, bottom], axis=0)


def block_constructors(conv_block: str, dense_block: str, conv_factor_stats: str,
                       inverse_method: str) -> dict[str, Callable[..., Any]]:
    """kfac_jax's `layer_tag_to_block_ctor` for the chosen block types.

    Args:
        conv_block: "kron" (Kronecker-factored) or "diag" (`kfac_jax.Conv2DDiagonal`).
        dense_block: "kron" or "diag" (`kfac_jax.DenseDiagonal`).
        conv_factor_stats: For "kron" conv blocks: "patches"
            (`PatchesConv2DKroneckerFactored`) or "kfac_jax" (`Conv2DKroneckerFactored`).
        inverse_method: For "kron" blocks: "cholesky" or "lu".

    Returns:
        A dict from layer tag ("conv2d", "dense") to block constructor.
    """
    for name, value, valid in (("conv_block", conv_block, BLOCK_TYPES),
                               ("dense_block", dense_block, BLOCK_TYPES),
                               ("conv_factor_stats", conv_factor_stats, CONV_FACTOR_STATS),
                               ("inverse_method", inverse_method, INVERSE_METHODS)):
        if value not in valid:
            raise ValueError(f"{name}={value!r} is invalid; valid: {', '.join(valid)}")

    def kron(cls):
        return functools.partial(cls, inverse_method=inverse_method)

    if conv_block == "diag":
        conv = kfac_jax.Conv2DDiagonal
    else:
        conv = kron(PatchesConv2DKroneckerFactored if conv_factor_stats == "patches"
                    else Conv2DKroneckerFactored)
    dense = kron(DenseKroneckerFactored) if dense_block == "kron" else kfac_jax.DenseDiagonal
    return {"conv2d": conv, "dense": dense}


def sub_batch(batch: Any, stride: int) -> Any:
    """Every `stride`-th example of every leaf of `batch` (leading axis).

    Written as a reshape and an index on the new, unsharded axis (not a strided
    slice), so a batch sharded over the 'data' axis stays sharded: each
    device keeps every `stride`-th of its own examples, provided each
    device's share is a multiple of `stride`.
    """
    if stride == 1:
        return batch

    def take(x):
        if x.shape[0] % stride:
            raise ValueError(f"curvature sub-batch: batch size {x.shape[0]} is not a multiple "
                             f"of the stride {stride} (1 / curvature_batch_fraction)")
        return x.reshape((x.shape[0] // stride, stride) + x.shape[1:])[:, 0]

    return jax.tree_util.tree_map(take, batch)


class _Optimizer(kfac_jax.Optimizer):
    """kfac_jax.Optimizer with a curvature sub-batch and no whole-state conditionals.

    * Every curvature update (steps and burn-in) goes through
      `_update_estimator_curvature(estimator_state, func_args, ...)` with the
      batch last in `func_args`, and kfac_jax takes the batch size it
      normalises by from that batch: replacing the batch by every
      `curvature_stride`-th example there is all a sub-batch needs. The loss,
      gradients, step counter and `data_seen` keep the full batch.
    * kfac_jax wraps two updates of the whole estimator state (factors and
      cached inverses) in `lax.cond`s on the traced step counter: the
      cross-device sync after a curvature update, and the inverse refresh.
      XLA's CPU backend copies (and re-lays out) every operand of those
      conditionals at every step, about 1 GB per step for the 50 x 512 MLP.
      Without pmap (always here: `multi_device=False`) the sync does nothing,
      so it is skipped; and when the caller says, with `static_refresh`,
      whether the step being traced refreshes the inverses, that is decided in
      Python (one compiled program for refresh steps, one for the others).
    """

    def __init__(self, *, curvature_stride: int, **kwargs: Any) -> None:
        self._curvature_stride = curvature_stride
        # The refresh decision of the step being traced (None: kfac_jax's traced cond). A list,
        # because attributes cannot be reassigned once kfac_jax has finalized the object.
        self._static_refresh: list[Optional[bool]] = [None]
        super().__init__(**kwargs)
        self.finalize()  # kfac_jax finalizes only instances of exactly its own class

    @contextlib.contextmanager
    def static_refresh(self, refresh: Optional[bool]) -> Iterator[None]:
        """Within the block, traced steps refresh the inverses iff `refresh` (None: traced)."""
        previous, self._static_refresh[0] = self._static_refresh[0], refresh
        try:
            yield
        finally:
            self._static_refresh[0] = previous

    def _update_estimator_curvature(self, estimator_state, func_args, rng, ema_old, ema_new,
                                    precon_damping, sync=True):
        func_args = (*func_args[:-1], sub_batch(func_args[-1], self._curvature_stride))
        if self.multi_device:
            return super()._update_estimator_curvature(estimator_state, func_args, rng, ema_old,
                                                       ema_new, precon_damping, sync)
        return self._estimator.update_curvature_matrix_estimate(
            state=estimator_state, ema_old=ema_old, ema_new=ema_new,
            identity_weight=self._l2_reg + precon_damping,
            batch_size=self._batch_size_extractor(func_args[-1]), rng=rng, func_args=func_args,
            pmap_axis_name=self.pmap_axis_name)

    def _maybe_update_inverse_cache(self, state, precon_damping):
        refresh = self._static_refresh[0]
        if refresh is None:
            return super()._maybe_update_inverse_cache(state, precon_damping)
        if not (refresh and self._use_cached_inverses):
            return state
        state = state.copy()
        state.estimator_state = self._estimator.update_cache(
            state.estimator_state, identity_weight=self._l2_reg + precon_damping,
            exact_powers=self._exact_powers_to_cache, approx_powers=self._approx_powers_to_cache,
            eigenvalues=False, pmap_axis_name=self.pmap_axis_name)
        return state


@dataclasses.dataclass(frozen=True)
class KFACConfig:
    """K-FAC hyper-parameters.

    The first group's defaults are the public ImageNet K-FAC settings. The
    cost settings (`curvature_batch_fraction` to `inverse_method`) were chosen
    with `scripts/profile_kfac.py` and `scripts/bench_train.py` on 2 CPU cores,
    keeping only what did not cost accuracy: on MNIST
    (`configs/mnist.py:optimizer=kfac`, 2 epochs) the test accuracy with a
    curvature sub-batch of 1/4, 1/2 and the whole batch was 97.38%, 97.58% and
    97.45% (seed 0), against 97.49% before these settings existed; runs that
    differ only by rounding differ by as much. The explicit-patch statistics,
    the Cholesky inverses and the refresh programs compute the same update as
    kfac_jax's defaults up to rounding (tested).

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
        curvature_batch_fraction: Share of each batch the curvature estimate is
            computed on (every 1/fraction-th example; 1/fraction must be an
            integer dividing each device's share of the batch). 1.0 is the
            whole batch.
        conv_block: Curvature block of conv layers: "kron" (Kronecker-factored,
            K-FAC proper) or "diag" (diagonal of the Fisher/GGN).
        dense_block: Curvature block of dense layers: "kron" or "diag".
        conv_factor_stats: How "kron" conv blocks compute their input factor:
            "patches" (explicit patches and one matrix product; fast, uses the
            memory of the patches) or "kfac_jax" (kfac_jax's loop of
            convolutions; memory-light, 30-100x slower on CPU).
        use_exact_inverses: Precondition with eigendecompositions of the factors
            and exact damping instead of pi-adjusted factored damping with
            matrix inverses.
        inverse_method: How "kron" blocks invert their pi-adjusted damped
            factors: "cholesky" or "lu" (kfac_jax's default).
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
    curvature_batch_fraction: float = 0.25
    conv_block: str = "kron"
    dense_block: str = "kron"
    conv_factor_stats: str = "patches"
    use_exact_inverses: bool = False
    inverse_method: str = "cholesky"
    extra_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        owned = _OWNED_KWARGS.intersection(self.extra_kwargs)
        if owned:
            raise ValueError(f"extra_kwargs may not set {sorted(owned)}; use the KFACConfig fields")
        if self.num_burnin_steps < 0:
            raise ValueError(f"num_burnin_steps must be >= 0, got {self.num_burnin_steps}")
        if self.use_adaptive_learning_rate and self.norm_constraint is not None:
            raise ValueError("kfac_jax forbids norm_constraint with an adaptive learning rate")
        if not 0.0 < self.curvature_batch_fraction <= 1.0:
            raise ValueError("curvature_batch_fraction must be in (0, 1], got "
                             f"{self.curvature_batch_fraction}")
        if abs(self.curvature_stride * self.curvature_batch_fraction - 1.0) > 1e-6:
            raise ValueError("curvature_batch_fraction must be 1 / an integer (1, 0.5, 0.25, "
                             f"0.125, ...), got {self.curvature_batch_fraction}")
        block_constructors(self.conv_block, self.dense_block, self.conv_factor_stats,
                           self.inverse_method)

    @property
    def curvature_stride(self) -> int:
        """1 / curvature_batch_fraction: the curvature sees every this-many-th example."""
        return max(1, round(1.0 / self.curvature_batch_fraction))


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
        self._lr_shape, lr_scale = schedules.split_scale(learning_rate)
        # What the compiled step takes as inputs (adaptive values live in kfac_jax's state).
        self._runtime = {name: value for name, value, adaptive in (
            ("learning_rate", lr_scale, adaptive_lr), ("momentum", config.momentum, adaptive_mom),
            ("damping", config.damping, adaptive_damp)) if not adaptive}
        self._kfac = _Optimizer(
            curvature_stride=config.curvature_stride,
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
            learning_rate_schedule=None,  # values passed to `step`: see the module docstring
            use_adaptive_momentum=adaptive_mom,
            momentum_schedule=None,
            use_adaptive_damping=adaptive_damp,
            damping_schedule=None,
            initial_damping=config.damping if adaptive_damp else None,
            damping_adaptation_interval=config.damping_adaptation_interval,
            norm_constraint=config.norm_constraint,
            num_burnin_steps=0,  # see module docstring: burn-in is `burnin()`
            estimation_mode=config.estimation_mode,
            curvature_ema=config.curvature_ema,
            curvature_update_period=config.curvature_update_period,
            inverse_update_period=config.inverse_update_period,
            include_norms_in_stats=config.include_norms_in_stats,
            layer_tag_to_block_ctor=block_constructors(config.conv_block, config.dense_block,
                                                       config.conv_factor_stats,
                                                       config.inverse_method),
            use_exact_inverses=config.use_exact_inverses,
            multi_device=False,
            **dict(config.extra_kwargs),
        )

    @property
    def kfac_optimizer(self) -> kfac_jax.Optimizer:
        """The wrapped kfac_jax optimizer."""
        return self._kfac

    def curvature_batch(self, batch: base.Batch) -> base.Batch:
        """The part of `batch` the curvature estimate is computed on."""
        return sub_batch(batch, self.config.curvature_stride)

    def init(self, params: base.Params, func_state: base.FuncState, rng: base.PRNGKey,
             batch: base.Batch) -> kfac_jax.Optimizer.State:
        """Traces the loss on `batch` to find the layers, returns kfac_jax's state.

        Call it eagerly (not under jit); `batch` must have the training batch shape.
        """
        # kfac_jax traces the loss here to match layers, and again (graph matching included)
        # for every new batch shape it sees: giving it the curvature sub-batch saves that work
        # when the step is traced. The loss and gradients do not go through this trace.
        return self._kfac.init(params, rng, self.curvature_batch(batch), func_state)

    def runtime_hyperparams(self) -> dict[str, float]:
        """The learning rate's scale, momentum and damping, each unless kfac_jax adapts it."""
        return dict(self._runtime)

    def static_key(self, global_step: int) -> Hashable:
        """(update curvature this step?, adapt damping this step?, refresh inverses this step?)."""
        cfg = self.config
        update_curvature = global_step % cfg.curvature_update_period == 0
        update_damping = (cfg.use_adaptive_damping
                          and (global_step + 1) % cfg.damping_adaptation_interval == 0)
        refresh = cfg.inverse_update_period > 1 and global_step % cfg.inverse_update_period == 0
        return (update_curvature, update_damping, refresh)

    def step(self, params: base.Params, opt_state: kfac_jax.Optimizer.State,
             func_state: base.FuncState, rng: base.PRNGKey, batch: base.Batch,
             global_step: int, hyper: base.Hyper | None = None) -> base.StepOutput:
        """One K-FAC step; `global_step` must equal the optimizer's step counter."""
        hyper = self._hyper(hyper)
        values = dict(hyper)  # the names are kfac_jax's `step` arguments
        if "learning_rate" in values:
            values["learning_rate"] = schedules.Scaled(self._lr_shape, values["learning_rate"])(
                opt_state.step_counter)
        # In kfac_jax's staging context its own jitted methods run inline, traced by our
        # jit, so that the Python refresh decision below reaches the traced step (kfac_jax's
        # inner jit would otherwise reuse whichever program it traced first).
        with self._kfac.staging_context(), self._kfac.static_refresh(self.static_key(global_step)[2]):
            new_params, new_state, new_func_state, stats = self._kfac.step(
                params, opt_state, rng, batch=batch, func_state=func_state,
                global_step_int=int(global_step), **values)
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
                data_iterator=iter(taken), func_state=func_state,
                damping=self._hyper(None).get("damping"))
        if mesh is not None:
            opt_state, func_state = sharding.replicate((opt_state, func_state), mesh)
        return opt_state, func_state
