"""Learning-rate (and other hyper-parameter) schedules, looked up by name.

Every schedule is a jittable function of an integer step (a Python int or an
int array, possibly traced) returning a float32 scalar array, so it can be
evaluated inside a jitted training step and passed to kfac_jax, which calls
schedules with its internal step counter.

    sched = get_schedule("cosine", peak_value=0.1, total_steps=1000, warmup_steps=50)
    sched = get_schedule("piecewise_constant", peak_value=0.1, total_steps=1000,
                         boundaries=(0.5, 0.75), factors=(0.1, 0.1))
    sched(0), sched(50), sched(1000)   # 0.0, 0.1, 0.0

The registered schedules are `Scaled`: the peak is kept apart from the shape, and the optimizers feed
it to their compiled step as an input, so a learning-rate sweep compiles one program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import inspect
import math
from typing import Any, Union

import jax
import jax.numpy as jnp

Step = Union[int, jax.Array]
Schedule = Callable[[Step], jax.Array]


def constant(value: float) -> Schedule:
    """A schedule that always returns `value`.

    Args:
        value: The constant value.

    Returns:
        The schedule.
    """
    value = float(value)

    def schedule(step: Step) -> jax.Array:
        del step
        return jnp.asarray(value, jnp.float32)

    return schedule


def linear_warmup(schedule: Schedule, warmup_steps: int) -> Schedule:
    """`schedule` multiplied by a linear ramp from 0 (step 0) to 1 (step `warmup_steps`).

    Args:
        schedule: The schedule after warm-up.
        warmup_steps: Length of the ramp (0 returns `schedule` itself).

    Returns:
        The schedule.
    """
    warmup_steps = int(warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return schedule

    def warmed(step: Step) -> jax.Array:
        t = jnp.asarray(step, jnp.float32)
        return (schedule(step) * jnp.minimum(t / warmup_steps, 1.0)).astype(jnp.float32)

    return warmed


def cosine(peak_value: float, total_steps: int, warmup_steps: int = 0,
           end_value: float = 0.0) -> Schedule:
    """Linear warm-up from 0 to `peak_value`, then cosine decay to `end_value`.

    value(t) = peak * t / warmup                                   for t < warmup
             = end + (peak - end) * (1 + cos(pi * p)) / 2,
               p = (t - warmup) / (total - warmup)                 for warmup <= t <= total
             = end                                                 for t > total

    Args:
        peak_value: Value reached at the end of warm-up.
        total_steps: Step at which the decay reaches `end_value`.
        warmup_steps: Length of the linear warm-up (0 disables it).
        end_value: Final value.

    Returns:
        The schedule.

    Raises:
        ValueError: On a non-positive `total_steps` or `warmup_steps` outside
            [0, total_steps].
    """
    total_steps, warmup_steps = int(total_steps), int(warmup_steps)
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                         f"got {warmup_steps}")
    peak, end = float(peak_value), float(end_value)
    # max(., 1) keeps warmup == total well defined: the decay is a single step.
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step: Step) -> jax.Array:
        t = jnp.asarray(step, jnp.float32)
        warm = peak * t / max(warmup_steps, 1)
        progress = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(t < warmup_steps, warm, decayed).astype(jnp.float32)

    return schedule


def _boundary_steps(boundaries: Sequence[int | float], total_steps: int | None) -> list[int]:
    """Converts boundaries given as steps (ints) or fractions (floats) to steps."""
    kinds = {isinstance(b, float) for b in boundaries}
    if len(kinds) > 1:
        raise ValueError(f"boundaries must be all ints (steps) or all floats (fractions of "
                         f"total_steps), got {list(boundaries)}")
    if kinds == {True}:
        if total_steps is None:
            raise ValueError("fractional boundaries need total_steps")
        if any(not 0.0 <= b <= 1.0 for b in boundaries):
            raise ValueError(f"fractional boundaries must lie in [0, 1], got {list(boundaries)}")
        steps = [int(round(b * total_steps)) for b in boundaries]
    else:
        steps = [int(b) for b in boundaries]
    if any(b < 0 for b in steps) or any(b1 > b2 for b1, b2 in zip(steps, steps[1:])):
        raise ValueError(f"boundaries must be non-negative and non-decreasing, got {steps}")
    return steps


def piecewise_constant(init_value: float, boundaries: Sequence[int | float],
                       factors: Sequence[float], total_steps: int | None = None) -> Schedule:
    """`init_value` multiplied by `factors[i]` for every boundary i already reached.

    value(t) = init_value * prod_{i : t >= boundary_i} factors[i]

    Args:
        init_value: Value before the first boundary.
        boundaries: Either steps (all ints) or fractions of `total_steps` (all
            floats in [0, 1], rounded to the nearest step); non-decreasing.
        factors: One multiplicative factor per boundary.
        total_steps: Needed only for fractional boundaries.

    Returns:
        The schedule.

    Raises:
        ValueError: On mismatched lengths, mixed or invalid boundaries.
    """
    if len(boundaries) != len(factors):
        raise ValueError(f"got {len(boundaries)} boundaries but {len(factors)} factors")
    steps = _boundary_steps(boundaries, total_steps)
    init, factors = float(init_value), [float(f) for f in factors]

    def schedule(step: Step) -> jax.Array:
        t = jnp.asarray(step)
        value = jnp.asarray(init, jnp.float32)
        for boundary, factor in zip(steps, factors):
            value = value * jnp.where(t >= boundary, factor, 1.0).astype(jnp.float32)
        return value

    return schedule


@dataclasses.dataclass(frozen=True)
class Scaled:
    """The schedule ``scale * shape(step)``, with the scale kept apart from the shape.

    The optimizers give ``scale`` to their compiled step as an input rather than a constant of the
    program, so runs that differ only in the peak learning rate (the points of a learning-rate sweep)
    compile the same program, and the persistent compilation cache serves every point after the first.
    Calling it is calling the schedule it stands for.

    Attributes:
        shape: The schedule at scale 1.
        scale: The factor (the peak value for the registered schedules).
    """
    shape: Schedule
    scale: float  # or a traced scalar, inside the optimizers' compiled steps

    def __call__(self, step: Step) -> jax.Array:
        return (self.shape(step) * jnp.asarray(self.scale, jnp.float32)).astype(jnp.float32)


def split_scale(schedule: float | Schedule) -> tuple[Schedule, float]:
    """``(shape, scale)`` with ``schedule(t) == scale * shape(t)``; a plain schedule has scale 1.

    Args:
        schedule: A number, a `Scaled` schedule or any other schedule.

    Returns:
        The shape (a schedule) and the scale (a float).
    """
    schedule = as_schedule(schedule)
    if isinstance(schedule, Scaled):
        return schedule.shape, float(schedule.scale)
    return schedule, 1.0


def _constant_factory(peak_value: float, total_steps: int, warmup_steps: int = 0) -> Schedule:
    del total_steps
    return Scaled(linear_warmup(constant(1.0), warmup_steps), float(peak_value))


def _cosine_factory(peak_value: float, total_steps: int, warmup_steps: int = 0,
                    end_value: float = 0.0) -> Schedule:
    peak, warmup_steps = float(peak_value), min(warmup_steps, total_steps)
    if peak == 0.0:  # no scale to factor out
        return cosine(peak, total_steps, warmup_steps=warmup_steps, end_value=end_value)
    return Scaled(cosine(1.0, total_steps, warmup_steps=warmup_steps, end_value=float(end_value) / peak),
                  peak)


def _piecewise_factory(peak_value: float, total_steps: int, warmup_steps: int = 0,
                       boundaries: Sequence[float] = (0.5, 0.75),
                       factors: Sequence[float] = (0.1, 0.1)) -> Schedule:
    boundaries = [float(b) for b in boundaries]  # fractions of training
    return Scaled(linear_warmup(piecewise_constant(1.0, boundaries, factors, total_steps), warmup_steps),
                  float(peak_value))


# Every registered factory takes (peak_value, total_steps, warmup_steps, **its own options): the
# training loop passes the config's `schedule.<name>` section as those options, untouched.
_SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": _constant_factory,
    "cosine": _cosine_factory,
    "piecewise_constant": _piecewise_factory,
}


def register_schedule(name: str, factory: Callable[..., Schedule]) -> None:
    """Registers `factory(peak_value, total_steps, warmup_steps=0, **options) -> Schedule`.

    A factory whose schedule is proportional to ``peak_value`` should return
    ``Scaled(shape, peak_value)`` (as the built-in ones do), so that a learning-rate sweep compiles
    its training step once; any other schedule works too, with the peak compiled into the program.

    Raises:
        ValueError: If `name` is taken.
    """
    if name in _SCHEDULES:
        raise ValueError(f"schedule {name!r} is already registered")
    _SCHEDULES[name] = factory


def list_schedules() -> list[str]:
    """Returns the registered schedule names, sorted."""
    return sorted(_SCHEDULES)


def get_schedule(name: str, **kwargs: Any) -> Schedule:
    """Builds the schedule registered under `name`.

    Args:
        name: One of `list_schedules()`.
        **kwargs: `peak_value`, `total_steps`, optionally `warmup_steps`, and the
            schedule's own options (cosine: `end_value`; piecewise_constant:
            `boundaries` as fractions of training and `factors`).

    Returns:
        The schedule, a jittable function of the step.

    Raises:
        ValueError: If `name` is unknown or an option is not one of its options.
    """
    try:
        factory = _SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid: {list_schedules()}") from None
    accepted = set(inspect.signature(factory).parameters)
    unknown = set(kwargs) - accepted
    if unknown:
        raise ValueError(f"schedule {name!r} has no options {sorted(unknown)}; valid: {sorted(accepted)}")
    return factory(**kwargs)


def as_schedule(value: float | Schedule) -> Schedule:
    """Returns `value` itself if callable, else a constant schedule of it (a `Scaled` one).

    Args:
        value: A number or a schedule.

    Returns:
        A schedule.
    """
    return value if callable(value) else Scaled(constant(1.0), float(value))
