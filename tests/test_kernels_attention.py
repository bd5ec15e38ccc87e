"""Attention matrices at initialization and kernel matrices over positions, against independent truth.

Closed forms (the AR(1) Cholesky factor of the E-SPA kernel, the spectral form of U-SPA's symmetric square
root, uniform causal averaging), exact reconstruction ``A Sigma_in A^T = Sigma_out``, log-determinants from
``numpy.linalg.slogdet``, and Monte Carlo for the entrywise activation map on kernel matrices.
"""

import math

import numpy as np
import pytest

from dks_jax import transforms
from dks_jax.kernels import attention as att
from dks_jax.kernels import graph as g
from dks_jax.kernels import layouts, local_maps, sequence


def _ar1_cholesky(seq_len, gamma):
    """Cholesky factor of exp(-gamma |i - j|), written out from the AR(1) recursion
    x_0 = e_0, x_i = exp(-gamma) x_{i-1} + sqrt(1 - exp(-2 gamma)) e_i."""
    rho, innovation = math.exp(-gamma), math.sqrt(1.0 - math.exp(-2.0 * gamma))
    out = np.zeros((seq_len, seq_len))
    for i in range(seq_len):
        out[i, 0] = rho**i
        for j in range(1, i + 1):
            out[i, j] = innovation * rho ** (i - j)
    return out


@pytest.mark.parametrize("gamma", [0.005, 0.3, 2.0])
def test_espa_cholesky_factor_is_the_ar1_recursion(gamma):
    np.testing.assert_allclose(att.kernel_factor(att.espa_kernel(12, gamma), causal=True),
                               _ar1_cholesky(12, gamma), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind,params", [("espa", (math.inf, 0.4, 0.05, 0.005)),
                                         ("uspa", (0.0, 0.3, 0.6, 0.9))])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seq_len", [1, 7, 32])
