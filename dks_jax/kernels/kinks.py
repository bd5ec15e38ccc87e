"""Where an activation is not smooth, and how badly: declared in the registry or found numerically.

The kernel maps depend on this in three ways. Quadrature must cut its panels at every kink (a plain
rule loses most of its accuracy there). ``C''(1) = E[phi''(z)^2] / Q(1)`` is infinite when ``phi'``
jumps (``phi''`` then holds a Dirac delta), so TAT for smooth activations cannot be used; DKS only
needs ``C'(1)``, which is infinite only when ``phi`` itself jumps. And the C map's derivatives of such
functions get delta terms of their own (``local_maps.c_map``).

Detection (for activations registered without ``kinks``): ``phi, phi', phi''`` on a fine grid of
[-20, 20] (``DETECTION_RANGE``), a jump is an isolated spike in the first differences of one of them;
each candidate is located to ~1e-13 by zooming in and kept only if the one-sided limits differ.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Sequence

import numpy as np

from dks_jax import activations
from dks_jax.kernels import evaluate

log = logging.getLogger(__name__)

DETECTION_RANGE = 20.0
_GRID_POINTS = 40001
_MAX_KINKS = 32
_SPIKE_TOL = 1e-7  # smallest jump (relative to 1 + |value|) that detection looks at
_JUMP_TOL = 1e-8  # smallest jump of a one-sided-limit check that counts as a kink


@dataclasses.dataclass(frozen=True)
class KinkProfile:
    """The non-smooth points of an activation ``phi`` (at its default shape parameters).

    Attributes:
      kinks: Sorted positions (in ``phi``'s input coordinate).
      orders: For each kink, the lowest derivative order that jumps there (0: ``phi``; 1: ``phi'``;
        2: ``phi''``).
      detected: Whether they were found numerically (the activation did not declare them).
    """

    kinks: tuple[float, ...] = ()
    orders: tuple[int, ...] = ()
    detected: bool = False

    @property
    def order(self) -> int | None:
        """The lowest order over all kinks, or None for a smooth function."""
        return min(self.orders) if self.orders else None

    def describe(self, name: str) -> str:
        """A sentence saying where ``name`` is not smooth, for messages."""
        if not self.kinks:
            return f"{name!r} is smooth"
        what = {0: "phi jumps", 1: "phi' jumps (a kink)", 2: "phi'' jumps", 3: "nothing jumps"}
        parts = [f"{what[o]} at x = {k:.6g}" for k, o in zip(self.kinks, self.orders)]
        how = "found numerically" if self.detected else "declared"
        return f"{name!r}: " + "; ".join(parts) + f" ({how})"


def one_sided_jumps(spec: activations.ActivationSpec, points: Sequence[float], order: int,
                    shape: Sequence[float] = (), eps: float = 1e-6) -> np.ndarray:
    """``phi^(k)(x+) - phi^(k)(x-)`` for k = 0..order at each point, shape ``(order + 1, len(points))``.

    One-sided limits by Richardson extrapolation of ``phi^(k)(x +- eps)`` and ``(x +- 2 eps)`` (error
    ``O(eps^2)``), so a smooth function gives ~1e-12 and a jump its size.
    """
    x = np.asarray(points, np.float64)
    offsets = np.array([-2.0, -1.0, 1.0, 2.0]) * eps * np.maximum(1.0, np.abs(x))[:, None]
    vals = np.stack(evaluate.derivatives(spec, x[:, None] + offsets, order, shape))
    left = 2.0 * vals[..., 1] - vals[..., 0]
    right = 2.0 * vals[..., 2] - vals[..., 3]
    return right - left


def _spikes(values: np.ndarray) -> np.ndarray:
    """Indices i where ``values[i+1] - values[i]`` stands out from its neighbours (a jump between)."""
    d = np.diff(values)
    resid = np.zeros_like(d)
    resid[1:-1] = d[1:-1] - 0.5 * (d[:-2] + d[2:])
    scale = 1.0 + np.abs(values[:-1])
    big = np.abs(resid) > _SPIKE_TOL * scale
    # A jump J between x[i] and x[i+1] shows as resid ~ J at i and ~ -J/2 at i - 1 and i + 1; a mere
    # kink of `values` (a jump of the next derivative) does not have this pattern and is left to it.
    prev = np.roll(resid, 1)
    nxt = np.roll(resid, -1)
    dipole = (np.abs(prev + 0.5 * resid) < 0.1 * np.abs(resid)) & \
        (np.abs(nxt + 0.5 * resid) < 0.1 * np.abs(resid))
    return np.nonzero(big & dipole)[0]


def _zoom(spec, shape, k: int, a: float, b: float, rounds: int = 4, points: int = 257) -> float:
    """Locates a jump of ``phi^(k)`` inside ``[a, b]`` by repeatedly keeping the steepest sub-interval."""
    for _ in range(rounds):
        xs = np.linspace(a, b, points)
        d = np.diff(evaluate.derivatives(spec, xs, k, shape)[k])
        j = int(np.argmax(np.abs(d - np.median(d))))
        a, b = xs[j], xs[j + 1]
    return 0.5 * (a + b)


def _snap(x: float) -> float:
    """Rounds a located kink to 9 decimals when it is that close (``where(x > 0, ...)`` gives 0.0)."""
    r = round(float(x), 9) + 0.0  # + 0.0 turns -0.0 into 0.0
    return r if abs(x - r) < 1e-11 else float(x)


def _order_at(spec, shape, points: Sequence[float]) -> list[int | None]:
    jumps = one_sided_jumps(spec, points, 2, shape)
    vals = np.stack(evaluate.derivatives(spec, np.asarray(points, np.float64), 2, shape))
    orders = []
    for i in range(len(points)):
        hit = np.abs(jumps[:, i]) > _JUMP_TOL * (1.0 + np.abs(vals[:, i]))
        orders.append(int(np.argmax(hit)) if hit.any() else None)
    return orders


def detect_kinks(spec: activations.ActivationSpec, shape: Sequence[float] = ()) -> KinkProfile:
    """Finds the kinks of ``phi``, ``phi'`` and ``phi''`` in ``[-DETECTION_RANGE, DETECTION_RANGE]``.

    Raises:
      ActivationError: When there are more than 32 of them (a staircase is not an activation the
        kernel maps can integrate).
    """
    x = np.linspace(-DETECTION_RANGE, DETECTION_RANGE, _GRID_POINTS)
    # Offset so that round numbers (where kinks usually are) fall strictly between grid points: at a
    # kink itself autodiff may return a mean of both sides (jnp.maximum's derivative is 0.5 at a tie).
    x = x + (x[1] - x[0]) / np.pi
    vals = evaluate.derivatives(spec, x, 2, shape)
    found: dict[float, None] = {}
    for k, d in enumerate(vals):
        finite = np.isfinite(d)
        for i in _spikes(np.where(finite, d, 0.0)):
            found.setdefault(_snap(_zoom(spec, shape, k, x[i], x[i + 1])), None)
            if len(found) > 4 * _MAX_KINKS:
                break
    candidates = sorted(found)
    orders = _order_at(spec, shape, candidates) if candidates else []
    kinks = [(c, o) for c, o in zip(candidates, orders) if o is not None]
    # Merge duplicates found at different orders (zooming on phi and phi'' may differ by ~1e-13).
    merged: list[tuple[float, int]] = []
    for c, o in kinks:
        if merged and abs(c - merged[-1][0]) < 1e-9 * max(1.0, abs(c)):
            merged[-1] = (merged[-1][0], min(o, merged[-1][1]))
        else:
            merged.append((c, o))
    if len(merged) > _MAX_KINKS:
        raise activations.ActivationError(
            f"Activation {spec.name!r} has {len(merged)} kinks or jumps in [-{DETECTION_RANGE:g}, "
            f"{DETECTION_RANGE:g}] (more than {_MAX_KINKS}); the kernel maps cannot be integrated "
            "accurately. Use a smooth or piecewise-smooth activation with few pieces.")
    return KinkProfile(tuple(c for c, _ in merged), tuple(o for _, o in merged), detected=True)


@functools.lru_cache(maxsize=512)
def kink_profile(spec: activations.ActivationSpec) -> KinkProfile:
    """The activation's kinks: its declaration, completed by measurement where it is silent."""
    shape = tuple(spec.shape_params.values())
    if spec.kinks is None:
        profile = detect_kinks(spec, shape)
        if profile.kinks:
            log.info("%s.", profile.describe(spec.name))
        return profile
    if not spec.kinks:
        return KinkProfile()
    if spec.kink_order is not None:
        return KinkProfile(tuple(sorted(spec.kinks)), (spec.kink_order,) * len(spec.kinks))
    kinks = sorted(spec.kinks)
    orders = _order_at(spec, shape, kinks)
    # A declared kink where nothing jumps up to phi'' still gets a quadrature cut (order 3: harmless).
    return KinkProfile(tuple(kinks), tuple(3 if o is None else o for o in orders))


@functools.lru_cache(maxsize=512)
def check_values(spec: activations.ActivationSpec, shape: tuple[float, ...] = (),
                 order: int = 1) -> None:
    """Refuses activations that are constant or not finite on the Gaussian's effective support.

    Raises:
      ActivationError: Naming the first bad point or the constant value.
    """
    x = np.linspace(-DETECTION_RANGE, DETECTION_RANGE, 4001)
    vals = evaluate.derivatives(spec, x, order, shape)
    names = ("phi", "phi'", "phi''", "phi'''")
    for k, d in enumerate(vals):
        bad = ~np.isfinite(d)
        if bad.any():
            i = int(np.argmax(bad))
            raise activations.ActivationError(
                f"Activation {spec.name!r}: {names[k]}(x) is {d[i]} at x = {x[i]:.6g} (checked on "
                f"[-{DETECTION_RANGE:g}, {DETECTION_RANGE:g}]). Gaussian expectations need finite values "
                "on the whole real line; if this is a jnp.where whose discarded branch is NaN, clip that "
                "branch's input.")
    if np.ptp(vals[0]) <= 1e-12 * (1.0 + np.max(np.abs(vals[0]))):
        raise activations.ActivationError(
            f"Activation {spec.name!r} is constant ({vals[0][0]:.6g}) on [-{DETECTION_RANGE:g}, "
            f"{DETECTION_RANGE:g}]: its C map is constant and no transformation can shape it.")
