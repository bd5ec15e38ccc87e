"""The activation registry: derivative towers, kink detection, JAX names, unusable functions."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dks_jax
from dks_jax import activations
from dks_jax.kernels import evaluate, kinks
from dks_jax.kernels import layouts

EXTRA_JAX_NAMES = ["jax.nn.silu", "jnp.sinh", "jax.nn.relu6", "jax.nn.mish", "jax.scipy.special.erfc",
                   "jax.nn.celu", "jax.nn.hard_tanh"]


def _compiled_tower(spec, order):
    """phi, phi', ... by jax.grad under jit and vmap: independent of the NumPy interpreter."""
    fns = [lambda x: spec.fn(x, **spec.shape_params)]
    for _ in range(order):
        fns.append(jax.grad(fns[-1]))
    return jax.jit(jax.vmap(lambda x: tuple(f(x) for f in fns)))


# A few cover every mechanism (custom_jvp, where/select, integer_pow, erf via SciPy, clamp); the full
# sweep compiles a third-order reverse-mode program per activation, so it is in the slow tier.
FAST_TOWERS = ["softplus", "selu", "gelu", "gelu_exact", "jax.nn.relu6"]
SLOW_TOWERS = [n for n in activations.list_activations() + EXTRA_JAX_NAMES if n not in FAST_TOWERS]


@pytest.mark.parametrize("name", FAST_TOWERS + [pytest.param(n, marks=pytest.mark.slow)
                                                for n in SLOW_TOWERS])
def test_numpy_tower_matches_compiled_autodiff(name):
    spec = activations.get_activation(name)
    x = np.linspace(-6.1, 6.3, 257)  # no node on a kink
    got = evaluate.tower(spec, 3)(x)
    with jax.enable_x64(True):
        expected = [np.asarray(v) for v in _compiled_tower(spec, 3)(x)]
    assert evaluate.tower(spec, 3).interpreted
    for k, (a, b) in enumerate(zip(got, expected)):
        # XLA's float64 tanh differs from libm's by ~1e-12 (gelu), the rest agree to rounding.
        np.testing.assert_allclose(a, b, rtol=5e-12, atol=5e-12, err_msg=f"derivative {k}")


def test_unknown_primitive_falls_back_to_compiled_program():
    import scipy.special

    name = "test_incomplete_gamma"
    # The regularized incomplete gamma function is the `igamma` primitive, which the NumPy
    # interpreter does not know: the tower must compile instead, with the same values.
    dks_jax.register_activation(name, lambda x: jax.scipy.special.gammainc(2.0, jnp.exp(x)), kinks=())
    try:
        tower = evaluate.tower(activations.get_activation(name), 1)
        assert not tower.interpreted
        x = np.linspace(-2, 2, 5)
        t = np.exp(x)
        np.testing.assert_allclose(tower(x)[0], scipy.special.gammainc(2.0, t), rtol=1e-12)
        # d/dx P(2, e^x) = e^x * e^-t t / Gamma(2) with t = e^x.
        np.testing.assert_allclose(tower(x)[1], t * np.exp(-t) * t, rtol=1e-10)
    finally:
        dks_jax.unregister_activation(name)


@pytest.mark.parametrize("name", activations.list_activations())
def test_detection_agrees_with_declared_kinks(name):
    spec = activations.get_activation(name)
    undeclared = dataclasses.replace(spec, kinks=None, kink_order=None)
    found = kinks.detect_kinks(undeclared, tuple(spec.shape_params.values()))
    assert found.kinks == tuple(spec.kinks)
    assert found.orders == (spec.kink_order,) * len(spec.kinks)


@pytest.mark.parametrize("fn,expected_kinks,expected_orders", [
    (lambda x: jnp.where(x > 0.3, x, 0.1 * x), (0.3,), (0,)),  # jumps from 0.03 to 0.3
    (lambda x: jnp.where(x > -1.25, x, 0.2 * x + 1.0) * 1.0, (-1.25,), (0,)),
    (lambda x: jnp.where(x > 0.5, x - 0.5, 0.1 * (x - 0.5)), (0.5,), (1,)),
    (jax.nn.relu6, (0.0, 6.0), (1, 1)),
    (jax.nn.hard_tanh, (-1.0, 1.0), (1, 1)),
    (lambda x: jnp.where(x > 2.0, jnp.tanh(x), jnp.tanh(2.0) + (1 - jnp.tanh(2.0) ** 2) * (x - 2.0)),
     (2.0,), (2,)),  # C1 join: only the second derivative jumps
    (jax.nn.softplus, (), ()),  # uses max/abs/log1p internally, yet smooth
    (jax.nn.mish, (), ()),
    (lambda x: jnp.tanh(50.0 * x), (), ()),  # steep, but smooth
])
def test_detection_of_user_functions(fn, expected_kinks, expected_orders):
    found = kinks.detect_kinks(activations.ActivationSpec("probe", fn))
    assert found.orders == expected_orders
    np.testing.assert_allclose(found.kinks, expected_kinks, atol=1e-9)


