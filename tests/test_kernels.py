"""Kernel maps against independent truth: closed forms, Monte Carlo, finite differences, scipy.quad."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

from dks_jax import activations
from dks_jax.kernels import graph as g
from dks_jax.kernels import layouts, local_maps, quadrature
from dks_jax.transforms import TransformedActivation

C_GRID = np.linspace(-1.0, 1.0, 41)


def _act(name, *, alpha=1.0, beta=0.0, delta=0.0, gamma=1.0, **shape):
    base = TransformedActivation.untransformed(name)
    merged = dict(base.shape_params)
    merged.update(shape)
    return TransformedActivation(name=name, input_scale=alpha, input_shift=beta, output_shift=delta,
                                 output_scale=gamma, shape_params=tuple(merged.items()))


def _leaky_closed_form(c, a):
    return ((1 - a) ** 2 * (np.sqrt(1 - c**2) + (np.pi - np.arccos(c)) * c) / np.pi + 2 * a * c) / (1 + a**2)


@pytest.mark.parametrize("a", [0.0, 0.2, 0.6, 1.0])
def test_leaky_relu_quadrature_matches_closed_form(a):
    # Force the quadrature path with an input shift of exactly zero given through a tiny detour: compare
    # the raw quadrature routine with the closed form written out here, independently of the library.
    spec = activations.get_activation("leaky_relu")
    theta = local_maps.make_theta(shape=[a])
    with jax.enable_x64(True):
        for derivative in (0, 1):
            quad = np.asarray(local_maps.c_map(spec, ("negative_slope",), theta, C_GRID, derivative))
            if derivative == 0:
                expected = _leaky_closed_form(C_GRID, a)
            else:
                expected = ((1 - a) ** 2 * (np.pi - np.arccos(C_GRID)) / np.pi + 2 * a) / (1 + a**2)
            np.testing.assert_allclose(quad, expected, rtol=0, atol=1e-9)
        q = np.array([0.25, 1.0, 3.0])
        np.testing.assert_allclose(
            np.asarray(local_maps.q_map(spec, ("negative_slope",), theta, q)), q * (1 + a * a) / 2,
            rtol=1e-12)
    np.testing.assert_allclose(local_maps.leaky_relu_c_map(C_GRID, a), _leaky_closed_form(C_GRID, a),
                               atol=1e-15)
    # Plain floats take a `math` path (the searches' hot loop): the same values as the arrays' path.
    for derivative in (0, 1):
        scalars = [local_maps.leaky_relu_c_map(float(c), a, derivative) for c in C_GRID]
        assert all(isinstance(v, float) for v in scalars)
        np.testing.assert_allclose(scalars, local_maps.leaky_relu_c_map(C_GRID, a, derivative), atol=1e-15)


def test_relu_closed_form_value_at_zero():
    # C(0) of ReLU is E[relu]^2 / Q(1) = (1 / (2 pi)) / (1 / 2) = 1 / pi.
    assert _act("relu").c_map(0.0) == pytest.approx(1.0 / np.pi, abs=1e-15)
    assert _act("relu").local_moments()["c_value_0"] == pytest.approx(1.0 / np.pi, abs=1e-13)


def test_erf_and_linear_closed_forms():
    np.testing.assert_allclose(_act("erf").c_map(C_GRID), np.arcsin(2 * C_GRID / 3) / np.arcsin(2 / 3),
                               atol=1e-9)
    np.testing.assert_allclose(_act("linear").c_map(C_GRID), C_GRID, atol=1e-12)
    # E[erf(z)^2] = (2 / pi) arcsin(2 / 3).
    assert _act("erf").local_moments()["q_value"] == pytest.approx(2 / np.pi * np.arcsin(2 / 3), abs=1e-12)


SHIFTED = [
    ("softplus", dict(alpha=0.8, beta=0.4, delta=-0.9, gamma=2.0)),
    ("tanh", dict(alpha=1.3, beta=0.5, delta=-0.2, gamma=1.5)),
    ("elu", dict(alpha=1.1, beta=-0.3, delta=0.2, gamma=1.2)),
    ("gelu", dict(alpha=0.9, beta=0.2, delta=-0.1, gamma=1.7)),
    ("leaky_relu", dict(alpha=1.0, beta=0.3, delta=-0.4, gamma=1.1, negative_slope=0.3)),
    ("softsign", dict(alpha=2.0, beta=0.1, delta=0.0, gamma=1.0)),
]


@pytest.mark.parametrize("name,params", SHIFTED)
def test_maps_match_monte_carlo(name, params):
    act = _act(name, **params)
    rng = np.random.default_rng(0)
    n = 1_000_000
    u = rng.standard_normal(n)
    w = rng.standard_normal(n)
    fu = np.asarray(act(jnp.asarray(u, jnp.float32)), np.float64)
    q1_mc = np.mean(fu**2)
    assert act.q_map(1.0) == pytest.approx(q1_mc, rel=6 * np.std(fu**2) / np.sqrt(n) / q1_mc)
    for c in (-0.5, 0.3, 0.8):
        v = c * u + math.sqrt(1 - c * c) * w
        fv = np.asarray(act(jnp.asarray(v, jnp.float32)), np.float64)
        prod = fu * fv / q1_mc
        se = np.std(prod) / np.sqrt(n)
        assert float(act.c_map(c)) == pytest.approx(np.mean(prod), abs=6 * se + 1e-6)


@pytest.mark.parametrize("name,params", SHIFTED)
def test_derivatives_match_finite_differences(name, params):
    act = _act(name, **params)
    h = 1e-5
    for c in (-0.7, 0.0, 0.45):
        fd1 = (act.c_map(c + h) - act.c_map(c - h)) / (2 * h)
        assert float(act.c_map(c, 1)) == pytest.approx(float(fd1), abs=1e-7)
        # For the shifted Leaky ReLU, C'' is the Dirac delta term of phi'' (see the closed form test).
        fd2 = (act.c_map(c + h, 1) - act.c_map(c - h, 1)) / (2 * h)
        assert float(act.c_map(c, 2)) == pytest.approx(float(fd2), abs=2e-6)
    for q in (0.5, 1.0, 2.0):
        fdq = (act.q_map(q + h) - act.q_map(q - h)) / (2 * h)
        assert float(act.q_map(q, 1)) == pytest.approx(float(fdq), rel=1e-7, abs=1e-8)


def _scipy_expectation(fn, kink=None):
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    points = [kink] if kink is not None and -12 < kink < 12 else None
    val, _ = scipy.integrate.quad(lambda z: fn(z) * pdf(z), -12, 12, points=points, limit=400,
                                  epsabs=1e-13, epsrel=1e-12)
    return val


@pytest.mark.parametrize("name,params", SHIFTED)
def test_local_moments_match_adaptive_quadrature(name, params):
    """1e-9 for smooth activations and 1e-7 for kinked ones, against scipy's adaptive quad."""
    act = _act(name, **params)
    kink = None
    if act.spec.kinks:
        kink = (act.spec.kinks[0] - act.input_shift) / act.input_scale
    with jax.enable_x64(True):
        fj, dfj, d2fj = jax.jit(act), jax.jit(jax.grad(act)), jax.jit(jax.grad(jax.grad(act)))
        f = lambda z: float(fj(np.float64(z)))
        df = lambda z: float(dfj(np.float64(z)))
        d2f = lambda z: float(d2fj(np.float64(z)))
        q1 = _scipy_expectation(lambda z: f(z) ** 2, kink)
        expected = {
            "q_value": q1,
            "q_slope": _scipy_expectation(lambda z: f(z) * df(z) * z, kink),
            "c_value_0": _scipy_expectation(f, kink) ** 2 / q1,
            "c_slope_1": _scipy_expectation(lambda z: df(z) ** 2, kink) / q1,
        }
        if not act.spec.piecewise_linear:
            expected["c_curv_1"] = _scipy_expectation(lambda z: d2f(z) ** 2, kink) / q1
    got = act.local_moments()
    tol = 1e-7 if act.spec.kinks else 1e-9
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=tol, rel=tol), key
    if act.spec.piecewise_linear:  # phi' jumps: phi'' is a Dirac delta and C''(1) is infinite
        assert got["c_curv_1"] == math.inf


