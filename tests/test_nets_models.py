"""Model registry: config validation, spec/activation/parameters moving together, every model runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config
from reference_values import PUBLISHED_TAT
from dks_jax import transforms
from dks_jax.kernels import graph as g
from dks_jax.kernels import layouts
from dks_jax.nets import models
from dks_jax.nets import summary


def _config(**fields):
    return make_config(**{"stem": "small", "width_multiplier": 1 / 16, **fields})


def _bn(**fields):
    return _config(method="untransformed", activation="relu", init="he_normal", **fields)


def test_registry_lists_every_model():
    assert models.list_models() == sorted(["mlp", "convnet", "vanilla_resnet", "tat_resnet", "resnet_bn",
                                           "residual_mlp_bn", "transformer"])


@pytest.mark.parametrize("fields,message", [
    (dict(model="rnn"), r"config.model='rnn' is unknown; valid: convnet, mlp"),
    (dict(model="vanilla_resnet", depth=42), r"config.depth=42 .* valid: \[18, 34, 50, 101, 152, 200\]"),
    (dict(model="tat_resnet", depth=18, shortcut_weight=0.0), r"config.shortcut_weight=0.0 .* strictly"),
    (dict(model="tat_resnet", depth=18, shortcut_weight=1.0), r"config.shortcut_weight=1.0"),
    (dict(model="vanilla_resnet", depth=18, shortcut_weight=0.5), r"only read by model 'tat_resnet'"),
    (dict(model="resnet_bn", depth=18), r"config.method='TAT' is invalid for model 'resnet_bn'.*"
                                        r"valid: 'untransformed'"),
    (dict(model="resnet_bn", depth=18, method="untransformed", activation="leaky_relu"),
     r"config.activation='leaky_relu' .* valid: 'relu'"),
    (dict(model="resnet_bn", depth=18, method="untransformed", activation="relu", init="orthogonal"),
     r"config.init='orthogonal' .* valid: 'he_normal'"),
    (dict(model="mlp", depth=20, init="he_normal"), r"config.init='he_normal' does not go with "
                                                    r"config.method='TAT'"),
    (dict(model="mlp", depth=20, init="xavier"), r"config.init='xavier' is unknown"),
    (dict(model="mlp", depth=20, method="SGD"), r"config.method='SGD' is unknown"),
    (dict(model="vanilla_resnet", depth=18, stem="huge"), r"config.stem='huge' is invalid"),
    (dict(model="mlp", depth=0), r"config.depth must be a positive integer"),
])
def test_config_errors_name_the_field_and_valid_values(fields, message):
    with pytest.raises(ValueError, match=message):
        models.build_model(_config(**fields), 10, (8, 8, 3))


def test_unreachable_target_names_the_config_fields():
    with pytest.raises(transforms.SolverError, match=r"config.activation='leaky_relu', "
                                                     r"config.method='TAT'.*unreachable"):
        models.build_model(_config(model="mlp", depth=4), 10, (8, 8, 1))


def test_default_init_per_method():
    assert models.resolve_init(_config(method="TAT")) == "orthogonal"
    assert models.resolve_init(_config(method="EOC", activation="relu")) == "orthogonal"
    assert models.resolve_init(_config(method="untransformed", activation="relu")) == "he_normal"
    assert models.resolve_init(_config(method="untransformed", activation="tanh")) == "lecun_normal"
    assert models.resolve_init(_config(method="DKS", init="lecun_normal")) == "lecun_normal"


def test_activation_is_solved_on_the_models_own_spec():
    model = models.build_model(_config(model="tat_resnet", depth=50, shortcut_weight=0.6,
                                       **{"tat.c_val_0_target": 0.75}), 10, (8, 8, 3))
    assert model.activation == transforms.transform("leaky_relu", "TAT", network=model.spec,
                                                    tat=transforms.TATTargets(c_val_0_target=0.75))
    # The network-level target is met on the spec (C(0) of the network, maximized over subnetworks).
    m = g.subnet_max_func(model.spec)
    assert m(0.0, lambda c: float(model.activation.c_map(c))) == pytest.approx(0.75, abs=1e-6)


def test_changing_the_layout_changes_parameters_and_activation_together():
    x = jnp.zeros((1, 8, 8, 3))
    shapes = lambda m: jax.tree_util.tree_map(lambda a: a.shape, m.param_shapes())
    v50 = models.build_model(_config(model="vanilla_resnet", depth=50), 10, x.shape[1:])
    v101 = models.build_model(_config(model="vanilla_resnet", depth=101), 10, x.shape[1:])
    t101 = models.build_model(_config(model="tat_resnet", depth=101, shortcut_weight=0.8), 10, x.shape[1:])
    t101b = models.build_model(_config(model="tat_resnet", depth=101, shortcut_weight=0.6), 10,
                               x.shape[1:])
    # Depth: more blocks, and a milder Leaky ReLU (published values for 49 / 100 nonlinear layers).
    assert len(shapes(v101)) - len(shapes(v50)) == 17 * 3
    assert "group_2_block_22/conv_2" in shapes(v101) and "group_2_block_22/conv_2" not in shapes(v50)
    slope = lambda m: dict(m.activation.shape_params)["negative_slope"]
    assert slope(v50) == pytest.approx(PUBLISHED_TAT[50][0], abs=1e-8)
    assert slope(v101) == pytest.approx(PUBLISHED_TAT[101][0], abs=1e-8)
    # Shortcuts: projection convolutions appear, and the residual branches' M makes the slope differ.
    assert "group_1_block_0/shortcut_conv" in shapes(t101)
    assert not any("shortcut" in k for k in shapes(v101))
    assert shapes(t101) == shapes(t101b)
    assert len({slope(v101), slope(t101), slope(t101b)}) == 3
    for m in (v101, t101, t101b):
        assert g.count_nonlinear_layers(m.spec) == 100


def _forward(model, batch=2, seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed), (batch,) + model.input_shape)
    params, state = model.init(jax.random.PRNGKey(1), x)
    logits, new_state = model.apply_jit(params, state, jax.random.PRNGKey(2), x, is_training=True)
    assert logits.shape == (batch, model.num_classes)
    assert np.all(np.isfinite(np.asarray(logits)))
    # The Haiku parameter count agrees with the arithmetic on the spec.
    assert model.num_params(params) == summary.cost(model.spec, model.input_shape).params
    return params, state, new_state


@pytest.mark.parametrize("depth", [18, 34, 50, *[pytest.param(d, marks=pytest.mark.slow)
                                                   for d in (101, 152, 200)]])
def test_vanilla_resnet_forward(depth):
    model = models.build_model(_config(model="vanilla_resnet", depth=depth), 10, (32, 32, 3))
    _forward(model)


@pytest.mark.parametrize("fields,shape", [
    (dict(model="mlp", depth=20, width=32), (8, 8, 1)),
    (dict(model="mlp", depth=20, width=32, pln_mode="const", dropout_rate=0.2), (8, 8, 3)),
    (dict(model="convnet", depth=16, width=16), (28, 28, 1)),
    (dict(model="tat_resnet", depth=50, shortcut_weight=0.8), (32, 32, 3)),
    (dict(model="tat_resnet", depth=18, shortcut_weight=0.8, stem="imagenet", **{"tat.c_val_0_target": 0.8}),
     (64, 64, 3)),
    (dict(model="vanilla_resnet", depth=18, method="DKS", activation="softplus"), (32, 32, 3)),
    (dict(model="vanilla_resnet", depth=18, method="EOC", activation="relu"), (32, 32, 3)),
])
def test_other_models_forward(fields, shape):
    _forward(models.build_model(_config(**fields), 10, shape))


@pytest.mark.parametrize("fields,shape", [(dict(model="resnet_bn", depth=18), (32, 32, 3)),
                                          (dict(model="residual_mlp_bn", depth=10, width=32), (8, 8, 1))])
def test_batch_norm_baselines_forward_and_update_state(fields, shape):
    model = models.build_model(_bn(**fields), 10, shape)
    assert model.uses_batch_norm and model.init_name == "he_normal"
    assert model.activation == transforms.TransformedActivation.untransformed("relu")
    _, state, new_state = _forward(model, batch=4)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(state),
                                                     jax.tree_util.tree_leaves(new_state)))


def test_vanilla_resnet50_parameter_count_from_its_layout():
    # Independent arithmetic: ResNet-50 shape, small stem, every shortcut and projection removed.
    model = models.build_model(_config(model="vanilla_resnet", depth=50, width_multiplier=1.0), 10,
                               (32, 32, 3))
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # weights + bias
    total, cin = conv(3, 3, 64), 64
    for blocks, out in zip((3, 4, 6, 3), (256, 512, 1024, 2048)):
        mid = out // 4
        for _ in range(blocks):
            total += conv(1, cin, mid) + conv(3, mid, mid) + conv(1, mid, out)
            cin = out
    total += 2048 * 10 + 10
    assert total == 20_721_546
    params = model.param_shapes()
    assert model.num_params(params) == total


def test_apply_is_not_jitted_so_kfac_sees_the_layers():
    model = models.build_model(_config(model="mlp", depth=20, width=8), 10, (4, 4, 1))
    x = jnp.ones((2, 4, 4, 1))
    params, state = model.init(jax.random.PRNGKey(0), x)
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, state, None, x)[0])(params)
    assert "pjit" not in str(jaxpr.jaxpr.eqns[0].primitive)
    assert sum(e.primitive.name == "dot_general" for e in jaxpr.jaxpr.eqns) == 21
    np.testing.assert_allclose(model.apply(params, state, None, x)[0],
                               model.apply_jit(params, state, None, x)[0], rtol=1e-5, atol=1e-6)


def test_summary_table_lists_every_depth():
    table = summary.markdown_table()
    for depth in layouts.RESNET_SHAPES:
        assert f"vanilla_resnet-{depth} | ImageNet 224" in table
        assert f"resnet_bn-{depth} | CIFAR 32" in table
    # ResNet-50 (V2, with batch norm) at 224: 25.5 M parameters and 4.09 G multiply-accumulates.
    c = summary.cost(layouts.resnet(50, 1000, shortcut_weight=None, use_batch_norm=True), (224, 224, 3))
    assert c.params == 25_549_352 and round(c.macs / 1e9, 2) == 4.09