def test_one_sided_jumps_are_exact_for_selu():
    spec = activations.get_activation("selu")
    jumps = kinks.one_sided_jumps(spec, [0.0], 2)[:, 0]
    scale, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
    np.testing.assert_allclose(jumps, [0.0, scale - scale * alpha, -scale * alpha], atol=1e-9)


def test_staircase_is_refused():
    with pytest.raises(activations.ActivationError, match="kinks or jumps"):
        kinks.detect_kinks(activations.ActivationSpec("stairs", jnp.round))


# ---------------------------------------------------------------------------------------------
# JAX functions by name.


def test_jax_names_resolve_to_the_same_function():
    silu = dks_jax.transform("jax.nn.silu", "DKS", network=layouts.plain_stack(20))
    swish = dks_jax.transform("swish", "DKS", network=layouts.plain_stack(20))
    for key, value in swish.as_dict().items():
        assert silu.as_dict()[key] == pytest.approx(value, abs=1e-12)
    assert dks_jax.get_activation("jnp.sinh").fn is jnp.sinh
    assert dks_jax.get_activation("jax.numpy.sinh").fn is jnp.sinh
    assert "jnp.sinh" in dks_jax.list_activations()


@pytest.mark.parametrize("name,match", [
    ("jnp.sum", "not an elementwise function"),
    ("jnp.sort", "not an elementwise function"),
    ("jnp.cumsum", "not an elementwise function"),
    ("jax.nn.softmax", "not an elementwise function"),
    ("jnp.pi", "not a function"),
    ("jnp.float32", "not a function"),
    ("jnp.add", "calling it on one array failed"),
    ("jax.nn.no_such_thing", "has no function 'no_such_thing'"),
    ("jnp.", "has no function"),
    ("nope", "Known activations: .*leaky_relu.*any elementwise JAX function"),
])
def test_bad_names(name, match):
    with pytest.raises(activations.ActivationError, match=match):
        dks_jax.get_activation(name)


def test_reserved_prefix_cannot_be_registered_for_another_function():
    with pytest.raises(activations.ActivationError, match="reserved for JAX"):
        dks_jax.register_activation("jnp.my_act", jnp.tanh)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kink_order=3, kinks=(0.0,)), "'kink_order'.*must be 0, 1, 2"),
    (dict(kinks=(), kink_order=1), "declares no kinks"),
    (dict(period=-1.0), "'period'.*must be positive"),
])
def test_bad_registrations(kwargs, match):
    with pytest.raises(activations.ActivationError, match=match):
        dks_jax.register_activation("test_bad", jnp.tanh, **kwargs)
    assert "test_bad" not in dks_jax.list_activations()


# ---------------------------------------------------------------------------------------------
# Activations the solver cannot shape.


@pytest.mark.parametrize("fn,method,match", [
    (lambda x: 0.0 * x + 2.0, "DKS", "is constant"),
    (lambda x: jnp.zeros_like(x), "TAT", "is constant"),
    (jnp.log, "DKS", r"phi\(x\) is nan at x = -20"),
    (jnp.sqrt, "TAT", r"phi\(x\) is nan"),
    (lambda x: jnp.sqrt(x * x), "DKS", r"phi'\(x\) is nan at x = 0 "),  # 0 / 0 in the derivative
    (lambda x: 1.0 / x, "DKS", "is inf at x = 0"),
    (lambda x: jnp.where(x > 1.0, 1.0, 0.0) + 0.1 * x, "DKS", "phi jumps at x = 1.*C'\\(1\\)"),
])
def test_unusable_activations_are_refused_clearly(fn, method, match):
    name = "test_unusable"
    dks_jax.register_activation(name, fn, overwrite=True)
    try:
        with pytest.raises(ValueError, match=match):
            dks_jax.transform(name, method, network=layouts.plain_stack(10))
    finally:
        dks_jax.unregister_activation(name)


def test_not_traceable_activation_is_refused():
    name = "test_python_branch"
    dks_jax.register_activation(name, lambda x: x if x > 0 else 0.1 * x)  # Python `if` on a tracer
    try:
        with pytest.raises(activations.ActivationError, match="cannot be evaluated and differentiated"):
            dks_jax.transform(name, "DKS", network=layouts.plain_stack(10))
    finally:
        dks_jax.unregister_activation(name)


def test_sin_and_cos_are_registered_with_their_period():
    for name in ("sin", "cos"):
        spec = activations.get_activation(name)
        assert spec.period == pytest.approx(2 * math.pi) and spec.kinks == ()