def test_spa_matrices_map_each_target_kernel_to_the_next(kind, params, causal, seq_len):
    for p_in, p_out in zip(params[:-1], params[1:]):
        a = att.spa_matrix(kind, seq_len, p_in, p_out, causal)
        sigma_in, sigma_out = (att.target_kernel(kind, seq_len, p) for p in (p_in, p_out))
        np.testing.assert_allclose(a @ sigma_in @ a.T, sigma_out, atol=1e-10)
        assert np.all(a >= 0.0)
        if causal:
            assert np.all(np.triu(a, 1) == 0.0)
        elif kind == "uspa":
            # U-SPA kernels share their eigenvectors: the product of their symmetric roots is symmetric.
            np.testing.assert_allclose(a, a.T, atol=1e-10)
        # It comes out of a softmax: D softmax(B) with the fixed bias and rescaling.
        node = g.Attention(1, kind, causal, p_in, p_out)
        bias, scale = att.softmax_parameters(node, seq_len)
        weights = np.exp(bias - bias.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(scale[:, None] * weights, a, atol=1e-10)
        np.testing.assert_allclose(att.init_matrix(node, seq_len), a)


def test_noncausal_uspa_closed_form():
    # (1 - rho) I + rho J has eigenvalue 1 - rho on the complement of 1 and 1 + (T - 1) rho on 1, so
    # A = a (I - J / T) + b J / T with a, b the ratios of the square roots of those eigenvalues.
    t, r0, r1 = 9, 0.2, 0.7
    a_ = math.sqrt((1 - r1) / (1 - r0))
    b_ = math.sqrt((1 + (t - 1) * r1) / (1 + (t - 1) * r0))
    j = np.ones((t, t)) / t
    np.testing.assert_allclose(att.spa_matrix("uspa", t, r0, r1, causal=False),
                               a_ * (np.eye(t) - j) + b_ * j, atol=1e-12)


def test_uniform_softmax_attention_and_value_skipinit():
    expected = np.array([[1, 0, 0, 0], [1 / 2, 1 / 2, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [1 / 4] * 4])
    np.testing.assert_allclose(att.uniform_matrix(4, causal=True), expected)
    np.testing.assert_allclose(att.uniform_matrix(4, causal=False), np.full((4, 4), 0.25))
    node = g.Attention(2, "softmax", True)
    bias, scale = att.softmax_parameters(node, 4)
    assert scale is None and np.array_equal(np.isfinite(bias), np.tril(np.ones((4, 4), bool)))
    skip = g.Attention(2, "softmax", True, value_skip=(0.6, 0.8))
    np.testing.assert_allclose(att.init_matrix(skip, 4), 0.6 * np.eye(4) + 0.8 * expected)
    np.testing.assert_array_equal(att.init_matrix(g.Attention(2, value_skip=(1.0, 0.0)), 4), np.eye(4))


@pytest.mark.parametrize("seq_len", [8, 64])
def test_espa_schedule_makes_the_log_determinant_linear_in_depth(seq_len):
    gammas = att.espa_schedule(6, 0.005)
    assert gammas[0] == math.inf and gammas[-1] == 0.005
    logdets = [np.linalg.slogdet(att.espa_kernel(seq_len, gm))[1] for gm in gammas]
    np.testing.assert_allclose(np.diff(logdets), np.full(6, logdets[-1] / 6), rtol=1e-9)
    rhos = att.uspa_schedule(4, 0.8)
    np.testing.assert_allclose(rhos, [1 - 0.2 ** (l / 4) for l in range(5)], atol=1e-15)


def test_attention_that_would_need_negative_weights_is_refused():
    # Going from a highly correlated kernel to a less correlated one needs negative weights.
    with pytest.raises(ValueError, match=r"ESPA attention from parameter 0.01 to 1.0 .* negative entries"):
        att.spa_matrix("espa", 8, 0.01, 1.0)
    with pytest.raises(ValueError, match=r"E-SPA decay rates \(param_in, param_out\) must be > 0"):
        g.validate(g.Attention(1, "espa", True, 0.0, 0.1))
    with pytest.raises(ValueError, match="kind must be one of"):
        g.validate(g.Attention(1, "linear"))


def test_rank_statistics_at_the_extremes():
    t = 6
    ident = sequence.rank_statistics(np.eye(t))
    assert ident["mean_corr"] == 0.0 and ident["min_eig"] == pytest.approx(1.0)
    assert ident["effective_rank"] == pytest.approx(t)
    ones = sequence.rank_statistics(3.0 * np.ones((t, t)))
    assert ones["mean_corr"] == pytest.approx(1.0) and ones["min_eig"] == pytest.approx(0.0, abs=1e-12)
    assert ones["effective_rank"] == pytest.approx(1.0)


def _linear_maps():
    return (lambda q: np.asarray(q, np.float64)), (lambda c: np.asarray(c, np.float64))


def test_naive_attention_collapses_rank_and_espa_preserves_the_target():
    q_map, c_map = _linear_maps()  # attention only: the activation is the identity
    t, depth = 16, 12
    # Non-causal uniform attention collapses any kernel in one layer: A = J / T, A K A^T ~ J.
    out = sequence.propagate(g.Attention(1, "softmax", causal=False), np.eye(t), q_map, c_map)
    np.testing.assert_allclose(sequence.normalize(out), np.ones((t, t)), atol=1e-12)
    naive = layouts.transformer(depth, 8, 10, num_heads=1, attention="softmax")
    espa = layouts.transformer(depth, 8, 10, num_heads=1, attention="espa", espa_gamma=0.05)
    attn_only = lambda spec: g.Sequential(tuple(l for l in spec.layers if isinstance(l, g.Attention)))
    min_eigs = [sequence.rank_statistics(k)["min_eig"]
                for k in sequence.trace(attn_only(naive), np.eye(t), q_map, c_map)]
    # Each layer shrinks the smallest eigenvalue by orders of magnitude, down to rounding error.
    assert np.all(np.diff(min_eigs) <= 0) and min_eigs[0] < 0.05 and min_eigs[3] < 1e-10
    final = sequence.propagate(attn_only(espa), np.eye(t), q_map, c_map)
    np.testing.assert_allclose(final, att.espa_kernel(t, 0.05), atol=1e-10)  # exactly the target
    assert sequence.rank_statistics(final)["min_eig"] > 0.02


@pytest.mark.parametrize("name,method,q_scale", [("leaky_relu", "TAT", (0.3, 1.0, 2.5)),
                                                 ("tanh", "DKS", (1.0, 1.0, 1.0))])
def test_activation_on_kernel_matrices_matches_monte_carlo(name, method, q_scale):
    """K' = E[phi(h) phi(h)^T] for h ~ N(0, K), with per-position q (exact for Leaky ReLU at any q)."""
    act = transforms.transform(name, method, network=layouts.plain_stack(20))
    corr = np.array([[1.0, 0.7, -0.2], [0.7, 1.0, 0.1], [-0.2, 0.1, 1.0]])
    s = np.sqrt(np.asarray(q_scale))
    kernel = s[:, None] * corr * s[None, :]
    h = np.random.default_rng(0).multivariate_normal(np.zeros(3), kernel, size=400_000)
    phi = np.asarray(act(h))
    measured = phi.T @ phi / len(phi)
    predicted = sequence.activation_map(kernel, *act.sequence_maps())
    np.testing.assert_allclose(predicted, measured, atol=0.01 * float(np.max(q_scale)))
    # Sanity: the entrywise rule without the per-position normalization would be visibly wrong here.
    if max(q_scale) != min(q_scale):
        naive = np.asarray(act.c_map(np.clip(kernel, -1, 1)))
        assert np.max(np.abs(naive - measured)) > 0.1


def test_layer_norm_and_weighted_sums_on_kernel_matrices():
    q_map, c_map = _linear_maps()
    k = np.array([[4.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(sequence.propagate(g.LayerNorm(), k, q_map, c_map), [[1, 0.5], [0.5, 1]])
    node = g.WeightedSum((g.Sequential(()), g.LayerNorm()), (0.6, 0.8))
    np.testing.assert_allclose(sequence.propagate(node, k, q_map, c_map),
                               0.36 * k + 0.64 * np.array([[1, 0.5], [0.5, 1]]))
    with pytest.raises(g.KernelGraphError, match="unnormalized sum"):
        sequence.propagate(g.WeightedSum((g.Sequential(()), g.LayerNorm()), None), k, q_map, c_map)
    with pytest.raises(g.KernelGraphError, match="random queries"):
        sequence.propagate(g.Attention(1, zero_query_init=False), k, q_map, c_map)
    with pytest.raises(TypeError, match="does not act on sequences"):
        sequence.propagate(g.Conv(4), k, q_map, c_map)


def test_input_kernel_of_tokens():
    tokens = np.array([3, 1, 3, 2])
    same = (tokens[:, None] == tokens[None, :]).astype(float)
    np.testing.assert_array_equal(sequence.input_kernel(tokens), same)
    learned = g.Embed(5, 8, "learned")
    np.testing.assert_array_equal(sequence.input_kernel(tokens, learned), 0.5 * (same + np.eye(4)))
    assert sequence.input_kernel(np.zeros((2, 3, 5), int)).shape == (2, 3, 5, 5)


def test_leaky_relu_closed_form_used_on_kernel_matrices_is_exact():
    # The closed-form C map behind the entrywise rule, against the library's quadrature.
    act = transforms.transform("leaky_relu", "TAT", network=layouts.plain_stack(30))
    _, c_map = act.sequence_maps()
    grid = np.linspace(-1, 1, 9)
    a = dict(act.shape_params)["negative_slope"]
    np.testing.assert_allclose(c_map(grid), local_maps.leaky_relu_c_map(grid, a), atol=1e-15)


def test_propagated_rescaling_gives_unit_q_and_reduces_to_the_row_sums_for_linear_mlps():
    spec = layouts.transformer(6, 8, 10, num_heads=1, attention="espa", espa_gamma=0.01)
    t = 20
    act = transforms.transform("leaky_relu", "TAT", network=spec,
                               tat=transforms.TATTargets(c_val_0_target=0.7))
    maps = act.sequence_maps()
    drifting = sequence.trace(spec, np.eye(t), *maps)
    assert max(float(np.max(np.diagonal(k))) for k in drifting) > 1.5  # the construction alone drifts
    rescaled = sequence.rescale_attention(spec, *maps, seq_len=t)
    for k in sequence.trace(rescaled, np.eye(t), *maps):
        np.testing.assert_allclose(np.diagonal(k), 1.0, atol=1e-9)
    # With linear MLPs every attention layer receives exactly its expected Sigma_{l-1}, so the rescaling
    # is the construction's own: the row sums of L_l L_{l-1}^{-1}.
    linear = sequence.rescale_attention(spec, *_linear_maps(), seq_len=t)
    for node in g.iter_nodes(linear):
        if isinstance(node, g.Attention):
            row_sums = att.spa_matrix("espa", t, node.param_in, node.param_out).sum(axis=1)
            np.testing.assert_allclose(node.row_scale, row_sums, rtol=1e-9)
    with pytest.raises(ValueError, match="row_scale has 20 entries for a sequence of 8 positions"):
        att.init_matrix(next(n for n in g.iter_nodes(rescaled) if isinstance(n, g.Attention)), 8)
