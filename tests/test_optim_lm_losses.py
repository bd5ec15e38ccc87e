"""The language-modelling loss: values against NumPy, masking, bits per character, K-FAC registration."""

import math

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np
import pytest

from dks_jax.optim import lm_losses


def _numpy_nll(logits, targets):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def test_loss_and_sums_match_numpy_with_and_without_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 5)).astype(np.int32)
    mask = (rng.random((3, 5)) > 0.3).astype(np.float32)
    nll = _numpy_nll(logits.astype(np.float64), targets)
    loss = float(lm_losses.lm_loss(jnp.asarray(logits), jnp.asarray(targets), register_for_kfac=False))
    assert loss == pytest.approx(nll.mean(), rel=1e-5)
    masked = float(lm_losses.lm_loss(jnp.asarray(logits), jnp.asarray(targets), register_for_kfac=False,
                                     mask=jnp.asarray(mask)))
    assert masked == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-5)
    sums = lm_losses.lm_eval_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert float(sums["nll_sum"]) == pytest.approx((nll * mask).sum(), rel=1e-5)
    assert float(sums["count"]) == mask.sum()
    hits = (logits.argmax(-1) == targets) * mask
    assert float(sums["correct"]) == hits.sum()
    assert float(lm_losses.token_accuracy(jnp.asarray(logits), jnp.asarray(targets),
                                          jnp.asarray(mask))) == pytest.approx(hits.sum() / mask.sum())


def test_uniform_prediction_costs_log2_vocab_bits_per_character():
    vocab = 97
    logits = jnp.zeros((2, 4, vocab))
    targets = jnp.arange(8).reshape(2, 4)
    sums = lm_losses.lm_eval_sums(logits, targets)
    assert lm_losses.bits_per_character(sums["nll_sum"], sums["count"]) == pytest.approx(math.log2(vocab),
                                                                                          rel=1e-6)
    with pytest.raises(ValueError, match="count must be > 0"):
        lm_losses.bits_per_character(1.0, 0.0)
    with pytest.raises(ValueError, match=r"logits must be \[batch, T, vocab\]"):
        lm_losses.lm_loss(jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32), register_for_kfac=False)


def test_kfac_registration_is_a_categorical_likelihood_over_every_token():
    """The registered loss (what K-FAC's curvature and loss statistics use) equals the returned loss."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, size=(2, 3)), jnp.int32)
    mask = jnp.asarray([[1, 1, 0], [1, 0, 0]], jnp.float32)

    def loss_fn(params, batch):
        inputs, labels, weights = batch
        logits = (inputs.reshape(-1, 6) @ params).reshape(2, 3, 5)
        return lm_losses.lm_loss(logits, labels, register_for_kfac=True, mask=weights)

    estimator = kfac_jax.BlockDiagonalCurvature(loss_fn)
    estimator.finalize((w, (x, targets, mask)))
    assert [type(b).__name__ for b in estimator.blocks] == ["DenseTwoKroneckerFactored"]
    compute_losses, _ = kfac_jax.tracer.compute_all_losses(loss_fn)
    (registered,) = compute_losses((w, (x, targets, mask)))
    # kfac_jax's convention: the registered loss is sum(evaluate()) / (number of rows), rows = every token.
    per_token = np.asarray(registered.evaluate())
    assert per_token.shape == (6,)
    assert per_token.sum() / 6 == pytest.approx(float(loss_fn(w, (x, targets, mask))), rel=1e-5)
    logits = np.asarray(x.reshape(-1, 6) @ w, np.float64)
    nll = _numpy_nll(logits, np.asarray(targets).reshape(-1))
    assert float(loss_fn(w, (x, targets, mask))) == pytest.approx(nll[[0, 1, 3]].mean(), rel=1e-5)
