"""The spec -> Haiku interpreter: node semantics, stable names, traces aligned with graph.trace."""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dks_jax.data import pln
from dks_jax.kernels import graph as g
from dks_jax.kernels import layouts
from dks_jax.nets import builder


def _transform(spec, activation=jax.nn.relu, init="orthogonal"):
    return hk.transform_with_state(builder.make_forward(spec, activation, init=init))


def _run(spec, x, activation=jax.nn.relu, init="orthogonal", is_training=False, rng=None,
         return_trace=False):
    f = _transform(spec, activation, init)
    params, state = f.init(jax.random.PRNGKey(0), x, is_training=is_training)
    out, state = f.apply(params, state, rng, x, is_training=is_training, return_trace=return_trace)
    return params, state, out


def test_child_names_are_unique_deterministic_and_prefer_explicit_names():
    nodes = (g.Conv(4), g.Act(), g.Conv(4, name="conv_1"), g.Conv(4), g.Dense(3), g.Dense(3, name="x"),
             g.Dense(3, name="x"), g.Sequential((g.Act(),)), g.BatchNorm())
    names = builder.child_names(nodes)
    assert names == ["conv_0", None, "conv_1", "conv_2", "dense_0", "x", "x_1", "seq_0", "batch_norm_0"]
    assert builder.child_names(nodes) == names
    assert builder.child_names((g.Sequential(()), g.Conv(2)), ["pre", "branch"]) == ["pre", "branch"]


def test_mlp_parameter_names_shapes_and_zero_biases():
    spec = layouts.mlp(3, 16, 10)
    params, state, out = _run(spec, jnp.ones((2, 4, 4, 1)))
    assert list(params) == ["dense_0", "dense_1", "dense_2", "logits"]
    assert params["dense_0"]["w"].shape == (16, 16)
    assert params["logits"]["w"].shape == (16, 10)
    for module in params.values():
        assert np.all(np.asarray(module["b"]) == 0.0)
    assert state == {} and out.shape == (2, 10)


def test_resnet_names_are_stable_across_depth_and_shortcut_weight():
    vanilla = _transform(layouts.resnet(18, 10, width_multiplier=1 / 16, stem="small"))
    tat = _transform(layouts.resnet(18, 10, shortcut_weight=0.8, width_multiplier=1 / 16, stem="small"))
    x = jnp.ones((1, 8, 8, 3))
    pv = jax.eval_shape(lambda: vanilla.init(jax.random.PRNGKey(0), x))[0]
    pt = jax.eval_shape(lambda: tat.init(jax.random.PRNGKey(0), x))[0]
    assert "group_0_block_0/conv_0" in pv and "group_3_block_1/conv_1" in pv
    assert "group_0_block_0/branch/conv_0" in pt
    # Projections where the shape changes (first block of groups 1-3 of a basic-block net).
    assert "group_1_block_0/shortcut_conv" in pt and "group_0_block_0/shortcut_conv" not in pt
    assert not any("shortcut" in k for k in pv)
    assert pv["stem_conv"]["w"].shape == (3, 3, 3, 4)


def test_trace_has_one_entry_per_top_level_layer_and_ends_with_the_output():
    spec = layouts.resnet(18, 10, width_multiplier=1 / 16, stem="small")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    _, _, (out, trace) = _run(spec, x, return_trace=True)
    assert len(trace) == len(spec.layers) == len(g.trace(spec, 0.0, lambda c: c))
    np.testing.assert_array_equal(trace[-1], out)
    assert trace[0].shape == (2, 8, 8, 4)  # stem conv
    assert trace[-2].shape == (2, 32)  # global average pool


def test_weighted_sum_semantics():
    # Two dense branches with fixed parameters: check w1 * b1(x) + w2 * b2(x) exactly.
    spec = g.Sequential((g.WeightedSum((g.Dense(3), g.Dense(3)), (0.6, 0.8)),))
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
    params, _, out = _run(spec, x)
    assert set(params) == {"sum_0/branch_0", "sum_0/branch_1"}
    b0 = x @ params["sum_0/branch_0"]["w"] + params["sum_0/branch_0"]["b"]
    b1 = x @ params["sum_0/branch_1"]["w"] + params["sum_0/branch_1"]["b"]
    np.testing.assert_allclose(out, 0.6 * b0 + 0.8 * b1, rtol=1e-5, atol=1e-6)
    # weights=None: a plain sum; zero weights: the branch is not built at all.
    plain = g.Sequential((g.WeightedSum((g.Dense(3), g.Dense(3)), None),))
    params, _, out = _run(plain, x)
    ref = sum(x @ p["w"] + p["b"] for p in params.values())
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    params, _, _ = _run(g.Sequential((g.WeightedSum((g.Dense(3), g.Dense(3)), (1.0, 0.0)),)), x)
    assert list(params) == ["sum_0/branch_0"]