def test_quadrature_rule_self_convergence():
    spec = activations.get_activation("elu")
    theta = local_maps.make_theta(1.7, 0.4, -0.3, 1.2)
    fine = quadrature.QuadratureRule(bound=12.0, num_panels=30, nodes_per_panel=30)
    grid = C_GRID[::4]
    with jax.enable_x64(True):
        coarse_c = np.asarray(local_maps.c_map(spec, (), theta, grid, 2))
        fine_c = np.asarray(local_maps.c_map(spec, (), theta, grid, 2, rule=fine))
        coarse_m = local_maps.local_moments(spec, (), theta)
        fine_m = local_maps.local_moments(spec, (), theta, rule=fine)
    np.testing.assert_allclose(coarse_c, fine_c, atol=1e-11)
    np.testing.assert_allclose(np.array(coarse_m), np.array(fine_m), atol=1e-12)


def test_plain_gauss_hermite_would_be_inaccurate_but_ours_is_exact():
    """The reason for kink splitting: composed 49-layer Leaky ReLU C(0) must be exactly eta."""
    a = 0.4259071946144104  # TAT negative slope for 49 layers, eta = 0.9
    spec = activations.get_activation("leaky_relu")
    theta = local_maps.make_theta(1.0, 0.0, 0.0, math.sqrt(2 / (1 + a * a)), [a])
    with jax.enable_x64(True):
        quad_map = lambda c: float(local_maps.c_map(spec, ("negative_slope",), theta, np.array([c]))[0])
        c = 0.0
        for _ in range(49):
            c = quad_map(c)
    assert c == pytest.approx(0.9, abs=1e-8)


