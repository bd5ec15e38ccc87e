"""Kernel matrices over the positions of a sequence, propagated through a layer specification.

The scalar graph of ``graph.propagate`` tracks one correlation; a transformer's kernel at one input sequence
is a ``[T, T]`` matrix ``K`` (``K[i, j]`` = mean over features of ``h_i * h_j``), whose diagonal holds the
per-position q values. This module runs the *same* layer specification on such matrices (any leading batch
axes, one matrix per sequence), in the infinite-width limit with the initializations of ``dks_jax.nets``:

* ``Act``: entrywise. The diagonal goes through the local Q map, and every entry through the local C map
  after normalizing by the diagonal: ``K'[i, j] = sqrt(Q(q_i) Q(q_j)) C(K[i, j] / sqrt(q_i q_j))``. This is
  exact for positively homogeneous activations without shifts (the Leaky ReLU / TReLU family, whose
  ``E[phi(u) phi(v)]`` scales with ``sqrt(q_i q_j)``) and, for any activation, wherever ``q_i = q_j = 1`` (the
  regime DKS and TAT maintain); elsewhere it uses the unit-q C map as an approximation.
* ``Dense``, ``Dropout``, ``Embed``: identities (orthogonal weights; the graph starts at the embedding's
  output, see ``input_kernel``).
* ``LayerNorm``: ``K[i, j] / sqrt(q_i q_j)`` (every position rescaled to q = 1).
* ``Attention``: ``A K A^T`` with ``A`` the attention matrix at initialization
  (``attention.init_matrix``); exact at any width, since zero-initialized queries make ``A`` independent of
  the input and the (square) orthogonal value/output weights preserve inner products exactly.
* ``WeightedSum`` with weights ``w_i``: ``sum_i w_i^2 K_i`` (the branches are independent at initialization).

Convolutions, pooling, flattening, batch normalization and unnormalized sums have no map here
(``graph.KernelGraphError`` or ``TypeError``).

Also: ``input_kernel`` (the embedding's output kernel for given tokens), the rank-collapse statistics
of a kernel matrix, and ``rescale_attention``, which derives the location-dependent rescaling of signal
preserving attention from the kernel this propagation predicts at each attention layer. Pure NumPy: no JAX,
no Haiku.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from dks_jax.kernels import attention as attention_lib
from dks_jax.kernels import graph as g

ArrayMap = Callable[[np.ndarray], np.ndarray]


def input_kernel(tokens: np.ndarray, embed: g.Embed | None = None) -> np.ndarray:
    """The kernel matrix of the embedding's output for int ``tokens`` of shape ``[..., T]``.

    N(0, 1) embedding tables give ``K[i, j] = 1`` for equal tokens and 0 otherwise (infinite width); a
    learned positional embedding averages that with the identity (the sum is scaled by ``1 / sqrt(2)``).

    Args:
      tokens: Token ids, ``[..., T]``.
      embed: The ``Embed`` layer (its positional mode); None for token embeddings only.

    Returns:
      float64 ``[..., T, T]``.
    """
    tokens = np.asarray(tokens)
    same = (tokens[..., :, None] == tokens[..., None, :]).astype(np.float64)
    if embed is not None and embed.positional == "learned":
        return 0.5 * (same + np.eye(tokens.shape[-1]))
    return same


def activation_map(kernel: np.ndarray, q_map: ArrayMap, c_map: ArrayMap) -> np.ndarray:
    """An elementwise nonlinear layer on kernel matrices ``[..., T, T]`` (see the module docstring).

    Args:
      kernel: The kernel matrices.
      q_map: Local Q map (vectorized over an array of q values).
      c_map: Local C map at unit q (vectorized over an array of correlations in ``[-1, 1]``).

    Returns:
      The kernel matrices after the layer.
    """
    q = np.diagonal(kernel, axis1=-2, axis2=-1)
    scale = np.sqrt(q[..., :, None] * q[..., None, :])
    corr = np.clip(kernel / np.where(scale > 0, scale, 1.0), -1.0, 1.0)
    q_new = np.asarray(q_map(q), np.float64)
    new_scale = np.sqrt(q_new[..., :, None] * q_new[..., None, :])
    out = new_scale * np.asarray(c_map(corr), np.float64)
    # The diagonal is Q(q) itself (C(1) = 1 up to the map's rounding).
    idx = np.arange(kernel.shape[-1])
    out[..., idx, idx] = q_new
    return out


def normalize(kernel: np.ndarray) -> np.ndarray:
    """The correlation matrices of ``kernel`` (``LayerNorm`` at initialization)."""
    q = np.diagonal(kernel, axis1=-2, axis2=-1)
    return kernel / np.sqrt(q[..., :, None] * q[..., None, :])


def propagate(node: g.Node, kernel: np.ndarray, q_map: ArrayMap, c_map: ArrayMap) -> np.ndarray:
    """Runs the layer specification ``node`` on kernel matrices ``[..., T, T]``.

    Args:
      node: A layer specification made of sequence layers (see the module docstring).
      kernel: The input kernel matrices.
      q_map: Local Q map of the activation at every ``Act``.
      c_map: Its local C map (unit q).

    Returns:
      The output kernel matrices.

    Raises:
      graph.KernelGraphError: At batch normalization, an unnormalized sum, or attention whose queries are
        not zero at initialization.
      TypeError: At layers that do not act on sequences (convolutions, pooling, flattening).
    """
    kernel = np.asarray(kernel, np.float64)
    if isinstance(node, g.Act):
        return activation_map(kernel, q_map, c_map)
    if isinstance(node, (g.Dense, g.Dropout, g.Embed)):
        return kernel
    if isinstance(node, g.LayerNorm):
        return normalize(kernel)
    if isinstance(node, g.Attention):
        if not node.zero_query_init:
            raise g.KernelGraphError(f"Attention {node.name!r} has random queries at initialization: its "
                                     "attention matrix depends on the input, so it has no closed-form kernel "
                                     "map. Use zero_query_init=True.")
        a = attention_lib.init_matrix(node, kernel.shape[-1])
        return a @ kernel @ a.T
    if isinstance(node, g.Sequential):
        for layer in node.layers:
            kernel = propagate(layer, kernel, q_map, c_map)
        return kernel
    if isinstance(node, g.WeightedSum):
        if node.weights is None:
            raise g.KernelGraphError(f"WeightedSum {node.name!r} is an unnormalized sum: it has no kernel "
                                     "map. Give it weights whose squares sum to 1.")
        return sum(w * w * propagate(b, kernel, q_map, c_map)
                   for w, b in zip(node.weights, node.branches) if w != 0.0)
    if isinstance(node, g.BatchNorm):
        raise g.KernelGraphError("BatchNorm layers have no kernel map.")
    raise TypeError(f"Layer {type(node).__name__} ({node!r}) does not act on sequences; kernel matrices "
                    "over positions propagate through Embed, Dense, Act, Dropout, LayerNorm, Attention, "
                    "Sequential and WeightedSum only.")


def trace(network: g.Sequential, kernel: np.ndarray, q_map: ArrayMap, c_map: ArrayMap
          ) -> list[np.ndarray]:
    """The kernel matrices after each top-level layer of ``network`` (matches the Haiku builder's trace)."""
    out = []
    for layer in network.layers:
        kernel = propagate(layer, kernel, q_map, c_map)
        out.append(kernel)
    return out


def mean_off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """Mean of the off-diagonal entries of ``[..., T, T]`` (0 for T = 1)."""
    t = matrix.shape[-1]
    if t < 2:
        return np.zeros(matrix.shape[:-2])
    total = np.sum(matrix, axis=(-2, -1)) - np.trace(matrix, axis1=-2, axis2=-1)
    return total / (t * (t - 1))


def rank_statistics(kernel: np.ndarray) -> dict[str, np.ndarray]:
    """How far kernel matrices ``[..., T, T]`` are from rank collapse.

    Returns:
      A dict of arrays over the leading axes:

      * ``mean_corr``: mean off-diagonal correlation (1 at full collapse: every position the same);
      * ``min_eig``: smallest eigenvalue of the correlation matrix (0 at collapse, 1 for the identity);
      * ``effective_rank``: ``exp`` of the entropy of the correlation matrix's normalized eigenvalues
        (1 at collapse, T for the identity).
    """
    corr = normalize(np.asarray(kernel, np.float64))
    eig = np.clip(np.linalg.eigvalsh(0.5 * (corr + np.swapaxes(corr, -1, -2))), 0.0, None)
    p = eig / np.sum(eig, axis=-1, keepdims=True)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return {"mean_corr": mean_off_diagonal(corr), "min_eig": eig[..., 0],
            "effective_rank": np.exp(entropy)}


SPA_KINDS = ("espa", "uspa")


def rescale_attention(node: g.Node, q_map: ArrayMap, c_map: ArrayMap, seq_len: int,
                      kernel: np.ndarray | None = None) -> g.Node:
    """``node`` with every E-SPA / U-SPA layer's ``row_scale`` set to give q = 1 at each position.

    SPA's own rescaling (the row sums of ``A_l = L_l L_{l-1}^{-1}``) gives unit q only when the layer's input
    kernel is exactly the previous target ``Sigma_{l-1}``. The nonlinear layers between attention layers
    raise correlations between positions, and then ``A_l``'s non-negative weights raise q along the
    sequence (TAT Leaky ReLU, 24 blocks, T = 128, E-SPA gamma_L = 0.005: up to 17x at the last position).
    Here the kernel is propagated through ``node`` (with the network's activation maps), and at each SPA
    layer ``D = diag(P K P^T)^(-1/2)``, with ``P`` the layer's softmax at initialization and ``K`` the
    predicted input kernel, replaces the row sums: every position leaves the layer with q = 1. The softmax
    part (the bias ``B``) is unchanged.

    Args:
      node: A sequence model's layer specification.
      q_map: Local Q map of its activation.
      c_map: Local C map of its activation.
      seq_len: Sequence length T the model is built for.
      kernel: Input kernel ``[T, T]``; the identity (distinct tokens) by default.

    Returns:
      The rewritten specification (other nodes unchanged).
    """
    kernel = np.eye(seq_len) if kernel is None else np.asarray(kernel, np.float64)
    return _rescale(node, kernel, q_map, c_map)[0]


def _rescale(node: g.Node, kernel: np.ndarray, q_map: ArrayMap, c_map: ArrayMap
             ) -> tuple[g.Node, np.ndarray]:
    if isinstance(node, g.Attention) and node.kind in SPA_KINDS:
        bias, _ = attention_lib.softmax_parameters(dataclasses.replace(node, row_scale=None),
                                                   kernel.shape[-1])
        p = attention_lib.softmax_rows(bias)
        q_out = np.einsum("ij,jk,ik->i", p, kernel, p)  # diag(P K P^T)
        node = dataclasses.replace(node, row_scale=tuple(float(v) for v in 1.0 / np.sqrt(q_out)))
        return node, propagate(node, kernel, q_map, c_map)
    if isinstance(node, g.Sequential):
        layers = []
        for layer in node.layers:
            layer, kernel = _rescale(layer, kernel, q_map, c_map)
            layers.append(layer)
        return dataclasses.replace(node, layers=tuple(layers)), kernel
    if isinstance(node, g.WeightedSum):
        branches = tuple(_rescale(b, kernel, q_map, c_map)[0] for b in node.branches)
        node = dataclasses.replace(node, branches=branches)
        return node, propagate(node, kernel, q_map, c_map)
    return node, propagate(node, kernel, q_map, c_map)
