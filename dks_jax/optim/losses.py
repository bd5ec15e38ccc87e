"""Classification losses, L2 penalty and accuracy.

`classification_loss` is the single place where the loss is registered with
kfac_jax: call it with `register_for_kfac=True` inside the loss function that
is handed to the K-FAC optimizer (see `StepOptimizer.needs_loss_registration`).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import kfac_jax

# Haiku's names for biases (Linear/Conv "b") and normaliser parameters
# (BatchNorm/LayerNorm "scale", "offset").
BIAS_LIKE_NAMES = ("b", "bias", "scale", "offset")


def smooth_labels(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    """One-hot targets mixed with the uniform distribution.

    Args:
        labels: Integer class labels, shape [B].
        num_classes: Number of classes C.
        label_smoothing: Weight eps of the uniform distribution, in [0, 1).

    Returns:
        Float32 targets [B, C]: (1 - eps) * one_hot + eps / C.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return (1.0 - label_smoothing) * one_hot + label_smoothing / num_classes


def _weighted_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    """Mean of `values` [B] weighted by `mask` [B]; 0 when all weights are 0."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    total = jnp.sum(mask)
    return jnp.where(total > 0, jnp.sum(mask * values) / jnp.where(total > 0, total, 1.0), 0.0)


def cross_entropy_per_example(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy of each row of `logits` against probability `targets`.

    Args:
        logits: [B, C] logits.
        targets: [B, C] target distributions (rows sum to 1).

    Returns:
        [B] float32 losses -sum_c targets * log_softmax(logits).
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * log_probs, axis=-1)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, num_classes: Optional[int] = None,
                          label_smoothing: float = 0.0,
                          mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean softmax cross-entropy with label smoothing.

    Args:
        logits: [B, C] logits.
        labels: [B] integer labels.
        num_classes: C; defaults to `logits.shape[-1]`.
        label_smoothing: Label-smoothing weight (0 disables it).
        mask: Optional [B] per-example weights (e.g. 0 for the padding of an
            evaluation batch); the mean is sum(mask * loss) / sum(mask), and 0
            when the mask is all zeros.

    Returns:
        Scalar float32 loss.
    """
    num_classes = num_classes or logits.shape[-1]
    targets = smooth_labels(labels, num_classes, label_smoothing)
    return _weighted_mean(cross_entropy_per_example(logits, targets), mask)


def classification_loss(logits: jax.Array, labels: jax.Array, *, label_smoothing: float,
                        num_classes: int, register_for_kfac: bool,
                        mask: Optional[jax.Array] = None) -> jax.Array:
    """Softmax cross-entropy, optionally registered with kfac_jax.

    Registration passes the *smoothed one-hot targets*: kfac_jax 0.0.8 accepts
    integer targets [B] (Categorical) or vector targets [B, C] (OneHotCategorical,
    whose log-prob is sum(targets * log_softmax(logits)) and so equals minus
    the smoothed cross-entropy exactly). The curvature (Fisher/GGN of a softmax
    output) does not depend on the targets, but with vector targets the
    registered loss matches the optimised loss, which keeps
    `estimation_mode="fisher_empirical"` and `include_registered_loss_in_stats`
    correct under label smoothing.

    kfac_jax assumes a registered loss of weight * sum_i mask_i * l_i / B; with a
    mask we pass weight = B / sum(mask) so it matches the masked mean returned
    here. kfac_jax requires that mask to be 0/1-valued.

    Args:
        logits: [B, C] logits.
        labels: [B] integer labels.
        label_smoothing: Label-smoothing weight.
        num_classes: C.
        register_for_kfac: Whether to register the loss with kfac_jax (needed by
            K-FAC; harmless but pointless for first-order optimizers).
        mask: Optional [B] per-example weights (0/1 if registering).

    Returns:
        Scalar float32 loss (mean over the batch, or masked mean).
    """
    if logits.shape[-1] != num_classes:
        raise ValueError(f"logits have {logits.shape[-1]} classes, expected {num_classes}")
    targets = smooth_labels(labels, num_classes, label_smoothing)
    if register_for_kfac:
        if mask is None:
            kfac_jax.register_softmax_cross_entropy_loss(logits, targets)
        else:
            mask_f = mask.astype(jnp.float32)
            weight = logits.shape[0] / jnp.maximum(jnp.sum(mask_f), 1.0)
            kfac_jax.register_softmax_cross_entropy_loss(logits, targets, mask=mask_f,
                                                         weight=weight)
    return _weighted_mean(cross_entropy_per_example(logits, targets), mask)


def accuracy(logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Top-1 accuracy (weighted by `mask` if given).

    Args:
        logits: [B, C] logits.
        labels: [B] integer labels.
        mask: Optional [B] per-example weights.

    Returns:
        Scalar float32 accuracy in [0, 1].
    """
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _weighted_mean(correct, mask)


def _leaf_name(path: tuple[Any, ...]) -> Optional[str]:
    """The innermost dict key / attribute name of a pytree path, if any."""
    if not path:
        return None
    key = path[-1]
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    return None


def is_bias_like(path: tuple[Any, ...], leaf: Any) -> bool:
    """Whether a parameter is a bias / scale / offset (excluded from L2).

    Rule: a leaf is bias-like if it has at most one dimension (`ndim <= 1`) OR
    its own name (last key of its path) is one of `BIAS_LIKE_NAMES`. The name
    test is needed because hk.BatchNorm stores `scale`/`offset` with the
    broadcast shape of its input, e.g. (1, C) or (1, 1, 1, C), which a pure
    1-D test would regularise; a shape-only "squeezes to 1-D" test would
    instead wrongly exempt a (H, 1) output weight.

    Args:
        path: The leaf's key path (from `jax.tree_util.tree_flatten_with_path`).
        leaf: The parameter array.

    Returns:
        True if the leaf is bias-like.
    """
    return jnp.ndim(leaf) <= 1 or _leaf_name(path) in BIAS_LIKE_NAMES


def l2_mask(params: Any, exclude_biases: bool = True) -> Any:
    """Pytree of Python bools: True for leaves that the L2 penalty covers.

    Args:
        params: Parameter pytree.
        exclude_biases: Whether bias-like leaves (see `is_bias_like`) are exempt.

    Returns:
        A pytree with the structure of `params`.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: not (exclude_biases and is_bias_like(path, leaf)), params)


def l2_penalty(params: Any, exclude_biases: bool = True) -> jax.Array:
    """Half the squared L2 norm of the regularised parameters.

    The objective is loss + l2_reg * l2_penalty(params), whose gradient adds
    l2_reg * w: the same convention as kfac_jax's `l2_reg` (coeff / 2 * |w|^2).

    Args:
        params: Parameter pytree.
        exclude_biases: Whether bias-like leaves (see `is_bias_like`) are exempt.

    Returns:
        Scalar float32 0.5 * sum of squares of the regularised leaves.
    """
    mask = l2_mask(params, exclude_biases)
    terms = [jnp.sum(jnp.square(leaf.astype(jnp.float32)))
             for leaf, keep in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask))
             if keep]
    return 0.5 * sum(terms, jnp.zeros([], jnp.float32))