# ---------------------------------------------------------------------------------------------
# Kernel graphs.


def test_composition_and_weighted_sums():
    r = lambda c: np.cos(c) * 0.5 + 0.5 * c  # any scalar map will do
    spec = g.Sequential((g.Act(), g.Dense(3), g.Act()))
    assert g.propagate(spec, 0.3, r) == pytest.approx(r(r(0.3)))
    w = 0.6
    summed = g.WeightedSum((g.Sequential(()), g.Sequential((g.Act(), g.Act()))), (w, math.sqrt(1 - w * w)))
    assert g.propagate(summed, 0.3, r) == pytest.approx(w * w * 0.3 + (1 - w * w) * r(r(0.3)))
    with pytest.raises(ValueError, match="sum to 1"):
        g.subnet_max_func(g.WeightedSum((g.Act(), g.Act()), (0.5, 0.5)))


def test_plain_stack_subnet_max_is_composition():
    m = g.subnet_max_func(layouts.plain_stack(7))
    assert m(1.0, lambda y: 1.1 * y) == pytest.approx(1.1**7)
    assert m(0.0, lambda y: 0.01 + y) == pytest.approx(0.07)


def _hand_written_resnet_m(x, r, blocks, w):
    """An independent transcription of the TAT paper's recipe for a ResNet-V2 bottleneck network."""
    res = lambda z: r(r(r(z)))
    single_branch = res(x)
    for group, count in enumerate(blocks):
        for block in range(count):
            shortcut = r(x) if block == 0 else x  # projection shortcuts see the block's activation
            x = w * w * shortcut + (1 - w * w) * res(x)
    return max(r(x), single_branch)


@pytest.mark.parametrize("depth,w", [(50, 0.0), (50, 0.6), (101, 0.6), (152, 0.9), (200, 0.5)])
def test_resnet_subnet_max_matches_hand_written_recipe(depth, w):
    spec = layouts.resnet(depth, 10, shortcut_weight=w)
    m = g.subnet_max_func(spec)
    blocks = layouts.RESNET_SHAPES[depth].blocks_per_group
    for a in (0.0, 0.5):
        r = lambda c: local_maps.leaky_relu_c_map(c, a)
        assert m(0.0, r) == pytest.approx(_hand_written_resnet_m(0.0, r, blocks, w), abs=1e-15)
    assert m(1.0, lambda y: 1.01 * y) == pytest.approx(
        _hand_written_resnet_m(1.0, lambda y: 1.01 * y, blocks, w), rel=1e-14)


