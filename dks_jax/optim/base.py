"""The one step interface shared by SGD, Adam and K-FAC, and its jitting.

Loss function contract (`LossFn`)::

    loss_fn(params, func_state, rng, batch) -> (loss, (new_func_state, aux))

* `func_state` is Haiku's state (batch-norm statistics), `{}` for stateless
  models; `aux` is a dict of scalar metrics (e.g. accuracy).
* `loss` is the *data* loss, a mean over the batch, WITHOUT weight decay: the
  optimizer adds `l2_reg * l2_penalty(params)` itself (biases and normaliser
  parameters excluded, see `losses.is_bias_like`) for all three optimizers,
  and K-FAC is additionally told `l2_reg` so that its curvature damping
  becomes l2_reg + damping (kfac_jax expects the L2 to be in the loss, too).
  For SGD/Adam this is the same as adding l2_reg * w to the gradient
  (classic, coupled L2, not AdamW).
* For K-FAC the loss must be registered inside `loss_fn`
  (`losses.classification_loss(..., register_for_kfac=True)`); check
  `optimizer.needs_loss_registration`. Registration is harmless for SGD/Adam.

Hyper-parameters the optimizers name in `runtime_hyperparams()` (the learning
rate's scale; K-FAC's damping and momentum) are inputs of the compiled step,
not constants in it: runs that differ only in them share one program, so the
points of a learning-rate or damping sweep after the first load it from the
persistent compilation cache instead of compiling it again.

Step metrics (all scalars): `loss` (data loss), `l2_loss` (l2_reg * penalty),
`objective` (loss + l2_loss, what is minimised), `learning_rate`, `momentum`,
the entries of `aux`, plus per-optimizer extras (`grad_norm` for SGD/Adam;
K-FAC's stats such as `damping`, `precon_damping`, `rho`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
import functools
from typing import Any, NamedTuple, Optional, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dks_jax.optim import losses
from dks_jax.optim import sharding

Params = Any
FuncState = Any
OptState = Any
Batch = Any
PRNGKey = jax.Array
Metrics = dict[str, jax.Array]
LossFn = Callable[[Params, FuncState, PRNGKey, Batch], tuple[jax.Array, tuple[FuncState, Metrics]]]
StepOutput = tuple[Params, OptState, FuncState, Metrics]
Hyper = dict[str, jax.Array]


class TrainState(NamedTuple):
    """Everything training changes: what is checkpointed, restored and stepped.

    Attributes:
        params: Model parameters (replicated over the data mesh).
        state: Haiku state (batch-norm statistics; ``{}`` for stateless models).
        opt_state: The optimizer's state.
        step: Steps taken, a host-side int64 0-d NumPy array. It stays on the host
            because K-FAC chooses its program by the step (curvature/inverse
            updates), and reading a device counter would sync every step.
    """
    params: Params
    state: FuncState
    opt_state: OptState
    step: np.ndarray

    @classmethod
    def create(cls, params: Params, state: FuncState, opt_state: OptState, step: int = 0
               ) -> "TrainState":
        return cls(params, state, opt_state, np.asarray(step, np.int64))


TrainStepFn = Callable[[TrainState, PRNGKey, Batch], tuple[TrainState, Metrics]]

# Metric names the optimizers produce; a loss_fn's aux must not reuse them.
RESERVED_METRICS = frozenset({"loss", "l2_loss", "objective", "learning_rate", "momentum",
                              "grad_norm"})


@runtime_checkable
class StepOptimizer(Protocol):
    """What the training loop sees of an optimizer."""

    name: str
    needs_loss_registration: bool
    num_burnin_steps: int

    def init(self, params: Params, func_state: FuncState, rng: PRNGKey, batch: Batch) -> OptState:
        """Returns the initial optimizer state (batch: an example batch)."""

    def step(self, params: Params, opt_state: OptState, func_state: FuncState, rng: PRNGKey,
             batch: Batch, global_step: int, hyper: Optional[Hyper] = None) -> StepOutput:
        """One update; traceable by jax.jit for a fixed `static_key(global_step)`.

        `hyper` holds the values of `runtime_hyperparams()` (traced under jit); None uses those.
        """

    def runtime_hyperparams(self) -> dict[str, float]:
        """The hyper-parameters the compiled step takes as inputs, by name."""

    def static_key(self, global_step: int) -> Hashable:
        """What of `global_step` the traced step depends on (one compile per key)."""

    def burnin(self, params: Params, opt_state: OptState, func_state: FuncState, rng: PRNGKey,
               batches: Iterable[Batch], mesh: Optional[Mesh] = None
               ) -> tuple[OptState, FuncState]:
        """Consumes `num_burnin_steps` batches before step 0 (no-op if that is 0)."""

    def jit_step(self, mesh: Optional[Mesh] = None) -> TrainStepFn:
        """The jitted, data-parallel step on a `TrainState` (see `BaseOptimizer.jit_step`)."""


def with_l2(loss_fn: LossFn, l2_reg: float, exclude_biases: bool = True) -> LossFn:
    """Wraps `loss_fn` so it returns the regularised objective.

    Args:
        loss_fn: The data loss function (see module docstring).
        l2_reg: L2 coefficient; the objective is loss + l2_reg * l2_penalty.
        exclude_biases: Whether bias-like leaves are exempt from the penalty.

    Returns:
        A function with the `LossFn` signature returning
        (objective, (new_func_state, aux)) where aux also holds `loss` and
        `l2_loss`.
    """

    def objective_fn(params: Params, func_state: FuncState, rng: PRNGKey, batch: Batch):
        loss, (new_func_state, aux) = loss_fn(params, func_state, rng, batch)
        aux = dict(aux or {})
        clash = RESERVED_METRICS.intersection(aux)
        if clash:
            raise ValueError(f"loss_fn aux uses reserved metric names {sorted(clash)}")
        if l2_reg:
            l2_loss = l2_reg * losses.l2_penalty(params, exclude_biases)
        else:
            l2_loss = jnp.zeros([], jnp.float32)
        aux.update(loss=loss, l2_loss=l2_loss)
        return loss + l2_loss, (new_func_state, aux)

    return objective_fn


class BaseOptimizer:
    """Shared jitting and defaults; subclasses implement init/step."""

    name: str = "base"
    needs_loss_registration: bool = False
    num_burnin_steps: int = 0

    def __init__(self) -> None:
        self._jitted: dict[tuple[Any, Hashable], Callable[..., StepOutput]] = {}

    def init(self, params: Params, func_state: FuncState, rng: PRNGKey,
             batch: Batch) -> OptState:
        raise NotImplementedError

    def step(self, params: Params, opt_state: OptState, func_state: FuncState, rng: PRNGKey,
             batch: Batch, global_step: int, hyper: Optional[Hyper] = None) -> StepOutput:
        raise NotImplementedError

    def runtime_hyperparams(self) -> dict[str, float]:
        """None by default; subclasses name what their step reads from `hyper`."""
        return {}

    def _hyper_inputs(self) -> dict[str, np.ndarray]:
        """`runtime_hyperparams()` as the float32 arrays the compiled step takes."""
        return {k: np.asarray(v, np.float32) for k, v in self.runtime_hyperparams().items()}

    def _hyper(self, hyper: Optional[Hyper]) -> Hyper:
        """`hyper`, or this optimizer's own values when the step is called without it."""
        if hyper is None:  # as JAX arrays: kfac_jax refuses NumPy scalars
            return {k: jnp.asarray(v) for k, v in self._hyper_inputs().items()}
        return hyper

    def static_key(self, global_step: int) -> Hashable:
        """First-order steps do not depend on the Python step at all."""
        del global_step
        return None

    def burnin(self, params: Params, opt_state: OptState, func_state: FuncState, rng: PRNGKey,
               batches: Iterable[Batch], mesh: Optional[Mesh] = None
               ) -> tuple[OptState, FuncState]:
        """No burn-in for first-order optimizers: returns the states unchanged."""
        del params, rng, batches, mesh
        return opt_state, func_state

    def jit_step(self, mesh: Optional[Mesh] = None) -> TrainStepFn:
        """Returns ``step(train_state, rng, batch) -> (train_state, metrics)``, jitted.

        With a mesh, params, opt_state, state and rng are replicated and every
        batch leaf is sharded on its leading axis over 'data' (in and out
        shardings are fixed, so pass states replicated on this mesh, e.g. via
        `sharding.replicate`, or uncommitted/single-device arrays; the batch may
        be a host numpy array). Params and opt_state are donated: do not reuse
        the train state passed in. One executable is compiled per
        `static_key(train_state.step)` (always one for SGD/Adam).

        Args:
            mesh: A mesh with an Auto 'data' axis (see `sharding.make_data_mesh`),
                or None for plain single-device jit.

        Returns:
            The jitted step function.
        """
        if mesh is not None:
            sharding.check_data_mesh(mesh)
        hyper = self._hyper_inputs()

        def train_step(train_state: TrainState, rng: PRNGKey, batch: Batch
                       ) -> tuple[TrainState, Metrics]:
            step = int(train_state.step)
            key = (mesh, self.static_key(step))
            compiled = self._jitted.get(key)
            if compiled is None:
                compiled = self._compile(mesh, step)
                self._jitted[key] = compiled
            params, opt_state, state, metrics = compiled(
                train_state.params, train_state.opt_state, train_state.state, rng, batch, hyper)
            return TrainState.create(params, state, opt_state, step + 1), metrics

        return train_step

    def lower(self, train_state: TrainState, rng: PRNGKey, batch: Batch,
              mesh: Optional[Mesh] = None) -> jax.stages.Lowered:
        """The program `jit_step(mesh)` runs for `train_state.step`, lowered but not compiled.

        Its ``as_text()`` is what the persistent compilation cache keys on (with the compiler's
        options); ``compile()`` gives the executable and its cost analysis.
        """
        hyper = self._hyper_inputs()
        return self._compile(mesh, int(train_state.step)).lower(
            train_state.params, train_state.opt_state, train_state.state, rng, batch, hyper)

    def _compile(self, mesh: Optional[Mesh], global_step: int) -> Callable[..., StepOutput]:
        """jax.jit of `step` with the Python step fixed to a representative value."""
        # Any step with the same static_key traces to the same program.
        fn = functools.partial(self._step_positional, global_step=global_step)
        if mesh is None:
            return jax.jit(fn, donate_argnums=(0, 1))
        rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
        return jax.jit(fn, in_shardings=(rep, rep, rep, rep, data, rep), out_shardings=rep,
                       donate_argnums=(0, 1))

    def _step_positional(self, params: Params, opt_state: OptState, func_state: FuncState,
                         rng: PRNGKey, batch: Batch, hyper: Hyper, *, global_step: int) -> StepOutput:
        if not hyper:  # an optimizer without runtime hyper-parameters may not take the argument
            return self.step(params, opt_state, func_state, rng, batch, global_step)
        return self.step(params, opt_state, func_state, rng, batch, global_step, hyper)
