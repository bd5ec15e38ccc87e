"""The DKS/TAT solver against published values, independent re-measurement and bad input."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import dks_jax
from dks_jax import activations
from dks_jax.kernels import graph as g
from dks_jax.kernels import kinks, layouts, local_maps
from dks_jax.transforms import solver
from reference_values import (PUBLISHED_DKS_SLOPES, PUBLISHED_ETA_SWEEP_101, PUBLISHED_TAT,
                              RESNET101_W06_TAT_LEAKY_ETA_075, SOFTPLUS_DKS, SOFTPLUS_TAT)

RESNET101_W06 = layouts.resnet(101, 1000, shortcut_weight=0.6)


def _sig_digits_equal(a, b, digits):
    return abs(a - b) <= 0.5 * 10 ** (math.floor(math.log10(abs(b))) - digits + 1)


@pytest.mark.parametrize("depth", sorted(PUBLISHED_TAT))
def test_published_tat_leaky_relu_values(depth):
    slope, scale = PUBLISHED_TAT[depth]
    for network in (layouts.resnet(depth, 1000), layouts.plain_stack(depth - 1)):
        act = dks_jax.transform("leaky_relu", "TAT", network=network)
        # The published values have 10 decimals; agree to all of them (>= 9 significant digits).
        assert abs(act.as_dict()["negative_slope"] - slope) < 6e-11
        assert abs(act.as_dict()["output_scale"] - scale) < 6e-11


def test_published_eta_sweep_at_depth_101():
    net = layouts.resnet(101, 1000)
    for eta, slope in PUBLISHED_ETA_SWEEP_101.items():
        act = dks_jax.transform("leaky_relu", "TAT", network=net, tat=dks_jax.TATTargets(c_val_0_target=eta))
        digits = len(str(slope).split(".")[1])
        assert round(act.as_dict()["negative_slope"], digits) == pytest.approx(slope, abs=1e-12)


def test_dks_local_slope_of_a_10000_layer_net():
    # The search doubles its guess through values whose 10000th power overflows.
    s = solver.local_c_slope_target(solver.network_subnet_max(layouts.plain_stack(10000)), 1.5)
    assert s == pytest.approx(1.5 ** (1 / 10000), rel=1e-12)


@pytest.mark.parametrize("layers", sorted(PUBLISHED_DKS_SLOPES))
def test_published_dks_local_slopes(layers):
    s = solver.local_c_slope_target(g.subnet_max_func(layouts.plain_stack(layers)), 1.5)
    assert round(s, 8) == pytest.approx(PUBLISHED_DKS_SLOPES[layers], abs=1e-12)
    assert s == pytest.approx(1.5 ** (1 / layers), rel=1e-9)
    act = dks_jax.transform("softplus", "DKS", network=layouts.plain_stack(layers))
    assert act.local_moments()["c_slope_1"] == pytest.approx(s, abs=1e-10)


@pytest.mark.parametrize("method,name,targets,expected", [
    ("TAT", "leaky_relu", dict(tat=solver.TATTargets(c_val_0_target=0.75)), RESNET101_W06_TAT_LEAKY_ETA_075),
    ("DKS", "softplus", dict(dks=solver.DKSTargets(c_slope_1_target=1.2)), SOFTPLUS_DKS),
    ("TAT", "softplus", dict(tat=solver.TATTargets(c_curve_target=0.2)), SOFTPLUS_TAT),
])
def test_resnet101_regression_values(method, name, targets, expected):
    got = dks_jax.transform(name, method, network=RESNET101_W06, **targets).as_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert _sig_digits_equal(got[key], value, 8), (key, got[key], value)


# ---------------------------------------------------------------------------------------------
# Independent re-measurement of every condition after solving.


def _measure(act):
    """Q(1), Q'(1), C(0), C'(1), C''(1) by scipy's adaptive quadrature and JAX autodiff (no shared code)."""
    with jax.enable_x64(True):
        f = jax.jit(act)
        df = jax.jit(jax.grad(act))
        d2f = jax.jit(jax.grad(jax.grad(act)))
        kink = None
        found = kinks.kink_profile(act.spec).kinks  # declared, or detected for user functions
        if found:
            kink = (found[0] - act.input_shift) / act.input_scale
        pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

        def e(fn):
            pts = [kink] if kink is not None and abs(kink) < 12 else None
            return scipy.integrate.quad(lambda z: fn(np.float64(z)) * pdf(z), -12, 12, points=pts,
                                        limit=400, epsabs=1e-13, epsrel=1e-12)[0]

        q1 = e(lambda z: float(f(z)) ** 2)
        return {"q_value": q1, "q_slope": e(lambda z: float(f(z)) * float(df(z)) * z),
                "c_value_0": e(lambda z: float(f(z))) ** 2 / q1,
                "c_slope_1": e(lambda z: float(df(z)) ** 2) / q1,
                "c_curv_1": e(lambda z: float(d2f(z)) ** 2) / q1}


