"""Language-modelling loss (per-token softmax cross-entropy) with K-FAC registration, and bits per character.

The per-token loss is the classification loss of ``losses.classification_loss`` applied to the flattened
tokens (``[B, T, V]`` logits -> ``[B * T, V]``): one source of truth for the cross-entropy, label smoothing,
masking and the K-FAC registration (a categorical likelihood over every token; with a mask, its weight is
rescaled so that the registered loss equals the masked mean returned here).

Evaluation accumulates ``lm_eval_sums`` over batches; ``bits_per_character`` turns the sums into the metric
(the natural-log loss per predicted character divided by ln 2). With the character vocabulary of
``dks_jax.data.text`` one token is one character.

K-FAC: the sequence models apply every dense layer to the ``[B * T, features]`` rows and the loss is
registered over ``B * T`` rows, so kfac_jax must normalize its statistics by the number of tokens, not of
sequences: pass ``extra_kwargs={"batch_size_extractor": kfac_batch_size}`` in the K-FAC config.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dks_jax.optim import losses

LN2 = math.log(2.0)


def _flatten(logits: jax.Array, targets: jax.Array, mask: Optional[jax.Array]):
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"lm loss: logits must be [batch, T, vocab] and targets [batch, T], got "
                         f"{logits.shape} and {targets.shape}")
    if mask is not None and mask.shape != targets.shape:
        raise ValueError(f"lm loss: mask must have the targets' shape {targets.shape}, got {mask.shape}")
    vocab = logits.shape[-1]
    return (logits.reshape(-1, vocab), targets.reshape(-1),
            None if mask is None else mask.reshape(-1))


def lm_loss(logits: jax.Array, targets: jax.Array, *, register_for_kfac: bool,
            mask: Optional[jax.Array] = None, label_smoothing: float = 0.0) -> jax.Array:
    """Mean per-token softmax cross-entropy (nats), optionally registered with kfac_jax.

    Args:
      logits: ``[batch, T, vocab]``.
      targets: ``[batch, T]`` int ids of the next token.
      register_for_kfac: Register the loss with kfac_jax (needed inside a K-FAC loss function).
      mask: Optional ``[batch, T]`` weights (0/1 when registering): the mean is over weighted tokens.
      label_smoothing: Label smoothing of the targets (0 for the plain likelihood).

    Returns:
      Scalar float32 loss.
    """
    flat_logits, flat_targets, flat_mask = _flatten(logits, targets, mask)
    return losses.classification_loss(flat_logits, flat_targets, label_smoothing=label_smoothing,
                                      num_classes=flat_logits.shape[-1],
                                      register_for_kfac=register_for_kfac, mask=flat_mask)


def token_accuracy(logits: jax.Array, targets: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Fraction of (weighted) tokens whose most likely next token is the target."""
    flat_logits, flat_targets, flat_mask = _flatten(logits, targets, mask)
    return losses.accuracy(flat_logits, flat_targets, flat_mask)


def lm_eval_sums(logits: jax.Array, targets: jax.Array, mask: Optional[jax.Array] = None
                 ) -> dict[str, jax.Array]:
    """Sums to accumulate over evaluation batches.

    Returns:
      ``{"nll_sum": summed negative log-likelihood in nats, "count": number of (weighted) tokens,
      "correct": number of (weighted) top-1 hits}``, float32 scalars.
    """
    flat_logits, flat_targets, flat_mask = _flatten(logits, targets, mask)
    weights = jnp.ones(flat_targets.shape, jnp.float32) if flat_mask is None else flat_mask.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(flat_logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, flat_targets[:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(flat_logits, axis=-1) == flat_targets).astype(jnp.float32)
    return {"nll_sum": jnp.sum(weights * nll), "count": jnp.sum(weights),
            "correct": jnp.sum(weights * correct)}


def bits_per_character(nll_sum: float, count: float) -> float:
    """Bits per character from summed natural-log losses over ``count`` characters."""
    if count <= 0:
        raise ValueError(f"bits_per_character: count must be > 0, got {count}")
    return float(nll_sum) / float(count) / LN2


def kfac_batch_size(batch: dict) -> int:
    """Rows K-FAC sees in an LM batch: one per token (kfac_jax's ``batch_size_extractor``)."""
    return int(np.prod(np.shape(batch["targets"])))