def _two_branches(w=0.8, deep=6):
    shallow = g.Sequential((g.Dense(8), g.Act()))
    branch = g.Sequential(tuple(l for _ in range(deep) for l in (g.Dense(8), g.Act())))
    return g.Sequential((g.WeightedSum((shallow, branch), (w, math.sqrt(1 - w * w))), g.Act()))


@pytest.mark.parametrize("spec", [
    layouts.plain_stack(7), layouts.resnet(101, 10), layouts.resnet(50, 10, shortcut_weight=0.6),
    layouts.resnet(152, 10, shortcut_weight=0.9), layouts.residual_mlp(12, 8, 10, shortcut_weight=0.5, use_batch_norm=False),
    _two_branches()], ids=["plain", "r101", "r50-w0.6", "r152-w0.9", "residual-mlp", "two-branches"])
def test_linear_searches_in_closed_form_equal_running_the_graph(spec):
    m = g.subnet_max_func(spec)
    scale, shift = m.linear(1.0, "scale"), m.linear(0.0, "shift")
    for t in (0.0, 0.3, 1.0, 1.007, 1.1, 2.0):
        assert scale(t) == pytest.approx(m(1.0, lambda y: t * y), rel=1e-13, abs=1e-300)
        assert shift(t) == pytest.approx(m(0.0, lambda y: t + y), rel=1e-13, abs=1e-300)
    assert m.linear(0.5, "scale")(1.1) == pytest.approx(m(0.5, lambda y: 1.1 * y), rel=1e-13)


def test_linear_search_closed_forms_against_hand_counts():
    m = g.subnet_max_func(layouts.plain_stack(7))
    assert m.linear(1.0, "scale")(1.1) == pytest.approx(1.1**7, rel=1e-15)
    assert m.linear(0.0, "shift")(0.01) == pytest.approx(0.07, rel=1e-15)
    # The whole net: w^2 s + (1 - w^2) s^6, then one more layer; the deep branch alone is a subnetwork.
    m = g.subnet_max_func(_two_branches())
    for s, expected in ((1.02, 1.02**6), (3.0, 0.64 * 3.0**2 + 0.36 * 3.0**7)):
        assert m.linear(1.0, "scale")(s) == pytest.approx(
            max(0.64 * s**2 + 0.36 * s**7, s**6), rel=1e-15) == expected
    deep = g.subnet_max_func(layouts.plain_stack(10000))  # 1.1 ** 10000 overflows, as the graph's products do
    assert deep.linear(1.0, "scale")(1.1) == math.inf == deep(1.0, lambda y: 1.1 * y)
    wide = g.subnet_max_func(layouts.resnet(152, 10, shortcut_weight=0.9))  # many terms: the NumPy path
    assert wide.linear(1.0, "scale")(1e3) == math.inf == wide(1.0, lambda y: 1e3 * y)
    with pytest.raises(ValueError, match="'scale' or 'shift'"):
        m.linear(1.0, "power")
    bn = g.subnet_max_func(layouts.resnet(18, 10, shortcut_weight=None, use_batch_norm=True))
    with pytest.raises(g.KernelGraphError):
        bn.linear(1.0, "scale")


def test_leaky_relu_c_map_closure_is_bit_identical():
    rng = np.random.default_rng(0)
    for a in (0.0, 0.05, 0.3, 1.0):
        fn = local_maps.leaky_relu_c_map_fn(a)
        for c in [-1.0, 0.0, 1.0] + [float(v) for v in rng.uniform(-1, 1, 200)]:
            assert fn(c) == local_maps.leaky_relu_c_map(c, a)
        assert fn(1.0 + 4e-16) == fn(1.0) and fn(-1.0 - 4e-16) == fn(-1.0)  # rounding past +-1


@pytest.mark.parametrize("depth,expected", [(18, 17), (34, 33), (50, 49), (101, 100), (152, 151),
                                            (200, 199)])