SMOOTH = ["tanh", "softplus", "sigmoid", "erf", "atan", "asinh", "softsign", "bentid", "elu", "selu",
          "swish", "gelu", "gelu_exact"]
NET = layouts.resnet(50, 10)  # 49 nonlinear layers


@pytest.mark.parametrize("name", SMOOTH + ["relu", "leaky_relu"])
def test_dks_conditions_hold_when_remeasured(name):
    act = dks_jax.transform(name, "DKS", network=NET)
    s = dict(act.local_targets)["c_slope_1"]
    m = _measure(act)
    assert m["q_value"] == pytest.approx(1.0, abs=1e-7)
    assert m["c_value_0"] == pytest.approx(0.0, abs=1e-7)
    assert m["c_slope_1"] == pytest.approx(s, abs=1e-7)
    if name != "relu":  # ReLU has one degree of freedom less: no Q'(1) condition
        assert m["q_slope"] == pytest.approx(1.0, abs=1e-7)
    # Network level: the maximal C'(1) over subnetworks, with the re-measured local slope.
    assert g.subnet_max_func(NET)(1.0, lambda y: m["c_slope_1"] * y) == pytest.approx(1.5, abs=1e-6)
    assert act.input_scale > 0


# SELU's slope jumps at 0 (1.7581 to 1.0507): its C''(1) is infinite, so TAT refuses it.
TAT_SMOOTH = [n for n in SMOOTH if n != "selu"]


@pytest.mark.parametrize("name", TAT_SMOOTH)
def test_tat_smooth_conditions_hold_when_remeasured(name):
    act = dks_jax.transform(name, "TAT", network=NET)
    k = dict(act.local_targets)["c_curv_1"]
    m = _measure(act)
    assert m["q_value"] == pytest.approx(1.0, abs=1e-7)
    assert m["q_slope"] == pytest.approx(1.0, abs=1e-7)
    assert m["c_slope_1"] == pytest.approx(1.0, abs=1e-7)
    assert m["c_curv_1"] == pytest.approx(k, abs=1e-7)
    assert g.subnet_max_func(NET)(0.0, lambda y: m["c_curv_1"] + y) == pytest.approx(0.3, abs=1e-6)
    assert act.input_scale > 0  # canonical (mirrored solutions are flipped)


def test_tat_leaky_relu_network_c0_remeasured_with_2d_quadrature():
    act = dks_jax.transform("leaky_relu", "TAT", network=NET)
    m = _measure(act)
    assert m["q_value"] == pytest.approx(1.0, abs=1e-9)
    # Compose the local C map by 2D quadrature (not the closed form the solver used) through the net.
    spec = activations.get_activation("leaky_relu")
    with jax.enable_x64(True):
        local = lambda c: float(local_maps.c_map(spec, act.shape_names, act.theta, np.array([c]))[0])
        assert g.subnet_max_func(NET)(0.0, local) == pytest.approx(0.9, abs=1e-7)


def test_trelu_is_leaky_relu_with_builtin_scale():
    a = dks_jax.transform("leaky_relu", "TAT", network=NET)
    t = dks_jax.transform("trelu", "TAT", network=NET)
    x = jnp.linspace(-3, 3, 13)
    np.testing.assert_allclose(a(x), t(x), rtol=1e-6)
    assert t.q_map(2.0) == pytest.approx(2.0, abs=1e-12)


def test_eoc_relu_is_he_scaling():
    eoc = dks_jax.transform("relu", "EOC")
    assert eoc.as_dict() == {"output_scale": pytest.approx(math.sqrt(2.0), abs=1e-12)}
    assert dks_jax.transform("tanh", "untransformed").as_dict() == {}


