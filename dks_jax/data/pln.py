"""Per-location normalization (PLN) of network inputs, for numpy or jax arrays.

DKS/TAT assume every input location has q value (mean squared entry) 1. PLN
enforces it: at each location (every index but the last axis) the channel
vector is rescaled to mean square 1, after optionally appending a homogeneous
coordinate that keeps the scale information normalization would otherwise
destroy (Martens et al. 2021, "Uniform q values via Per-Location
Normalization").
"""

from __future__ import annotations

from typing import Any

import numpy as np

# 'one'/'off' are the names used by DeepMind's `dks` package.
_MODE_ALIASES = {"const": "const", "one": "const", "avg_q": "avg_q", "none": "none",
                 "off": "none"}
HOMOG_MODES = ("const", "avg_q", "none")


def array_module(x: Any):
    """Returns numpy for numpy inputs and jax.numpy for jax arrays/tracers."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple, float, int)):
        return np
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  (keeps jax optional here)
    return jnp


def output_channels(num_channels: int, homog_mode: str) -> int:
    """Channel count after PLN: one more when a homogeneous coordinate is appended."""
    return num_channels + (0 if _canonical_mode(homog_mode) == "none" else 1)


def _canonical_mode(homog_mode: str) -> str:
    try:
        return _MODE_ALIASES[homog_mode]
    except KeyError:
        raise ValueError(f"unknown homog_mode '{homog_mode}'; expected one of "
                         f"{HOMOG_MODES}") from None


def per_location_normalization(x: Any, homog_mode: str = "const", *,
                               homog_scale: float = 1.0, has_batch_dim: bool = True) -> Any:
    """Applies PLN over the last axis.

    Modes for the appended homogeneous coordinate:
      * 'const' (alias 'one'): the constant `homog_scale`.
      * 'avg_q': `homog_scale * sqrt(avg_q)`, where avg_q is the mean of x**2 over
        all non-batch axes of the example (all locations and channels), i.e. the
        example's average q. It is the same at every location of an example, so
        after normalization a location's homogeneous entry records how large
        that location was relative to the example's average.
      * 'none' (alias 'off'): nothing appended; a location's scale is lost.

    A location whose vector is entirely zero (possible only with 'none', or with
    'avg_q' on an all-zero example) stays zero instead of becoming NaN.

    Args:
        x: Array [..., C] (numpy or jax); e.g. NHWC images.
        homog_mode: 'const', 'avg_q' or 'none'.
        homog_scale: Multiplies the homogeneous coordinate.
        has_batch_dim: Whether axis 0 indexes examples (matters only for 'avg_q').

    Returns:
        Array [..., C'] in x's float dtype (float32 for integer input), with
        C' = C + 1 unless the mode is 'none', and mean(out**2, axis=-1) == 1 at
        every non-zero location.
    """
    mode = _canonical_mode(homog_mode)
    xp = array_module(x)
    x = xp.asarray(x)
    if not xp.issubdtype(x.dtype, xp.floating):
        x = x.astype(xp.float32)
    if x.ndim == 0 or (has_batch_dim and x.ndim == 1):
        raise ValueError(f"PLN needs a channel axis; got shape {x.shape} "
                         f"(has_batch_dim={has_batch_dim})")
    if mode == "const":
        homog = xp.full(x.shape[:-1] + (1,), homog_scale, dtype=x.dtype)
    elif mode == "avg_q":
        axes = tuple(range(1 if has_batch_dim else 0, x.ndim))
        avg_q = xp.mean(xp.square(x), axis=axes, keepdims=True)
        homog = xp.broadcast_to(homog_scale * xp.sqrt(avg_q), x.shape[:-1] + (1,))
    else:
        homog = None
    if homog is not None:
        x = xp.concatenate([x, homog.astype(x.dtype)], axis=-1)
    # einsum avoids numpy's slow reductions over a short trailing axis (~2x faster).
    q = xp.einsum("...c,...c->...", x, x)[..., None] / x.shape[-1]
    # Divide zero vectors by 1 (leaving them zero) rather than by 0.
    return x / xp.sqrt(xp.where(q > 0, q, xp.ones_like(q)))