def test_vanilla_resnet_nonlinear_depths(depth, expected):
    assert g.count_nonlinear_layers(layouts.resnet(depth, 10)) == expected
    assert g.count_nonlinear_layers(layouts.mlp(depth, 8, 10)) == depth


def test_batch_norm_network_has_no_kernel_map():
    spec = layouts.resnet(18, 10, shortcut_weight=None, use_batch_norm=True)
    with pytest.raises(g.KernelGraphError, match="BatchNorm|unweighted"):
        g.subnet_max_func(spec)(0.0, lambda c: c)


def test_trace_lists_every_top_level_layer():
    spec = layouts.mlp(3, 4, 2)
    values = g.trace(spec, 0.0, lambda y: y + 1.0)
    assert len(values) == len(spec.layers)
    assert values[-1] == 3.0


@pytest.mark.parametrize("mode", ["const", "avg_q", "none"])
def test_pln_input_c_map_matches_normalizing_real_arrays(mode):
    from dks_jax.data import pln  # NumPy only; no Haiku

    rng = np.random.default_rng(0)
    channels, c = 3, 0.4
    a = rng.standard_normal((1, channels))
    b = rng.standard_normal((1, channels))
    b -= (a @ b.T) / (a @ a.T) * a
    a, b = a / np.sqrt(np.mean(a * a)), b / np.sqrt(np.mean(b * b))
    b = c * a + math.sqrt(1 - c * c) * b  # unit mean square, correlation c
    out_a, out_b = (pln.per_location_normalization(v, mode) for v in (a, b))
    measured = float(np.sum(out_a * out_b) / np.sqrt(np.sum(out_a**2) * np.sum(out_b**2)))
    expected = g.pln_input_c_map(g.PerLocationNorm(mode), c, channels)
    assert measured == pytest.approx(expected, abs=1e-6)
    assert (expected == c) == (mode == "none")


# ---------------------------------------------------------------------------------------------
# Kinks: Dirac deltas in the derivatives, accuracy near |c| = 1, the angle interpolant.


def _bivariate_density(x, y, c):
    return np.exp(-(x * x - 2 * c * x * y + y * y) / (2 * (1 - c * c))) / (2 * np.pi * np.sqrt(1 - c * c))


@pytest.mark.parametrize("a,alpha,beta,delta,gamma", [(0.0, 0.6, 1.0, -1.0, 1.7),
                                                      (0.3, 1.0, 0.3, -0.4, 1.1),
                                                      (0.5, -1.3, -0.7, 0.2, 0.9)])
def test_c_map_second_derivative_of_shifted_leaky_relu(a, alpha, beta, delta, gamma):
    """phi_hat'' = gamma |alpha| (1 - a) delta(x - x0) with x0 = -beta / alpha, so
    C''(c) = gamma^2 alpha^2 (1 - a)^2 p_c(x0, x0) / Q(1), p_c the bivariate normal density."""
    act = _act("leaky_relu", alpha=alpha, beta=beta, delta=delta, gamma=gamma, negative_slope=a)
    leaky = lambda y: y if y >= 0 else a * y
    x0 = -beta / alpha
    q1 = _scipy_expectation(lambda z: (gamma * (leaky(alpha * z + beta) + delta)) ** 2, x0)
    c = np.array([-0.9, -0.3, 0.0, 0.5, 0.99])
    expected = gamma**2 * alpha**2 * (1 - a) ** 2 * _bivariate_density(x0, x0, c) / q1
    np.testing.assert_allclose(act.c_map(c, derivative=2), expected, rtol=1e-11)
    assert act.c_map(1.0, derivative=2) == math.inf
    assert act.local_moments()["c_curv_1"] == math.inf