def test_registering_a_new_family_is_one_call():
    name = "test_tanh_plus_linear"
    dks_jax.register_activation(name, lambda x: jnp.tanh(x) + 0.1 * x)
    try:
        for method in ("DKS", "TAT"):
            act = dks_jax.transform(name, method, network=layouts.plain_stack(20))
            m = _measure(act)
            assert m["q_value"] == pytest.approx(1.0, abs=1e-7)
            assert m["q_slope"] == pytest.approx(1.0, abs=1e-7)
            if method == "DKS":
                assert m["c_slope_1"] == pytest.approx(1.5 ** (1 / 20), abs=1e-7)
            else:
                assert m["c_curv_1"] == pytest.approx(dict(act.local_targets)["c_curv_1"], abs=1e-7)
        params = dks_jax.get_activation_params([name], "DKS", subnet_max_func=g.subnet_max_func(
            layouts.plain_stack(20)))
        assert set(params[name]) == {"input_scale", "input_shift", "output_shift", "output_scale"}
    finally:
        dks_jax.unregister_activation(name)


# ---------------------------------------------------------------------------------------------
# The dks-compatible API.


def test_compat_keys_and_functions():
    m = g.subnet_max_func(NET)
    assert set(dks_jax.get_activation_params(["leaky_relu"], "TAT", subnet_max_func=m)["leaky_relu"]) == \
        {"output_scale", "negative_slope"}
    assert set(dks_jax.get_activation_params(["leaky_relu"], "DKS", subnet_max_func=m)["leaky_relu"]) == \
        {"negative_slope", "input_shift", "output_shift", "output_scale"}
    assert set(dks_jax.get_activation_params(["relu"], "DKS", subnet_max_func=m)["relu"]) == \
        {"input_shift", "input_scale", "output_shift", "output_scale"}
    assert dks_jax.get_activation_params(["tanh"], "untransformed") == {"tanh": {}}
    fns = dks_jax.get_transformed_activations(["softplus", "tanh"], "DKS", subnet_max_func=m)
    p = dks_jax.get_activation_params(["softplus"], "DKS", subnet_max_func=m)["softplus"]
    x = jnp.linspace(-4, 4, 9)
    manual = p["output_scale"] * (jax.nn.softplus(p["input_scale"] * x + p["input_shift"]) + p["output_shift"])
    np.testing.assert_allclose(fns["softplus"](x), manual, rtol=1e-6)
    # The max_slope_func route gives the same answer as subnet_max_func.
    p2 = dks_jax.get_activation_params(["softplus"], "DKS", max_slope_func=lambda s: s**49)["softplus"]
    assert p2 == p


@pytest.mark.parametrize("name,method", [("softplus", "DKS"), ("leaky_relu", "TAT"), ("gelu", "TAT"),
                                         ("relu", "EOC"), ("leaky_relu", "DKS")])
def test_jit_and_dtype_preservation(name, method):
    act = dks_jax.transform(name, method, network=NET)
    x = jnp.ones((3,), jnp.bfloat16)
    assert jax.jit(act)(x).dtype == jnp.bfloat16
    assert act(x).dtype == jnp.bfloat16


@pytest.mark.slow
def test_results_are_bit_identical_across_processes():
    code = ("import json, dks_jax; from dks_jax.kernels import layouts;"
            "a = dks_jax.transform('gelu', 'TAT', network=layouts.resnet(50, 10));"
            "b = dks_jax.transform('elu', 'DKS', network=layouts.resnet(50, 10));"
            "print(json.dumps([a.as_dict(), b.as_dict()]))")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert outs[0] == outs[1]
    here = [dks_jax.transform("gelu", "TAT", network=NET).as_dict(),
            dks_jax.transform("elu", "DKS", network=NET).as_dict()]
    assert json.loads(outs[0]) == here  # json round-trips floats exactly


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_unknown_activation_lists_known_ones():
    with pytest.raises(ValueError, match="Known activations: .*leaky_relu.*softplus"):
        dks_jax.transform("nope", "DKS", network=NET)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dks=dict(c_slope_1_target=1.0)), "greater than 1"),
    (dict(tat=dict(c_val_0_target=1.0)), "between 0 and 1"),
    (dict(tat=dict(c_val_0_target=0.0)), "between 0 and 1"),
    (dict(tat=dict(c_curve_target=0.0)), "greater than 0"),
    (dict(tat=dict(c_curve_target=-1.0)), "greater than 0"),
])
def test_invalid_targets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        if "dks" in kwargs:
            solver.DKSTargets(**kwargs["dks"])
        else:
            solver.TATTargets(**kwargs["tat"])


