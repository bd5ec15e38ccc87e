"""Weight initializers for DKS/TAT networks: scaled uniform orthogonal (SUO) and its Delta version.

DKS and TAT assume that every dense and convolutional layer is an *identity* on the kernel at
initialization (in the infinite-width limit): it must preserve the q value (mean squared entry) and the
correlation of any two inputs. A Haar-random orthogonal matrix, scaled so that it preserves norms whether it
expands or contracts, does this; for convolutions the "Delta" version (all taps zero except the spatial
centre, which holds such a matrix) makes each output location depend on one input location only, so the
same holds location by location.

Besides ``ScaledUniformOrthogonal`` this module resolves the initializer names used by configs
('orthogonal', 'he_normal', 'lecun_normal') to Haiku initializers.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

INIT_NAMES = ("orthogonal", "he_normal", "lecun_normal")
_HOST_LOCK = threading.Lock()


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limits BLAS/OpenMP to one thread (a no-op without threadpoolctl, a scikit-learn dependency)."""
    try:
        import threadpoolctl  # pylint: disable=g-import-not-at-top
    except ImportError:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(1)


def _key_data(key: jax.Array) -> jax.Array:
    """The raw ``uint32`` words of a PRNG key (old-style ``uint32[2]`` keys or new typed keys)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def host_random(key: jax.Array, shape: Sequence[int], dtype: Any,
                draw: Callable[[np.random.Generator], np.ndarray]) -> jax.Array:
    """Runs ``draw`` on the host with a NumPy generator seeded by ``key``; works inside ``jax.jit``.

    Why on the host: with JAX's default (partitionable) threefry, XLA on CPU needs a noticeable fraction
    of a second to compile *each* random draw (4 s for one rank-4 conv kernel here, about 0.4 s for a
    flat one), so jitting the initialization of a 200-layer network took minutes. A ``pure_callback``
    compiles in milliseconds, and NumPy's QR is exact and fast. The result is a deterministic function of
    ``key`` (same key, same weights; jit or not).

    Args:
      key: A PRNG key (e.g. ``hk.next_rng_key()``).
      shape: Shape of the result.
      dtype: Dtype of the result (drawn in float64, then cast).
      draw: ``draw(generator) -> array of shape `shape```.

    Returns:
      The drawn array.
    """
    shape = tuple(int(d) for d in shape)
    # float64 only where it was asked for (x64 mode); bfloat16 & co. are cast from float32 on device.
    host_dtype = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32

    def callback(words: np.ndarray) -> np.ndarray:
        generator = np.random.default_rng([int(w) for w in np.ravel(words)])
        # Inside an XLA callback, a multi-threaded BLAS fights XLA's own (spinning) worker threads: a
        # 1024 x 1024 QR took 5-11 s there against 0.2 s single-threaded. Callbacks also run
        # concurrently, hence the lock.
        with _HOST_LOCK, _single_threaded_blas():
            out = np.asarray(draw(generator), np.float64)
        if out.shape != shape:
            raise ValueError(f"host_random: draw returned shape {out.shape}, expected {shape}.")
        return out.astype(host_dtype)

    out = jax.pure_callback(callback, jax.ShapeDtypeStruct(shape, host_dtype), _key_data(key))
    return out.astype(dtype)


def haar_orthogonal_numpy(generator: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A ``rows x cols`` matrix with orthonormal columns (``rows >= cols``) or rows, Haar distributed.

    The QR decomposition of a Gaussian matrix alone is *not* Haar distributed: the QR routine picks the
    signs of R's diagonal, which biases Q. Multiplying each column of Q by the sign of the matching
    diagonal entry of R undoes that choice (Mezzadri 2007, "How to generate random matrices from the
    classical compact groups").

    Args:
      generator: NumPy random generator.
      rows: Number of rows.
      cols: Number of columns.

    Returns:
      A float64 matrix; ``M^T M = I`` when ``rows >= cols``, ``M M^T = I`` otherwise.
    """
    big, small = max(rows, cols), min(rows, cols)
    q, r = np.linalg.qr(generator.standard_normal((big, small)), mode="reduced")
    # np.sign(0) is 0; a zero diagonal has probability zero, but guard so that Q stays orthogonal.
    q = q * np.where(np.diagonal(r) < 0, -1.0, 1.0)[None, :]
    return q if rows >= cols else q.T


def haar_orthogonal(key: jax.Array, rows: int, cols: int, dtype: Any = jnp.float32) -> jax.Array:
    """``haar_orthogonal_numpy`` seeded by a JAX key, usable inside ``jax.jit``."""
    return host_random(key, (rows, cols), dtype,
                       lambda generator: haar_orthogonal_numpy(generator, rows, cols))