def test_step_function_maps_include_the_delta_of_its_derivative():
    """phi = 1[x > t]: C(c) Q(1) = P(u > t, v > t) and C'(c) Q(1) = p_c(t, t), Q(1) = P(z > t)."""
    import scipy.stats

    t = 0.4
    spec = activations.ActivationSpec("step", lambda x: jnp.where(x > t, 1.0, 0.0))
    theta = local_maps.make_theta()
    q1 = scipy.stats.norm.sf(t)
    for c in (-0.6, 0.2, 0.7):
        joint = scipy.stats.multivariate_normal([0, 0], [[1, c], [c, 1]]).cdf([-t, -t])
        assert float(local_maps.c_map(spec, (), theta, np.array([c]))[0]) == pytest.approx(
            joint / q1, abs=1e-7)
        assert float(local_maps.c_map(spec, (), theta, np.array([c]), derivative=1)[0]) == \
            pytest.approx(_bivariate_density(t, t, c) / q1, rel=1e-10)
    moments = local_maps.local_moments(spec, (), theta)
    assert moments.c_slope_1 == math.inf and moments.c_curv_1 == math.inf
    # E[phi'] = pdf(t): C'(0) = pdf(t)^2 / Q(1).
    assert moments.c_slope_0 == pytest.approx(scipy.stats.norm.pdf(t) ** 2 / q1, rel=1e-10)


@pytest.mark.parametrize("a", [0.0, 0.3])
def test_c_map_of_kinked_function_near_c_equals_one(a):
    """Graded panels where the inner integral turns sharply: the closed form to ~1e-13 up to c -> 1."""
    spec = activations.get_activation("leaky_relu")
    angles = np.array([1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, np.pi - 1e-2, np.pi - 1e-4])
    c = np.cos(angles)
    got = local_maps.c_map(spec, ("negative_slope",), local_maps.make_theta(shape=[a]), c)
    np.testing.assert_allclose(got, _leaky_closed_form(c, a), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name,params", SHIFTED[:4] + [("selu", dict(alpha=0.3, beta=-0.55,
                                                                      delta=0.7, gamma=3.2))])
def test_angle_interpolant_matches_direct_quadrature(name, params):
    act = _act(name, **params)
    interpolant = local_maps.CMapInterpolant.build(act.spec, act.theta)
    c = np.array([-0.999, -0.77, -0.1, 0.05, 0.42, 0.93, 0.9995])
    np.testing.assert_allclose(interpolant(c), act.c_map(c), rtol=0, atol=1e-12)
    assert interpolant(1.0) == 1.0
    assert interpolant.x_nodes.size <= 129  # geometric convergence in the angle, kinks or not


# ---------------------------------------------------------------------------------------------
# The public package's quadrature, imitated by the compat API.


def test_reference_nodes_match_scipy_legendre_scaled():
    """Tricomi nodes against SciPy's Golub-Welsch at an order it computes quickly, same construction."""
    scipy_special = pytest.importorskip("scipy.special")
    n = 4000
    t, u = scipy_special.roots_legendre(n)
    z, w = quadrature.reference_nodes(order=n)
    keep = np.exp(-0.5 * (10 * t) ** 2) * 10 * u > 1e-17 * np.max(np.exp(-0.5 * (10 * t) ** 2) * 10 * u)
    np.testing.assert_allclose(z, 10 * t[keep], rtol=0, atol=1e-13)
    np.testing.assert_allclose(w, 10 * u[keep] * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi), rtol=1e-6)


@pytest.mark.parametrize("cut", [0.011, 0.37, -1.234, 3.3])
def test_reference_rule_error_is_local_to_the_cuts(cut):
    """The whole 100,000-node sum minus the exact integral equals the windowed error estimate."""
    f = lambda z: np.where(z < cut, np.exp(0.3 * z) + 1.0, np.cos(z) + 0.2 * z)  # jumps at the cut
    z_all, w_all = quadrature.reference_nodes()
    z_exact, w_exact = quadrature.gaussian_nodes(np.array([cut]))
    whole = w_all @ f(z_all) - w_exact @ f(z_exact)
    z_err, w_err = quadrature.reference_rule_error_nodes(np.array([cut]))
    assert abs(whole) > 1e-8  # a jump of ~1 between nodes ~3e-4 apart: an error far above rounding
    # The imitated weights are within ~1e-11 of Gauss-Legendre's (the windows use exact integrals).
    assert w_err @ f(z_err) == pytest.approx(whole, abs=5e-11)
    assert quadrature.reference_rule_error_nodes(np.array([cut, cut + 0.3])) is None  # overlapping