@pytest.mark.parametrize("w", [None, 0.6, 0.0])
@pytest.mark.parametrize("project", [False, True])
def test_preact_residual_semantics(w, project):
    act = lambda z: jnp.tanh(z) + 0.1  # distinguishes x from pre(x)
    block = g.PreActResidual(g.Sequential((g.Act(),)), g.Sequential((g.Dense(4),)),
                             g.Dense(4, name="proj") if project else None, w, name="block")
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 4))
    params, _, out = _run(g.Sequential((block,)), x, activation=act)
    h = act(x)
    branch = h @ params["block/branch/dense_0"]["w"] + params["block/branch/dense_0"]["b"]
    if w == 0.0:
        assert "block/proj" not in params  # the shortcut does not reach the output
        np.testing.assert_allclose(out, branch, rtol=1e-5, atol=1e-6)
        return
    shortcut = h @ params["block/proj"]["w"] + params["block/proj"]["b"] if project else x
    expected = shortcut + branch if w is None else w * shortcut + math.sqrt(1 - w * w) * branch
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_pooling_flatten_gap_and_pln():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 6, 3))
    _, _, out = _run(g.Sequential((g.Pool("max", 3, 2),)), x)
    assert out.shape == (2, 3, 3, 3)
    # SAME padding of 6 with window 3 / stride 2 pads one row/column at the end: output 1 sees 2..4.
    np.testing.assert_allclose(out[0, 1, 1], jnp.max(x[0, 2:5, 2:5], axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(out[0, 2, 2], jnp.max(x[0, 4:6, 4:6], axis=(0, 1)), rtol=1e-6)
    _, _, out = _run(g.Sequential((g.Pool("avg", 2, 2),)), x)
    np.testing.assert_allclose(out[0, 0, 0], jnp.mean(x[0, 0:2, 0:2], axis=(0, 1)), rtol=1e-5)
    _, _, out = _run(g.Sequential((g.GlobalAvgPool(),)), x)
    np.testing.assert_allclose(out, jnp.mean(x, axis=(1, 2)), rtol=1e-5)
    _, _, out = _run(g.Sequential((g.Flatten(),)), x)
    assert out.shape == (2, 108)
    _, _, out = _run(g.Sequential((g.PerLocationNorm("const"),)), x)
    np.testing.assert_allclose(out, pln.per_location_normalization(x, "const"), rtol=1e-6)
    assert out.shape == (2, 6, 6, 4)
    with pytest.raises(ValueError, match="NHWC"):
        _run(g.Sequential((g.Conv(4),)), jnp.ones((2, 5)))


def test_dropout_only_in_training_and_needs_rng():
    spec = g.Sequential((g.Dropout(0.5),))
    x = jnp.ones((4, 100))
    _, _, out = _run(spec, x)
    np.testing.assert_array_equal(out, x)
    _, _, out = _run(spec, x, is_training=True, rng=jax.random.PRNGKey(5))
    values = np.unique(np.asarray(out))
    assert set(values.tolist()) <= {0.0, 2.0} and len(values) == 2
    with pytest.raises(ValueError, match="PRNG key"):
        _run(spec, x, is_training=True, rng=None)


def test_batch_norm_state_and_modes():
    spec = g.Sequential((g.Dense(8), g.BatchNorm(), g.Act()))
    x = jax.random.normal(jax.random.PRNGKey(6), (16, 5)) * 3 + 1
    f = _transform(spec, init="he_normal")
    params, state = f.init(jax.random.PRNGKey(0), x, is_training=True)
    assert set(params["batch_norm_0"]) == {"scale", "offset"}
    (pre, trace), new_state = f.apply(params, state, None, x, is_training=True, return_trace=True)
    normalized = np.asarray(trace[1])
    np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalized.std(0), 1.0, rtol=1e-2)
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), state, new_state)
    assert any(jax.tree_util.tree_leaves(changed))
    # Evaluation uses the moving averages and leaves the state alone.
    _, eval_state = f.apply(params, new_state, None, x, is_training=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, eval_state, new_state)


def test_conv_even_kernel_with_delta_init_fails_clearly():
    with pytest.raises(ValueError, match="odd kernel sizes"):
        _run(g.Sequential((g.Conv(4, kernel_size=2),)), jnp.ones((1, 4, 4, 2)))
    _, _, out = _run(g.Sequential((g.Conv(4, kernel_size=2),)), jnp.ones((1, 4, 4, 2)), init="he_normal")
    assert out.shape == (1, 4, 4, 4)


def test_unknown_init_name_fails_before_tracing():
    with pytest.raises(ValueError, match="Unknown initializer"):
        builder.make_forward(layouts.mlp(2, 4, 2), jax.nn.relu, init="zeros")
