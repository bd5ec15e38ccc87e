"""Attention matrices at initialization: softmax, E-SPA, U-SPA and Value-SkipInit (NumPy, float64).

With zero-initialized queries, an attention layer's matrix at initialization does not depend on its input,
and with orthogonal value and output weights the layer maps the kernel matrix over the T positions of a
sequence (``Sigma[i, j]`` = mean product of the features at positions i and j) to ``A Sigma A^T``. He et al.
(2023, "Deep Transformers without Shortcuts", arXiv 2302.10322) choose ``A`` so that depth does not collapse
that kernel:

* *Signal preserving attention (SPA).* Fix a family of target kernels ``Sigma_l`` for the outputs of the
  attention layers ``l = 1..L``, with ``Sigma_0 = I``, and set ``A_l = L_l L_{l-1}^{-1}`` where ``L_l`` is the
  Cholesky factor of ``Sigma_l`` (lower triangular, so ``A_l`` is causal) or, without a causal mask, its
  symmetric square root. Then ``A_l Sigma_{l-1} A_l^T = Sigma_l`` exactly. ``A_l`` must be entrywise
  non-negative to come out of a softmax: it is written ``D_l softmax(B_l)`` with the fixed bias
  ``B_l = log(A_l / rowsum)`` and the fixed location-dependent rescaling ``D_l = diag(rowsum)``.
* *E-SPA*: ``Sigma(i, j) = exp(-gamma |i - j|)`` (an Ornstein-Uhlenbeck / AR(1) covariance).
* *U-SPA*: ``Sigma = (1 - rho) I + rho 1 1^T``.
* *Value-SkipInit*: ``alpha I + beta A`` with trainable scalars (``beta = 0`` at initialization makes the
  layer an identity on the kernel).
* *Naive softmax* (zero queries, no bias): uniform weights over the visible positions, ``1 / (i + 1)`` in row
  i under a causal mask: repeated, it collapses any kernel to rank one.

Schedules (``espa_schedule``, ``uspa_schedule``) fix ``Sigma_l`` between the identity and a final target.
For E-SPA, ``1 - exp(-2 gamma_l) = (1 - exp(-2 gamma_L))^(l / L)``: since
``det Sigma = (1 - exp(-2 gamma))^(T - 1)``, the log-determinant of the kernel falls linearly with depth,
whatever T. For U-SPA we use the analogue ``1 - rho_l = (1 - rho_L)^(l / L)`` (``det = (1 - rho)^(T - 1)
(1 + (T - 1) rho)``, linear up to the last, rank-one factor).

Nothing here imports JAX or Haiku.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dks_jax.kernels import graph as g

# Entries of A_l above -NEGATIVE_TOLERANCE * max|A_l| count as zero: the symmetric square root leaves
# rounding-level negatives (~1e-16) where the exact entry is zero or tiny.
NEGATIVE_TOLERANCE = 1e-10


def espa_kernel(seq_len: int, gamma: float) -> np.ndarray:
    """``exp(-gamma |i - j|)`` over ``seq_len`` positions (the identity for ``gamma = inf``)."""
    _check_seq_len(seq_len)
    if not gamma > 0:
        raise ValueError(f"espa_kernel: gamma must be > 0 (inf for the identity), got {gamma}.")
    if math.isinf(gamma):
        return np.eye(seq_len)
    i = np.arange(seq_len)
    return np.exp(-gamma * np.abs(i[:, None] - i[None, :]))


def uspa_kernel(seq_len: int, rho: float) -> np.ndarray:
    """``(1 - rho) I + rho 1 1^T`` over ``seq_len`` positions."""
    _check_seq_len(seq_len)
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"uspa_kernel: rho must lie in [0, 1), got {rho}.")
    return (1.0 - rho) * np.eye(seq_len) + rho * np.ones((seq_len, seq_len))


def target_kernel(kind: str, seq_len: int, param: float) -> np.ndarray:
    """The SPA family ``kind`` ('espa' or 'uspa') at parameter ``param`` (gamma or rho)."""
    if kind == "espa":
        return espa_kernel(seq_len, param)
    if kind == "uspa":
        return uspa_kernel(seq_len, param)
    raise ValueError(f"target_kernel: kind must be 'espa' or 'uspa', got {kind!r}.")


def espa_schedule(num_layers: int, final_gamma: float) -> list[float]:
    """Decay rates ``gamma_0 = inf, gamma_1, ..., gamma_L = final_gamma`` of the E-SPA targets.

    ``1 - exp(-2 gamma_l) = (1 - exp(-2 final_gamma))^(l / L)``: the log-determinant of ``Sigma_l`` is linear
    in l.
    """
    _check_layers(num_layers)
    if not 0.0 < final_gamma < math.inf:
        raise ValueError(f"espa_schedule: final gamma must be a positive finite float, got {final_gamma}.")
    innovation = -math.expm1(-2.0 * final_gamma)  # 1 - exp(-2 gamma_L), accurately for small gamma
    gammas = [math.inf]
    for layer in range(1, num_layers + 1):
        fraction = innovation ** (layer / num_layers)
        gammas.append(-0.5 * math.log1p(-fraction) if fraction < 1.0 else math.inf)
    gammas[-1] = float(final_gamma)  # exact at the end, whatever the rounding above
    return gammas


def uspa_schedule(num_layers: int, final_rho: float) -> list[float]:
    """Correlations ``rho_0 = 0, ..., rho_L = final_rho`` of the U-SPA targets: ``1 - rho_l = (1 - rho_L)^(l/L)``."""
    _check_layers(num_layers)
    if not 0.0 < final_rho < 1.0:
        raise ValueError(f"uspa_schedule: final rho must lie in (0, 1), got {final_rho}.")
    rhos = [1.0 - (1.0 - final_rho) ** (layer / num_layers) for layer in range(num_layers + 1)]
    rhos[0], rhos[-1] = 0.0, float(final_rho)
    return rhos


def kernel_factor(sigma: np.ndarray, causal: bool) -> np.ndarray:
    """``L`` with ``L L^T = sigma``: the Cholesky factor (causal) or the symmetric square root."""
    if causal:
        return np.linalg.cholesky(sigma)
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def spa_matrix(kind: str, seq_len: int, param_in: float, param_out: float, causal: bool = True
               ) -> np.ndarray:
    """``A = L_out L_in^{-1}``: maps the SPA kernel at ``param_in`` exactly to the one at ``param_out``.

    Args:
      kind: 'espa' or 'uspa'.
      seq_len: Number of positions T.
      param_in: gamma (E-SPA) or rho (U-SPA) of the input kernel.
      param_out: The same of the output kernel.
      causal: Cholesky factors (lower triangular A) or symmetric square roots.

    Returns:
      The float64 ``[T, T]`` matrix, entrywise non-negative (tiny rounding negatives set to zero).

    Raises:
      ValueError: If A has clearly negative entries (the target cannot come out of a softmax), naming the
        parameters.
    """
    sigma_in = target_kernel(kind, seq_len, param_in)
    sigma_out = target_kernel(kind, seq_len, param_out)
    factor_in = kernel_factor(sigma_in, causal)
    # A = L_out L_in^{-1}, i.e. A^T = solve(L_in^T, L_out^T).
    a = np.linalg.solve(factor_in.T, kernel_factor(sigma_out, causal).T).T
    if causal:
        a = np.tril(a)
    floor = -NEGATIVE_TOLERANCE * np.max(np.abs(a))
    if np.min(a) < floor:
        raise ValueError(f"{kind.upper()} attention from parameter {param_in} to {param_out} at T={seq_len} "
                         f"(causal={causal}) has negative entries (min {np.min(a):.3g}), so it is not a "
                         "softmax times a positive rescaling; use a gentler schedule (a final target "
                         "closer to the identity, or more layers).")
    return np.where(a < 0.0, 0.0, a)


def uniform_matrix(seq_len: int, causal: bool = True) -> np.ndarray:
    """Softmax attention with zero queries and no bias: row i averages the visible positions."""
    _check_seq_len(seq_len)
    visible = np.tril(np.ones((seq_len, seq_len))) if causal else np.ones((seq_len, seq_len))
    return visible / visible.sum(axis=1, keepdims=True)


def causal_mask(seq_len: int) -> np.ndarray:
    """Boolean ``[T, T]``: True where position i may attend to position j (j <= i)."""
    return np.tril(np.ones((seq_len, seq_len), dtype=bool))


@functools.lru_cache(maxsize=256)
def softmax_parameters(node: g.Attention, seq_len: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The fixed bias ``B`` (``-inf`` where masked) and rescaling ``D`` (None for none) of ``node``.

    ``D softmax(B)`` (row-wise softmax) is the attention matrix at initialization, before Value-SkipInit.
    ``node.row_scale``, when given, replaces ``D``. Read-only arrays (shared through the cache).
    """
    g.validate(node)
    if node.kind == "softmax":
        bias = np.zeros((seq_len, seq_len))
        if node.causal:
            bias = np.where(causal_mask(seq_len), 0.0, -np.inf)
        scale = None
    else:
        a = spa_matrix(node.kind, seq_len, node.param_in, node.param_out, node.causal)
        scale = a.sum(axis=1)
        with np.errstate(divide="ignore"):
            bias = np.log(a / scale[:, None])  # zeros (the causal mask among them) become -inf
    if node.row_scale is not None:
        if len(node.row_scale) != seq_len:
            raise ValueError(f"Attention {node.name!r}: row_scale has {len(node.row_scale)} entries for a "
                             f"sequence of {seq_len} positions; the model was built for another length.")
        scale = np.asarray(node.row_scale, np.float64)
    if scale is not None:
        scale.flags.writeable = False
    bias.flags.writeable = False
    return bias, scale


def softmax_rows(bias: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a bias matrix with ``-inf`` entries (float64)."""
    shifted = np.exp(bias - np.max(bias, axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def init_matrix(node: g.Attention, seq_len: int) -> np.ndarray:
    """The attention matrix of ``node`` at initialization (with Value-SkipInit's ``alpha I + beta A``).

    Exactly what the Haiku module computes with zero queries: ``D softmax(B)`` from ``softmax_parameters``.
    """
    bias, scale = softmax_parameters(node, seq_len)
    a = softmax_rows(bias)
    if scale is not None:
        a = scale[:, None] * a
    if node.value_skip is not None:
        alpha, beta = node.value_skip
        a = alpha * np.eye(seq_len) + beta * a
    return a


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}.")


def _check_layers(num_layers: int) -> None:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}.")