class ScaledUniformOrthogonal(hk.initializers.Initializer):
    """Scaled uniform orthogonal (SUO) initializer, with the Delta construction for convolutions.

    For a dense weight of shape ``(fan_in, fan_out)`` the result is a Haar-random orthogonal matrix times
    ``scale * max(sqrt(fan_out / fan_in), 1)``: a contracting matrix (``fan_out < fan_in``) has orthonormal
    columns and preserves squared norms in expectation over the Haar measure; an expanding one has
    orthonormal rows and preserves them exactly, so it is scaled up to keep the *mean* squared entry.
    Either way ``q`` is preserved (times ``scale**2``).

    For a convolution kernel of shape ``(*spatial, fan_in, fan_out)`` (Haiku's HWIO layout):

    * ``delta=True``: every tap is zero except the spatial centre, which holds the dense SUO matrix
      (needs odd kernel sizes so that a centre exists);
    * ``delta=False``: the kernel reshaped to ``(prod(spatial) * fan_in, fan_out)`` is a dense SUO
      matrix (the orthogonal initialization of the whole receptive field).

    Attributes:
      scale: Multiplies the whole matrix.
      delta: Use the Delta construction for convolutions.
    """

    def __init__(self, scale: float = 1.0, delta: bool = True):
        """Initializes the initializer.

        Args:
          scale: Overall multiplier (1 preserves q).
          delta: Use the Delta construction for kernels of rank > 2.
        """
        self.scale = float(scale)
        self.delta = bool(delta)

    def __repr__(self) -> str:
        return f"ScaledUniformOrthogonal(scale={self.scale}, delta={self.delta})"

    def __call__(self, shape: Sequence[int], dtype: Any) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        self.check_shape(shape)
        return host_random(hk.next_rng_key(), shape, dtype, lambda gen: self.numpy_sample(gen, shape))

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raises ``ValueError`` for shapes this initializer cannot fill (rank < 2, even Delta kernels)."""
        if len(shape) < 2:
            raise ValueError(f"ScaledUniformOrthogonal needs a weight of rank >= 2, got shape {shape}.")
        even = [k for k in shape[:-2] if k % 2 == 0]
        if self.delta and even:
            raise ValueError(f"The Delta initialization needs odd kernel sizes (the centre tap holds the "
                             f"orthogonal matrix), got kernel shape {tuple(shape[:-2])}. Use an odd "
                             "kernel size or ScaledUniformOrthogonal(delta=False).")

    def numpy_sample(self, generator: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
        """One draw as a float64 NumPy array (the host side of ``__call__``)."""
        shape = tuple(shape)
        self.check_shape(shape)
        fan_in, fan_out, spatial = shape[-2], shape[-1], shape[:-2]
        if not spatial:
            return self._dense(generator, fan_in, fan_out)
        if not self.delta:
            return self._dense(generator, int(np.prod(spatial)) * fan_in, fan_out).reshape(shape)
        kernel = np.zeros(shape)
        kernel[tuple(k // 2 for k in spatial)] = self._dense(generator, fan_in, fan_out)
        return kernel

    def _dense(self, generator: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
        gain = self.scale * max(math.sqrt(fan_out / fan_in), 1.0)
        return gain * haar_orthogonal_numpy(generator, fan_in, fan_out)


def truncated_normal_numpy(generator: np.random.Generator, shape: Sequence[int],
                           bound: float = 2.0) -> np.ndarray:
    """Standard normal samples conditioned on ``|x| <= bound`` (by redrawing the rejected ones)."""
    out = generator.standard_normal(shape)
    bad = np.abs(out) > bound
    while bad.any():
        out[bad] = generator.standard_normal(int(bad.sum()))
        bad = np.abs(out) > bound
    return out


class TruncatedNormalFanIn(hk.initializers.Initializer):
    """Truncated normal (at two standard deviations) with variance ``scale / fan_in``.

    The same distribution as ``hk.initializers.VarianceScaling(scale, 'fan_in', 'truncated_normal')``
    (``fan_in`` is the kernel's receptive field times its input channels), drawn on the host like every
    initializer here (see ``host_random``).

    Attributes:
      scale: The variance times ``fan_in`` (2 for He, 1 for LeCun).
    """

    # Standard deviation of a unit normal truncated to [-2, 2]; dividing by it makes the variance exact.
    _TRUNCATED_STD = 0.87962566103423978

    def __init__(self, scale: float):
        self.scale = float(scale)

    def __repr__(self) -> str:
        return f"TruncatedNormalFanIn(scale={self.scale})"

    def __call__(self, shape: Sequence[int], dtype: Any) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
        std = math.sqrt(self.scale / max(fan_in, 1)) / self._TRUNCATED_STD
        return host_random(hk.next_rng_key(), shape, dtype,
                           lambda gen: std * truncated_normal_numpy(gen, shape))


class StandardNormal(hk.initializers.Initializer):
    """I.i.d. normal entries with standard deviation ``stddev`` (embedding tables: unit q per token).

    Drawn on the host like every initializer here (see ``host_random``).

    Attributes:
      stddev: Standard deviation of every entry.
    """

    def __init__(self, stddev: float = 1.0):
        self.stddev = float(stddev)

    def __repr__(self) -> str:
        return f"StandardNormal(stddev={self.stddev})"

    def __call__(self, shape: Sequence[int], dtype: Any) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        return host_random(hk.next_rng_key(), shape, dtype,
                           lambda gen: self.stddev * gen.standard_normal(shape))


def get_initializer(name: str) -> hk.initializers.Initializer:
    """The weight initializer registered under ``name``.

    Args:
      name: 'orthogonal' (SUO, Delta for convolutions: the DKS/TAT choice), 'he_normal' (truncated normal
        with variance 2 / fan_in: the edge of chaos of an *untransformed* ReLU) or 'lecun_normal'
        (truncated normal with variance 1 / fan_in: preserves q in expectation, like SUO).

    Returns:
      A Haiku initializer. Biases are not covered here: they always start at zero.

    Raises:
      ValueError: For unknown names; the message lists the valid ones.
    """
    if name == "orthogonal":
        return ScaledUniformOrthogonal(scale=1.0, delta=True)
    if name == "he_normal":
        return TruncatedNormalFanIn(2.0)
    if name == "lecun_normal":
        return TruncatedNormalFanIn(1.0)
    raise ValueError(f"Unknown initializer {name!r}; valid names: {', '.join(INIT_NAMES)}.")


def weight_gain(name: str) -> float:
    """Expected factor by which a layer initialized with ``name`` multiplies q (2 for He, else 1)."""
    get_initializer(name)  # validates the name
    return 2.0 if name == "he_normal" else 1.0
