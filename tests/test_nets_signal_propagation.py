"""Signal propagation at initialization, measured on the real Haiku models against the kernel maps.

Inputs are pairs with exact correlations c in {0, 0.3, 0.6, 0.9} and unit q (mean square 1) along the
feature axis: whole vectors for the MLPs, every pixel's channel vector for the convnet (Delta-initialized
convolutions act location by location, so the kernel is per location and measured correlations are averaged
over positions). Predictions are ``activation.network_c_map`` of the spec prefix up to the compared layer.

What finite width allows (the numbers are printed with ``-s``):

* Correlations: within 0.03 of the prediction at the last hidden layer.
* q: DKS (smooth, with Q'(1) = 1 and a curved Q map) keeps the batch-mean q within 10 percent at every
  layer of a single network. For Leaky ReLU the Q map is exactly linear (Q(q) = q), so nothing pulls q back:
  a single network's q performs a random walk in log q with per-layer variance of order
  Var[phi(z)^2] / E[phi(z)^2]^2 / width, driven by the weights (deep representations are highly correlated,
  so averaging over inputs does not remove it). At width 1024 and 50 layers single networks end anywhere
  in about [0.65, 1.8]. What the Q map predicts is the expectation over the weights, and with orthogonal
  weights E[q_l | q_{l-1}] = q_{l-1} holds exactly at any width, so the tests assert the literal bound on
  q averaged over many initializations (within 10 percent of 1 at every layer), plus, per network,
  that the per-layer steps q_l / q_{l-1} average to 1 within a few percent and a loose global band that
  catches any scale error (a 10 percent error per layer would be a factor 117 after 50 layers).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config
from dks_jax.kernels import graph as g
from dks_jax.nets import models

C_VALUES = np.array([0.0, 0.3, 0.6, 0.9])
C_TOLERANCE = 0.03
Q_TOLERANCE = 0.10  # global, when the Q map is stabilizing (DKS)
STEP_TOLERANCE = 0.06  # per nonlinear layer |q_l / q_{l-1} - 1|, DKS
MEAN_STEP_TOLERANCE = 0.03  # geometric mean of the per-layer q steps, Leaky ReLU
LEAKY_Q_BAND = 0.4  # global band for the neutrally stable Leaky ReLU Q map at width 1024 / 50 layers
# Initializations averaged for the expected q (the quantity the Q map predicts). A single 50-layer
# network's log q has a standard deviation of about 0.24 at width 1024 and 0.46 at 256 channels; these
# counts give standard errors of about 0.06 and 0.03 on the mean (the MLP's cost is its 50 1024 x 1024
# QRs per init; the convnet's expected q is measured on 4 x 4 inputs, where inits are cheap).
MLP_INITS = 16
CONV_INITS = 64


def _pairs(key, pairs_per_value, shape):
    """``[2 * 4 * pairs_per_value, *shape]``: first halves ``a``, second halves ``b``, exact c and q = 1."""
    n = pairs_per_value * len(C_VALUES)
    k1, k2 = jax.random.split(key)
    a = np.asarray(jax.random.normal(k1, (n,) + shape), np.float64)
    b = np.asarray(jax.random.normal(k2, (n,) + shape), np.float64)
    a /= np.sqrt(np.mean(a * a, -1, keepdims=True))
    b -= np.sum(a * b, -1, keepdims=True) / np.sum(a * a, -1, keepdims=True) * a
    b /= np.sqrt(np.mean(b * b, -1, keepdims=True))
    c = np.repeat(C_VALUES, pairs_per_value).reshape((-1,) + (1,) * len(shape))
    b = c * a + np.sqrt(1 - c * c) * b
    return jnp.asarray(np.concatenate([a, b]), jnp.float32)


def _stats_fn(model, n):
    """A jitted ``(params, x) -> [(batch-mean q, mean correlation per c value)]`` over the trace."""

    @jax.jit
    def stats(params, x):
        (_, trace), _ = model.transformed.apply(params, {}, None, x, return_trace=True)
        out = []
        for h in trace:
            a, b = h[:n], h[n:]
            cos = jnp.sum(a * b, -1) / jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))
            out.append((jnp.mean(h * h), jnp.mean(cos.reshape(len(C_VALUES), -1), axis=1)))
        return out

    return stats


def _measure(model, params, x, stats=None):
    """Per top-level layer: (batch-mean q, mean correlation per c value), reduced inside the jit."""
    stats = stats or _stats_fn(model, x.shape[0] // 2)
    return [(float(q), np.asarray(c, np.float64)) for q, c in jax.device_get(stats(params, x))]


def _expected_q(model, x, num_inits, first_seed=100):
    """Per top-level layer: batch-mean q averaged over ``num_inits`` independent initializations."""
    init, stats = jax.jit(model.init), _stats_fn(model, x.shape[0] // 2)
    runs = []
    for seed in range(first_seed, first_seed + num_inits):
        params, _ = init(jax.random.PRNGKey(seed), x[:1])
        runs.append([q for q, _ in _measure(model, params, x, stats)])
    return np.asarray(runs)


_config = make_config


def _act_indices(spec):
    return [i for i, layer in enumerate(spec.layers) if isinstance(layer, g.Act)]


def _check_leaky_q(qs, steps):
    # Each step has expectation 1 over the weights, so their geometric mean over ~50 layers is tight even
    # though single steps and the accumulated walk are not.
    assert abs(np.exp(np.mean(np.log(steps))) - 1) < MEAN_STEP_TOLERANCE, steps
    assert np.abs(qs - 1).max() < LEAKY_Q_BAND, qs


def _check(model, measured, last_hidden, *, check_q_global, label):
    prediction = model.activation.network_c_map(g.Sequential(model.spec.layers[:last_hidden + 1]),
                                                C_VALUES)
    c_err = np.abs(measured[last_hidden][1] - prediction)
    qs = np.array([q for q, _ in measured[:last_hidden + 1]])
    acts = [i for i in _act_indices(model.spec) if 0 < i <= last_hidden]
    steps = np.array([measured[i][0] / measured[i - 1][0] for i in acts])
    gmean = np.exp(np.mean(np.log(steps)))
    print(f"\n{label}: predicted C {np.round(prediction, 4)}, measured {np.round(measured[last_hidden][1], 4)},"
          f" max error {c_err.max():.4f}; q in [{qs.min():.3f}, {qs.max():.3f}]; per-layer q step in "
          f"[{steps.min():.3f}, {steps.max():.3f}] (geometric mean {gmean:.4f})")
    assert c_err.max() < C_TOLERANCE, (prediction, measured[last_hidden][1])
    if check_q_global:
        assert np.abs(qs - 1).max() < Q_TOLERANCE, qs
    return prediction, qs, steps


@pytest.fixture(scope="module")
def mlp_models():
    """TAT Leaky ReLU, DKS softplus and EOC ReLU 50 x 1024 vanilla MLPs sharing one initialization."""
    shape = (1024,)
    fields = dict(model="mlp", depth=50, width=1024)
    built = {
        "TAT leaky_relu": models.build_model(_config(method="TAT", activation="leaky_relu", **fields),
                                             10, shape),
        "DKS softplus": models.build_model(_config(method="DKS", activation="softplus", **fields), 10,
                                           shape),
        "EOC relu": models.build_model(_config(method="EOC", activation="relu", **fields), 10, shape),
    }
    # Same spec and init ('orthogonal' for all three) -> same parameter tree; initialize once (50 Haar
    # 1024 x 1024 QRs are the expensive part).
    params, _ = built["TAT leaky_relu"].init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape))
    x = _pairs(jax.random.PRNGKey(1), 32, shape)
    return {name: (model, _measure(model, params, x)) for name, model in built.items()}


@pytest.mark.slow
def test_tat_leaky_relu_mlp(mlp_models):
    model, measured = mlp_models["TAT leaky_relu"]
    # Solved on this spec: 50 nonlinear layers, network C(0) = eta = 0.9.
    m = g.subnet_max_func(model.spec)
    assert m(0.0, lambda c: float(model.activation.c_map(c))) == pytest.approx(0.9, abs=1e-7)
    _, qs, steps = _check(model, measured, len(model.spec.layers) - 2, check_q_global=False,
                          label="TAT leaky_relu MLP 50x1024")
    _check_leaky_q(qs, steps)


@pytest.mark.slow
def test_tat_leaky_relu_mlp_expected_q_within_10_percent(mlp_models):
    # The Q map predicts q averaged over the random weights. With orthogonal weights E[q_l | q_{l-1}] =
    # Q(q_{l-1}) = q_{l-1} holds exactly at any width for Leaky ReLU, so the mean over initializations
    # converges to 1 at every layer while single networks wander (see the module docstring).
    model, _ = mlp_models["TAT leaky_relu"]
    x = _pairs(jax.random.PRNGKey(3), 4, (1024,))
    runs = _expected_q(model, x, MLP_INITS)[:, :len(model.spec.layers) - 1]
    expected = runs.mean(0)
    print(f"\nTAT leaky_relu MLP 50x1024, {MLP_INITS} inits: mean q in [{expected.min():.3f}, "
          f"{expected.max():.3f}]; single inits in [{runs.min():.3f}, {runs.max():.3f}]")
    assert np.abs(expected - 1).max() < Q_TOLERANCE, expected


@pytest.mark.slow
def test_dks_softplus_mlp(mlp_models):
    model, measured = mlp_models["DKS softplus"]
    _, _, steps = _check(model, measured, len(model.spec.layers) - 2, check_q_global=True,
                         label="DKS softplus MLP 50x1024")
    assert np.abs(steps - 1).max() < STEP_TOLERANCE


@pytest.mark.slow
def test_eoc_relu_mlp_correlations_collapse_as_predicted(mlp_models):
    model, measured = mlp_models["EOC relu"]
    prediction, _, _ = _check(model, measured, len(model.spec.layers) - 2, check_q_global=False,
                              label="EOC relu MLP 50x1024")
    # The collapse itself: every input correlation ends near 1, unlike TAT's (C(0) = 0.9 by design).
    assert prediction.min() > 0.98 and measured[-2][1].min() > 0.95
    tat_model, tat_measured = mlp_models["TAT leaky_relu"]
    assert tat_measured[-2][1][0] < 0.93


@pytest.mark.slow
def test_tat_leaky_relu_delta_convnet():
    # The project's convnet layout: a 3x3 stem and 49 (Act, 3x3 conv) pairs of 256 channels (two of them
    # strided), i.e. 50 Delta-initialized convolutions and 50 Leaky ReLU layers.
    model = models.build_model(_config(model="convnet", depth=49, width=256, method="TAT",
                                       activation="leaky_relu"), 10, (8, 8, 16))
    convs = [n for n in g.iter_nodes(model.spec) if isinstance(n, g.Conv)]
    assert len(convs) == 50 and {c.features for c in convs} == {256}
    params, _ = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 16)))
    x = _pairs(jax.random.PRNGKey(2), 8, (8, 8, 16))
    measured = _measure(model, params, x)
    last_act = _act_indices(model.spec)[-1]  # per-location kernel of the last hidden layer (before pooling)
    _, qs, steps = _check(model, measured, last_act, check_q_global=False,
                          label="TAT leaky_relu Delta convnet 50 x 256 channels")
    _check_leaky_q(qs, steps)
    runs = _expected_q(model, _pairs(jax.random.PRNGKey(4), 1, (4, 4, 16)), CONV_INITS)[:, :last_act + 1]
    expected = runs.mean(0)
    print(f"TAT leaky_relu Delta convnet (4x4 inputs), {CONV_INITS} inits: mean q in "
          f"[{expected.min():.3f}, {expected.max():.3f}] (standard error {runs.std(0).max() / CONV_INITS**0.5:.3f});"
          f" single inits in [{runs.min():.3f}, {runs.max():.3f}]")
    assert np.abs(expected - 1).max() < Q_TOLERANCE, expected