def test_invalid_method_and_relu_with_tat():
    with pytest.raises(ValueError, match="valid methods: DKS, TAT, untransformed, EOC"):
        dks_jax.transform("tanh", "SELU-magic", network=NET)
    with pytest.raises(ValueError, match="leaky_relu"):
        dks_jax.transform("relu", "TAT", network=NET)
    with pytest.raises(ValueError, match="unrecognized keys"):
        dks_jax.get_activation_params(["tanh"], "DKS", dks_params={"zeta": 1.5},
                                      subnet_max_func=g.subnet_max_func(NET))
    with pytest.raises(ValueError, match="subnet_max_func"):
        dks_jax.get_activation_params(["tanh"], "DKS")


def test_unreachable_eta_says_why_and_what_would_work():
    with pytest.raises(solver.SolverError) as info:
        dks_jax.transform("leaky_relu", "TAT", network=layouts.plain_stack(10))
    msg = str(info.value)
    reachable = float(g.subnet_max_func(layouts.plain_stack(10))(
        0.0, lambda c: dks_jax.kernels.leaky_relu_c_map(c, 0.0)))
    assert "unreachable" in msg and f"{reachable:.6f}" in msg and "nonlinear layers" in msg
    # The depth the message suggests really does reach eta = 0.9, and one layer less does not.
    needed = int(msg.split("needs at least ")[1].split(" ")[0])
    dks_jax.transform("leaky_relu", "TAT", network=layouts.plain_stack(needed))
    with pytest.raises(solver.SolverError):
        dks_jax.transform("leaky_relu", "TAT", network=layouts.plain_stack(needed - 1))


def test_inconsistent_conditions_raise_instead_of_nan():
    with pytest.raises(solver.SolverError, match="did not converge"):
        dks_jax.transform("square", "DKS", network=layouts.plain_stack(10))


def test_network_without_nonlinear_layers():
    with pytest.raises(solver.SolverError, match="no nonlinear layers"):
        dks_jax.transform("tanh", "DKS", network=g.Sequential((g.Dense(3),)))


def test_batch_norm_network_cannot_be_shaped():
    bn = layouts.resnet(18, 10, shortcut_weight=None, use_batch_norm=True)
    with pytest.raises(g.KernelGraphError):
        dks_jax.transform("softplus", "DKS", network=bn)
    # ...but its baselines need no solve.
    assert dks_jax.transform("relu", "untransformed", network=bn).as_dict() == {}


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        activations.register_activation("tanh", jnp.tanh)


