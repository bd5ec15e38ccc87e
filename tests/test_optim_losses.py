"""Loss values against hand computations; L2 penalty's bias rule; accuracy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax.optim import losses

LOGITS = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, -1.0, 0.5]], np.float32)
LABELS = np.array([2, 0, 1], np.int32)


def _hand_ce(logits, label, eps, num_classes=3):
    """-sum_c t_c log softmax_c with t = (1 - eps) one_hot + eps / C, in plain Python."""
    lse = math.log(sum(math.exp(z) for z in logits))
    targets = [eps / num_classes + (1 - eps) * (c == label) for c in range(num_classes)]
    return -sum(t * (z - lse) for t, z in zip(targets, logits))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_matches_hand_computation(eps):
    expected = np.mean([_hand_ce(l.tolist(), y, eps) for l, y in zip(LOGITS, LABELS)])
    got = losses.softmax_cross_entropy(LOGITS, LABELS, label_smoothing=eps)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    got = losses.classification_loss(LOGITS, LABELS, label_smoothing=eps, num_classes=3,
                                     register_for_kfac=False)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_known_value_uniform_logits():
    # Uniform logits: cross-entropy is log C whatever the smoothing.
    got = losses.softmax_cross_entropy(np.zeros((2, 4), np.float32), np.array([0, 3]),
                                       label_smoothing=0.1)
    assert float(got) == pytest.approx(math.log(4), rel=1e-6)


def test_mask_gives_weighted_mean_and_zero_for_empty():
    per_example = [_hand_ce(l.tolist(), y, 0.1) for l, y in zip(LOGITS, LABELS)]
    mask = np.array([1.0, 0.0, 1.0], np.float32)
    got = losses.softmax_cross_entropy(LOGITS, LABELS, label_smoothing=0.1, mask=mask)
    assert float(got) == pytest.approx((per_example[0] + per_example[2]) / 2, rel=1e-6)
    weights = np.array([0.5, 0.25, 0.25], np.float32)
    got = losses.softmax_cross_entropy(LOGITS, LABELS, label_smoothing=0.1, mask=weights)
    assert float(got) == pytest.approx(np.dot(weights, per_example), rel=1e-6)
    got = losses.softmax_cross_entropy(LOGITS, LABELS, mask=np.zeros(3, np.float32))
    assert float(got) == 0.0


def test_registered_loss_value_is_unchanged_and_tagged():
    def fn(logits, labels, mask):
        return losses.classification_loss(logits, labels, label_smoothing=0.1, num_classes=3,
                                          register_for_kfac=True, mask=mask)

    mask = np.array([1.0, 0.0, 1.0], np.float32)
    expected = losses.softmax_cross_entropy(LOGITS, LABELS, label_smoothing=0.1, mask=mask)
    assert float(fn(LOGITS, LABELS, mask)) == pytest.approx(float(expected), rel=1e-6)
    assert "loss_tag" in str(jax.make_jaxpr(fn)(LOGITS, LABELS, mask))
    unregistered = jax.make_jaxpr(lambda l, y: losses.classification_loss(
        l, y, label_smoothing=0.1, num_classes=3, register_for_kfac=False))(LOGITS, LABELS)
    assert "loss_tag" not in str(unregistered)


def test_classification_loss_checks_num_classes():
    with pytest.raises(ValueError):
        losses.classification_loss(LOGITS, LABELS, label_smoothing=0.0, num_classes=4,
                                   register_for_kfac=False)


def test_smooth_labels():
    targets = losses.smooth_labels(jnp.array([1]), 4, 0.2)
    np.testing.assert_allclose(targets, [[0.05, 0.85, 0.05, 0.05]], rtol=1e-6)
    with pytest.raises(ValueError):
        losses.smooth_labels(jnp.array([1]), 4, 1.0)


def test_accuracy():
    # Argmaxes are 2, 0, 0 against labels 2, 0, 1.
    assert float(losses.accuracy(LOGITS, LABELS)) == pytest.approx(2 / 3)
    # Example 1 (argmax 0 == label 0) is correct, example 2 (argmax 0 != 1) wrong.
    mask = np.array([0.0, 1.0, 1.0], np.float32)
    assert float(losses.accuracy(LOGITS, np.array([0, 0, 1]), mask)) == pytest.approx(0.5)


def _params():
    return {
        "linear": {"w": jnp.ones((2, 3)), "b": jnp.ones((3,))},
        "batch_norm": {"scale": jnp.ones((1, 3)), "offset": jnp.ones((1, 3))},  # hk.BatchNorm shapes
        "out": {"w": 2.0 * jnp.ones((3, 1))},  # (H, 1): a weight, regularised
        "gain": jnp.ones((3,)),                # nameless 1-D leaf: bias-like by shape
    }


def test_l2_penalty_excludes_bias_like_leaves():
    # Regularised: linear/w (6 ones) and out/w (3 twos): 0.5 * (6 + 12).
    assert float(losses.l2_penalty(_params())) == pytest.approx(9.0)
    # Everything: + b (3) + scale (3) + offset (3) + gain (3).
    assert float(losses.l2_penalty(_params(), exclude_biases=False)) == pytest.approx(15.0)
    mask = losses.l2_mask(_params())
    assert mask["linear"] == {"w": True, "b": False}
    assert mask["batch_norm"] == {"scale": False, "offset": False}
    assert mask["out"]["w"] and not mask["gain"]


def test_l2_penalty_is_differentiable():
    grads = jax.grad(losses.l2_penalty)(_params())
    np.testing.assert_allclose(grads["linear"]["w"], np.ones((2, 3)))
    np.testing.assert_allclose(grads["linear"]["b"], np.zeros(3))
    np.testing.assert_allclose(grads["out"]["w"], 2 * np.ones((3, 1)))