@pytest.mark.parametrize("name", ["erf", "atan", "asinh", "tanh"])
def test_odd_families_get_canonical_nonnegative_shift(name):
    import dataclasses
    grid = np.linspace(-1, 1, 9)
    for depth in (50, 101):
        act = dks_jax.transform(name, "TAT", network=layouts.resnet(depth, 10))
        assert act.input_scale > 0 and act.input_shift >= 0
        # The discarded twin has the same kernel maps (which is why either could come out of a solver).
        twin = dataclasses.replace(act, input_shift=-act.input_shift, output_shift=-act.output_shift)
        np.testing.assert_allclose(twin.c_map(grid), act.c_map(grid), atol=1e-12)
        np.testing.assert_allclose(twin.q_map([0.5, 1.0, 2.0]), act.q_map([0.5, 1.0, 2.0]), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Edge of chaos (zero biases): chi = sigma_w^2 E[phi'(sqrt(q*) z)^2] = 1 at the q map's fixed point q*.


def test_eoc_of_cos_against_closed_forms_and_monte_carlo():
    """E[cos(a z)^2] = (1 + e^{-2 a^2}) / 2 and E[sin(a z)^2] = (1 - e^{-2 a^2}) / 2, so the fixed point
    of q -> s^2 E[cos(sqrt(q) z)^2] with chi = s^2 E[sin(sqrt(q) z)^2] = 1 solves
    1 + e^{-2q} = q (1 - e^{-2q})."""
    import scipy.optimize

    q_star = scipy.optimize.brentq(lambda q: 1 + math.exp(-2 * q) - q * (1 - math.exp(-2 * q)), 0.1, 10)
    sigma_w = math.sqrt(2 / (1 - math.exp(-2 * q_star)))
    act = dks_jax.transform("cos", "EOC")
    assert act.input_scale == pytest.approx(math.sqrt(q_star), rel=1e-12)
    assert act.output_scale == pytest.approx(sigma_w / math.sqrt(q_star), rel=1e-12)
    assert dict(act.local_targets)["q_star"] == pytest.approx(q_star, rel=1e-12)
    # In the original coordinates q* is a fixed point of the q map (chi = 1 by construction above).
    assert sigma_w**2 * (1 + math.exp(-2 * q_star)) / 2 == pytest.approx(q_star, rel=1e-12)
    # Unit q in, unit q out, and C'(1) = chi = 1, by Monte Carlo on the returned function.
    z = np.random.default_rng(0).standard_normal(2_000_000)
    with jax.enable_x64(True):
        y = np.asarray(act(jnp.asarray(z)))
        dy = np.asarray(jax.vmap(jax.grad(act))(jnp.asarray(z)))
    for sample in (y * y, dy * dy):
        assert np.mean(sample) == pytest.approx(1.0, abs=6 * np.std(sample) / math.sqrt(z.size))


def test_eoc_refuses_tanh_whose_only_eoc_point_is_q_to_zero():
    with pytest.raises(solver.SolverError, match=r"q\* -> 0 \(sigma_w = 1 / \|phi'\(0\)\|\)"):
        dks_jax.transform("tanh", "EOC")
    # Independent check: with sigma_w^2 = q / E[tanh(sqrt(q) z)^2] (q a fixed point), chi > 1 for
    # every q > 0 and chi -> 1 as q -> 0 (sigma_w -> 1).
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    e = lambda f: scipy.integrate.quad(lambda z: f(z) * pdf(z), -12, 12, epsabs=1e-14)[0]
    chis = []
    for q in (1e-3, 0.1, 1.0, 10.0):
        r = math.sqrt(q)
        sigma2 = q / e(lambda z: math.tanh(r * z) ** 2)
        chis.append(sigma2 * e(lambda z: (1 - math.tanh(r * z) ** 2) ** 2))
    assert all(chi > 1 for chi in chis) and chis[0] == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("name,match", [("softplus", "always ordered"), ("square", "always chaotic"),
                                        ("selu", r"q\* -> 0")])
def test_eoc_refusals_say_why(name, match):
    with pytest.raises(solver.SolverError, match=match):
        dks_jax.transform(name, "EOC")


def test_eoc_of_linear_and_sigmoid():
    lin = dks_jax.transform("linear", "EOC")
    assert (lin.input_scale, lin.output_scale) == (1.0, pytest.approx(1.0, abs=1e-12))
    sig = dks_jax.transform("sigmoid", "EOC")  # phi(0) = 1/2: a nontrivial fixed point exists
    m = _measure(sig)
    assert m["q_value"] == pytest.approx(1.0, abs=1e-9)
    assert m["c_slope_1"] == pytest.approx(1.0, abs=1e-9)  # C'(1) = chi at unit q


# ---------------------------------------------------------------------------------------------
# A subnetwork, not the whole network, sets the maximum.


def _branchy(w=0.9, deep=10):
    """x -> w * Act(x) + sqrt(1 - w^2) * Act^deep(x): the deep branch alone is more nonlinear than the
    whole network, which mostly follows the shallow one."""
    shallow = g.Sequential((g.Dense(8), g.Act()))
    branch = g.Sequential(tuple(l for _ in range(deep) for l in (g.Dense(8), g.Act())))
    return g.Sequential((g.WeightedSum((shallow, branch), (w, math.sqrt(1 - w * w))),
                         g.Dense(2)))


def test_subnetwork_sets_m_for_dks():
    net = _branchy()
    act = dks_jax.transform("softplus", "DKS", network=net)
    s = dict(act.local_targets)["c_slope_1"]
    assert s == pytest.approx(1.5 ** (1 / 10), abs=1e-9)  # the deep branch's value, not the net's
    whole = g.propagate(net, 1.0, lambda y: s * y)  # 0.81 s + 0.19 s^10
    assert whole == pytest.approx(0.81 * s + 0.19 * s**10, rel=1e-12) and whole < 1.2
    assert g.subnet_max_func(net)(1.0, lambda y: s * y) == pytest.approx(1.5, abs=1e-8)
    assert _measure(act)["c_slope_1"] == pytest.approx(s, abs=1e-7)


def test_subnetwork_sets_m_for_tat():
    net = _branchy()
    act = dks_jax.transform("softplus", "TAT", network=net)
    assert dict(act.local_targets)["c_curv_1"] == pytest.approx(0.3 / 10, abs=1e-9)
    leaky = dks_jax.transform("leaky_relu", "TAT", network=net, tat=dks_jax.TATTargets(0.5))
    plain = dks_jax.transform("leaky_relu", "TAT", network=layouts.plain_stack(10),
                              tat=dks_jax.TATTargets(0.5))
    assert leaky.as_dict() == plain.as_dict()  # the deep branch is a 10-layer plain stack
    whole = g.propagate(net, 0.0, lambda c: local_maps.leaky_relu_c_map(c, leaky.shape_params[0][1]))
    assert whole < 0.5 - 0.1


@pytest.mark.parametrize("name,method", [("softplus", "DKS"), ("relu", "DKS"), ("tanh", "TAT"),
                                         ("leaky_relu", "TAT")])
@pytest.mark.parametrize("spec", [layouts.resnet(101, 10), layouts.resnet(50, 10, shortcut_weight=0.6),
                                  _branchy()], ids=["r101", "r50-w0.6", "branchy"])
def test_network_search_closed_forms_reach_the_same_targets(name, method, spec):
    """The searches evaluate a network's M in closed form (polynomials for DKS/TAT smooth, a hoisted
    Leaky ReLU map); a bare M function (a user's ``subnet_max_func``) takes the layer-by-layer path."""
    solver.clear_caches()
    targets = {"tat": dks_jax.TATTargets(0.5)} if name == "leaky_relu" else {}  # reachable by branchy
    fast = dks_jax.transform(name, method, network=spec, **targets)
    m = g.subnet_max_func(spec)
    slow = dks_jax.transform(name, method, subnet_max_func=lambda x, r: m(x, r), **targets)
    assert dict(fast.local_targets) == pytest.approx(dict(slow.local_targets), rel=1e-13)
    assert dict(fast.shape_params) == pytest.approx(dict(slow.shape_params), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# sin and cos; families registered by users.


@pytest.mark.parametrize("name", ["sin", "cos"])
@pytest.mark.parametrize("method", ["DKS", "TAT"])
def test_periodic_families(name, method):
    net = layouts.plain_stack(20)
    act = dks_jax.transform(name, method, network=net)
    assert act.input_scale > 0 and 0.0 <= act.input_shift <= math.pi  # canonical: shift mod 2 pi, twin
    m = _measure(act)
    assert m["q_value"] == pytest.approx(1.0, abs=1e-7)
    assert m["q_slope"] == pytest.approx(1.0, abs=1e-7)
    key, target = ("c_slope_1", 1.5 ** (1 / 20)) if method == "DKS" else \
        ("c_curv_1", dict(act.local_targets)["c_curv_1"])
    assert m[key] == pytest.approx(target, abs=1e-7)
    compat = dks_jax.get_activation_params([name], method, subnet_max_func=g.subnet_max_func(net))[name]
    assert 0.0 <= compat["input_shift"] < 2 * math.pi  # the public package's convention
    import dataclasses
    twin = dataclasses.replace(act, **compat)
    grid = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(twin.c_map(grid), act.c_map(grid), atol=1e-10)


def test_user_function_with_a_where_kink_is_detected_and_refused_by_tat_only():
    name = "test_my_kinked"
    dks_jax.register_activation(name, lambda x: jnp.where(x > 0, jnp.tanh(x), 0.5 * jnp.tanh(x)))
    try:
        net = layouts.plain_stack(20)
        with pytest.raises(solver.SolverError, match=r"phi' jumps \(a kink\) at x = 0 \(found "
                                                     r"numerically\).*C''\(1\).*infinite"):
            dks_jax.transform(name, "TAT", network=net)
        act = dks_jax.transform(name, "DKS", network=net)  # DKS needs only C'(1): fine
        m = _measure(act)  # scipy's integrals split at the detected kink
        assert m["c_slope_1"] == pytest.approx(1.5 ** (1 / 20), abs=1e-7)
        assert m["q_slope"] == pytest.approx(1.0, abs=1e-7)
    finally:
        dks_jax.unregister_activation(name)


def test_user_homogeneous_function_explains_why_dks_fails():
    name = "test_my_leaky"
    dks_jax.register_activation(name, lambda x: jnp.where(x > 0, x, 0.1 * x))
    try:
        with pytest.raises(solver.SolverError, match="positively homogeneous.*positive_homogeneous=True"):
            dks_jax.transform(name, "DKS", network=layouts.plain_stack(20))
        dks_jax.register_activation(name, lambda x: jnp.where(x > 0, x, 0.1 * x), overwrite=True,
                                    positive_homogeneous=True)
        act = dks_jax.transform(name, "DKS", network=layouts.plain_stack(20))  # ReLU's recipe
        assert act.input_shift == 1.0
        assert _measure(act)["c_slope_1"] == pytest.approx(1.5 ** (1 / 20), abs=1e-7)
    finally:
        dks_jax.unregister_activation(name)


# ---------------------------------------------------------------------------------------------
# The optional on-disk cache.


def test_disk_cache_round_trip_keys_and_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("DKS_JAX_CACHE", "on")
    monkeypatch.setenv("DKS_JAX_CACHE_DIR", str(tmp_path))
    net = layouts.plain_stack(30)
    first = dks_jax.transform("softplus", "TAT", network=net)
    entries = list(tmp_path.rglob("*.json"))
    assert len(entries) == 1
    # A new process would read it: forget everything in memory, solve again, same bits, no new entry.
    solver.clear_caches()
    calls = []
    monkeypatch.setattr(solver, "_solve_local", lambda *a: calls.append(a))
    assert dks_jax.transform("softplus", "TAT", network=net) == first and not calls
    # Other targets, the other root convention, or another definition under the same name: new keys.
    monkeypatch.undo()
    monkeypatch.setenv("DKS_JAX_CACHE", "on")
    monkeypatch.setenv("DKS_JAX_CACHE_DIR", str(tmp_path))
    dks_jax.transform("softplus", "TAT", network=layouts.plain_stack(31))
    dks_jax.get_activation_params(["softplus"], "TAT", subnet_max_func=g.subnet_max_func(net))
    name = "test_cached_act"
    for fn in (lambda x: jnp.tanh(x) + 0.1 * x, lambda x: jnp.tanh(x) + 0.2 * x):
        dks_jax.register_activation(name, fn, kinks=(), overwrite=True)
        dks_jax.transform(name, "DKS", network=net)
    dks_jax.unregister_activation(name)
    assert len(list(tmp_path.rglob("*.json"))) == 5
    # A corrupt entry is ignored (solved again and rewritten); DKS_JAX_CACHE=off writes nothing.
    entries[0].write_text("{not json")
    solver.clear_caches()
    assert dks_jax.transform("softplus", "TAT", network=net) == first
    monkeypatch.setenv("DKS_JAX_CACHE", "off")
    solver.clear_caches()
    dks_jax.transform("softplus", "TAT", network=layouts.plain_stack(32))
    assert len(list(tmp_path.rglob("*.json"))) == 5


@pytest.mark.slow
def test_disk_cache_is_safe_for_concurrent_processes(tmp_path):
    code = ("import dks_jax; from dks_jax.kernels import layouts;"
            "print(dks_jax.transform('gelu', 'TAT', network=layouts.plain_stack(40)).as_dict())")
    env = dict(__import__("os").environ, DKS_JAX_CACHE="on", DKS_JAX_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    outs = {p.communicate()[0] for p in procs}
    assert len(outs) == 1 and all(p.returncode == 0 for p in procs)
    assert len(list(tmp_path.rglob("*.json"))) == 1 and not list(tmp_path.rglob(".tmp-*"))
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert again.stdout in outs
